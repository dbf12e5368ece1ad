use crate::helpers::{spawn_app, usd_rules, TestApp};
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
