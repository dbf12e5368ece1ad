//! Ledger entries: the idempotency record and the history of every mutation.
use crate::domain::{EntryId, EntryKind, IdempotencyKey, MemberId, ProgramId};
use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::GenericClient;

use super::MemberTx;

/// An entry found by its idempotency key: enough to replay it or say what differs.
#[derive(Debug, Clone)]
pub struct KeyedEntry {
    pub entry_id: EntryId,
    pub member_id: MemberId,
    pub kind: EntryKind,
    pub request: serde_json::Value,
    pub outcome: serde_json::Value,
}

/// The purchase columns of an award entry.
#[derive(Debug, Clone)]
pub struct Purchase<'a> {
    pub source: &'a str,
    pub external_ref: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub requested_points: i64,
    pub cap_day: NaiveDate,
    pub capped: bool,
}

/// What a reversal entry reverses.
#[derive(Debug, Clone, Copy)]
pub struct Reversal {
    pub entry_id: EntryId,
    /// How much of the reversed entry this reversal covers.
    pub reversed_points: i64,
    /// Award reversals only: the part that could not be taken back (now owed).
    pub unrecovered_points: Option<i64>,
    /// Spend reversals only: the part kept back to repay owed points.
    pub repaid_points: Option<i64>,
}

/// A new ledger entry.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub entry_id: EntryId,
    pub kind: EntryKind,
    /// Signed effect on the member's balance.
    pub points: i64,
    pub idempotency_key: &'a IdempotencyKey,
    pub request: &'a serde_json::Value,
    pub outcome: &'a serde_json::Value,
    pub rules_version: i64,
    pub created_at: DateTime<Utc>,
    pub purchase: Option<Purchase<'a>>,
    /// Spends: what the points paid for; adjustments and reversals: why.
    pub reason: Option<&'a str>,
    /// Adjustments: who made it.
    pub actor: Option<&'a str>,
    pub reversal: Option<Reversal>,
}

/// An entry as a reversal or the history reads it.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub entry_id: EntryId,
    pub seq: i64,
    pub member_id: MemberId,
    pub kind: EntryKind,
    pub points: i64,
    pub rules_version: i64,
    pub created_at: DateTime<Utc>,
    pub source: Option<String>,
    pub external_ref: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub reason: Option<String>,
    pub actor: Option<String>,
    pub reversed_entry_id: Option<EntryId>,
    pub reversed_points: Option<i64>,
    pub unrecovered_points: Option<i64>,
    /// Spend reversals: points kept back to repay owed points.
    pub repaid_points: Option<i64>,
    /// Awards: the program-local day whose cap they counted against.
    pub cap_day: Option<NaiveDate>,
    pub idempotency_key: String,
    /// The client whose call wrote it (the namespace of its key); empty for the engine's.
    pub client: String,
    /// What the entry adds to status points, and the instant it counts at.
    pub status_points: Option<i64>,
    pub status_at: Option<DateTime<Utc>>,
}

pub(super) const SELECT_ENTRY: &str = "SELECT entry_id, seq, member_id, kind, points, \
     rules_version, created_at, source, external_ref, amount_minor, currency, reason, actor, \
     reversed_entry_id, reversed_points, unrecovered_points, repaid_points, cap_day, \
     idempotency_key, client, status_points, status_at FROM ledger_entries";

pub(super) fn stored_entry(
    row: &tokio_postgres::Row,
) -> Result<StoredEntry, tokio_postgres::Error> {
    let reversed: Option<uuid::Uuid> = row.try_get("reversed_entry_id")?;
    Ok(StoredEntry {
        entry_id: EntryId::from_uuid(row.try_get("entry_id")?),
        seq: row.try_get("seq")?,
        member_id: MemberId::from_uuid(row.try_get("member_id")?),
        kind: row.try_get("kind")?,
        points: row.try_get("points")?,
        rules_version: row.try_get("rules_version")?,
        created_at: row.try_get("created_at")?,
        source: row.try_get("source")?,
        external_ref: row.try_get("external_ref")?,
        amount_minor: row.try_get("amount_minor")?,
        currency: row.try_get("currency")?,
        reason: row.try_get("reason")?,
        actor: row.try_get("actor")?,
        reversed_entry_id: reversed.map(EntryId::from_uuid),
        reversed_points: row.try_get("reversed_points")?,
        unrecovered_points: row.try_get("unrecovered_points")?,
        repaid_points: row.try_get("repaid_points")?,
        cap_day: row.try_get("cap_day")?,
        idempotency_key: row.try_get("idempotency_key")?,
        client: row.try_get("client")?,
        status_points: row.try_get("status_points")?,
        status_at: row.try_get("status_at")?,
    })
}

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "entries::get"))]
pub async fn get(
    client: &impl GenericClient,
    program: &ProgramId,
    entry: EntryId,
) -> Result<Option<StoredEntry>, tokio_postgres::Error> {
    let query = format!("{SELECT_ENTRY} WHERE program_id = $1 AND entry_id = $2");
    let row = client
        .query_opt(&query, &[&program.as_str(), &entry.as_uuid()])
        .await?;
    row.as_ref().map(stored_entry).transpose()
}

/// A member's entries, newest first, older than `before_seq` when given.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "entries::history"))]
pub async fn history(
    client: &impl GenericClient,
    program: &ProgramId,
    member: MemberId,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<StoredEntry>, tokio_postgres::Error> {
    let query = format!(
        "{SELECT_ENTRY} WHERE program_id = $1 AND member_id = $2 AND seq < $3 \
         ORDER BY seq DESC LIMIT $4"
    );
    let rows = client
        .query(
            &query,
            &[
                &program.as_str(),
                &member.as_uuid(),
                &before_seq.unwrap_or(i64::MAX),
                &limit,
            ],
        )
        .await?;
    rows.iter().map(stored_entry).collect()
}

pub const REVERSED_SO_FAR: &str = "SELECT COALESCE(sum(reversed_points), 0)::bigint \
     FROM ledger_entries WHERE program_id = $1 AND reversed_entry_id = $2";

/// How much of an entry earlier reversals already cover.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "entries::reversed_so_far"))]
pub async fn reversed_so_far(
    tx: &MemberTx<'_>,
    entry: EntryId,
) -> Result<i64, tokio_postgres::Error> {
    let statement = tx.prepared(REVERSED_SO_FAR).await?;
    let row = tx
        .query_one(&statement, &[&tx.program().as_str(), &entry.as_uuid()])
        .await?;
    row.try_get(0)
}

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "entries::find_by_key"))]
pub async fn find_by_key(
    client: &impl GenericClient,
    program: &ProgramId,
    key: &IdempotencyKey,
) -> Result<Option<KeyedEntry>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT entry_id, member_id, kind, request, outcome FROM ledger_entries \
             WHERE program_id = $1 AND idempotency_key = $2 AND client = $3",
            &[&program.as_str(), &key.as_str(), &key.client()],
        )
        .await?;
    row.map(|row| {
        Ok(KeyedEntry {
            entry_id: EntryId::from_uuid(row.try_get("entry_id")?),
            member_id: MemberId::from_uuid(row.try_get("member_id")?),
            kind: row.try_get("kind")?,
            request: row.try_get("request")?,
            outcome: row.try_get("outcome")?,
        })
    })
    .transpose()
}

/// Purchase points credited to the member in `[start, end)`: the truth a lost Redis cap
/// counter is rebuilt from. An award counts toward status at its own instant, so the
/// member's status index bounds the scan to the awards of the interval.
pub const PURCHASE_POINTS_BETWEEN: &str = "SELECT COALESCE(sum(points), 0)::text \
     FROM ledger_entries WHERE program_id = $1 AND member_id = $2 AND status_at IS NOT NULL \
     AND status_at >= $3 AND status_at < $4 AND kind = 'award'";

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "entries::purchase_points_between"))]
pub async fn purchase_points_between(
    tx: &MemberTx<'_>,
    member: MemberId,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<i128, tokio_postgres::Error> {
    let statement = tx.prepared(PURCHASE_POINTS_BETWEEN).await?;
    let row = tx
        .query_one(
            &statement,
            &[&tx.program().as_str(), &member.as_uuid(), &start, &end],
        )
        .await?;
    let total: String = row.try_get(0)?;
    Ok(total.parse().unwrap_or(i128::MAX))
}
