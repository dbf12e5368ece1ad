-- One fewer index on the award path (issue 12). Every award inserted a row into both
-- ledger_entries_member_history (program_id, member_id, seq) and the partial
-- ledger_entries_cap_day (program_id, member_id, cap_day): two random-leaf B-tree inserts
-- keyed by member. The cap-day index served only the rebuild of a lost Redis counter, a
-- rare read the member-history index bounds by the member just as well.
DROP INDEX ledger_entries_cap_day;
