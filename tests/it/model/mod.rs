//! A model-based test: random sequences of ledger operations (awards, spends, award and
//! spend reversals, adjustments, clock moves, expiry sweeps, replays, reused keys, lost
//! cap counters) and tier operations (evaluations, manual tiers with holds, adjustments
//! that count toward status) run against the real service and against a small in-memory
//! model of the rules, written here independently of the crate's domain code. Every answer
//! must match the model (points at the tier's multiplier, cap, allocations in order and
//! batch by batch, errors, replays, the steps of an evaluation); so must GetMember
//! (balance, lifetime earned, next expiry) and GetTierStatus (tier, status points in the
//! rolling window, grace, hold) of the request's member after a request, of every member
//! after a clock move or a sweep and at the end of the case, when a last sweep writes off
//! what is left and the program's audit must be clean.
//! proptest shrinks a failing sequence to a minimal one and prints it.
//!
//! The model never imports the service's domain code: its independence is what makes it
//! worth having. It found, among others, the refund-then-cancel hole (a cancelled spend
//! put back refunded points) once refunds and cancellations of the same purchase were
//! likely in the mix, and it states the daily cap under time-zone changes on its own.
//!
//! One app (one database) serves the whole run; each case gets a fresh program and fresh
//! members, and the shared clock is reset to the same start, so cases run one after another.
//! `FLASH_MODEL_CASES` sets the number of cases (256 by default).
use crate::helpers::{redis_url, spawn_app_with, timestamp, TestApp};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use flash_loyalty::grpc::proto;
use flash_testing_support::dispatch::Clients;
use fred::prelude::{ClientLike, KeysInterface};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::Code;

mod ops;
mod oracle;
mod run;
use ops::*;
use oracle::*;
use run::*;

/// The rules of every case's program: USD, 1.5 points per dollar from $1, at most 100
/// purchase points a Tokyo day, batches valid 21 days.
const BASE_RATE_BP: i64 = 15_000;
const MIN_AMOUNT_MINOR: i64 = 100;
const DAILY_CAP_POINTS: i64 = 100;
const VALIDITY_DAYS: i64 = 21;
const MAX_OPS: usize = 40;
/// The zones a case's program may move to; the first is where it starts.
const ZONES: [&str; 5] = [
    "Asia/Tokyo",
    "UTC",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "America/Los_Angeles",
];
/// How long a replaced zone still bounds the cap: longer than any local day.
const CAP_ZONE_LOOKBACK_HOURS: i64 = 48;
/// The API's limits: the largest purchase, and the largest adjustment or spend.
const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;
const MAX_ADJUST_POINTS: i64 = 1_000_000_000_000;

/// The ladder: (code, qualify, maintain, multiplier in basis points). Status is counted
/// over one calendar month, so points age out within a case; a grace lasts 10 days with
/// reminders 5 and 2 days before its end; re-qualifying within 30 days of a demotion pays
/// 25 points once per demotion.
const TIERS: [(&str, i64, i64, i64); 3] = [
    ("member", 0, 0, 10_000),
    ("silver", 150, 100, 12_500),
    ("gold", 400, 300, 15_000),
];
const TIER_WINDOW_MONTHS: u32 = 1;
const GRACE_DAYS: i64 = 10;
const GRACE_REMINDER_DAYS: [i32; 2] = [5, 2];
const REUPGRADE_WINDOW_DAYS: i64 = 30;
const REUPGRADE_BONUS_POINTS: i64 = 25;

/// Referrals: a referee's first purchase of $20 or more pays the referrer 40 and the
/// referee 15; a full refund of it within 10 days takes both back.
const REFERRAL_MIN_AMOUNT_MINOR: i64 = 2_000;
const REFERRER_POINTS: i64 = 40;
const REFEREE_POINTS: i64 = 15;
const REFERRAL_CLAWBACK_DAYS: i64 = 10;
/// The default invite quotas.
const INVITES_PER_DAY: i64 = 50;
const INVITES_LIFETIME: i64 = 500;

/// Starts the Redis key prefix of the test's app, so a case can delete its cap counters.
const REDIS_PREFIX: &str = "test:model:";

fn zone(name: &str) -> chrono_tz::Tz {
    name.parse().expect("a known zone")
}

/// The local calendar day of an instant in a zone, and the instant that day began.
fn local_day(instant: DateTime<Utc>, zone: chrono_tz::Tz) -> (NaiveDate, DateTime<Utc>) {
    let day = instant.with_timezone(&zone).date_naive();
    // None of the model's zones skips midnight.
    let start = zone
        .from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .with_timezone(&Utc);
    (day, start)
}

fn case_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// Far past every expiry a case can reach (40 steps of at most 20 days, plus validity).
fn far_future() -> DateTime<Utc> {
    case_start() + Duration::days(20 * 365)
}

fn program_rules(timezone: &str) -> proto::ProgramRules {
    proto::ProgramRules {
        currency: "USD".into(),
        timezone: timezone.into(),
        base_rate_bp: BASE_RATE_BP,
        min_amount_minor: MIN_AMOUNT_MINOR,
        daily_cap_points: Some(DAILY_CAP_POINTS),
        points_validity_days: VALIDITY_DAYS as i32,
        tiers: TIERS
            .iter()
            .map(|&(code, qualify, maintain, multiplier)| proto::Tier {
                code: code.into(),
                name: code.to_uppercase(),
                qualify_points: qualify,
                maintain_points: maintain,
                multiplier_bp: multiplier,
            })
            .collect(),
        tier_window_months: Some(TIER_WINDOW_MONTHS as i32),
        grace_days: Some(GRACE_DAYS as i32),
        grace_reminder_days: GRACE_REMINDER_DAYS.to_vec(),
        reupgrade_window_days: Some(REUPGRADE_WINDOW_DAYS as i32),
        reupgrade_bonus_points: Some(REUPGRADE_BONUS_POINTS),
        referrer_points: Some(REFERRER_POINTS),
        referee_points: Some(REFEREE_POINTS),
        referral_qualify_min_amount_minor: Some(REFERRAL_MIN_AMOUNT_MINOR),
        referral_clawback_days: Some(REFERRAL_CLAWBACK_DAYS as i32),
        ..Default::default()
    }
}

#[test]
fn the_ledger_matches_its_model() {
    let cases = std::env::var("FLASH_MODEL_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A prefix of our own (the app is alone on its database; Redis is shared), unique
    // per run so two runs at once cannot see each other's counters.
    let prefix = format!("{REDIS_PREFIX}{}:", uuid::Uuid::new_v4().simple());
    let mut app = runtime.block_on(spawn_app_with(|settings| {
        settings.redis_prefix = prefix.clone();
    }));
    let redis = runtime.block_on(async {
        let config = fred::prelude::Config::from_url(&redis_url()).unwrap();
        let client = fred::prelude::Builder::from_config(config).build().unwrap();
        client.init().await.expect("connect to redis");
        client
    });
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let counter = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let result = runner.run(&case_strategy(), |case| {
        let number = counter.fetch_add(1, Ordering::SeqCst);
        runtime.block_on(run_case(&app, &redis, &prefix, number, &case))
    });
    let elapsed = started.elapsed();
    let ran = counter.load(Ordering::SeqCst);
    eprintln!(
        "model: {ran} cases in {:.1}s ({:.1} cases/s)",
        elapsed.as_secs_f64(),
        ran as f64 / elapsed.as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, case)) => {
            panic!("the ledger disagrees with its model: {reason}\nminimal case: {case:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("the model test aborted: {reason}"),
    }
    runtime.block_on(app.assert_ties_out());
}
