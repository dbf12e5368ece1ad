//! Members and the figures derived from their batches and entries.
use super::Sum;
use crate::domain::{Grace, MemberId, ProgramId, TierState};
use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

/// A member row.
#[derive(Debug, Clone)]
pub struct StoredMember {
    pub member_id: MemberId,
    pub birthday: Option<NaiveDate>,
    pub enrolled_at: DateTime<Utc>,
    pub tier_rank: usize,
    /// Points of refunded awards that had been spent; repaid by later spend reversals.
    pub points_owed: i64,
    /// The downgrade grace in progress.
    pub grace: Option<Grace>,
    /// A manual tier holds against downgrades until then.
    pub tier_hold_until: Option<DateTime<Utc>>,
    /// The referral the member accepted, if any: (invite, referrer).
    pub referral: Option<(Uuid, MemberId)>,
    /// The accepted referral waits for its qualifying purchase.
    pub referral_open: bool,
}

impl StoredMember {
    pub fn tier_state(&self) -> TierState {
        TierState {
            rank: self.tier_rank,
            grace: self.grace.clone(),
            hold_until: self.tier_hold_until,
        }
    }
}

/// The member columns [`from_row`] reads.
macro_rules! member_columns {
    ($alias:literal) => {
        concat!(
            $alias,
            "member_id, ",
            $alias,
            "birthday, ",
            $alias,
            "enrolled_at, ",
            $alias,
            "tier_rank, ",
            $alias,
            "points_owed, ",
            $alias,
            "grace_started_at, ",
            $alias,
            "grace_ends_at, ",
            $alias,
            "grace_reminders_sent, ",
            $alias,
            "tier_hold_until, ",
            $alias,
            "referral_invite_id, ",
            $alias,
            "referred_by, ",
            $alias,
            "referral_open"
        )
    };
}
pub(crate) use member_columns;

/// A member's points at an instant, derived from the ledger (never stored). Sums are
/// read as `numeric` ([`Sum`]): lifetime earnings may pass i64 over the years, and a ledger
/// written by an older version may hold batches summing past it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PointsSummary {
    /// Σ remaining of batches not yet expired at the instant.
    pub balance_points: i128,
    /// Σ awards and bonuses less every reversed point, recovered or not: what the tier
    /// engine will read, never the spendable balance.
    pub lifetime_earned_points: i128,
    pub next_expiry_at: Option<DateTime<Utc>>,
    pub next_expiry_points: i128,
}

/// Enrolls members in one statement: each member row is inserted, or an existing one's
/// birthday updated when one is given, only if the program exists; answers the program's
/// rules version, the rows and whether each already existed. No row: no such program.
/// `$2`, `$3`, `$4` are the members, their birthdays and enrolment instants, one member
/// once, sorted by id (two batches upsert their common members in the same order: no
/// deadlock).
pub const ENROLL_MANY: &str = concat!(
    "WITH program AS ( \
       SELECT rules_version FROM programs WHERE program_id = $1), \
     enrolled AS ( \
       INSERT INTO members (program_id, member_id, birthday, enrolled_at, enrolled_by) \
       SELECT $1, i.member_id, i.birthday, i.enrolled_at, $5 \
       FROM program, unnest($2::uuid[], $3::date[], $4::timestamptz[]) \
            WITH ORDINALITY AS i(member_id, birthday, enrolled_at, n) \
       ORDER BY i.n \
       ON CONFLICT (program_id, member_id) \
       DO UPDATE SET birthday = COALESCE(EXCLUDED.birthday, members.birthday) \
       RETURNING ",
    member_columns!(""),
    ", (xmax <> 0) AS existed) \
     SELECT program.rules_version, enrolled.* FROM program JOIN enrolled ON true"
);

/// Enrolls one member (see [`ENROLL_MANY`]): the rules version, the row and whether it
/// existed; None when the program does not exist.
pub async fn enroll(
    client: &impl deadpool_postgres::GenericClient,
    program: &ProgramId,
    member: Enrolment,
    enrolled_by: &str,
) -> Result<Option<(i64, StoredMember, bool)>, tokio_postgres::Error> {
    let enrolled = enroll_many(client, program, &[member], enrolled_by).await?;
    Ok(enrolled.and_then(|(rules_version, mut members)| {
        let (member, existed) = members.pop()?;
        Some((rules_version, member, existed))
    }))
}

/// One member of [`enroll_many`].
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub member: MemberId,
    pub birthday: Option<NaiveDate>,
    pub enrolled_at: DateTime<Utc>,
}

/// A member's row after an upsert, and whether it existed before.
pub type Upserted = (StoredMember, bool);

/// Enrolls the members (see [`ENROLL_MANY`]; at most one each, sorted by id): the rules
/// version, and each member's row and whether it existed; None when the program does not
/// exist.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "members::enroll_many"))]
pub async fn enroll_many(
    client: &impl deadpool_postgres::GenericClient,
    program: &ProgramId,
    members: &[Enrolment],
    enrolled_by: &str,
) -> Result<Option<(i64, Vec<Upserted>)>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = members.iter().map(|m| m.member.as_uuid()).collect();
    let birthdays: Vec<Option<NaiveDate>> = members.iter().map(|m| m.birthday).collect();
    let instants: Vec<DateTime<Utc>> = members.iter().map(|m| m.enrolled_at).collect();
    let statement = client.prepare_cached(ENROLL_MANY).await?;
    let rows = client
        .query(
            &statement,
            &[&program.as_str(), &ids, &birthdays, &instants, &enrolled_by],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let rules_version: i64 = first.try_get("rules_version")?;
    let members = rows
        .iter()
        .map(|row| Ok((from_row(row)?, row.try_get("existed")?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok(Some((rules_version, members)))
}

/// The program's rules version and the member's row (None: not enrolled); None when the
/// program does not exist.
pub const GET_WITH_PROGRAM: &str = concat!(
    "SELECT p.rules_version, ",
    member_columns!("m."),
    " FROM programs p LEFT JOIN LATERAL (SELECT * FROM members \
         WHERE program_id = $1 AND member_id = $2 OFFSET 0) m ON true \
     WHERE p.program_id = $1"
);

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "members::get_with_program"))]
pub async fn get_with_program(
    client: &deadpool_postgres::Client,
    program: &ProgramId,
    member: MemberId,
) -> Result<Option<(i64, Option<StoredMember>)>, tokio_postgres::Error> {
    let statement = client.prepare_cached(GET_WITH_PROGRAM).await?;
    let row = client
        .query_opt(&statement, &[&program.as_str(), &member.as_uuid()])
        .await?;
    row.map(|row| {
        let member = match row.try_get::<_, Option<uuid::Uuid>>("member_id")? {
            Some(_) => Some(from_row(&row)?),
            None => None,
        };
        Ok((row.try_get("rules_version")?, member))
    })
    .transpose()
}

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "members::get"))]
pub async fn get(
    client: &impl GenericClient,
    program: &ProgramId,
    member: MemberId,
) -> Result<Option<StoredMember>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            concat!(
                "SELECT ",
                member_columns!(""),
                " FROM members WHERE program_id = $1 AND member_id = $2"
            ),
            &[&program.as_str(), &member.as_uuid()],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The member's points as of `now`: expired batches never count, swept or not.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "members::points_summary"))]
pub async fn points_summary(
    client: &impl GenericClient,
    program: &ProgramId,
    member: MemberId,
    now: DateTime<Utc>,
) -> Result<PointsSummary, tokio_postgres::Error> {
    let row = client
        .query_one(
            POINTS_SUMMARY,
            &[&program.as_str(), &member.as_uuid(), &now],
        )
        .await?;
    summary_from_row(&row)
}

/// [`points_summary`] as a statement prepared once per connection, for `GetMember`.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "members::points_summary_prepared"))]
pub async fn points_summary_prepared(
    client: &deadpool_postgres::Client,
    program: &ProgramId,
    member: MemberId,
    now: DateTime<Utc>,
) -> Result<PointsSummary, tokio_postgres::Error> {
    let statement = client.prepare_cached(POINTS_SUMMARY).await?;
    let row = client
        .query_one(&statement, &[&program.as_str(), &member.as_uuid(), &now])
        .await?;
    summary_from_row(&row)
}

pub const POINTS_SUMMARY: &str = "WITH live AS ( \
                 SELECT remaining, expires_at FROM point_batches \
                 WHERE program_id = $1 AND member_id = $2 AND remaining > 0 AND expires_at > $3), \
             next AS (SELECT min(expires_at) AS at FROM live) \
             SELECT \
                 (SELECT COALESCE(sum(remaining), 0)::text FROM live) AS balance, \
                 (SELECT at FROM next) AS next_expiry_at, \
                 (SELECT COALESCE(sum(remaining), 0)::text FROM live \
                   WHERE expires_at = (SELECT at FROM next)) AS next_expiry_points, \
                 (SELECT COALESCE(sum(CASE WHEN kind = 'award_reversal' THEN -reversed_points \
                                           ELSE points END), 0)::text \
                    FROM ledger_entries WHERE program_id = $1 AND member_id = $2 \
                     AND kind IN ('award', 'bonus', 'award_reversal')) AS earned";

fn summary_from_row(row: &Row) -> Result<PointsSummary, tokio_postgres::Error> {
    Ok(PointsSummary {
        balance_points: row.try_get::<_, Sum>("balance")?.0,
        lifetime_earned_points: row.try_get::<_, Sum>("earned")?.0,
        next_expiry_at: row.try_get("next_expiry_at")?,
        next_expiry_points: row.try_get::<_, Sum>("next_expiry_points")?.0,
    })
}

/// A member row read with [`member_columns!`].
pub(super) fn from_row(row: &Row) -> Result<StoredMember, tokio_postgres::Error> {
    let tier_rank: i32 = row.try_get("tier_rank")?;
    let started: Option<DateTime<Utc>> = row.try_get("grace_started_at")?;
    let ends: Option<DateTime<Utc>> = row.try_get("grace_ends_at")?;
    let grace = match (started, ends) {
        (Some(started_at), Some(ends_at)) => Some(Grace {
            started_at,
            ends_at,
            reminders_sent: row.try_get("grace_reminders_sent")?,
        }),
        _ => None,
    };
    Ok(StoredMember {
        member_id: MemberId::from_uuid(row.try_get("member_id")?),
        birthday: row.try_get("birthday")?,
        enrolled_at: row.try_get("enrolled_at")?,
        tier_rank: usize::try_from(tier_rank).unwrap_or(0),
        points_owed: row.try_get("points_owed")?,
        grace,
        tier_hold_until: row.try_get("tier_hold_until")?,
        referral: row
            .try_get::<_, Option<Uuid>>("referral_invite_id")?
            .zip(row.try_get::<_, Option<Uuid>>("referred_by")?)
            .map(|(invite, referrer)| (invite, MemberId::from_uuid(referrer))),
        referral_open: row.try_get("referral_open")?,
    })
}
