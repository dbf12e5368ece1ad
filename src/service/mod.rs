//! Use cases. Each owns its transaction, the member lock and the cap reservation, and
//! runs in its own task so a caller hanging up can never leave it half done.
mod adjust;
mod audit;
mod award;
mod expiry;
mod history;
mod members;
mod programs;
mod reversal;
mod spend;

pub use adjust::{AdjustCommand, AdjustOutcome};
pub use audit::AuditReport;
pub use award::{AwardCommand, AwardOutcome};
pub use expiry::ExpiryOutcome;
pub use history::{HistoryEntry, HistoryPage, Liability, RollForward};
pub use members::{EnrollCommand, MemberView};
pub use programs::{ProgramView, Programs};
pub use reversal::{
    EntryRef, ReverseAwardCommand, ReverseAwardOutcome, ReverseSpendCommand, ReverseSpendOutcome,
};
pub use spend::{SpendCommand, SpendOutcome};

use crate::cap::{CapUnavailable, DailyCap};
use crate::clock::Clock;
use crate::domain::{IdempotencyKey, InvalidField, ProgramId, ProgramRules};
use crate::store::{self, classify, entries, DbFailure, MemberTx};
use deadpool_postgres::Pool;
use std::future::Future;
use std::sync::Arc;

/// How far in the future a caller's timestamp may be, for clock skew between services.
pub const MAX_CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// Why a use case refused or failed. Mapped to a gRPC status in one place (`grpc`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(#[from] InvalidField),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// A figure to answer does not fit its field (a total past i64); the message names it.
    #[error("{0}")]
    OutOfRange(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidArgument(InvalidField::new(field, message))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(error: tokio_postgres::Error) -> Self {
        match classify(&error) {
            DbFailure::Unavailable => {
                tracing::warn!(%error, "database unavailable");
                Self::Unavailable(
                    "the database is unavailable; retry with the same idempotency key".into(),
                )
            }
            // Writes check the key and the purchase under the member's lock first; these
            // indexes only fire when another member's call raced in with the same key or
            // purchase, which is always a different request.
            DbFailure::UniqueViolation(constraint)
                if constraint == "ledger_entries_idempotency_key" =>
            {
                Self::AlreadyExists(
                    "this idempotency key was just used by a concurrent request for another \
                     member"
                        .into(),
                )
            }
            DbFailure::UniqueViolation(constraint)
                if constraint == "ledger_entries_one_award_per_purchase" =>
            {
                Self::AlreadyExists(
                    "this purchase was just awarded by a concurrent request under another key"
                        .into(),
                )
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
        Self::Unavailable(
            "no database connection available; retry with the same idempotency key".into(),
        )
    }
}

impl From<CapUnavailable> for Error {
    fn from(error: CapUnavailable) -> Self {
        tracing::warn!(%error, "award withheld");
        Self::Unavailable(
            "the daily cap could not be checked, so the award was withheld and nothing was \
             written; retry with the same idempotency key"
                .into(),
        )
    }
}

/// The ledger use cases: members and their points.
#[derive(Clone)]
pub struct Ledger {
    db: Pool,
    cap: DailyCap,
    clock: Arc<dyn Clock>,
}

impl Ledger {
    pub fn new(db: Pool, cap: DailyCap, clock: Arc<dyn Clock>) -> Self {
        Self { db, cap, clock }
    }
}

/// Runs a unit of work in its own task and waits for it. If the caller's future is
/// dropped (the gRPC client cancelled), the task still commits or rolls back, and a
/// cap reservation is still released.
async fn run_to_completion<T, F>(work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    tokio::spawn(work).await.map_err(|join_error| {
        Error::Unexpected(anyhow::anyhow!("unit of work failed: {join_error}"))
    })?
}

/// Names the fields whose values differ between a stored request and a new one.
fn differing_fields(stored: &serde_json::Value, requested: &serde_json::Value) -> Vec<String> {
    let (Some(stored), Some(requested)) = (stored.as_object(), requested.as_object()) else {
        return vec!["request".into()];
    };
    let mut fields: Vec<String> = stored
        .keys()
        .chain(requested.keys())
        .filter(|field| stored.get(*field) != requested.get(*field))
        .cloned()
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

/// The answer to a key seen before: the original outcome when the request is the same,
/// ALREADY_EXISTS naming the differing fields otherwise.
fn replay_or_conflict<T: serde::de::DeserializeOwned>(
    key: &crate::domain::IdempotencyKey,
    prior: &crate::store::entries::KeyedEntry,
    request: &serde_json::Value,
) -> Result<T, Error> {
    let differing = differing_fields(&prior.request, request);
    if !differing.is_empty() {
        return Err(Error::AlreadyExists(format!(
            "idempotency key {:?} was already used for a different request \
             (entry {}, differs in: {})",
            key.as_str(),
            prior.entry_id,
            differing.join(", ")
        )));
    }
    serde_json::from_value(prior.outcome.clone())
        .map_err(|error| Error::Unexpected(anyhow::Error::new(error).context("stored outcome")))
}

/// An outcome stored with its entry and returned again on a replay.
trait Outcome: serde::Serialize + serde::de::DeserializeOwned {
    fn mark_replayed(&mut self);

    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("outcomes serialize to JSON")
    }
}

/// The program and its validated rules.
async fn program_rules(
    client: &impl tokio_postgres::GenericClient,
    program: &ProgramId,
) -> Result<(store::programs::StoredProgram, ProgramRules), Error> {
    let stored = store::programs::get(client, program)
        .await?
        .ok_or_else(|| members::program_not_found(program))?;
    let rules = ProgramRules::parse(stored.rules.clone())
        .map_err(|error| Error::Unexpected(anyhow::anyhow!("stored rules invalid: {error}")))?;
    Ok((stored, rules))
}

/// Under the member lock: the original outcome if this key was used before for the same
/// request, ALREADY_EXISTS if for another, None if it is new.
async fn prior_outcome<T: Outcome>(
    tx: &MemberTx<'_>,
    key: &IdempotencyKey,
    request: &serde_json::Value,
) -> Result<Option<T>, Error> {
    let Some(prior) = entries::find_by_key(&**tx, tx.program(), key).await? else {
        return Ok(None);
    };
    let mut outcome: T = replay_or_conflict(key, &prior, request)?;
    outcome.mark_replayed();
    Ok(Some(outcome))
}

/// The locked member's row; NOT_FOUND when it is not enrolled.
async fn require_member(tx: &MemberTx<'_>) -> Result<store::members::StoredMember, Error> {
    store::members::get(&**tx, tx.program(), tx.member())
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "member {} is not enrolled in program {}",
                tx.member(),
                tx.program()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differing_fields_lists_changed_and_missing_fields() {
        let stored = json!({"op": "award", "amount_minor": 100, "currency": "USD"});
        let same = stored.clone();
        assert!(differing_fields(&stored, &same).is_empty());
        let other = json!({"op": "award", "amount_minor": 200, "source": "receipt"});
        assert_eq!(
            differing_fields(&stored, &other),
            ["amount_minor", "currency", "source"]
        );
    }
}
