//! Job runs, their leases and checkpoints, the members a job could not process, and the
//! candidate lists the jobs walk.
use super::events::Position;
use super::MemberTx;
use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// A run this replica holds.
#[derive(Debug, Clone)]
pub struct Claim {
    pub run_id: Uuid,
    /// The last (program, member) done before a takeover; None for a fresh run.
    pub checkpoint: Option<(String, Uuid)>,
    pub takeovers: i32,
}

/// Claims the run of (job, slot): a new row, or a row whose holder's lease ran out before
/// it finished (a crashed replica), taken over with its checkpoint. None when another
/// replica holds a live lease or the run finished.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::claim"))]
pub async fn claim(
    client: &impl GenericClient,
    job: &str,
    slot: DateTime<Utc>,
    replica: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<Claim>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "INSERT INTO job_runs (run_id, job, slot, claimed_by, lease_until, started_at) \
             VALUES ($1, $2, $3, $4, $6, $5) \
             ON CONFLICT (job, slot) DO UPDATE SET claimed_by = EXCLUDED.claimed_by, \
               lease_until = EXCLUDED.lease_until, takeovers = job_runs.takeovers + 1 \
             WHERE job_runs.finished_at IS NULL AND job_runs.lease_until < $5 \
             RETURNING run_id, checkpoint, takeovers",
            &[&Uuid::now_v7(), &job, &slot, &replica, &now, &lease_until],
        )
        .await?;
    row.map(|row| {
        let checkpoint: Option<serde_json::Value> = row.try_get("checkpoint")?;
        Ok(Claim {
            run_id: row.try_get("run_id")?,
            checkpoint: checkpoint.and_then(|c| serde_json::from_value(c).ok()),
            takeovers: row.try_get("takeovers")?,
        })
    })
    .transpose()
}

/// Runs left unfinished by a replica whose lease ran out: (job, slot), oldest first.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::abandoned"))]
pub async fn abandoned(
    client: &impl GenericClient,
    now: DateTime<Utc>,
) -> Result<Vec<(String, DateTime<Utc>)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT job, slot FROM job_runs WHERE finished_at IS NULL AND lease_until < $1 \
             ORDER BY slot LIMIT 20",
            &[&now],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Extends the lease and records progress; false when the run is no longer this
/// replica's (its lease ran out and another took it over): the replica must stop.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::checkpoint"))]
pub async fn checkpoint(
    client: &impl GenericClient,
    run_id: Uuid,
    replica: &str,
    lease_until: DateTime<Utc>,
    checkpoint: Option<&(String, Uuid)>,
    counts: &serde_json::Value,
) -> Result<bool, tokio_postgres::Error> {
    let checkpoint = checkpoint.map(|c| serde_json::json!(c));
    let changed = client
        .execute(
            "UPDATE job_runs SET lease_until = $3, checkpoint = $4, counts = $5 \
             WHERE run_id = $1 AND claimed_by = $2 AND finished_at IS NULL",
            &[&run_id, &replica, &lease_until, &checkpoint, counts],
        )
        .await?;
    Ok(changed == 1)
}

/// Marks the run finished with its counts; false when it was no longer this replica's.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::finish"))]
pub async fn finish(
    client: &impl GenericClient,
    run_id: Uuid,
    replica: &str,
    now: DateTime<Utc>,
    counts: &serde_json::Value,
) -> Result<bool, tokio_postgres::Error> {
    let changed = client
        .execute(
            "UPDATE job_runs SET finished_at = $3, counts = $4 \
             WHERE run_id = $1 AND claimed_by = $2 AND finished_at IS NULL",
            &[&run_id, &replica, &now, counts],
        )
        .await?;
    Ok(changed == 1)
}

/// One run as `flash jobs list` shows it.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub job: String,
    pub slot: DateTime<Utc>,
    pub claimed_by: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub takeovers: i32,
    pub counts: serde_json::Value,
}

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::recent_runs"))]
pub async fn recent_runs(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<StoredRun>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT job, slot, claimed_by, started_at, finished_at, takeovers, counts \
             FROM job_runs ORDER BY started_at DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredRun {
                job: row.try_get("job")?,
                slot: row.try_get("slot")?,
                claimed_by: row.try_get("claimed_by")?,
                started_at: row.try_get("started_at")?,
                finished_at: row.try_get("finished_at")?,
                takeovers: row.try_get("takeovers")?,
                counts: row.try_get("counts")?,
            })
        })
        .collect()
}

/// A member a job could not process.
#[derive(Debug, Clone)]
pub struct StoredFailure {
    pub job: String,
    pub program_id: String,
    pub member_id: Uuid,
    pub attempts: i32,
    pub last_error: String,
    pub next_attempt_at: DateTime<Utc>,
    pub parked: bool,
}

/// Records a failed attempt: the next one waits `backoff`, and after `max_attempts` the
/// member is parked (no more automatic tries). Returns the record.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::record_failure"))]
pub async fn record_failure(
    client: &impl GenericClient,
    job: &str,
    program: &str,
    member: Uuid,
    error: &str,
    now: DateTime<Utc>,
    backoff_base: chrono::Duration,
    max_attempts: i32,
) -> Result<StoredFailure, tokio_postgres::Error> {
    let base_seconds = backoff_base.num_seconds();
    let row = client
        .query_one(
            "INSERT INTO job_member_failures AS f (job, program_id, member_id, attempts, \
               last_error, failed_at, next_attempt_at, parked) \
             VALUES ($1, $2, $3, 1, $4, $5::timestamptz, $5::timestamptz + make_interval(secs => $6::float8), \
               $7 <= 1) \
             ON CONFLICT (job, program_id, member_id) DO UPDATE SET \
               attempts = f.attempts + 1, last_error = EXCLUDED.last_error, \
               failed_at = EXCLUDED.failed_at, \
               next_attempt_at = EXCLUDED.failed_at + make_interval(secs => \
                 $6::float8 * power(2, least(f.attempts, 20))), \
               parked = f.attempts + 1 >= $7 \
             RETURNING job, program_id, member_id, attempts, last_error, next_attempt_at, parked",
            &[
                &job,
                &program,
                &member,
                &error,
                &now,
                &(base_seconds as f64),
                &max_attempts,
            ],
        )
        .await?;
    failure(&row)
}

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::clear_failure"))]
pub async fn clear_failure(
    client: &impl GenericClient,
    job: &str,
    program: &str,
    member: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM job_member_failures WHERE job = $1 AND program_id = $2 AND member_id = $3",
            &[&job, &program, &member],
        )
        .await?;
    Ok(())
}

/// The job's failures among these members (to skip those waiting or parked).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::failures_of"))]
pub async fn failures_of(
    client: &impl GenericClient,
    job: &str,
    members: &[(String, Uuid)],
) -> Result<Vec<StoredFailure>, tokio_postgres::Error> {
    let programs: Vec<&str> = members.iter().map(|(p, _)| p.as_str()).collect();
    let ids: Vec<Uuid> = members.iter().map(|(_, m)| *m).collect();
    let rows = client
        .query(
            "SELECT f.job, f.program_id, f.member_id, f.attempts, f.last_error, \
               f.next_attempt_at, f.parked \
             FROM unnest($2::text[], $3::uuid[]) AS c(program_id, member_id) \
             JOIN job_member_failures f ON f.job = $1 AND f.program_id = c.program_id \
               AND f.member_id = c.member_id",
            &[&job, &programs, &ids],
        )
        .await?;
    rows.iter().map(failure).collect()
}

/// The job's failures due for another try (not parked), oldest first.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::due_failures"))]
pub async fn due_failures(
    client: &impl GenericClient,
    job: &str,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, Uuid)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT program_id, member_id FROM job_member_failures \
             WHERE job = $1 AND NOT parked AND next_attempt_at <= $2 \
             ORDER BY next_attempt_at LIMIT $3",
            &[&job, &now, &limit],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::all_failures"))]
pub async fn all_failures(
    client: &impl GenericClient,
) -> Result<Vec<StoredFailure>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT job, program_id, member_id, attempts, last_error, next_attempt_at, parked \
             FROM job_member_failures ORDER BY parked DESC, failed_at DESC LIMIT 200",
            &[],
        )
        .await?;
    rows.iter().map(failure).collect()
}

fn failure(row: &tokio_postgres::Row) -> Result<StoredFailure, tokio_postgres::Error> {
    Ok(StoredFailure {
        job: row.try_get("job")?,
        program_id: row.try_get("program_id")?,
        member_id: row.try_get("member_id")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        parked: row.try_get("parked")?,
    })
}

/// Members with batches expiring in `(at, at + the program's expiring_soon_days]` not yet
/// announced, after `after`: one chunk of the expiring-soon job.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::members_expiring_soon"))]
pub async fn members_expiring_soon(
    client: &impl GenericClient,
    at: DateTime<Utc>,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> Result<Vec<(String, Uuid)>, tokio_postgres::Error> {
    let (program, member) = after.unwrap_or_default();
    let rows = client
        .query(
            "SELECT DISTINCT b.program_id, b.member_id FROM point_batches b \
             JOIN programs p ON p.program_id = b.program_id \
             JOIN program_rules r ON r.program_id = p.program_id AND r.version = p.rules_version \
             WHERE b.remaining > 0 AND b.expiry_notice_at IS NULL AND b.expires_at > $1 \
               AND b.expires_at <= $1 + make_interval(days => \
                 COALESCE((r.rules ->> 'expiring_soon_days')::int, 30)) \
               AND (b.program_id, b.member_id) > ($2, $3) \
             ORDER BY 1, 2 LIMIT $4",
            &[&at, &program, &member, &limit],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// The member's batches expiring in `(at, until]` not yet announced, locked; marks them
/// announced. (batch, remaining, expires_at).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::take_expiring_soon"))]
pub async fn take_expiring_soon(
    tx: &MemberTx<'_>,
    at: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<(Uuid, i64, DateTime<Utc>)>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "UPDATE point_batches SET expiry_notice_at = $3 \
             WHERE program_id = $1 AND member_id = $2 AND remaining > 0 \
               AND expiry_notice_at IS NULL AND expires_at > $3 AND expires_at <= $4 \
             RETURNING batch_id, remaining, expires_at",
            &[&tx.program().as_str(), &tx.member().as_uuid(), &at, &until],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

/// Members of a program born on (month, day), enrolled by `at`, after `after`.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::members_born_on"))]
pub async fn members_born_on(
    client: &impl GenericClient,
    program: &str,
    days: &[(u32, u32)],
    at: DateTime<Utc>,
    after: Uuid,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let months: Vec<f64> = days.iter().map(|(m, _)| f64::from(*m)).collect();
    let mdays: Vec<f64> = days.iter().map(|(_, d)| f64::from(*d)).collect();
    let rows = client
        .query(
            "SELECT m.member_id FROM unnest($2::float8[], $3::float8[]) AS d(month, day) \
             JOIN members m ON m.program_id = $1 AND m.birthday IS NOT NULL \
               AND EXTRACT(MONTH FROM m.birthday) = d.month \
               AND EXTRACT(DAY FROM m.birthday) = d.day \
             WHERE m.enrolled_at <= $4 AND m.member_id > $5 ORDER BY m.member_id LIMIT $6",
            &[&program, &months, &mdays, &at, &after, &limit],
        )
        .await?;
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// A program's members after `after`, enrolled by `at`.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::members_of"))]
pub async fn members_of(
    client: &impl GenericClient,
    program: &str,
    at: DateTime<Utc>,
    after: Uuid,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT member_id FROM members WHERE program_id = $1 AND member_id > $2 \
               AND enrolled_at <= $3 ORDER BY member_id LIMIT $4",
            &[&program, &after, &at, &limit],
        )
        .await?;
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// A member's last earning award (entry, when), if any, and its enrolment.
pub type LastEarning = (Option<(Uuid, DateTime<Utc>)>, DateTime<Utc>);

/// The member's last purchase award that earned points: (entry, when); and its enrolment.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::last_earning"))]
pub async fn last_earning(
    client: &impl GenericClient,
    program: &str,
    member: Uuid,
) -> Result<LastEarning, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT m.enrolled_at, a.entry_id, a.created_at FROM members m \
             LEFT JOIN LATERAL (SELECT entry_id, created_at FROM ledger_entries \
                 WHERE program_id = m.program_id AND member_id = m.member_id \
                   AND status_at IS NOT NULL AND kind = 'award' AND points > 0 \
                 ORDER BY status_at DESC LIMIT 1) a ON true \
             WHERE m.program_id = $1 AND m.member_id = $2",
            &[&program, &member],
        )
        .await?;
    let entry: Option<Uuid> = row.try_get("entry_id")?;
    let at: Option<DateTime<Utc>> = row.try_get("created_at")?;
    Ok((entry.zip(at), row.try_get("enrolled_at")?))
}

/// Deletes up to `limit` of a program's events created before `before`, oldest first, and
/// moves the program's horizon past them. Returns how many were deleted.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "jobs::prune_events"))]
pub async fn prune_events(
    client: &mut deadpool_postgres::Client,
    program: &str,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "WITH doomed AS (SELECT txid, seq FROM events \
                 WHERE program_id = $1 AND created_at < $2 ORDER BY txid, seq LIMIT $3) \
             DELETE FROM events e USING doomed d \
             WHERE e.program_id = $1 AND e.txid = d.txid AND e.seq = d.seq \
             RETURNING e.txid::text, e.seq",
            &[&program, &before, &limit],
        )
        .await?;
    let last = rows
        .iter()
        .map(|row| {
            let txid: String = row.get(0);
            Position {
                txid: txid.parse().unwrap_or(0),
                seq: row.get(1),
            }
        })
        .max();
    if let Some(last) = last {
        tx.execute(
            "INSERT INTO event_horizons (program_id, pruned_txid, pruned_seq, pruned_at) \
             VALUES ($1, $2::text::xid8, $3, $4) \
             ON CONFLICT (program_id) DO UPDATE SET \
               pruned_txid = EXCLUDED.pruned_txid, pruned_seq = EXCLUDED.pruned_seq, \
               pruned_at = EXCLUDED.pruned_at \
             WHERE (event_horizons.pruned_txid, event_horizons.pruned_seq) \
               < (EXCLUDED.pruned_txid, EXCLUDED.pruned_seq)",
            &[&program, &last.txid.to_string(), &last.seq, &now],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}
