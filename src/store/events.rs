//! The transactional outbox: event rows written in the same transaction as the change
//! they describe, and read back in an order no late commit can slip behind.
use super::MemberTx;
use crate::domain::{EventType, MemberId};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The one text that writes outbox rows, given the statement's parameter numbers for the
/// program, the instant and the four arrays (event ids, members, types, payloads). Every
/// statement that writes events embeds it, so each change and its events are one
/// statement and one transaction.
macro_rules! outbox_insert {
    ($program:literal, $at:literal, $ids:literal, $members:literal, $types:literal, $payloads:literal) => {
        concat!(
            "INSERT INTO events (program_id, event_id, member_id, event_type, payload, \
             created_at) SELECT ",
            $program,
            ", o.event_id, o.member_id, o.event_type, o.payload, ",
            $at,
            " FROM unnest(",
            $ids,
            "::uuid[], ",
            $members,
            "::uuid[], ",
            $types,
            "::text[], ",
            $payloads,
            "::jsonb[]) AS o(event_id, member_id, event_type, payload)"
        )
    };
}
pub(crate) use outbox_insert;

/// Appends events that go with no ledger entry (tier warnings, expiry notices).
pub const APPEND: &str = outbox_insert!("$1", "$2", "$3", "$4", "$5", "$6");

/// An event to write with the change it describes. Payloads carry ids and numbers, never
/// contact data.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub member: Option<MemberId>,
    pub event_type: EventType,
    pub payload: serde_json::Value,
}

impl NewEvent {
    pub fn new(event_type: EventType, member: MemberId, payload: serde_json::Value) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            member: Some(member),
            event_type,
            payload,
        }
    }
}

/// The four parameter arrays of [`outbox_insert!`].
pub struct OutboxRows {
    pub ids: Vec<Uuid>,
    pub members: Vec<Option<Uuid>>,
    pub types: Vec<&'static str>,
    pub payloads: Vec<serde_json::Value>,
}

impl OutboxRows {
    pub fn of(events: &[NewEvent]) -> Self {
        Self {
            ids: events.iter().map(|event| event.event_id).collect(),
            members: events
                .iter()
                .map(|event| event.member.map(|member| member.as_uuid()))
                .collect(),
            types: events
                .iter()
                .map(|event| event.event_type.as_str())
                .collect(),
            payloads: events.iter().map(|event| event.payload.clone()).collect(),
        }
    }
}

/// Writes events of the locked members' transaction.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "events::append"))]
pub async fn append(
    tx: &MemberTx<'_>,
    at: DateTime<Utc>,
    events: &[NewEvent],
) -> Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = OutboxRows::of(events);
    let statement = tx.prepared(APPEND).await?;
    tx.execute(
        &statement,
        &[
            &tx.program().as_str(),
            &at,
            &rows.ids,
            &rows.members,
            &rows.types,
            &rows.payloads,
        ],
    )
    .await?;
    Ok(())
}

/// A stream position: the writing transaction's id and the row's sequence number. Rows are
/// read in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub txid: u64,
    pub seq: i64,
}

/// One event as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: Position,
    pub event_id: Uuid,
    pub member_id: Option<Uuid>,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// The program's events after a position, in (txid, seq) order, and only those written by
/// transactions older than the oldest one still running: every transaction with a smaller
/// xid has ended, so no row can ever appear behind a position once it was read past. (A
/// transaction gets its xid at its first write, after taking its member's lock, so each
/// member's events stay in commit order.) An empty `$4` means every type.
/// (The xid is read as text under another name: an output column named `txid` would be
/// what `ORDER BY txid` sorts by, as text — "1000" before "743".)
pub const READ_AFTER: &str = "SELECT txid::text AS txid_text, seq, event_id, member_id, \
       event_type, payload, created_at FROM events \
     WHERE program_id = $1 AND (txid, seq) > ($2::text::xid8, $3) \
       AND txid < pg_snapshot_xmin(pg_current_snapshot()) \
       AND (cardinality($4::text[]) = 0 OR event_type = ANY($4::text[])) \
     ORDER BY txid, seq LIMIT $5";

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "events::read_after"))]
pub async fn read_after(
    client: &deadpool_postgres::Client,
    program: &crate::domain::ProgramId,
    after: Position,
    types: &[&str],
    limit: i64,
) -> Result<Vec<StoredEvent>, tokio_postgres::Error> {
    let statement = client.prepare_cached(READ_AFTER).await?;
    let rows = client
        .query(
            &statement,
            &[
                &program.as_str(),
                &after.txid.to_string(),
                &after.seq,
                &types,
                &limit,
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let txid: String = row.try_get("txid_text")?;
            Ok(StoredEvent {
                position: Position {
                    txid: txid.parse().unwrap_or(u64::MAX),
                    seq: row.try_get("seq")?,
                },
                event_id: row.try_get("event_id")?,
                member_id: row.try_get("member_id")?,
                event_type: row.try_get("event_type")?,
                payload: row.try_get("payload")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect()
}

/// The last position the pruning job deleted from a program's stream, if any.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "events::horizon"))]
pub async fn horizon(
    client: &deadpool_postgres::Client,
    program: &crate::domain::ProgramId,
) -> Result<Option<Position>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT pruned_txid::text, pruned_seq FROM event_horizons WHERE program_id = $1",
        )
        .await?;
    let row = client.query_opt(&statement, &[&program.as_str()]).await?;
    row.map(|row| {
        let txid: String = row.try_get(0)?;
        Ok(Position {
            txid: txid.parse().unwrap_or(u64::MAX),
            seq: row.try_get(1)?,
        })
    })
    .transpose()
}

/// The oldest transaction still running (cluster-wide): the stream's readable horizon.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "events::readable_horizon"))]
pub async fn readable_horizon(
    client: &deadpool_postgres::Client,
) -> Result<u64, tokio_postgres::Error> {
    let statement = client
        .prepare_cached("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        .await?;
    let xmin: String = client.query_one(&statement, &[]).await?.try_get(0)?;
    Ok(xmin.parse().unwrap_or(0))
}
