//! Tier state, tier history and status points.
use super::events::{outbox_insert, NewEvent, OutboxRows};
use super::MemberTx;
use crate::domain::{MemberId, ProgramId, TierState};
use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// A tier change to record in the history.
#[derive(Debug, Clone)]
pub struct NewTierChange<'a> {
    pub change_id: Uuid,
    /// `upgraded`, `downgraded` or `set`.
    pub change: &'static str,
    pub from_rank: usize,
    pub from_code: &'a str,
    pub to_code: &'a str,
    pub status_points: i64,
    pub reason: &'a str,
    pub actor: &'a str,
    /// The credit that crossed the threshold, or the `tier_set` entry.
    pub entry_id: Option<Uuid>,
}

/// Writes a member's tier state, with the history row of a change and the events, in one
/// statement: the one writer of tiers (upgrades, the grace batch, SetTier).
pub const WRITE_TIER: &str = concat!(
    "WITH member AS ( \
       UPDATE members SET tier_rank = $3, grace_started_at = $4, grace_ends_at = $5, \
         grace_reminders_sent = $6, tier_hold_until = $7 \
       WHERE program_id = $1 AND member_id = $2 RETURNING member_id), \
     change AS ( \
       INSERT INTO tier_changes (program_id, change_id, member_id, change, from_rank, \
         to_rank, from_code, to_code, status_points, reason, actor, entry_id, hold_until, \
         rules_version, created_at) \
       SELECT $1, $8, $2, $9, $10, $3, $11, $12, $13, $14, $15, $16, $7, $17, $18 \
       WHERE $9::text IS NOT NULL RETURNING change_id), \
     outbox AS (",
    outbox_insert!("$1", "$18", "$19", "$20", "$21", "$22"),
    ") SELECT (SELECT count(*) FROM member) AS members"
);

/// Records the member's new tier state, the change that led to it (if any) and its events.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "tiers::write"))]
pub async fn write(
    tx: &MemberTx<'_>,
    member: MemberId,
    state: &TierState,
    change: Option<&NewTierChange<'_>>,
    rules_version: i64,
    at: DateTime<Utc>,
    events: &[NewEvent],
) -> Result<(), super::mutation::WriteError> {
    let rank = i32::try_from(state.rank).unwrap_or(i32::MAX);
    let grace = state.grace.as_ref();
    let reminders: Vec<i32> = grace.map_or_else(Vec::new, |g| g.reminders_sent.clone());
    let from_rank = change.map(|c| i32::try_from(c.from_rank).unwrap_or(i32::MAX));
    let outbox = OutboxRows::of(events);
    let statement = tx.prepared(WRITE_TIER).await?;
    let row = tx
        .query_one(
            &statement,
            &[
                &tx.program().as_str(),
                &member.as_uuid(),
                &rank,
                &grace.map(|g| g.started_at),
                &grace.map(|g| g.ends_at),
                &reminders,
                &state.hold_until,
                &change.map(|c| c.change_id),
                &change.map(|c| c.change),
                &from_rank,
                &change.map(|c| c.from_code),
                &change.map(|c| c.to_code),
                &change.map(|c| c.status_points),
                &change.map(|c| c.reason),
                &change.map(|c| c.actor),
                &change.and_then(|c| c.entry_id),
                &rules_version,
                &at,
                &outbox.ids,
                &outbox.members,
                &outbox.types,
                &outbox.payloads,
            ],
        )
        .await?;
    let written: i64 = row.try_get("members")?;
    if written != 1 {
        return Err(super::mutation::WriteError::RowsMissed {
            what: "member tier rows",
            expected: 1,
            written,
        });
    }
    Ok(())
}

/// The member's demotions from a rank in `(above, up_to]` since `since`, newest first:
/// the demotions a re-qualification inside the window pays a bonus for.
pub const DEMOTIONS_SINCE: &str = "SELECT change_id, from_rank FROM tier_changes \
     WHERE program_id = $1 AND member_id = $2 AND change = 'downgraded' \
       AND from_rank > $3 AND from_rank <= $4 AND created_at >= $5 ORDER BY seq DESC";

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "tiers::demotions_since"))]
pub async fn demotions_since(
    tx: &MemberTx<'_>,
    member: MemberId,
    above: usize,
    up_to: usize,
    since: DateTime<Utc>,
) -> Result<Vec<(Uuid, usize)>, tokio_postgres::Error> {
    let statement = tx.prepared(DEMOTIONS_SINCE).await?;
    let rank = |r: usize| i32::try_from(r).unwrap_or(i32::MAX);
    let rows = tx
        .query(
            &statement,
            &[
                &tx.program().as_str(),
                &member.as_uuid(),
                &rank(above),
                &rank(up_to),
                &since,
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let from: i32 = row.try_get("from_rank")?;
            Ok((
                row.try_get("change_id")?,
                usize::try_from(from).unwrap_or(0),
            ))
        })
        .collect()
}

/// Status points of a member in `(window_start, now]`, and those of them that leave the
/// window by `aging_until` (they count at an instant up to `aging_until − window`).
pub const STATUS: &str = "SELECT \
       COALESCE(sum(status_points), 0)::text AS status_points, \
       COALESCE(sum(status_points) FILTER (WHERE status_at <= $5), 0)::text AS aging_out \
     FROM ledger_entries WHERE program_id = $1 AND member_id = $2 \
       AND status_at IS NOT NULL AND status_at > $3 AND status_at <= $4";

/// (status points, of which aging out by the instant `aging_before` maps to).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "tiers::status"))]
pub async fn status(
    client: &impl GenericClient,
    program: &ProgramId,
    member: MemberId,
    window: (DateTime<Utc>, DateTime<Utc>),
    aging_before: DateTime<Utc>,
) -> Result<(i128, i128), tokio_postgres::Error> {
    let row = client
        .query_one(
            STATUS,
            &[
                &program.as_str(),
                &member.as_uuid(),
                &window.0,
                &window.1,
                &aging_before,
            ],
        )
        .await?;
    let figure = |name: &str| -> Result<i128, tokio_postgres::Error> {
        let text: String = row.try_get(name)?;
        Ok(text.parse().unwrap_or(i128::MAX))
    };
    Ok((figure("status_points")?, figure("aging_out")?))
}

/// One row of a member's tier history.
#[derive(Debug, Clone)]
pub struct StoredTierChange {
    pub change_id: Uuid,
    pub seq: i64,
    pub change: String,
    pub from_code: String,
    pub to_code: String,
    pub from_rank: i32,
    pub to_rank: i32,
    pub status_points: i64,
    pub reason: String,
    pub actor: String,
    pub entry_id: Option<Uuid>,
    pub hold_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A member's tier history, newest first, older than `before_seq` when given.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "tiers::history"))]
pub async fn history(
    client: &impl GenericClient,
    program: &ProgramId,
    member: MemberId,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<StoredTierChange>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT change_id, seq, change, from_code, to_code, from_rank, to_rank, \
               status_points, reason, actor, entry_id, hold_until, created_at \
             FROM tier_changes WHERE program_id = $1 AND member_id = $2 AND seq < $3 \
             ORDER BY seq DESC LIMIT $4",
            &[
                &program.as_str(),
                &member.as_uuid(),
                &before_seq.unwrap_or(i64::MAX),
                &limit,
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredTierChange {
                change_id: row.try_get("change_id")?,
                seq: row.try_get("seq")?,
                change: row.try_get("change")?,
                from_code: row.try_get("from_code")?,
                to_code: row.try_get("to_code")?,
                from_rank: row.try_get("from_rank")?,
                to_rank: row.try_get("to_rank")?,
                status_points: row.try_get("status_points")?,
                reason: row.try_get("reason")?,
                actor: row.try_get("actor")?,
                entry_id: row.try_get("entry_id")?,
                hold_until: row.try_get("hold_until")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect()
}

/// Members above the first tier, after `after` in (program, member) order: one bounded
/// chunk of the grace batch.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "tiers::ranked_members"))]
pub async fn ranked_members(
    client: &impl GenericClient,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> Result<Vec<(String, Uuid)>, tokio_postgres::Error> {
    let (program, member) = after.unwrap_or_default();
    let rows = client
        .query(
            "SELECT program_id, member_id FROM members \
             WHERE tier_rank > 0 AND (program_id, member_id) > ($1, $2) \
             ORDER BY program_id, member_id LIMIT $3",
            &[&program, &member, &limit],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}
