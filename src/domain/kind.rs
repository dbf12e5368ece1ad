//! The kinds of ledger entry: the one list every layer names them from.

/// What an entry did to the member's points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Purchase points credited, into a new batch.
    Award,
    /// Points credited for a cause other than a purchase, into a new batch.
    Bonus,
    /// Points redeemed, drawn oldest first.
    Spend,
    /// A refund: an award's points taken back.
    AwardReversal,
    /// A cancelled redemption: a spend's points put back.
    SpendReversal,
    /// A manual credit (a new batch) or debit (drawn like a spend).
    Adjustment,
    /// Points written off past their batch's expiry.
    Expiry,
    /// A manual tier change (SetTier): no points, recorded with its reason and actor.
    TierSet,
    /// A referral operation (invites sent, accepted, converted, revoked): no points; the
    /// credits of a conversion are bonus entries of their own.
    Referral,
}

impl EntryKind {
    pub const ALL: [EntryKind; 9] = [
        EntryKind::Award,
        EntryKind::Bonus,
        EntryKind::Spend,
        EntryKind::AwardReversal,
        EntryKind::SpendReversal,
        EntryKind::Adjustment,
        EntryKind::Expiry,
        EntryKind::TierSet,
        EntryKind::Referral,
    ];

    /// The name stored in `ledger_entries.kind` and shown in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Award => "award",
            EntryKind::Bonus => "bonus",
            EntryKind::Spend => "spend",
            EntryKind::AwardReversal => "award_reversal",
            EntryKind::SpendReversal => "spend_reversal",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Expiry => "expiry",
            EntryKind::TierSet => "tier_set",
            EntryKind::Referral => "referral",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl std::fmt::Display for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are stored: renaming one would orphan every entry written under it.
    #[test]
    fn kinds_keep_their_stored_names() {
        let names: Vec<&str> = EntryKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "award",
                "bonus",
                "spend",
                "award_reversal",
                "spend_reversal",
                "adjustment",
                "expiry",
                "tier_set",
                "referral"
            ]
        );
        for kind in EntryKind::ALL {
            assert_eq!(EntryKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EntryKind::parse("refund"), None);
    }
}
