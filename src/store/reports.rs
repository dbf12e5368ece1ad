//! Program-wide sums for the liability report and the audit. Every sum is `numeric` read
//! as [`Sum`]: totals across members may exceed i64 even when every row fits.
use super::Sum;
use crate::domain::ProgramId;
use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

/// Entries' points of a period, summed by what they record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeriodSums {
    pub opening: i128,
    pub earned: i128,
    pub bonus: i128,
    pub spent: i128,
    pub reversed: i128,
    pub restored: i128,
    pub adjusted_credit: i128,
    pub adjusted_debit: i128,
    pub expired: i128,
    pub closing: i128,
}

/// The batches' side of the books at an instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSums {
    /// Σ remaining of batches not expired at the instant.
    pub outstanding: i128,
    /// Σ remaining of expired batches the sweep has not reached.
    pub unswept_expired: i128,
    /// Σ remaining of every batch: outstanding + unswept_expired.
    pub remaining: i128,
    /// Outstanding points by the UTC month they expire in, as ("YYYY-MM", points).
    pub by_expiry_month: Vec<(String, i128)>,
}

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "reports::period_sums"))]
pub async fn period_sums(
    client: &impl GenericClient,
    program: &ProgramId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<PeriodSums, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT \
               COALESCE(sum(points) FILTER (WHERE created_at < $2), 0)::text, \
               COALESCE(sum(points) FILTER (WHERE in_period AND kind = 'award'), 0)::text, \
               COALESCE(sum(points) FILTER (WHERE in_period AND kind = 'bonus'), 0)::text, \
               COALESCE(-sum(points) FILTER (WHERE in_period AND kind = 'spend'), 0)::text, \
               COALESCE(-sum(points) FILTER (WHERE in_period AND kind = 'award_reversal'), 0)::text, \
               COALESCE(sum(points) FILTER (WHERE in_period AND kind = 'spend_reversal'), 0)::text, \
               COALESCE(sum(points) FILTER (WHERE in_period AND kind = 'adjustment' AND points > 0), 0)::text, \
               COALESCE(-sum(points) FILTER (WHERE in_period AND kind = 'adjustment' AND points < 0), 0)::text, \
               COALESCE(-sum(points) FILTER (WHERE in_period AND kind = 'expiry'), 0)::text, \
               COALESCE(sum(points) FILTER (WHERE created_at < $3), 0)::text \
             FROM (SELECT points, kind, created_at, created_at >= $2 AND created_at < $3 AS in_period \
                   FROM ledger_entries WHERE program_id = $1) e",
            &[&program.as_str(), &from, &to],
        )
        .await?;
    let sum = |index: usize| row.try_get::<_, Sum>(index).map(|sum| sum.0);
    Ok(PeriodSums {
        opening: sum(0)?,
        earned: sum(1)?,
        bonus: sum(2)?,
        spent: sum(3)?,
        reversed: sum(4)?,
        restored: sum(5)?,
        adjusted_credit: sum(6)?,
        adjusted_debit: sum(7)?,
        expired: sum(8)?,
        closing: sum(9)?,
    })
}

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "reports::batch_sums"))]
pub async fn batch_sums(
    client: &impl GenericClient,
    program: &ProgramId,
    now: DateTime<Utc>,
) -> Result<BatchSums, tokio_postgres::Error> {
    let totals = client
        .query_one(
            "SELECT COALESCE(sum(remaining) FILTER (WHERE expires_at > $2), 0)::text, \
                    COALESCE(sum(remaining) FILTER (WHERE expires_at <= $2), 0)::text, \
                    COALESCE(sum(remaining), 0)::text \
             FROM point_batches WHERE program_id = $1 AND remaining > 0",
            &[&program.as_str(), &now],
        )
        .await?;
    let months = client
        .query(
            "SELECT to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month, \
                    sum(remaining)::text \
             FROM point_batches \
             WHERE program_id = $1 AND remaining > 0 AND expires_at > $2 \
             GROUP BY month ORDER BY month",
            &[&program.as_str(), &now],
        )
        .await?;
    let total = |index: usize| totals.try_get::<_, Sum>(index).map(|sum| sum.0);
    Ok(BatchSums {
        outstanding: total(0)?,
        unswept_expired: total(1)?,
        remaining: total(2)?,
        by_expiry_month: months
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get::<_, Sum>(1)?.0)))
            .collect::<Result<_, tokio_postgres::Error>>()?,
    })
}
