//! Every metric the process exports, named and described here and nowhere else: the rest
//! of the code records through the functions below, so a name never drifts between the
//! place that records it and the README. Scraped from `/metrics` on the HTTP port.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `flash_rpc_requests_total` | counter | method, code | gRPC calls answered |
//! | `flash_rpc_duration_seconds` | histogram | method, code | time to the response head |
//! | `flash_rpc_shed_total` | counter | method | gRPC calls refused at once because FLASH_MAX_IN_FLIGHT calls were in flight (also counted as UNAVAILABLE above) |
//! | `flash_points_awarded_total` | counter | program | points committed by purchase awards |
//! | `flash_points_spent_total` | counter | program | points committed by spends |
//! | `flash_points_reversed_total` | counter | program, of | points taken back (`of="award"`) or put back (`of="spend"`) by reversals |
//! | `flash_points_expired_total` | counter | program | points written off by expiry |
//! | `flash_daily_cap_hits_total` | counter | program | committed awards the daily cap cut short |
//! | `flash_awards_withheld_total` | counter | program | awards refused because the cap's Redis could not answer |
//! | `flash_member_lock_wait_seconds` | histogram | | time spent in `pg_advisory_xact_lock` |
//! | `flash_db_pool_size` / `_in_use` / `_waiting` | gauges | | the PostgreSQL pool, read at scrape time |
//! | `flash_job_runs_total` | counter | job, outcome | worker job runs: done, not_claimed, lease_lost, failed |
//! | `flash_job_run_duration_seconds` | histogram | job, outcome | how long a job run took |
//! | `flash_event_subscribers` | gauge | | event-stream subscriptions open, read at scrape time |
//!
//! Replays of an idempotent request count nothing: points are counted once, after the
//! unit of work that wrote them committed.
use crate::domain::ProgramId;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const RPC_REQUESTS: &str = "flash_rpc_requests_total";
pub const RPC_DURATION: &str = "flash_rpc_duration_seconds";
pub const RPC_SHED: &str = "flash_rpc_shed_total";
pub const POINTS_AWARDED: &str = "flash_points_awarded_total";
pub const POINTS_SPENT: &str = "flash_points_spent_total";
pub const POINTS_REVERSED: &str = "flash_points_reversed_total";
pub const POINTS_EXPIRED: &str = "flash_points_expired_total";
pub const DAILY_CAP_HITS: &str = "flash_daily_cap_hits_total";
pub const AWARDS_WITHHELD: &str = "flash_awards_withheld_total";
pub const MEMBER_LOCK_WAIT: &str = "flash_member_lock_wait_seconds";
pub const DB_POOL_SIZE: &str = "flash_db_pool_size";
pub const DB_POOL_IN_USE: &str = "flash_db_pool_in_use";
pub const DB_POOL_WAITING: &str = "flash_db_pool_waiting";
pub const JOB_RUNS: &str = "flash_job_runs_total";
pub const JOB_RUN_DURATION: &str = "flash_job_run_duration_seconds";
pub const EVENT_SUBSCRIBERS: &str = "flash_event_subscribers";
pub const EVENT_DELIVERY_LAG: &str = "flash_event_delivery_lag_seconds";

/// Histogram buckets, in seconds: from a fast lock (1 ms) to a long job run (10 min).
const BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes, so
/// they never pile up in memory.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's Prometheus handle. The first call installs the global recorder (once per
/// process: several servers in one test process share it) and describes every metric.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS_SECONDS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(error) = ::metrics::set_global_recorder(recorder) {
            tracing::warn!(%error, "another metrics recorder is installed: /metrics stays empty");
        }
        describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "starting the metrics upkeep thread failed");
        }
        handle
    })
}

/// The text exposition of every metric.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        RPC_REQUESTS,
        "gRPC calls answered, by method and status code"
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "gRPC call latency to the response head, by method and status code"
    );
    describe_counter!(
        RPC_SHED,
        "gRPC calls refused at once because the server was at FLASH_MAX_IN_FLIGHT"
    );
    describe_counter!(POINTS_AWARDED, "Points committed by purchase awards");
    describe_counter!(POINTS_SPENT, "Points committed by spends");
    describe_counter!(
        POINTS_REVERSED,
        "Points taken back from awards (of=award) or put back from spends (of=spend)"
    );
    describe_counter!(POINTS_EXPIRED, "Points written off by expiry");
    describe_counter!(DAILY_CAP_HITS, "Committed awards the daily cap cut short");
    describe_counter!(
        AWARDS_WITHHELD,
        "Capped awards refused because the cap's Redis could not answer"
    );
    describe_histogram!(
        MEMBER_LOCK_WAIT,
        Unit::Seconds,
        "Time spent taking members' advisory locks"
    );
    describe_gauge!(DB_POOL_SIZE, "PostgreSQL connections open in the pool");
    describe_gauge!(DB_POOL_IN_USE, "PostgreSQL connections checked out");
    describe_gauge!(
        DB_POOL_WAITING,
        "Callers waiting for a PostgreSQL connection"
    );
    describe_counter!(JOB_RUNS, "Worker job runs, by job and outcome");
    describe_histogram!(
        JOB_RUN_DURATION,
        Unit::Seconds,
        "Worker job run duration, by job and outcome"
    );
    describe_gauge!(EVENT_SUBSCRIBERS, "Event-stream subscriptions open");
    describe_histogram!(
        EVENT_DELIVERY_LAG,
        Unit::Seconds,
        "How old an event is when it reaches a subscriber (its commit to its delivery)"
    );
}

/// One gRPC call answered.
pub fn rpc_answered(method: &str, code: &'static str, elapsed: Duration) {
    let labels = [("method", method.to_owned()), ("code", code.to_owned())];
    ::metrics::counter!(RPC_REQUESTS, &labels).increment(1);
    ::metrics::histogram!(RPC_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// A gRPC call refused by load shedding.
pub fn rpc_shed(method: &str) {
    ::metrics::counter!(RPC_SHED, "method" => method.to_owned()).increment(1);
}

/// A purchase award committed (not a replay).
pub fn award_committed(program: &ProgramId, awarded_points: i64, capped: bool) {
    let program = program.to_string();
    ::metrics::counter!(POINTS_AWARDED, "program" => program.clone())
        .increment(points(awarded_points));
    if capped {
        ::metrics::counter!(DAILY_CAP_HITS, "program" => program).increment(1);
    }
}

/// An award refused because the cap's Redis could not answer.
pub fn award_withheld(program: &ProgramId) {
    ::metrics::counter!(AWARDS_WITHHELD, "program" => program.to_string()).increment(1);
}

/// A spend committed (not a replay).
pub fn spend_committed(program: &ProgramId, spent_points: i64) {
    ::metrics::counter!(POINTS_SPENT, "program" => program.to_string())
        .increment(points(spent_points));
}

/// A reversal committed (not a replay): `of` is `award` or `spend`.
pub fn reversal_committed(program: &ProgramId, of: &'static str, reversed_points: i64) {
    ::metrics::counter!(POINTS_REVERSED, "program" => program.to_string(), "of" => of)
        .increment(points(reversed_points));
}

/// A member's due batches written off.
pub fn expiry_committed(program: &ProgramId, expired_points: i64) {
    ::metrics::counter!(POINTS_EXPIRED, "program" => program.to_string())
        .increment(points(expired_points));
}

/// The time one unit of work waited for its members' locks.
pub fn member_lock_waited(elapsed: Duration) {
    ::metrics::histogram!(MEMBER_LOCK_WAIT).record(elapsed.as_secs_f64());
}

/// One job run ended: `outcome` is done, not_claimed, lease_lost or failed.
pub fn job_run(job: &'static str, outcome: &'static str, elapsed: Duration) {
    ::metrics::counter!(JOB_RUNS, "job" => job, "outcome" => outcome).increment(1);
    ::metrics::histogram!(JOB_RUN_DURATION, "job" => job, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// An event handed to a subscriber `lag` after it was written.
pub fn event_delivered(lag: Duration) {
    ::metrics::histogram!(EVENT_DELIVERY_LAG).record(lag.as_secs_f64());
}

/// The pool and stream gauges, set just before a scrape renders.
pub fn scrape_gauges(pool: &deadpool_postgres::Status, event_subscribers: usize) {
    ::metrics::gauge!(DB_POOL_SIZE).set(pool.size as f64);
    ::metrics::gauge!(DB_POOL_IN_USE).set(pool.size.saturating_sub(pool.available) as f64);
    ::metrics::gauge!(DB_POOL_WAITING).set(pool.waiting as f64);
    ::metrics::gauge!(EVENT_SUBSCRIBERS).set(event_subscribers as f64);
}

/// Points as a counter increment; ledger figures here are never negative.
fn points(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
