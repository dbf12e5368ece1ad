//! Program-wide sums for the liability report and the audit.
use crate::domain::ProgramId;
use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

/// Entries' points of a period, summed by what they record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeriodSums {
    pub opening: i64,
    pub earned: i64,
    pub bonus: i64,
    pub spent: i64,
    pub reversed: i64,
    pub restored: i64,
    pub adjusted_credit: i64,
    pub adjusted_debit: i64,
    pub expired: i64,
    pub closing: i64,
}

/// The batches' side of the books at an instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSums {
    /// Σ remaining of batches not expired at the instant.
    pub outstanding: i64,
    /// Σ remaining of expired batches the sweep has not reached.
    pub unswept_expired: i64,
    /// Outstanding points by the UTC month they expire in, as ("YYYY-MM", points).
    pub by_expiry_month: Vec<(String, i64)>,
}

pub async fn period_sums(
    client: &impl GenericClient,
    program: &ProgramId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<PeriodSums, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT \
               COALESCE(sum(points) FILTER (WHERE created_at < $2), 0)::bigint, \
               COALESCE(sum(points) FILTER (WHERE in_period AND kind = 'award'), 0)::bigint, \
               COALESCE(sum(points) FILTER (WHERE in_period AND kind = 'bonus'), 0)::bigint, \
               COALESCE(-sum(points) FILTER (WHERE in_period AND kind = 'spend'), 0)::bigint, \
               COALESCE(-sum(points) FILTER (WHERE in_period AND kind = 'award_reversal'), 0)::bigint, \
               COALESCE(sum(points) FILTER (WHERE in_period AND kind = 'spend_reversal'), 0)::bigint, \
               COALESCE(sum(points) FILTER (WHERE in_period AND kind = 'adjustment' AND points > 0), 0)::bigint, \
               COALESCE(-sum(points) FILTER (WHERE in_period AND kind = 'adjustment' AND points < 0), 0)::bigint, \
               COALESCE(-sum(points) FILTER (WHERE in_period AND kind = 'expiry'), 0)::bigint, \
               COALESCE(sum(points) FILTER (WHERE created_at < $3), 0)::bigint \
             FROM (SELECT points, kind, created_at, created_at >= $2 AND created_at < $3 AS in_period \
                   FROM ledger_entries WHERE program_id = $1) e",
            &[&program.as_str(), &from, &to],
        )
        .await?;
    Ok(PeriodSums {
        opening: row.try_get(0)?,
        earned: row.try_get(1)?,
        bonus: row.try_get(2)?,
        spent: row.try_get(3)?,
        reversed: row.try_get(4)?,
        restored: row.try_get(5)?,
        adjusted_credit: row.try_get(6)?,
        adjusted_debit: row.try_get(7)?,
        expired: row.try_get(8)?,
        closing: row.try_get(9)?,
    })
}

pub async fn batch_sums(
    client: &impl GenericClient,
    program: &ProgramId,
    now: DateTime<Utc>,
) -> Result<BatchSums, tokio_postgres::Error> {
    let totals = client
        .query_one(
            "SELECT COALESCE(sum(remaining) FILTER (WHERE expires_at > $2), 0)::bigint, \
                    COALESCE(sum(remaining) FILTER (WHERE expires_at <= $2), 0)::bigint \
             FROM point_batches WHERE program_id = $1 AND remaining > 0",
            &[&program.as_str(), &now],
        )
        .await?;
    let months = client
        .query(
            "SELECT to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month, \
                    sum(remaining)::bigint \
             FROM point_batches \
             WHERE program_id = $1 AND remaining > 0 AND expires_at > $2 \
             GROUP BY month ORDER BY month",
            &[&program.as_str(), &now],
        )
        .await?;
    Ok(BatchSums {
        outstanding: totals.try_get(0)?,
        unswept_expired: totals.try_get(1)?,
        by_expiry_month: months
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?,
    })
}

/// Purchases awarded more than once and keys used more than once (both also refused by
/// unique indexes; the audit checks them regardless).
pub async fn duplicates(
    client: &impl GenericClient,
    program: &ProgramId,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT 'purchase ' || source || '/' || external_ref || ' awarded ' || count(*) || ' times' \
             FROM ledger_entries WHERE program_id = $1 AND kind = 'award' \
             GROUP BY source, external_ref HAVING count(*) > 1 \
             UNION ALL \
             SELECT 'idempotency key ' || idempotency_key || ' used by ' || count(*) || ' entries' \
             FROM ledger_entries WHERE program_id = $1 \
             GROUP BY idempotency_key HAVING count(*) > 1",
            &[&program.as_str()],
        )
        .await?;
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// The daily cap of every rules version of a program.
pub async fn caps_by_version(
    client: &impl GenericClient,
    program: &ProgramId,
) -> Result<std::collections::HashMap<i64, Option<i64>>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT version, (rules ->> 'daily_cap_points')::bigint FROM program_rules \
             WHERE program_id = $1",
            &[&program.as_str()],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}
