use crate::helpers::{spawn_app, timestamp, usd_rules, PROGRAM};
use chrono::{Duration, TimeZone, Utc};
use flash_loyalty::grpc::proto::{self, entry_ref::Ref};
use tonic::Code;

#[tokio::test]
async fn the_roll_forward_of_a_scripted_month_ties_to_the_batches() {
    let mut app = spawn_app().await;
    let mut rules = usd_rules();
    rules.points_validity_days = 40;
    app.create_program(rules).await;
    let (alice, bob) = (app.enroll().await, app.enroll().await);
    // February: earn before the period, some of it expiring in March.
    app.clock
        .set(Utc.with_ymd_and_hms(2026, 2, 10, 9, 0, 0).unwrap());
    app.earn(&alice, 300).await;
    app.earn(&bob, 80).await;
    // March, day by day.
    let march = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let april = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
    app.clock.set(march + Duration::hours(10));
    let award = app.earn(&alice, 200).await;
    app.clock.advance(Duration::days(3));
    let spend = app.spend(&alice, 350).await;
    app.clock.advance(Duration::days(4));
    app.ledger
        .reverse_award(proto::ReverseAwardRequest {
            program_id: PROGRAM.into(),
            idempotency_key: "refund".into(),
            award: Some(proto::EntryRef {
                r#ref: Some(Ref::EntryId(award.entry_id)),
            }),
            points: Some(40),
            reason: String::new(),
        })
        .await
        .unwrap();
    app.clock.advance(Duration::days(2));
    app.ledger
        .reverse_spend(proto::ReverseSpendRequest {
            program_id: PROGRAM.into(),
            idempotency_key: "cancel".into(),
            spend: Some(proto::EntryRef {
                r#ref: Some(Ref::EntryId(spend.entry_id)),
            }),
            points: Some(60),
            reason: String::new(),
        })
        .await
        .unwrap();
    for (key, points) in [("credit", 15), ("debit", -5)] {
        app.ledger
            .adjust(proto::AdjustRequest {
                program_id: PROGRAM.into(),
                member_id: bob.clone(),
                idempotency_key: key.into(),
                points,
                reason: "support".into(),
                actor: "ops".into(),
            })
            .await
            .unwrap();
    }
    app.clock.set(march + Duration::days(25)); // February's batches are past expiry
    let swept = app.expire().await;
    assert!(swept.points_expired > 0);
    app.clock.set(april + Duration::hours(1));
    app.earn(&bob, 10).await; // after the period

    let report = app
        .ledger
        .get_liability(proto::GetLiabilityRequest {
            program_id: PROGRAM.into(),
            from: Some(timestamp(march)),
            to: Some(timestamp(april)),
        })
        .await
        .unwrap()
        .into_inner();
    let r = report.roll_forward.unwrap();
    assert_eq!(r.opening_balance_points, 380);
    assert_eq!(r.earned_points, 200);
    assert_eq!(r.spent_points, 350);
    assert_eq!(r.reversed_points, 40);
    assert_eq!(r.restored_points, 60);
    assert_eq!((r.adjusted_credit_points, r.adjusted_debit_points), (15, 5));
    assert_eq!(r.expired_points, swept.points_expired);
    let computed = r.opening_balance_points + r.earned_points + r.bonus_points
        - r.spent_points
        - r.reversed_points
        + r.restored_points
        + r.adjusted_credit_points
        - r.adjusted_debit_points
        - r.expired_points;
    assert_eq!(computed, r.closing_balance_points);
    // The closing balance plus April's award is what the batches hold now.
    assert_eq!(
        r.closing_balance_points + 10,
        report.batches_remaining_points
    );
    assert_eq!(report.unswept_expired_points, 0);
    assert_eq!(report.outstanding_points, report.batches_remaining_points);
    let by_month: i64 = report
        .outstanding_by_expiry_month
        .iter()
        .map(|m| m.points)
        .sum();
    assert_eq!(by_month, report.outstanding_points);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_liability_period_must_be_ordered_and_not_in_the_future() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let now = app.clock_now();
    let request = |from, to| proto::GetLiabilityRequest {
        program_id: PROGRAM.into(),
        from: Some(timestamp(from)),
        to: Some(timestamp(to)),
    };
    let backwards = app
        .ledger
        .get_liability(request(now, now - Duration::days(1)))
        .await
        .unwrap_err();
    assert_eq!(backwards.code(), Code::InvalidArgument);
    let future = app
        .ledger
        .get_liability(request(now, now + Duration::days(1)))
        .await
        .unwrap_err();
    assert_eq!(future.code(), Code::InvalidArgument);
    let unknown = proto::GetLiabilityRequest {
        program_id: "nobody".into(),
        ..request(now - Duration::days(1), now)
    };
    assert_eq!(
        app.ledger.get_liability(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
}
