-- Plans that do not depend on statistics (issue 12). Autovacuum may be off and a new
-- program or a bulk import has none: with empty statistics every index whose partial
-- predicate matched `kind = 'award'` looked equally cheap, and the purchase check ran as a
-- scan of the whole program's awards on the cap-day index. The purchase index is no
-- longer partial (only awards carry a source, so other entries never collide), so the
-- purchase check names all its columns and nothing else: one index can serve it.
DROP INDEX ledger_entries_one_award_per_purchase;
CREATE UNIQUE INDEX ledger_entries_one_award_per_purchase
    ON ledger_entries (program_id, source, external_ref);
ALTER TABLE ledger_entries
    ADD CONSTRAINT only_awards_are_purchases CHECK ((kind = 'award') = (source IS NOT NULL));
