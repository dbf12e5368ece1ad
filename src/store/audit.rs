//! What the audit reads: every row of a program, as stored, in one REPEATABLE READ
//! snapshot. No figure is summed in SQL here: the audit adds in i128 itself, so a ledger
//! holding more than i64 is reported, never an error.
pub use super::entries::StoredEntry;
use crate::domain::ProgramId;
use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// A batch as stored.
#[derive(Debug, Clone)]
pub struct AuditBatch {
    pub batch_id: Uuid,
    pub member_id: Uuid,
    pub entry_id: Uuid,
    pub amount: i64,
    pub remaining: i64,
    pub earned_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One allocation: a draw (negative) from or a restoration (positive) into a batch.
#[derive(Debug, Clone, Copy)]
pub struct AuditAllocation {
    pub entry_id: Uuid,
    pub batch_id: Uuid,
    pub points: i64,
}

/// One version of the program's rules, with the instant it took effect.
#[derive(Debug, Clone)]
pub struct AuditRules {
    pub version: i64,
    pub effective_at: DateTime<Utc>,
    pub timezone: String,
    pub daily_cap_points: Option<i64>,
    pub max_invites_per_day: i64,
    pub max_invites_lifetime: i64,
}

/// An invite as stored.
#[derive(Debug, Clone)]
pub struct AuditInvite {
    pub invite_id: Uuid,
    pub referrer: Uuid,
    pub referee: Option<Uuid>,
    pub status: String,
    pub sent_entry_id: Uuid,
    pub sent_day: chrono::NaiveDate,
    pub closed_at: Option<DateTime<Utc>>,
    pub referrer_entry_id: Option<Uuid>,
    pub referee_entry_id: Option<Uuid>,
}

/// A member's referral columns: (member, the invite it accepted, whether it waits for its
/// qualifying purchase).
pub type AuditReferral = (Uuid, Option<Uuid>, bool);

/// One tier change as stored, in history order.
#[derive(Debug, Clone)]
pub struct AuditTierChange {
    pub change_id: Uuid,
    pub member_id: Uuid,
    pub change: String,
    pub from_rank: i32,
    pub to_rank: i32,
    pub created_at: DateTime<Utc>,
}

/// Everything the audit checks, read in one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// In write order (seq).
    pub entries: Vec<StoredEntry>,
    pub batches: Vec<AuditBatch>,
    pub allocations: Vec<AuditAllocation>,
    /// (member, points_owed).
    pub members: Vec<(Uuid, i64)>,
    /// Oldest first.
    pub rules: Vec<AuditRules>,
    /// (member, tier_rank).
    pub tiers: Vec<(Uuid, i32)>,
    /// In history order (seq).
    pub tier_changes: Vec<AuditTierChange>,
    pub invites: Vec<AuditInvite>,
    pub referrals: Vec<AuditReferral>,
    /// Every kept referral graph snapshot, oldest first.
    pub graphs: Vec<super::graph::StoredSnapshot>,
}

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "audit::snapshot"))]
pub async fn snapshot(
    client: &impl GenericClient,
    program: &ProgramId,
) -> Result<Snapshot, tokio_postgres::Error> {
    let program = program.as_str();
    let entries = client
        .query(
            &format!(
                "{} WHERE program_id = $1 ORDER BY seq",
                super::entries::SELECT_ENTRY
            ),
            &[&program],
        )
        .await?
        .iter()
        .map(super::entries::stored_entry)
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let batches = client
        .query(
            "SELECT batch_id, member_id, entry_id, amount, remaining, earned_at, expires_at \
             FROM point_batches WHERE program_id = $1",
            &[&program],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(AuditBatch {
                batch_id: row.try_get("batch_id")?,
                member_id: row.try_get("member_id")?,
                entry_id: row.try_get("entry_id")?,
                amount: row.try_get("amount")?,
                remaining: row.try_get("remaining")?,
                earned_at: row.try_get("earned_at")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let allocations = client
        .query(
            "SELECT entry_id, batch_id, points FROM allocations WHERE program_id = $1",
            &[&program],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(AuditAllocation {
                entry_id: row.try_get("entry_id")?,
                batch_id: row.try_get("batch_id")?,
                points: row.try_get("points")?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let members = client
        .query(
            "SELECT member_id, points_owed FROM members WHERE program_id = $1",
            &[&program],
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let rules = client
        .query(
            "SELECT version, created_at, rules ->> 'timezone' AS timezone, \
                    (rules ->> 'daily_cap_points')::bigint AS cap, \
                    COALESCE((rules ->> 'max_invites_per_day')::bigint, $2) AS per_day, \
                    COALESCE((rules ->> 'max_invites_lifetime')::bigint, $3) AS lifetime \
             FROM program_rules WHERE program_id = $1 ORDER BY version",
            &[
                &program,
                &i64::from(crate::domain::DEFAULT_MAX_INVITES_PER_DAY),
                &i64::from(crate::domain::DEFAULT_MAX_INVITES_LIFETIME),
            ],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(AuditRules {
                version: row.try_get("version")?,
                effective_at: row.try_get("created_at")?,
                timezone: row
                    .try_get::<_, Option<String>>("timezone")?
                    .unwrap_or_default(),
                daily_cap_points: row.try_get("cap")?,
                max_invites_per_day: row.try_get("per_day")?,
                max_invites_lifetime: row.try_get("lifetime")?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let tiers = client
        .query(
            "SELECT member_id, tier_rank FROM members WHERE program_id = $1",
            &[&program],
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let tier_changes = client
        .query(
            "SELECT change_id, member_id, change, from_rank, to_rank, created_at \
             FROM tier_changes WHERE program_id = $1 ORDER BY seq",
            &[&program],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(AuditTierChange {
                change_id: row.try_get("change_id")?,
                member_id: row.try_get("member_id")?,
                change: row.try_get("change")?,
                from_rank: row.try_get("from_rank")?,
                to_rank: row.try_get("to_rank")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let invites = client
        .query(
            "SELECT invite_id, referrer_member_id, referee_member_id, status, sent_entry_id, \
                    sent_day, closed_at, referrer_entry_id, referee_entry_id \
             FROM invites WHERE program_id = $1",
            &[&program],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(AuditInvite {
                invite_id: row.try_get(0)?,
                referrer: row.try_get(1)?,
                referee: row.try_get(2)?,
                status: row.try_get(3)?,
                sent_entry_id: row.try_get(4)?,
                sent_day: row.try_get(5)?,
                closed_at: row.try_get(6)?,
                referrer_entry_id: row.try_get(7)?,
                referee_entry_id: row.try_get(8)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let referrals = client
        .query(
            "SELECT member_id, referral_invite_id, referral_open FROM members \
             WHERE program_id = $1",
            &[&program],
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let graphs = super::graph::all_of(client, program).await?;
    Ok(Snapshot {
        entries,
        batches,
        allocations,
        members,
        rules,
        tiers,
        tier_changes,
        invites,
        referrals,
        graphs,
    })
}
