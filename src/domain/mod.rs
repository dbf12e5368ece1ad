//! Domain types and rules: parse-don't-validate newtypes and pure arithmetic. No IO.
mod allocation;
mod clients;
mod events;
pub mod graph;
mod ids;
mod kind;
pub mod layout;
mod lock;
mod money;
mod referrals;
mod rules;
mod tiers;

pub use allocation::{
    draw_for_reversal, draw_oldest_first, repay_owed, restore_for_spend_reversal, spendable_points,
    BatchBalance, Draw,
};
pub use clients::{
    split_token, ClientName, IssuedToken, ProgramAccess, Scope, Scopes, SecretKey, TOKEN_PREFIX,
};
pub use events::EventType;
pub use ids::{EntryId, IdempotencyKey, MemberId, ProgramId};
pub use kind::EntryKind;
pub use lock::member_lock_key;
pub use money::{purchase_points, Currency, MAX_AMOUNT_MINOR};
pub use referrals::{
    invite_code, plausible_invite_code, Contact, ContactHash, ContactKey, ContactKind,
    InviteRefusal, InviteStatus, CONTACT_KEY_MIN_BYTES, MAX_CONTACTS_PER_MEMBER,
};
pub use rules::{
    cap_zones, local_day, local_day_bounds, quoted, ProgramRules, RulesDocument, Tier,
    CAP_ZONE_LOOKBACK, DEFAULT_MAX_INVITES_LIFETIME, DEFAULT_MAX_INVITES_PER_DAY,
    MAX_INVITES_PER_CALL, MAX_RULE_POINTS,
};
pub use tiers::{
    evaluate as evaluate_tier, qualifying_rank, rank_after, status_window_start, upgrade_to, Grace,
    TierState, TierStep,
};

/// A request field that failed validation; becomes INVALID_ARGUMENT naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    /// The request field, as named in the proto contract.
    pub field: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Points arithmetic left the i64 range: an error, never a wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("points arithmetic overflow")]
pub struct PointsOverflow;

/// Where a purchase was reported from. Every source earns through the same award path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurchaseSource {
    Receipt,
    Shopify,
    Marketplace,
}

impl PurchaseSource {
    /// The name stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receipt => "receipt",
            Self::Shopify => "shopify",
            Self::Marketplace => "marketplace",
        }
    }

    /// The source a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Receipt, Self::Shopify, Self::Marketplace]
            .into_iter()
            .find(|source| source.as_str() == name)
    }
}

/// A reference the caller gives (order id, receipt id): 1 to 256 printable characters.
pub fn parse_reference(field: &str, raw: &str) -> Result<String, InvalidField> {
    let chars = raw.chars().count();
    if chars == 0 || chars > 256 || raw.chars().any(char::is_control) {
        return Err(InvalidField::new(
            field,
            "must be 1 to 256 characters without control characters",
        ));
    }
    Ok(raw.to_owned())
}
