//! Point batches: where credited points live until spent, reversed or expired.
use crate::domain::EntryId;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::MemberTx;

/// Credits a new batch to the member, created by `entry`.
pub async fn insert(
    tx: &MemberTx<'_>,
    entry: EntryId,
    amount: i64,
    earned_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Uuid, tokio_postgres::Error> {
    let batch_id = Uuid::now_v7();
    tx.execute(
        "INSERT INTO point_batches \
             (program_id, batch_id, member_id, entry_id, amount, remaining, earned_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $5, $6, $7)",
        &[
            &tx.program().as_str(),
            &batch_id,
            &tx.member().as_uuid(),
            &entry.as_uuid(),
            &amount,
            &earned_at,
            &expires_at,
        ],
    )
    .await?;
    Ok(batch_id)
}

/// The member's spendable balance at `now`, read under its lock.
pub async fn balance(tx: &MemberTx<'_>, now: DateTime<Utc>) -> Result<i64, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "SELECT COALESCE(sum(remaining), 0)::bigint FROM point_batches \
             WHERE program_id = $1 AND member_id = $2 AND remaining > 0 AND expires_at > $3",
            &[&tx.program().as_str(), &tx.member().as_uuid(), &now],
        )
        .await?;
    row.try_get(0)
}
