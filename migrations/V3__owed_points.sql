-- Refund, then cancel the redemption (issue 17): points of a refunded award that had
-- already been spent cannot be taken back when the award is reversed; they are owed.
-- A later spend reversal repays what is owed before it puts anything back, so the two
-- events end at the same balance in either order.

-- Points the member owes: Σ unrecovered_points of its award reversals minus Σ
-- repaid_points of its spend reversals. Kept on the member row, read under its lock.
ALTER TABLE members
    ADD COLUMN points_owed bigint NOT NULL DEFAULT 0 CHECK (points_owed >= 0);

ALTER TABLE ledger_entries
    -- Spend reversals: points of the cancelled spend kept back to repay points_owed.
    ADD COLUMN repaid_points bigint CHECK (repaid_points >= 0),
    ADD CONSTRAINT spend_reversal_repays CHECK (kind <> 'spend_reversal' OR
        reversed_points >= points + COALESCE(repaid_points, 0)),
    ADD CONSTRAINT only_spend_reversals_repay CHECK (kind = 'spend_reversal' OR
        repaid_points IS NULL);
