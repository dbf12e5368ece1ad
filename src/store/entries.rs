//! Ledger entries: the idempotency record and the history of every mutation.
use crate::domain::{EntryId, IdempotencyKey, MemberId, ProgramId};
use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::GenericClient;

use super::MemberTx;

/// An entry found by its idempotency key: enough to replay it or say what differs.
#[derive(Debug, Clone)]
pub struct KeyedEntry {
    pub entry_id: EntryId,
    pub member_id: MemberId,
    pub kind: String,
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

/// A new ledger entry.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub entry_id: EntryId,
    pub kind: &'a str,
    /// Signed effect on the member's balance.
    pub points: i64,
    pub idempotency_key: &'a IdempotencyKey,
    pub request: &'a serde_json::Value,
    pub outcome: &'a serde_json::Value,
    pub rules_version: i64,
    pub created_at: DateTime<Utc>,
    pub purchase: Option<Purchase<'a>>,
}

pub async fn find_by_key(
    client: &impl GenericClient,
    program: &ProgramId,
    key: &IdempotencyKey,
) -> Result<Option<KeyedEntry>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT entry_id, member_id, kind, request, outcome FROM ledger_entries \
             WHERE program_id = $1 AND idempotency_key = $2",
            &[&program.as_str(), &key.as_str()],
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

/// The award entry that already credited this purchase, if any.
pub async fn find_purchase_award(
    client: &impl GenericClient,
    program: &ProgramId,
    source: &str,
    external_ref: &str,
) -> Result<Option<EntryId>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT entry_id FROM ledger_entries \
             WHERE program_id = $1 AND kind = 'award' AND source = $2 AND external_ref = $3",
            &[&program.as_str(), &source, &external_ref],
        )
        .await?;
    row.map(|row| Ok(EntryId::from_uuid(row.try_get(0)?)))
        .transpose()
}

/// Purchase points already credited to the member against a day's cap: the truth a lost
/// Redis counter is rebuilt from.
pub async fn purchase_points_on_day(
    tx: &MemberTx<'_>,
    day: NaiveDate,
) -> Result<i64, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "SELECT COALESCE(sum(points), 0)::bigint FROM ledger_entries \
             WHERE program_id = $1 AND member_id = $2 AND kind = 'award' AND cap_day = $3",
            &[&tx.program().as_str(), &tx.member().as_uuid(), &day],
        )
        .await?;
    row.try_get(0)
}

pub async fn insert(tx: &MemberTx<'_>, entry: &NewEntry<'_>) -> Result<(), tokio_postgres::Error> {
    let purchase = entry.purchase.as_ref();
    tx.execute(
        "INSERT INTO ledger_entries (program_id, entry_id, member_id, kind, points, \
             idempotency_key, request, outcome, rules_version, created_at, source, \
             external_ref, amount_minor, currency, occurred_at, requested_points, cap_day, capped) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        &[
            &tx.program().as_str(),
            &entry.entry_id.as_uuid(),
            &tx.member().as_uuid(),
            &entry.kind,
            &entry.points,
            &entry.idempotency_key.as_str(),
            entry.request,
            entry.outcome,
            &entry.rules_version,
            &entry.created_at,
            &purchase.map(|p| p.source),
            &purchase.map(|p| p.external_ref),
            &purchase.map(|p| p.amount_minor),
            &purchase.map(|p| p.currency),
            &purchase.map(|p| p.occurred_at),
            &purchase.map(|p| p.requested_points),
            &purchase.map(|p| p.cap_day),
            &purchase.is_some_and(|p| p.capped),
        ],
    )
    .await?;
    Ok(())
}
