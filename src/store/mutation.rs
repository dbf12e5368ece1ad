//! The two statements every mutation is made of, besides the lock: one read that opens
//! the unit of work and one write that records it. Fewer round trips is the hot path's
//! speed (docs/PERFORMANCE.md); the statements are prepared once per connection, and
//! `flash-bench` builds its pgbench baseline from these very constants.
use super::entries::{KeyedEntry, NewEntry};
use super::members::StoredMember;
use super::MemberTx;
use crate::domain::{Draw, EntryId, MemberId};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Under the member's lock, in one statement: the program's current rules version, the
/// member's row, the entry already written under the key, the award that already credited
/// the purchase, and the spendable balance. Every lookup is bounded by the key or by the
/// member, through exactly one index each (tests/it/plans.rs checks the plans with empty
/// statistics). `$4`/`$5` are NULL when the mutation is not a purchase award.
pub const OPEN: &str = "SELECT p.rules_version, \
       m.member_id, m.birthday, m.enrolled_at, m.tier_rank, m.points_owed, \
       k.entry_id AS key_entry_id, k.member_id AS key_member_id, k.kind AS key_kind, \
       k.request AS key_request, k.outcome AS key_outcome, \
       (SELECT a.entry_id FROM ledger_entries a \
         WHERE a.program_id = $1 AND a.source = $4 AND a.external_ref = $5) AS purchase_entry_id, \
       (SELECT COALESCE(sum(b.remaining), 0)::text FROM point_batches b \
         WHERE b.program_id = $1 AND b.member_id = $2 AND b.remaining > 0 \
           AND b.expires_at > $6) AS balance \
     FROM programs p \
     LEFT JOIN members m ON m.program_id = p.program_id AND m.member_id = $2 \
     LEFT JOIN ledger_entries k ON k.program_id = p.program_id AND k.idempotency_key = $3 \
     WHERE p.program_id = $1";

/// What [`OPEN`] read.
#[derive(Debug, Clone)]
pub struct Opening {
    pub rules_version: i64,
    /// None when the member is not enrolled.
    pub member: Option<StoredMember>,
    /// The entry written under the idempotency key, for any member.
    pub prior: Option<KeyedEntry>,
    /// The award that already credited the purchase, under any key.
    pub purchase_entry: Option<EntryId>,
    /// Σ remaining of the member's batches unexpired at the instant; i128 because a
    /// corrupted ledger may hold more than i64, which the caller refuses.
    pub balance_points: i128,
}

/// The purchase an award credits, for the purchase check of [`open`].
#[derive(Debug, Clone, Copy)]
pub struct PurchaseRef<'a> {
    pub source: &'a str,
    pub external_ref: &'a str,
}

/// Reads what a mutation needs, under the lock; None when the program does not exist.
pub async fn open(
    tx: &MemberTx<'_>,
    key: &str,
    purchase: Option<PurchaseRef<'_>>,
    now: DateTime<Utc>,
) -> Result<Option<Opening>, tokio_postgres::Error> {
    let statement = tx.prepared(OPEN).await?;
    let row = tx
        .query_opt(
            &statement,
            &[
                &tx.program().as_str(),
                &tx.member().as_uuid(),
                &key,
                &purchase.map(|p| p.source),
                &purchase.map(|p| p.external_ref),
                &now,
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let member = match row.try_get::<_, Option<Uuid>>("member_id")? {
        Some(member_id) => {
            let tier_rank: i32 = row.try_get("tier_rank")?;
            Some(StoredMember {
                member_id: MemberId::from_uuid(member_id),
                birthday: row.try_get("birthday")?,
                enrolled_at: row.try_get("enrolled_at")?,
                tier_rank: usize::try_from(tier_rank).unwrap_or(0),
                points_owed: row.try_get("points_owed")?,
            })
        }
        None => None,
    };
    let prior = match row.try_get::<_, Option<Uuid>>("key_entry_id")? {
        Some(entry_id) => Some(KeyedEntry {
            entry_id: EntryId::from_uuid(entry_id),
            member_id: MemberId::from_uuid(row.try_get("key_member_id")?),
            kind: row.try_get("key_kind")?,
            request: row.try_get("key_request")?,
            outcome: row.try_get("key_outcome")?,
        }),
        None => None,
    };
    let purchase_entry: Option<Uuid> = row.try_get("purchase_entry_id")?;
    let balance: String = row.try_get("balance")?;
    Ok(Some(Opening {
        rules_version: row.try_get("rules_version")?,
        member,
        prior,
        purchase_entry: purchase_entry.map(EntryId::from_uuid),
        // sum() of bigints is a numeric printed as an integer.
        balance_points: balance.parse().unwrap_or(i128::MAX),
    }))
}

/// Writes the entry and all its effects in one statement: the new batch of a credit, the
/// draws (negative) or restorations (positive) on batches with their allocation rows, and
/// the change to the points the member owes. Constraints check what they can state
/// (remaining between 0 and amount, owed not negative, the entry's shape by kind).
pub const WRITE: &str = "WITH entry AS ( \
       INSERT INTO ledger_entries (program_id, entry_id, member_id, kind, points, \
         idempotency_key, request, outcome, rules_version, created_at, source, \
         external_ref, amount_minor, currency, occurred_at, requested_points, cap_day, capped, \
         reason, actor, reversed_entry_id, reversed_points, unrecovered_points, repaid_points) \
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21, $22, $23, $24) \
       RETURNING entry_id), \
     credit AS ( \
       INSERT INTO point_batches \
         (program_id, batch_id, member_id, entry_id, amount, remaining, earned_at, expires_at) \
       SELECT $1, $25::uuid, $3, entry.entry_id, $26::bigint, $26::bigint, $10, $27::timestamptz \
       FROM entry WHERE $25::uuid IS NOT NULL \
       RETURNING batch_id), \
     draw AS (SELECT * FROM unnest($28::uuid[], $29::bigint[]) AS d(batch_id, points)), \
     applied AS ( \
       UPDATE point_batches b SET remaining = b.remaining + draw.points FROM draw \
       WHERE b.program_id = $1 AND b.member_id = $3 AND b.batch_id = draw.batch_id \
       RETURNING b.batch_id), \
     traced AS ( \
       INSERT INTO allocations (program_id, entry_id, batch_id, points) \
       SELECT $1, entry.entry_id, draw.batch_id, draw.points FROM entry, draw \
       RETURNING batch_id), \
     owed AS ( \
       UPDATE members SET points_owed = points_owed + $30::bigint \
       WHERE $30::bigint <> 0 AND program_id = $1 AND member_id = $3 RETURNING member_id) \
     SELECT (SELECT count(*) FROM applied) AS applied, (SELECT count(*) FROM credit) AS credited";

/// A batch a credit creates; its id is chosen first because outcomes name it.
#[derive(Debug, Clone, Copy)]
pub struct NewBatch {
    pub batch_id: Uuid,
    pub amount: i64,
    pub expires_at: DateTime<Utc>,
}

/// Everything one mutation writes.
#[derive(Debug, Clone)]
pub struct Effects<'a> {
    pub entry: NewEntry<'a>,
    pub credit: Option<NewBatch>,
    /// Signed changes to existing batches, each recorded as an allocation of the entry.
    pub draws: &'a [Draw],
    /// Added to the member's `points_owed` (negative: repaid).
    pub owed_delta: i64,
}

/// Records a mutation: the one write of every use case.
pub async fn write(tx: &MemberTx<'_>, effects: &Effects<'_>) -> Result<(), WriteError> {
    let entry = &effects.entry;
    let purchase = entry.purchase.as_ref();
    let credit = effects.credit.as_ref();
    let batch_ids: Vec<Uuid> = effects.draws.iter().map(|d| d.batch_id).collect();
    let draw_points: Vec<i64> = effects.draws.iter().map(|d| d.points).collect();
    let statement = tx.prepared(WRITE).await?;
    let row = tx
        .query_one(
            &statement,
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
                &entry.reason,
                &entry.actor,
                &entry.reversal.map(|r| r.entry_id.as_uuid()),
                &entry.reversal.map(|r| r.reversed_points),
                &entry.reversal.and_then(|r| r.unrecovered_points),
                &entry.reversal.and_then(|r| r.repaid_points),
                &credit.map(|c| c.batch_id),
                &credit.map(|c| c.amount),
                &credit.map(|c| c.expires_at),
                &batch_ids,
                &draw_points,
                &effects.owed_delta,
            ],
        )
        .await?;
    let applied: i64 = row.try_get("applied")?;
    if applied != i64::try_from(effects.draws.len()).unwrap_or(i64::MAX) {
        // A draw on a batch of another member or program: a bug, never a caller's error.
        return Err(WriteError::DrawsMissed {
            expected: effects.draws.len(),
            applied,
        });
    }
    Ok(())
}

/// Why [`write`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error("{applied} of {expected} draws found their batch")]
    DrawsMissed { expected: usize, applied: i64 },
}
