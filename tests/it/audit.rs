use crate::helpers::{spawn_app, usd_rules, TestApp};
use flash_loyalty::grpc::proto;
use std::process::Command;

fn flash_audit(app: &TestApp) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flash"))
        .args(["audit", "--program", crate::helpers::PROGRAM])
        .env("FLASH_DATABASE_URL", &app.database_url)
        .env("FLASH_LOG", "error")
        .output()
        .expect("run flash audit")
}

#[tokio::test]
async fn flash_audit_exits_zero_on_a_clean_ledger_and_non_zero_on_a_corrupt_row() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    app.earn(&member, 100).await;
    app.spend(&member, 30).await;

    let clean = flash_audit(&app);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("0 violations"));

    let client = app.db.get().await.unwrap();
    client
        .execute("UPDATE point_batches SET remaining = remaining - 1", &[])
        .await
        .unwrap();
    let corrupt = flash_audit(&app);
    let report = String::from_utf8_lossy(&corrupt.stdout);
    assert_eq!(corrupt.status.code(), Some(1), "{report}");
    assert!(report.contains("violation"), "{report}");
}

#[tokio::test]
async fn the_audit_catches_a_spend_that_skipped_the_oldest_batch() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let oldest = app.earn(&member, 100).await;
    app.clock.advance(chrono::Duration::days(1));
    let newer = app.earn(&member, 100).await;
    let spend = app.spend(&member, 50).await;
    let (oldest, newer) = (
        app.allocation_batch_of(&oldest.entry_id).await,
        app.allocation_batch_of(&newer.entry_id).await,
    );
    // Move the draw to the newer batch, keeping every sum intact.
    let client = app.db.get().await.unwrap();
    let spend_id: uuid::Uuid = spend.entry_id.parse().unwrap();
    let (oldest, newer): (uuid::Uuid, uuid::Uuid) =
        (oldest.parse().unwrap(), newer.parse().unwrap());
    client
        .execute(
            "UPDATE allocations SET batch_id = $2 WHERE entry_id = $1",
            &[&spend_id, &newer],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE point_batches SET remaining = 100 WHERE batch_id = $1",
            &[&oldest],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE point_batches SET remaining = 50 WHERE batch_id = $1",
            &[&newer],
        )
        .await
        .unwrap();
    let program = flash_loyalty::domain::ProgramId::parse(crate::helpers::PROGRAM).unwrap();
    let report = app.service.audit(&program).await.unwrap();
    assert!(!report.is_clean());
    assert!(
        report.to_string().contains("allocations differ"),
        "{report}"
    );
}

async fn audit_report(app: &TestApp) -> String {
    let program = flash_loyalty::domain::ProgramId::parse(crate::helpers::PROGRAM).unwrap();
    app.service.audit(&program).await.unwrap().to_string()
}

async fn sql(app: &TestApp, statements: &str) {
    app.db
        .get()
        .await
        .unwrap()
        .batch_execute(statements)
        .await
        .unwrap();
}

/// The refund-then-cancel hole as an older version wrote it: the cancelled spend put the
/// refunded points back into the refunded award's batch and nobody owed anything.
#[tokio::test]
async fn the_audit_catches_refunded_points_put_back_by_a_cancelled_spend() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let award = app.earn(&member, 100).await;
    let spend = app.spend(&member, 100).await;
    let entry = |id: &str| proto::EntryRef {
        r#ref: Some(proto::entry_ref::Ref::EntryId(id.into())),
    };
    app.ledger
        .reverse_award(proto::ReverseAwardRequest {
            program_id: crate::helpers::PROGRAM.into(),
            idempotency_key: "refund".into(),
            award: Some(entry(&award.entry_id)),
            points: None,
            reason: "refund".into(),
        })
        .await
        .unwrap();
    app.ledger
        .reverse_spend(proto::ReverseSpendRequest {
            program_id: crate::helpers::PROGRAM.into(),
            idempotency_key: "cancel".into(),
            spend: Some(entry(&spend.entry_id)),
            points: None,
            reason: "cancelled".into(),
        })
        .await
        .unwrap();
    app.assert_audit_clean().await;
    let batch = app.allocation_batch_of(&award.entry_id).await;
    sql(
        &app,
        &format!(
            "UPDATE ledger_entries SET points = 100, repaid_points = NULL \
               WHERE kind = 'spend_reversal';
             INSERT INTO allocations SELECT program_id, entry_id, '{batch}', 100 \
               FROM ledger_entries WHERE kind = 'spend_reversal';
             UPDATE point_batches SET remaining = 100 WHERE batch_id = '{batch}';
             UPDATE members SET points_owed = 0;"
        ),
    )
    .await;
    let report = audit_report(&app).await;
    assert!(report.contains("more than credited"), "{report}");
    assert!(report.contains("owes 0 points"), "{report}");
}

/// The future-sweep hole: an expiry entry that took points still valid at its time.
#[tokio::test]
async fn the_audit_catches_an_expiry_that_took_points_before_they_expired() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    app.earn(&member, 100).await;
    app.clock.advance(chrono::Duration::days(366));
    assert_eq!(app.expire().await.points_expired, 100);
    app.assert_audit_clean().await;
    sql(
        &app,
        "UPDATE ledger_entries SET created_at = created_at - interval '60 days' \
         WHERE kind = 'expiry'",
    )
    .await;
    let report = audit_report(&app).await;
    assert!(report.contains("before it expired"), "{report}");
}

/// The time-zone hole: after UTC → Pacific/Kiritimati an older version counted a second
/// award against the next day's cap, within the same Kiritimati day.
#[tokio::test]
async fn the_audit_catches_a_second_cap_opened_by_a_time_zone_change() {
    let mut app = spawn_app().await;
    let mut rules = usd_rules();
    rules.timezone = "UTC".into();
    rules.daily_cap_points = Some(500);
    app.create_program(rules).await;
    let member = app.enroll().await;
    assert_eq!(app.earn(&member, 600).await.awarded_points, 500);
    app.assert_audit_clean().await;
    sql(
        &app,
        &format!(
            "INSERT INTO program_rules SELECT program_id, 2, \
               jsonb_set(rules, '{{timezone}}', '\"Pacific/Kiritimati\"'), created_at + interval '1 minute' \
               FROM program_rules WHERE version = 1;
             UPDATE programs SET rules_version = 2;
             INSERT INTO ledger_entries (program_id, entry_id, member_id, kind, points, \
                 idempotency_key, request, outcome, rules_version, created_at, source, \
                 external_ref, amount_minor, currency, occurred_at, requested_points, cap_day, capped, \
                 status_points, status_at)
               SELECT program_id, gen_random_uuid(), member_id, 'award', 500, 'second', '{{}}', \
                 '{{}}', 2, created_at + interval '2 minutes', source, 'second-order', 60000, \
                 currency, occurred_at, 600, cap_day + 1, true, 500, created_at + interval '2 minutes'
               FROM ledger_entries WHERE member_id = '{member}';
             INSERT INTO point_batches SELECT program_id, gen_random_uuid(), member_id, entry_id, \
                 500, 500, created_at, created_at + interval '365 days'
               FROM ledger_entries WHERE idempotency_key = 'second';"
        ),
    )
    .await;
    let report = audit_report(&app).await;
    assert!(report.contains("over the cap 500"), "{report}");
    assert!(report.contains("Pacific/Kiritimati"), "{report}");
}

/// The overflow hole: a release build without overflow checks left a member's batches
/// holding more than i64 in all.
#[tokio::test]
async fn the_audit_catches_a_balance_past_i64_without_failing_itself() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    app.earn(&member, 100).await;
    app.earn(&member, 100).await;
    app.assert_audit_clean().await;
    sql(
        &app,
        "UPDATE ledger_entries SET points = 9223372036854775000, \
             requested_points = 9223372036854775000, status_points = 9223372036854775000 WHERE kind = 'award';
         UPDATE point_batches SET amount = 9223372036854775000, remaining = 9223372036854775000;",
    )
    .await;
    let report = audit_report(&app).await;
    assert!(report.contains("past i64"), "{report}");
}
