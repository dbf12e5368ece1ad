//! The worker fleet: jobs claimed with leases and taken over when a replica dies, bonuses
//! paid once whatever runs them, members isolated when they fail.
use crate::helpers::{spawn_app, timestamp, usd_rules, TestApp};
use chrono::{DateTime, Duration, TimeZone, Utc};
use flash_loyalty::grpc::proto;
use flash_loyalty::service::{Job, Replica, RunOutcome, MAX_ATTEMPTS};
use std::process::{Child, Command};
use uuid::Uuid;

fn replica(name: &str) -> Replica {
    Replica {
        id: name.into(),
        lease: Duration::seconds(60),
        period: None,
    }
}

async fn run(app: &TestApp, job: Job, replica_name: &str) -> RunOutcome {
    app.service
        .run_job(job, app.clock_now(), &replica(replica_name))
        .await
        .expect("job run")
}

fn counts(outcome: RunOutcome) -> flash_loyalty::service::RunCounts {
    match outcome {
        RunOutcome::Done { counts, .. } => counts,
        other => panic!("the run did not complete: {other:?}"),
    }
}

async fn program(app: &mut TestApp, id: &str, rules: proto::ProgramRules) {
    app.create_named_program(id, rules).await;
}

async fn enroll(
    app: &mut TestApp,
    program: &str,
    birthday: &str,
    enrolled_at: Option<DateTime<Utc>>,
) -> String {
    let member = Uuid::new_v4().to_string();
    app.ledger
        .enroll_member(proto::EnrollMemberRequest {
            program_id: program.into(),
            member_id: member.clone(),
            birthday: birthday.into(),
            enrolled_at: enrolled_at.map(timestamp),
            ..Default::default()
        })
        .await
        .expect("enroll");
    member
}

/// The bonus entries of a member: (reason, points, key).
async fn bonuses(app: &TestApp, member: &str) -> Vec<(String, i64, String)> {
    let member: Uuid = member.parse().unwrap();
    app.db
        .get()
        .await
        .unwrap()
        .query(
            "SELECT reason, points, idempotency_key FROM ledger_entries \
             WHERE member_id = $1 AND kind = 'bonus' ORDER BY seq",
            &[&member],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

fn birthday_rules(timezone: &str) -> proto::ProgramRules {
    proto::ProgramRules {
        timezone: timezone.into(),
        birthday_bonus_points: Some(100),
        ..usd_rules()
    }
}

#[tokio::test]
async fn birthdays_are_paid_on_the_local_day_once_a_year_and_29_february_on_the_28th() {
    let mut app = spawn_app().await;
    program(&mut app, "kiri", birthday_rules("Pacific/Kiritimati")).await;
    program(&mut app, "la", birthday_rules("America/Los_Angeles")).await;
    // 12:00 UTC on 28 February 2027: 1 March, 02:00 in Kiritimati; 28 February, 04:00 in LA.
    app.clock
        .set(Utc.with_ymd_and_hms(2027, 2, 28, 12, 0, 0).unwrap());
    let kiri_today = enroll(&mut app, "kiri", "1990-03-01", None).await;
    let kiri_yesterday = enroll(&mut app, "kiri", "1990-02-28", None).await;
    let la_today = enroll(&mut app, "la", "1985-02-28", None).await;
    let la_leapling = enroll(&mut app, "la", "2000-02-29", None).await;
    let la_tomorrow = enroll(&mut app, "la", "1985-03-01", None).await;
    let paid = counts(run(&app, Job::Birthday, "a").await);
    assert_eq!((paid.changed, paid.amount), (3, 300));
    for member in [&kiri_today, &la_today, &la_leapling] {
        let found = bonuses(&app, member).await;
        assert_eq!(found.len(), 1, "{member}: {found:?}");
        assert_eq!(found[0].0, "birthday");
        assert!(found[0].2.ends_with(":2027"), "{:?}", found[0].2);
    }
    for member in [&kiri_yesterday, &la_tomorrow] {
        assert!(bonuses(&app, member).await.is_empty());
    }
    // The same slot again is finished; later runs the same day pay nothing more.
    assert_eq!(run(&app, Job::Birthday, "b").await, RunOutcome::NotClaimed);
    app.clock.advance(Duration::hours(1));
    let again = counts(run(&app, Job::Birthday, "b").await);
    assert_eq!((again.examined, again.changed), (3, 0));
    // In a leap year the leapling waits for the 29th.
    app.clock
        .set(Utc.with_ymd_and_hms(2028, 2, 28, 20, 0, 0).unwrap());
    counts(run(&app, Job::Birthday, "a").await);
    assert_eq!(bonuses(&app, &la_leapling).await.len(), 1);
    assert_eq!(bonuses(&app, &la_today).await.len(), 2);
    app.clock
        .set(Utc.with_ymd_and_hms(2028, 2, 29, 20, 0, 0).unwrap());
    counts(run(&app, Job::Birthday, "a").await);
    assert_eq!(bonuses(&app, &la_leapling).await.len(), 2);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn reengagement_is_paid_once_per_inactive_spell() {
    let mut app = spawn_app().await;
    app.create_program(proto::ProgramRules {
        reengagement_after_days: Some(30),
        reengagement_bonus_points: Some(50),
        ..usd_rules()
    })
    .await;
    let active = app.enroll().await;
    let never = app.enroll().await;
    app.earn(&active, 10).await;
    app.clock.advance(Duration::days(29));
    assert_eq!(counts(run(&app, Job::Reengagement, "a").await).changed, 0);
    app.clock.advance(Duration::days(2));
    let first = counts(run(&app, Job::Reengagement, "a").await);
    assert_eq!((first.changed, first.amount), (2, 100));
    // The next days of the same spell pay nothing.
    for _ in 0..3 {
        app.clock.advance(Duration::days(1));
        assert_eq!(counts(run(&app, Job::Reengagement, "a").await).changed, 0);
    }
    // A purchase ends the spell; the next spell pays again.
    app.earn(&active, 10).await;
    app.clock.advance(Duration::days(31));
    let second = counts(run(&app, Job::Reengagement, "a").await);
    assert_eq!(
        second.changed, 1,
        "only the member who came back and left again"
    );
    let reasons: Vec<String> = bonuses(&app, &active)
        .await
        .into_iter()
        .map(|(reason, _, _)| reason)
        .collect();
    assert_eq!(reasons, ["reengagement", "reengagement"]);
    assert_eq!(bonuses(&app, &never).await.len(), 1);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_failing_member_is_retried_with_backoff_then_parked_and_the_batch_completes() {
    let mut app = spawn_app().await;
    program(&mut app, "la", birthday_rules("America/Los_Angeles")).await;
    app.clock
        .set(Utc.with_ymd_and_hms(2027, 6, 1, 12, 0, 0).unwrap());
    let members = [
        enroll(&mut app, "la", "1990-06-01", None).await,
        enroll(&mut app, "la", "1991-06-01", None).await,
        enroll(&mut app, "la", "1992-06-01", None).await,
    ];
    let broken = &members[1];
    // A real fault in the database, for one member only.
    app.db
        .get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON ledger_entries FOR EACH ROW \
               WHEN (NEW.member_id = '{broken}') EXECUTE FUNCTION refuse();"
        ))
        .await
        .unwrap();
    let first = counts(run(&app, Job::Birthday, "a").await);
    assert_eq!((first.changed, first.failed), (2, 1));
    assert_eq!(bonuses(&app, &members[0]).await.len(), 1);
    assert_eq!(bonuses(&app, &members[2]).await.len(), 1);
    // Hourly runs the same local day retry it (the backoff has passed each time) until it
    // is parked; then it is skipped.
    for attempt in 2..=MAX_ATTEMPTS {
        app.clock.advance(Duration::hours(1));
        let retried = counts(run(&app, Job::Birthday, "a").await);
        assert_eq!(retried.failed, 1, "attempt {attempt}");
    }
    app.clock.advance(Duration::hours(1));
    let parked = counts(run(&app, Job::Birthday, "a").await);
    assert_eq!((parked.failed, parked.skipped), (0, 1));
    let listed = Command::new(env!("CARGO_BIN_EXE_flash"))
        .args(["jobs", "list"])
        .env("FLASH_DATABASE_URL", &app.database_url)
        .env("FLASH_LOG", "error")
        .output()
        .expect("flash jobs list");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{text}");
    assert!(
        text.contains(&format!("la {broken}")) && text.contains("PARKED"),
        "{text}"
    );
    assert!(text.contains("injected fault"), "{text}");
    // A failure inside the backoff is skipped, not retried at once.
    let client = app.db.get().await.unwrap();
    let waiting: i64 = client
        .query_one(
            "SELECT count(*) FROM job_member_failures WHERE parked AND attempts = $1",
            &[&MAX_ATTEMPTS],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 1);
}

/// A replica that claimed a run and died: its lease runs out and another replica takes the
/// run over from its checkpoint.
#[tokio::test]
async fn a_run_abandoned_by_a_dead_replica_is_taken_over_from_its_checkpoint() {
    let mut app = spawn_app().await;
    program(&mut app, "utc", birthday_rules("UTC")).await;
    app.clock
        .set(Utc.with_ymd_and_hms(2027, 6, 1, 12, 0, 0).unwrap());
    let mut members = Vec::new();
    for _ in 0..5 {
        members.push(enroll(&mut app, "utc", "1990-06-01", None).await);
    }
    members.sort();
    let client = app.db.get().await.unwrap();
    let now = app.clock_now();
    let slot = Job::Birthday.slot(now, None);
    let dead = flash_loyalty::store::jobs::claim(
        &**client,
        "birthday",
        slot,
        "dead-replica",
        now,
        now + Duration::seconds(60),
    )
    .await
    .unwrap()
    .expect("the dead replica's claim");
    // It had done the first two members when it died.
    let done = ("utc".to_owned(), members[1].parse::<Uuid>().unwrap());
    flash_loyalty::store::jobs::checkpoint(
        &**client,
        dead.run_id,
        "dead-replica",
        now + Duration::seconds(60),
        Some(&done),
        &serde_json::json!({}),
    )
    .await
    .unwrap();
    // While its lease lives, nobody else runs the slot.
    assert_eq!(
        run(&app, Job::Birthday, "live").await,
        RunOutcome::NotClaimed
    );
    app.clock.advance(Duration::seconds(61));
    let outcomes = app
        .service
        .take_over_abandoned(&replica("live"))
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 1);
    let RunOutcome::Done { counts, takeovers } = outcomes[0].1.clone() else {
        panic!("{outcomes:?}");
    };
    assert_eq!(takeovers, 1);
    assert_eq!(counts.examined, 3, "resumed after the checkpoint");
    for member in &members[2..] {
        assert_eq!(bonuses(&app, member).await.len(), 1);
    }
    // The dead replica, were it to wake up, could not finish the run.
    let finished = flash_loyalty::store::jobs::finish(
        &**client,
        dead.run_id,
        "dead-replica",
        app.clock_now(),
        &serde_json::json!({}),
    )
    .await
    .unwrap();
    assert!(!finished);
}

#[tokio::test]
async fn expiring_points_are_announced_once_per_batch_and_old_events_are_pruned() {
    let mut app = spawn_app().await;
    app.create_program(proto::ProgramRules {
        points_validity_days: 40,
        expiring_soon_days: Some(10),
        events_retention_days: Some(20),
        ..usd_rules()
    })
    .await;
    let member = app.enroll().await;
    app.earn(&member, 10).await;
    app.clock.advance(Duration::days(5));
    app.earn(&member, 20).await;
    app.clock.advance(Duration::days(26));
    // Day 31: the first batch expires on day 40, within 10 days; the second on day 45.
    let first = counts(run(&app, Job::ExpiringSoon, "a").await);
    assert_eq!((first.changed, first.amount), (1, 1));
    app.clock.advance(Duration::hours(1));
    assert_eq!(counts(run(&app, Job::ExpiringSoon, "a").await).changed, 0);
    app.clock.advance(Duration::days(5));
    let second = counts(run(&app, Job::ExpiringSoon, "a").await);
    assert_eq!((second.changed, second.amount), (1, 1));
    let client = app.db.get().await.unwrap();
    let notices: Vec<serde_json::Value> = client
        .query(
            "SELECT payload FROM events WHERE event_type = 'points.expiring_soon' \
             ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(notices.len(), 2);
    assert_eq!(notices[0]["points"], 10);
    assert_eq!(notices[1]["points"], 20);
    // Day 36: the two awards (days 0 and 5) are past the 20-day retention.
    let pruned = counts(run(&app, Job::EventPrune, "a").await);
    assert_eq!(pruned.amount, 2);
    let (left, horizon): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM events), \
                        (SELECT count(*) FROM event_horizons)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((left, horizon), (2, 1));
}

/// Three `flash worker` processes at once pay every bonus exactly once.
#[tokio::test]
async fn three_worker_processes_pay_every_bonus_once() {
    let mut app = spawn_app().await;
    let today = Utc::now().date_naive();
    let birthday = format!("1990-{}", today.format("%m-%d"));
    let birthday = if birthday.ends_with("02-29") {
        "1992-02-29".to_owned()
    } else {
        birthday
    };
    app.create_named_program(
        "fleet",
        proto::ProgramRules {
            timezone: "UTC".into(),
            birthday_bonus_points: Some(100),
            reengagement_after_days: Some(30),
            reengagement_bonus_points: Some(50),
            ..usd_rules()
        },
    )
    .await;
    // The processes read the real clock: the test's moves to it.
    app.clock.set(Utc::now());
    let long_ago = Utc::now() - Duration::days(100);
    let mut members = Vec::new();
    for _ in 0..60 {
        members.push(enroll(&mut app, "fleet", &birthday, Some(long_ago)).await);
    }
    let spawn = || -> Child {
        Command::new(env!("CARGO_BIN_EXE_flash"))
            .arg("worker")
            .env("FLASH_DATABASE_URL", &app.database_url)
            .env(
                "FLASH_REDIS_PREFIX",
                format!("test:{}:", Uuid::new_v4().simple()),
            )
            .env("FLASH_WORKER_INTERVAL_SECONDS", "1")
            .env("FLASH_JOB_LEASE_SECONDS", "5")
            .env("FLASH_JOB_PERIOD_SECONDS", "2")
            .env("FLASH_LOG", "warn")
            .spawn()
            .expect("spawn flash worker")
    };
    let mut workers = vec![spawn(), spawn(), spawn()];
    let client = app.db.get().await.unwrap();
    let count_bonuses = || async {
        client
            .query_one(
                "SELECT count(*) FROM ledger_entries WHERE kind = 'bonus'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while count_bonuses().await < 120 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A few more rounds of all three, then stop them.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    for member in &members {
        let mut reasons: Vec<String> = bonuses(&app, member)
            .await
            .into_iter()
            .map(|(reason, _, _)| reason)
            .collect();
        reasons.sort();
        assert_eq!(reasons, ["birthday", "reengagement"], "member {member}");
    }
    let replicas: i64 = client
        .query_one("SELECT count(DISTINCT claimed_by) FROM job_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert!(replicas >= 1);
    app.assert_ties_out().await;
}
