-- The rest of the ledger: spends, reversals, adjustments and expiry, and the allocations
-- that trace every point drawn from or put back into a batch.

ALTER TABLE ledger_entries
    -- Spends: what the points paid for. Adjustments and reversals: why.
    ADD COLUMN reason             text CHECK (char_length(reason) <= 256),
    -- Adjustments: who made it.
    ADD COLUMN actor              text CHECK (char_length(actor) <= 256),
    -- Reversals: the award or spend reversed.
    ADD COLUMN reversed_entry_id  uuid,
    -- Reversals: how much of the reversed entry this one covers (recovered + unrecovered
    -- for an award; restored + expired for a spend).
    ADD COLUMN reversed_points    bigint CHECK (reversed_points > 0),
    -- Award reversals: points already spent or expired, so not taken back.
    ADD COLUMN unrecovered_points bigint CHECK (unrecovered_points >= 0),
    ADD FOREIGN KEY (program_id, reversed_entry_id, member_id)
        REFERENCES ledger_entries (program_id, entry_id, member_id),
    ADD CONSTRAINT spend_takes_points CHECK (kind <> 'spend' OR points < 0),
    ADD CONSTRAINT expiry_takes_points CHECK (kind <> 'expiry' OR points < 0),
    ADD CONSTRAINT adjustment_is_audited CHECK (kind <> 'adjustment' OR
        (points <> 0 AND reason IS NOT NULL AND actor IS NOT NULL)),
    ADD CONSTRAINT award_reversal_adds_up CHECK (kind <> 'award_reversal' OR
        (points <= 0 AND reversed_entry_id IS NOT NULL AND unrecovered_points IS NOT NULL
         AND reversed_points = unrecovered_points - points)),
    ADD CONSTRAINT spend_reversal_restores CHECK (kind <> 'spend_reversal' OR
        (points >= 0 AND reversed_entry_id IS NOT NULL AND reversed_points >= points));

CREATE INDEX ledger_entries_reversals
    ON ledger_entries (program_id, reversed_entry_id) WHERE reversed_entry_id IS NOT NULL;
CREATE INDEX ledger_entries_program_time ON ledger_entries (program_id, created_at);

-- Every draw from a batch (negative: spend, debit, reversal, expiry) and every
-- restoration into one (positive: spend reversal). A batch's remaining is always its
-- amount plus the sum of its allocations.
CREATE TABLE allocations (
    program_id text NOT NULL,
    entry_id   uuid NOT NULL,
    batch_id   uuid NOT NULL,
    points     bigint NOT NULL CHECK (points <> 0),
    PRIMARY KEY (program_id, entry_id, batch_id),
    FOREIGN KEY (program_id, entry_id) REFERENCES ledger_entries (program_id, entry_id),
    FOREIGN KEY (program_id, batch_id) REFERENCES point_batches (program_id, batch_id)
);

CREATE INDEX allocations_batch ON allocations (program_id, batch_id);
