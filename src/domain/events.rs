//! The event types of the outbox: the one list every layer names them from.

/// What happened, as subscribers see it in `Event.event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    PointsAwarded,
    PointsSpent,
    PointsAwardReversed,
    PointsSpendReversed,
    PointsAdjusted,
    PointsExpired,
    PointsExpiringSoon,
    BonusAwarded,
    TierUpgraded,
    TierDowngradeWarning,
    TierGraceCleared,
    TierDowngraded,
    TierSet,
    ReferralInvited,
    ReferralAccepted,
    ReferralConverted,
    ReferralClawedBack,
    ReferralClosed,
}

impl EventType {
    pub const ALL: [EventType; 18] = [
        EventType::PointsAwarded,
        EventType::PointsSpent,
        EventType::PointsAwardReversed,
        EventType::PointsSpendReversed,
        EventType::PointsAdjusted,
        EventType::PointsExpired,
        EventType::PointsExpiringSoon,
        EventType::BonusAwarded,
        EventType::TierUpgraded,
        EventType::TierDowngradeWarning,
        EventType::TierGraceCleared,
        EventType::TierDowngraded,
        EventType::TierSet,
        EventType::ReferralInvited,
        EventType::ReferralAccepted,
        EventType::ReferralConverted,
        EventType::ReferralClawedBack,
        EventType::ReferralClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PointsAwarded => "points.awarded",
            EventType::PointsSpent => "points.spent",
            EventType::PointsAwardReversed => "points.award_reversed",
            EventType::PointsSpendReversed => "points.spend_reversed",
            EventType::PointsAdjusted => "points.adjusted",
            EventType::PointsExpired => "points.expired",
            EventType::PointsExpiringSoon => "points.expiring_soon",
            EventType::BonusAwarded => "bonus.awarded",
            EventType::TierUpgraded => "tier.upgraded",
            EventType::TierDowngradeWarning => "tier.downgrade_warning",
            EventType::TierGraceCleared => "tier.grace_cleared",
            EventType::TierDowngraded => "tier.downgraded",
            EventType::TierSet => "tier.set",
            EventType::ReferralInvited => "referral.invited",
            EventType::ReferralAccepted => "referral.accepted",
            EventType::ReferralConverted => "referral.converted",
            EventType::ReferralClawedBack => "referral.clawed_back",
            // An invite expired, revoked or superseded: its payload says which.
            EventType::ReferralClosed => "referral.closed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}
