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
