use crate::helpers::{spawn_app, usd_rules, PROGRAM};
use chrono::Duration;
use flash_loyalty::grpc::proto;

#[tokio::test]
async fn the_sweep_writes_off_due_batches_once_per_member() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let (alice, bob) = (app.enroll().await, app.enroll().await);
    app.earn(&alice, 100).await;
    app.earn(&bob, 70).await;
    app.clock.advance(Duration::days(10));
    app.earn(&alice, 50).await; // not due with the others
    app.spend(&bob, 20).await;
    app.clock.advance(Duration::days(356)); // the first batches are past expiry

    let outcome = app.expire().await;
    assert_eq!(
        (
            outcome.members_expired,
            outcome.points_expired,
            outcome.members_failed
        ),
        (2, 150, 0)
    );
    let again = app.expire().await;
    assert_eq!(
        (again.members_expired, again.points_expired),
        (0, 0),
        "nothing expires twice"
    );

    assert_eq!(app.member(&alice).await.balance_points, 50);
    assert_eq!(app.member(&bob).await.balance_points, 0);
    let history = app
        .ledger
        .list_entries(proto::ListEntriesRequest {
            program_id: PROGRAM.into(),
            member_id: alice.clone(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let expiry = &history.entries[0];
    assert_eq!(
        (expiry.kind, expiry.points),
        (proto::EntryKind::Expiry as i32, -100)
    );
    assert_eq!(expiry.allocations.len(), 1);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn two_sweeps_at_once_expire_nothing_twice() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    for _ in 0..20 {
        let member = app.enroll().await;
        app.earn(&member, 10).await;
    }
    app.clock.advance(Duration::days(366));
    let now = app.clock_now();
    let (a, b) = (app.service.clone(), app.service.clone());
    let (first, second) = tokio::join!(a.expire_due(now), b.expire_due(now));
    let total = first.unwrap().points_expired + second.unwrap().points_expired;
    assert_eq!(total, 200);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_sweep_as_of_the_future_is_refused_and_the_points_expire_only_when_that_day_comes() {
    let mut app = spawn_app().await;
    let mut rules = usd_rules();
    rules.points_validity_days = 30;
    app.create_program(rules).await;
    let member = app.enroll().await;
    app.earn(&member, 100).await;
    let in_sixty_days = app.clock_now() + Duration::days(60);

    let error = app.service.expire_due(in_sixty_days).await.unwrap_err();
    assert_eq!(
        flash_loyalty::grpc::code_of(&error),
        tonic::Code::InvalidArgument
    );
    assert!(error.to_string().starts_with("as_of"), "{error}");
    assert_eq!(
        app.row_counts().await,
        (1, 1),
        "no expiry entry was written"
    );
    assert_eq!(app.member(&member).await.balance_points, 100);

    app.clock.set(in_sixty_days);
    let outcome = app.service.expire_due(in_sixty_days).await.unwrap();
    assert_eq!((outcome.members_expired, outcome.points_expired), (1, 100));
    let client = app.db.get().await.unwrap();
    let late_draws: i64 = client
        .query_one(
            "SELECT count(*) FROM ledger_entries e \
             JOIN allocations a ON (a.program_id, a.entry_id) = (e.program_id, e.entry_id) \
             JOIN point_batches b ON (b.program_id, b.batch_id) = (a.program_id, a.batch_id) \
             WHERE e.kind = 'expiry' AND b.expires_at > e.created_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    drop(client);
    assert_eq!(
        late_draws, 0,
        "an expiry drew a batch not yet expired at its time"
    );
    app.assert_ties_out().await;
}
