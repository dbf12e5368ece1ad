//! Why a use case refused or failed: precise, typed refusals in the spirit of TigerBeetle's
//! result codes (`exists` is not `exists_with_different_amount`). The gRPC layer maps each
//! to a status code and a machine-readable `google.rpc.ErrorInfo` reason in one `match`.
use crate::cap::CapUnavailable;
use crate::domain::{EntryId, InvalidField, MemberId, ProgramId};
use crate::store::{classify, mutation, DbFailure};

/// Why a use case refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the request is malformed; nothing was looked at.
    #[error("{0}")]
    InvalidArgument(#[from] InvalidField),

    #[error("program {program} not found")]
    ProgramNotFound { program: ProgramId },
    #[error("member {member} is not enrolled in program {program}")]
    MemberNotFound {
        program: ProgramId,
        member: MemberId,
    },
    #[error("no entry {reference} in program {program}")]
    EntryNotFound {
        program: ProgramId,
        reference: String,
    },

    /// The key was used before for a request that differs in these fields.
    #[error(
        "idempotency key {key:?} was already used for a different request (entry {entry}, \
         differs in: {})",
        differing_fields.join(", ")
    )]
    KeyReused {
        key: String,
        entry: EntryId,
        differing_fields: Vec<String>,
    },
    /// Another member's call claimed the key at the same moment.
    #[error("this idempotency key was just used by a concurrent request for another member")]
    KeyRaced,
    /// The purchase earned its points already, under another key.
    #[error(
        "purchase {purchase_source}/{external_ref} was already awarded by entry {entry} under \
         another idempotency key"
    )]
    PurchaseAlreadyAwarded {
        purchase_source: String,
        external_ref: String,
        entry: EntryId,
    },
    /// Another call awarded the purchase under another key at the same moment.
    #[error("this purchase was just awarded by a concurrent request under another key")]
    PurchaseRaced,
    #[error("program {program} already exists with different settings (differs in: {})", differing_fields.join(", "))]
    ProgramExists {
        program: ProgramId,
        differing_fields: Vec<String>,
    },

    #[error("insufficient points: the balance is {balance_points}, {requested_points} were asked")]
    InsufficientPoints {
        balance_points: i64,
        requested_points: i64,
    },
    #[error("the {what} has nothing left to reverse")]
    NothingLeftToReverse { what: &'static str },
    #[error("only {left_points} points of the {what} are left to reverse, {requested_points} were asked")]
    ReversalExceedsRemaining {
        what: &'static str,
        left_points: i64,
        requested_points: i64,
    },
    /// A credit would take the member's balance past i64::MAX.
    #[error(
        "the balance would overflow: the member's balance cannot pass {}",
        i64::MAX
    )]
    BalanceOverflow,
    #[error("program {program} is at rules version {current}, not {expected}")]
    StaleRulesVersion {
        program: ProgramId,
        expected: i64,
        current: i64,
    },

    /// No credentials, or credentials that name no live client.
    #[error("{0}")]
    Unauthenticated(String),
    /// The client lacks the scope the call needs.
    #[error("client {client} lacks the scope this call needs: {needs}")]
    ScopeMissing { client: String, needs: String },
    /// The client called faster than its rate.
    #[error(
        "client {client} is over its rate of {rate_per_second} calls a second; retry after \
         the delay in the RetryInfo details"
    )]
    RateLimited {
        client: String,
        rate_per_second: u32,
        retry_after: std::time::Duration,
    },
    /// `flash clients add` of a name that exists (names are never given twice).
    #[error("a client named {name} exists (or existed: names are never reused), or its certificate subject is another client's")]
    ClientExists { name: String },
    #[error("no live client named {name}")]
    ClientNotFound { name: String },

    /// The request message is over FLASH_MAX_MESSAGE_BYTES; nothing was done.
    #[error(
        "request: the message is larger than the limit of {limit_bytes} bytes \
         (FLASH_MAX_MESSAGE_BYTES), so nothing was done"
    )]
    MessageTooLarge { limit_bytes: usize },
    /// FLASH_MAX_IN_FLIGHT calls are in flight: the call was shed before doing anything.
    #[error(
        "the server is shedding load: {max_in_flight} calls are already in flight \
         (FLASH_MAX_IN_FLIGHT); nothing was done, retry shortly"
    )]
    Overloaded { max_in_flight: usize },
    /// No answer within the call's deadline; a unit of work already started still ends.
    #[error(
        "no answer within the call's deadline of {deadline_ms} ms; a write that had started \
         may still commit: retry with the same idempotency key to learn its outcome"
    )]
    DeadlineExceeded { deadline_ms: u128 },

    /// A figure to answer does not fit its int64 field (a total past i64).
    #[error(
        "{field}: the total {value} does not fit an int64 (at most {}); nothing is wrong with \
         the request, the figure is too large to answer",
        i64::MAX
    )]
    FigureOutOfRange { field: String, value: i128 },

    /// A subscriber's cursor points before events the retention job already deleted.
    #[error(
        "after_cursor: events of program {program} before it were pruned (kept \
         {retention_days} days); subscribe again with an empty after_cursor and reconcile \
         what was missed from the ledger (ListEntries, ListTierHistory)"
    )]
    CursorExpired {
        program: ProgramId,
        retention_days: i32,
    },

    /// No invite with that code in the program.
    #[error("program {program} has no invite with that code")]
    InviteNotFound { program: ProgramId },
    /// A CreateInvites call would pass one of the referrer's quotas; nothing was sent.
    #[error(
        "the {quota} quota of {limit} invites would be exceeded: {remaining} left, {asked} \
         asked; no invite of this call was sent"
    )]
    InviteQuotaExceeded {
        /// `per_batch`, `per_day` or `lifetime`.
        quota: &'static str,
        limit: i64,
        remaining: i64,
        asked: i64,
        /// When the same call can pass: the next program-local day for `per_day`; none for
        /// the others (send fewer, or wait for invites to expire).
        retry_after: Option<std::time::Duration>,
    },
    /// The invite is not in the state the operation needs.
    #[error("the invite is {status}; {needs}")]
    InviteNotOpen {
        status: &'static str,
        needs: &'static str,
    },
    /// The referral cannot be: self-referral, an earlier referral, a referee enrolled
    /// before the invite.
    #[error("{0}")]
    ReferralRefused(ReferralRefusal),
    /// A contact given belongs to another member of the program.
    #[error("a contact given (contacts[{index}]) belongs to another member of the program")]
    ContactTaken { index: usize },

    /// The program has no referral graph snapshot yet.
    #[error(
        "program {program} has no referral graph snapshot yet: the snapshot job takes one \
         daily from the rules' graph_snapshot_hour, or call Graph.RebuildSnapshot"
    )]
    GraphSnapshotNotFound { program: ProgramId },
    /// The member has no converted referral in the snapshot answering.
    #[error(
        "member {member} is not in the referral graph snapshot of {snapshot_date} (no \
         converted referral either way by then)"
    )]
    NotInGraph {
        member: MemberId,
        snapshot_date: chrono::NaiveDate,
    },

    /// Nothing was written; the same request with the same key may be sent again.
    #[error("{}; retry with the same idempotency key", .0.describe())]
    Unavailable(Unavailable),

    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Why a referral cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferralRefusal {
    /// The referee is the referrer.
    SelfReferral,
    /// The referee accepted an invite before: the first accepted invite wins.
    AlreadyReferred,
    /// The referee enrolled before the invite was sent.
    EnrolledBeforeInvite,
}

impl ReferralRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            ReferralRefusal::SelfReferral => "SELF_REFERRAL",
            ReferralRefusal::AlreadyReferred => "ALREADY_REFERRED",
            ReferralRefusal::EnrolledBeforeInvite => "ENROLLED_BEFORE_INVITE",
        }
    }
}

impl std::fmt::Display for ReferralRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReferralRefusal::SelfReferral => "a member cannot accept its own invite",
            ReferralRefusal::AlreadyReferred => {
                "the referee was referred before; a member is referred once"
            }
            ReferralRefusal::EnrolledBeforeInvite => {
                "the referee enrolled before the invite was sent; only new members can be \
                 referred"
            }
        })
    }
}

/// What could not be reached in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    Database,
    NoConnection,
    /// The daily cap could not be checked, so the award was withheld.
    DailyCap,
}

impl Unavailable {
    fn describe(self) -> &'static str {
        match self {
            Unavailable::Database => "the database is unavailable",
            Unavailable::NoConnection => "no database connection available",
            Unavailable::DailyCap => {
                "the daily cap could not be checked, so the award was withheld and nothing \
                 was written"
            }
        }
    }
}

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidArgument(InvalidField::new(field, message))
    }

    /// The same refusal again, for every item of a batch a shared failure stopped; None
    /// for errors that are not worth repeating item by item.
    pub fn repeat(&self) -> Option<Self> {
        match self {
            Self::Unavailable(what) => Some(Self::Unavailable(*what)),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(error: tokio_postgres::Error) -> Self {
        match classify(&error) {
            DbFailure::Unavailable => {
                tracing::warn!(%error, "database unavailable");
                Self::Unavailable(Unavailable::Database)
            }
            // Writes check the key and the purchase under the member's lock first; these
            // indexes only fire when another member's call raced in with the same key or
            // purchase, which is always a different request.
            DbFailure::UniqueViolation(constraint)
                if constraint == "ledger_entries_idempotency_key" =>
            {
                Self::KeyRaced
            }
            DbFailure::UniqueViolation(constraint)
                if constraint == "ledger_entries_one_award_per_purchase" =>
            {
                Self::PurchaseRaced
            }
            _ => Self::Unexpected(anyhow::Error::new(error).context("database error")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        if let deadpool_postgres::PoolError::Backend(error) = error {
            return error.into();
        }
        tracing::warn!(%error, "no database connection");
        Self::Unavailable(Unavailable::NoConnection)
    }
}

impl From<mutation::WriteError> for Error {
    fn from(error: mutation::WriteError) -> Self {
        match error {
            mutation::WriteError::Db(error) => error.into(),
            other => Self::Unexpected(anyhow::Error::new(other).context("writing an entry")),
        }
    }
}

impl From<CapUnavailable> for Error {
    fn from(error: CapUnavailable) -> Self {
        tracing::warn!(%error, "award withheld");
        Self::Unavailable(Unavailable::DailyCap)
    }
}
