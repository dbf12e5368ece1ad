//! Point batches and their allocations: where credited points live until spent,
//! reversed or expired, and the trace of every draw.
use crate::domain::{BatchBalance, EntryId, MemberId, ProgramId};
use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::MemberTx;

/// One allocation row with its batch's dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAllocation {
    pub entry_id: Uuid,
    pub batch_id: Uuid,
    /// Signed change to the batch: negative drawn, positive restored.
    pub points: i64,
    pub earned_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The member's oldest batches spendable at `$4` that a FIFO draw of `$3` points takes
/// from, locked, oldest first: each batch whose older spendable batches hold less than
/// `$3`. A draw (a spend, a debit, an award's reversal) locks the batches it needs, not
/// every batch the member's history left holding points. When the member holds fewer than
/// `$3`, every spendable batch.
pub const FIFO_FOR_UPDATE: &str = "SELECT batch_id, remaining, earned_at, expires_at \
     FROM point_batches WHERE program_id = $1 AND member_id = $2 AND remaining > 0 \
       AND batch_id = ANY (ARRAY( \
         SELECT batch_id FROM ( \
           SELECT batch_id, sum(remaining) OVER (ORDER BY earned_at, batch_id \
                    ROWS UNBOUNDED PRECEDING) - remaining AS older \
           FROM point_batches \
           WHERE program_id = $1 AND member_id = $2 AND remaining > 0 AND expires_at > $4 \
         ) fifo WHERE older < $3::bigint)) \
     ORDER BY earned_at, batch_id FOR UPDATE";

/// The batches a FIFO draw of `points` at `now` takes from (see [`FIFO_FOR_UPDATE`]).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "batches::fifo_for_update"))]
pub async fn fifo_for_update(
    tx: &MemberTx<'_>,
    member: MemberId,
    points: i64,
    now: DateTime<Utc>,
) -> Result<Vec<BatchBalance>, tokio_postgres::Error> {
    let statement = tx.prepared(FIFO_FOR_UPDATE).await?;
    let rows = tx
        .query(
            &statement,
            &[&tx.program().as_str(), &member.as_uuid(), &points, &now],
        )
        .await?;
    rows.iter().map(batch_balance).collect()
}

pub const CREDITED_BY_FOR_UPDATE: &str = "SELECT batch_id, remaining, earned_at, expires_at \
     FROM point_batches WHERE program_id = $1 AND entry_id = $2 FOR UPDATE";

pub const BY_IDS_FOR_UPDATE: &str = "SELECT batch_id, remaining, earned_at, expires_at \
     FROM point_batches WHERE program_id = $1 AND batch_id = ANY($2) \
     ORDER BY earned_at, batch_id FOR UPDATE";

/// The batch an entry credited, locked.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "batches::credited_by"))]
pub async fn credited_by(
    tx: &MemberTx<'_>,
    entry: EntryId,
) -> Result<Option<BatchBalance>, tokio_postgres::Error> {
    let statement = tx.prepared(CREDITED_BY_FOR_UPDATE).await?;
    let row = tx
        .query_opt(&statement, &[&tx.program().as_str(), &entry.as_uuid()])
        .await?;
    row.as_ref().map(batch_balance).transpose()
}

/// The batches given, locked (for restoring into them).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "batches::by_ids_for_update"))]
pub async fn by_ids_for_update(
    tx: &MemberTx<'_>,
    batch_ids: &[Uuid],
) -> Result<Vec<BatchBalance>, tokio_postgres::Error> {
    let statement = tx.prepared(BY_IDS_FOR_UPDATE).await?;
    let rows = tx
        .query(&statement, &[&tx.program().as_str(), &batch_ids])
        .await?;
    rows.iter().map(batch_balance).collect()
}

/// The allocations of the given entries, each entry's in FIFO order of its batches.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "batches::allocations_of"))]
pub async fn allocations_of(
    client: &impl GenericClient,
    program: &ProgramId,
    entries: &[Uuid],
) -> Result<Vec<StoredAllocation>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.entry_id, a.batch_id, a.points, b.earned_at, b.expires_at \
             FROM allocations a JOIN point_batches b \
               ON b.program_id = a.program_id AND b.batch_id = a.batch_id \
             WHERE a.program_id = $1 AND a.entry_id = ANY($2) \
             ORDER BY a.entry_id, b.earned_at, b.batch_id",
            &[&program.as_str(), &entries],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredAllocation {
                entry_id: row.try_get("entry_id")?,
                batch_id: row.try_get("batch_id")?,
                points: row.try_get("points")?,
                earned_at: row.try_get("earned_at")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .collect()
}

/// The batches the given entries credited: (entry, batch).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "batches::credited_by_entries"))]
pub async fn credited_by_entries(
    client: &impl GenericClient,
    program: &ProgramId,
    entries: &[Uuid],
) -> Result<Vec<(Uuid, Uuid)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT entry_id, batch_id FROM point_batches \
             WHERE program_id = $1 AND entry_id = ANY($2)",
            &[&program.as_str(), &entries],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

fn batch_balance(row: &Row) -> Result<BatchBalance, tokio_postgres::Error> {
    Ok(BatchBalance {
        batch_id: row.try_get("batch_id")?,
        remaining: row.try_get("remaining")?,
        earned_at: row.try_get("earned_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// Members holding points in batches that expired by `as_of`, after `after` in
/// (program, member) order: one bounded chunk of the expiry sweep.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "batches::members_with_due"))]
pub async fn members_with_due(
    client: &impl GenericClient,
    as_of: DateTime<Utc>,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> Result<Vec<(String, Uuid)>, tokio_postgres::Error> {
    let (after_program, after_member) = after.unwrap_or_default();
    let rows = client
        .query(
            "SELECT DISTINCT program_id, member_id FROM point_batches \
             WHERE remaining > 0 AND expires_at <= $1 AND (program_id, member_id) > ($2, $3) \
             ORDER BY program_id, member_id LIMIT $4",
            &[&as_of, &after_program, &after_member, &limit],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// The member's batches that expired by `as_of` and still hold points, locked.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "batches::due_for_update"))]
pub async fn due_for_update(
    tx: &MemberTx<'_>,
    as_of: DateTime<Utc>,
) -> Result<Vec<BatchBalance>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT batch_id, remaining, earned_at, expires_at FROM point_batches \
             WHERE program_id = $1 AND member_id = $2 AND remaining > 0 AND expires_at <= $3 \
             ORDER BY earned_at, batch_id FOR UPDATE",
            &[&tx.program().as_str(), &tx.member().as_uuid(), &as_of],
        )
        .await?;
    rows.iter().map(batch_balance).collect()
}
