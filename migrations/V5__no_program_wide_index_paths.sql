-- Plans that cannot go program-wide (issue 12, found by make bench at 1,000,000 entries).
-- Foreign-key checks run a query PostgreSQL plans once per connection and keeps: planned
-- while a table was empty, with every index leading with program_id looking alike, one
-- connection's check of point_batches → ledger_entries scanned the whole program's
-- entries through an index bounded by program_id alone, and timed out (10 s). No index
-- but those that also bound the lookup by entry, batch, member or key may lead with
-- program_id: the others put it last, so a lookup by program alone cannot use them.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_idempotency_key;
ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_idempotency_key UNIQUE (idempotency_key, program_id);

DROP INDEX ledger_entries_one_award_per_purchase;
CREATE UNIQUE INDEX ledger_entries_one_award_per_purchase
    ON ledger_entries (external_ref, source, program_id);

DROP INDEX ledger_entries_program_time;
CREATE INDEX ledger_entries_program_time ON ledger_entries (created_at, program_id);

DROP INDEX ledger_entries_reversals;
CREATE INDEX ledger_entries_reversals
    ON ledger_entries (reversed_entry_id, program_id) WHERE reversed_entry_id IS NOT NULL;

ALTER TABLE point_batches DROP CONSTRAINT point_batches_program_id_entry_id_key;
ALTER TABLE point_batches
    ADD CONSTRAINT point_batches_one_per_entry UNIQUE (entry_id, program_id);

DROP INDEX allocations_batch;
CREATE INDEX allocations_batch ON allocations (batch_id, program_id);
