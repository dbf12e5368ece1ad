//! The two statements every mutation is made of, besides the lock: one read that opens
//! the unit of work and one write that records it. Fewer round trips is the hot path's
//! speed (docs/PERFORMANCE.md); the statements are prepared once per connection, and
//! `flash-bench` builds its pgbench baseline from these very constants.
use super::entries::{KeyedEntry, NewEntry};
use super::events::{outbox_insert, NewEvent, OutboxRows};
use super::members::{member_columns, StoredMember};
use super::MemberTx;
use crate::domain::{Draw, EntryId, IdempotencyKey, MemberId};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Under the members' locks, in one statement, for each asked item (a member, a key and,
/// for a purchase award, the purchase): the program's current rules version, the member's
/// row, the entry already written under the key, the award that already credited the
/// purchase, and the member's spendable balance. Every lookup is bounded by the key or by
/// the member, through exactly one index each (tests/it/plans.rs checks the plans with
/// empty statistics; the lookups are lateral subqueries that cannot be flattened, so they
/// run once per item by index, never as a join over the whole program). An item's source
/// and external ref are NULL when it is not an award.
pub const OPEN: &str = concat!(
    "SELECT i.n, p.rules_version, ",
    member_columns!("m."),
    ", k.entry_id AS key_entry_id, k.member_id AS key_member_id, k.kind AS key_kind, \
       k.request AS key_request, k.outcome AS key_outcome, \
       (SELECT a.entry_id FROM ledger_entries a WHERE a.program_id = $1 \
           AND a.source = i.source AND a.external_ref = i.external_ref) AS purchase_entry_id, \
       (SELECT COALESCE(sum(b.remaining), 0)::text FROM point_batches b \
         WHERE b.program_id = $1 AND b.member_id = i.member_id AND b.remaining > 0 \
           AND b.expires_at > $6) AS balance, \
       (SELECT COALESCE(sum(s.status_points), 0)::text FROM ledger_entries s \
         WHERE s.program_id = $1 AND s.member_id = i.member_id AND s.status_at IS NOT NULL \
           AND s.status_at > w.window_start AND s.status_at <= $6) AS status_points \
     FROM programs p \
     CROSS JOIN LATERAL (SELECT (($6::timestamptz AT TIME ZONE 'UTC') - make_interval(months => \
         COALESCE((r.rules->>'tier_window_months')::int, 12))) AT TIME ZONE 'UTC' \
         AS window_start FROM program_rules r \
         WHERE r.program_id = $1 AND r.version = p.rules_version) w \
     CROSS JOIN unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $7::text[]) \
       WITH ORDINALITY AS i(member_id, idempotency_key, source, external_ref, key_client, n) \
     LEFT JOIN LATERAL (SELECT * FROM members \
         WHERE program_id = $1 AND member_id = i.member_id OFFSET 0) m ON true \
     LEFT JOIN LATERAL (SELECT * FROM ledger_entries \
         WHERE program_id = $1 AND idempotency_key = i.idempotency_key \
           AND client = i.key_client OFFSET 0) k ON true \
     WHERE p.program_id = $1 ORDER BY i.n"
);

/// One item [`open`] asks about.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub member: MemberId,
    /// The mutation's idempotency key; None for work that has none (an evaluation).
    pub key: Option<&'a IdempotencyKey>,
    /// The purchase of an award, for the purchase check.
    pub purchase: Option<PurchaseRef<'a>>,
}

/// What [`OPEN`] read for one item.
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
    /// Σ status points of the member's rolling tier window ending at the instant.
    pub status_points: i128,
}

/// The purchase an award credits, for the purchase check of [`open`].
#[derive(Debug, Clone, Copy)]
pub struct PurchaseRef<'a> {
    pub source: &'a str,
    pub external_ref: &'a str,
}

/// Reads what the items of a mutation need, under the lock, in item order; empty when the
/// program does not exist.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "mutation::open"))]
pub async fn open(
    tx: &MemberTx<'_>,
    asks: &[Ask<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<Opening>, tokio_postgres::Error> {
    let members: Vec<Uuid> = asks.iter().map(|ask| ask.member.as_uuid()).collect();
    let keys: Vec<Option<&str>> = asks.iter().map(|ask| ask.key.map(|k| k.as_str())).collect();
    let key_clients: Vec<Option<&str>> =
        asks.iter().map(|ask| ask.key.map(|k| k.client())).collect();
    let sources: Vec<Option<&str>> = asks.iter().map(|a| a.purchase.map(|p| p.source)).collect();
    let refs: Vec<Option<&str>> = asks
        .iter()
        .map(|a| a.purchase.map(|p| p.external_ref))
        .collect();
    let statement = tx.prepared(OPEN).await?;
    let rows = tx
        .query(
            &statement,
            &[
                &tx.program().as_str(),
                &members,
                &keys,
                &sources,
                &refs,
                &now,
                &key_clients,
            ],
        )
        .await?;
    rows.iter().map(opening).collect()
}

fn opening(row: &tokio_postgres::Row) -> Result<Opening, tokio_postgres::Error> {
    let member = match row.try_get::<_, Option<Uuid>>("member_id")? {
        Some(_) => Some(super::members::from_row(row)?),
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
    let status: String = row.try_get("status_points")?;
    Ok(Opening {
        rules_version: row.try_get("rules_version")?,
        member,
        prior,
        purchase_entry: purchase_entry.map(EntryId::from_uuid),
        // sum() of bigints is a numeric printed as an integer.
        balance_points: balance.parse().unwrap_or(i128::MAX),
        status_points: status.parse().unwrap_or(i128::MAX),
    })
}

/// Writes the entry and all its effects in one statement: the new batch of a credit, the
/// draws (negative) or restorations (positive) on batches with their allocation rows, and
/// the change to the points the member owes. Constraints check what they can state
/// (remaining between 0 and amount, owed not negative, the entry's shape by kind).
pub const WRITE: &str = concat!(
    "WITH entry AS ( \
       INSERT INTO ledger_entries (program_id, entry_id, member_id, kind, points, \
         idempotency_key, request, outcome, rules_version, created_at, source, \
         external_ref, amount_minor, currency, occurred_at, requested_points, cap_day, capped, \
         reason, actor, reversed_entry_id, reversed_points, unrecovered_points, repaid_points, \
         status_points, status_at, client) \
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21, $22, $23, $24, $35, $36, $37) \
       RETURNING entry_id), \
     credit AS ( \
       INSERT INTO point_batches \
         (program_id, batch_id, member_id, entry_id, amount, remaining, earned_at, expires_at) \
       SELECT $1, $25::uuid, $3, entry.entry_id, $26::bigint, $26::bigint, $10, $27::timestamptz \
       FROM entry WHERE $25::uuid IS NOT NULL \
       RETURNING batch_id), \
     draw AS (SELECT * FROM unnest($28::uuid[], $29::bigint[]) AS d(batch_id, points)), \
     applied AS ( \
       UPDATE point_batches b \
       SET remaining = b.remaining + (SELECT sum(draw.points) FROM draw \
                                      WHERE draw.batch_id = b.batch_id) \
       WHERE b.program_id = $1 AND b.batch_id = ANY($28::uuid[]) AND b.member_id = $3 \
       RETURNING b.batch_id), \
     traced AS ( \
       INSERT INTO allocations (program_id, entry_id, batch_id, points) \
       SELECT $1, entry.entry_id, draw.batch_id, draw.points FROM entry, draw \
       RETURNING batch_id), \
     owed AS ( \
       UPDATE members SET points_owed = points_owed + $30::bigint \
       WHERE $30::bigint <> 0 AND program_id = $1 AND member_id = $3 RETURNING member_id), \
     outbox AS (",
    outbox_insert!("$1", "$10", "$31", "$32", "$33", "$34"),
    ") SELECT (SELECT count(*) FROM applied) AS applied, (SELECT count(*) FROM credit) AS credited"
);

/// Writes purchase awards, of one member or many, each with its batch when it earned
/// points: the award path's one write, whether the call carried one award or a batch.
pub const WRITE_AWARDS: &str = concat!(
    "WITH entry AS ( \
       INSERT INTO ledger_entries (program_id, entry_id, member_id, kind, points, \
         idempotency_key, request, outcome, rules_version, created_at, source, \
         external_ref, amount_minor, currency, occurred_at, requested_points, cap_day, capped, \
         status_points, status_at, client) \
       SELECT $1, e.entry_id, e.member_id, 'award', e.points, e.idempotency_key, e.request, \
         e.outcome, $2, $3, e.source, e.external_ref, e.amount_minor, e.currency, \
         e.occurred_at, e.requested_points, e.cap_day, e.capped, e.points, $3, e.client \
       FROM unnest($4::uuid[], $5::uuid[], $6::bigint[], $7::text[], $8::jsonb[], $9::jsonb[], \
         $10::text[], $11::text[], $12::bigint[], $13::text[], $14::timestamptz[], \
         $15::bigint[], $16::date[], $17::bool[], $27::text[]) \
         AS e(entry_id, member_id, points, idempotency_key, request, outcome, source, \
           external_ref, amount_minor, currency, occurred_at, requested_points, cap_day, capped, \
           client) \
       RETURNING entry_id), \
     credit AS ( \
       INSERT INTO point_batches \
         (program_id, batch_id, member_id, entry_id, amount, remaining, earned_at, expires_at) \
       SELECT $1, c.batch_id, c.member_id, c.entry_id, c.amount, c.amount, $3, c.expires_at \
       FROM unnest($18::uuid[], $19::uuid[], $20::uuid[], $21::bigint[], $22::timestamptz[]) \
         AS c(batch_id, member_id, entry_id, amount, expires_at) \
       RETURNING batch_id), \
     outbox AS (",
    outbox_insert!("$1", "$3", "$23", "$24", "$25", "$26"),
    ") SELECT (SELECT count(*) FROM entry) AS entries, (SELECT count(*) FROM credit) AS credits"
);

/// One award to write with [`write_awards`].
#[derive(Debug, Clone)]
pub struct NewAward<'a> {
    pub entry_id: EntryId,
    pub member: MemberId,
    pub points: i64,
    pub idempotency_key: &'a IdempotencyKey,
    pub request: &'a serde_json::Value,
    pub outcome: serde_json::Value,
    pub purchase: super::entries::Purchase<'a>,
    /// The batch holding the points, when any were awarded.
    pub credit: Option<NewBatch>,
}

/// Records awards made at `created_at` under `rules_version`, in one statement.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "mutation::write_awards"))]
pub async fn write_awards(
    tx: &MemberTx<'_>,
    rules_version: i64,
    created_at: DateTime<Utc>,
    awards: &[NewAward<'_>],
    events: &[NewEvent],
) -> Result<(), WriteError> {
    let outbox = OutboxRows::of(events);
    let entry_ids: Vec<Uuid> = awards.iter().map(|a| a.entry_id.as_uuid()).collect();
    let members: Vec<Uuid> = awards.iter().map(|a| a.member.as_uuid()).collect();
    let points: Vec<i64> = awards.iter().map(|a| a.points).collect();
    let keys: Vec<&str> = awards.iter().map(|a| a.idempotency_key.as_str()).collect();
    let key_clients: Vec<&str> = awards.iter().map(|a| a.idempotency_key.client()).collect();
    let requests: Vec<&serde_json::Value> = awards.iter().map(|a| a.request).collect();
    let outcomes: Vec<&serde_json::Value> = awards.iter().map(|a| &a.outcome).collect();
    let sources: Vec<&str> = awards.iter().map(|a| a.purchase.source).collect();
    let refs: Vec<&str> = awards.iter().map(|a| a.purchase.external_ref).collect();
    let amounts: Vec<i64> = awards.iter().map(|a| a.purchase.amount_minor).collect();
    let currencies: Vec<&str> = awards.iter().map(|a| a.purchase.currency).collect();
    let occurred: Vec<DateTime<Utc>> = awards.iter().map(|a| a.purchase.occurred_at).collect();
    let requested: Vec<i64> = awards.iter().map(|a| a.purchase.requested_points).collect();
    let cap_days: Vec<chrono::NaiveDate> = awards.iter().map(|a| a.purchase.cap_day).collect();
    let capped: Vec<bool> = awards.iter().map(|a| a.purchase.capped).collect();
    let credited: Vec<(&NewAward<'_>, &NewBatch)> = awards
        .iter()
        .filter_map(|a| a.credit.as_ref().map(|c| (a, c)))
        .collect();
    let batch_ids: Vec<Uuid> = credited.iter().map(|(_, c)| c.batch_id).collect();
    let batch_members: Vec<Uuid> = credited.iter().map(|(a, _)| a.member.as_uuid()).collect();
    let batch_entries: Vec<Uuid> = credited.iter().map(|(a, _)| a.entry_id.as_uuid()).collect();
    let batch_amounts: Vec<i64> = credited.iter().map(|(_, c)| c.amount).collect();
    let batch_expiries: Vec<DateTime<Utc>> = credited.iter().map(|(_, c)| c.expires_at).collect();
    let statement = tx.prepared(WRITE_AWARDS).await?;
    let row = tx
        .query_one(
            &statement,
            &[
                &tx.program().as_str(),
                &rules_version,
                &created_at,
                &entry_ids,
                &members,
                &points,
                &keys,
                &requests,
                &outcomes,
                &sources,
                &refs,
                &amounts,
                &currencies,
                &occurred,
                &requested,
                &cap_days,
                &capped,
                &batch_ids,
                &batch_members,
                &batch_entries,
                &batch_amounts,
                &batch_expiries,
                &outbox.ids,
                &outbox.members,
                &outbox.types,
                &outbox.payloads,
                &key_clients,
            ],
        )
        .await?;
    let written: i64 = row.try_get("entries")?;
    if written != i64::try_from(awards.len()).unwrap_or(i64::MAX) {
        return Err(WriteError::RowsMissed {
            what: "awards",
            expected: awards.len(),
            written,
        });
    }
    Ok(())
}

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
    /// The member whose entry it is (one of the unit's locked members).
    pub member: MemberId,
    pub entry: NewEntry<'a>,
    pub credit: Option<NewBatch>,
    /// Signed changes to existing batches, each recorded as an allocation of the entry.
    pub draws: &'a [Draw],
    /// Added to the member's `points_owed` (negative: repaid).
    pub owed_delta: i64,
    /// The entry's effect on status points and the instant it counts at; None: none.
    pub status: Option<(i64, DateTime<Utc>)>,
    /// The events the mutation emits, written with it.
    pub events: &'a [NewEvent],
}

/// Records a mutation: the one write of every use case.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "mutation::write"))]
pub async fn write(tx: &MemberTx<'_>, effects: &Effects<'_>) -> Result<(), WriteError> {
    let entry = &effects.entry;
    let purchase = entry.purchase.as_ref();
    let credit = effects.credit.as_ref();
    let batch_ids: Vec<Uuid> = effects.draws.iter().map(|d| d.batch_id).collect();
    let draw_points: Vec<i64> = effects.draws.iter().map(|d| d.points).collect();
    let outbox = OutboxRows::of(effects.events);
    if !tx.members().contains(&effects.member) {
        return Err(WriteError::RowsMissed {
            what: "entries of an unlocked member",
            expected: 0,
            written: 1,
        });
    }
    let statement = tx.prepared(WRITE).await?;
    let row = tx
        .query_one(
            &statement,
            &[
                &tx.program().as_str(),
                &entry.entry_id.as_uuid(),
                &effects.member.as_uuid(),
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
                &outbox.ids,
                &outbox.members,
                &outbox.types,
                &outbox.payloads,
                &effects.status.map(|(points, _)| points),
                &effects.status.map(|(_, at)| at),
                &entry.idempotency_key.client(),
            ],
        )
        .await?;
    let applied: i64 = row.try_get("applied")?;
    if applied != i64::try_from(effects.draws.len()).unwrap_or(i64::MAX) {
        return Err(WriteError::RowsMissed {
            what: "draws",
            expected: effects.draws.len(),
            written: applied,
        });
    }
    Ok(())
}

/// Why [`write`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// A draw on a batch of another member or program, or a row the statement did not
    /// write: a bug, never a caller's error.
    #[error("{written} of {expected} {what} written")]
    RowsMissed {
        what: &'static str,
        expected: usize,
        written: i64,
    },
}
