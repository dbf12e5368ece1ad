use crate::helpers::{spawn_app, timestamp, usd_rules, TestApp, PROGRAM};
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
                ..Default::default()
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
async fn a_liability_period_defaults_to_the_month_to_date_and_clamps_the_future() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    app.earn(&member, 10).await;
    // The period ends before `to`: the award is a minute old.
    app.clock.advance(Duration::minutes(1));
    let now = app.clock_now();
    let request = |from: Option<_>, to: Option<_>| proto::GetLiabilityRequest {
        program_id: PROGRAM.into(),
        from: from.map(timestamp),
        to: to.map(timestamp),
    };
    // No period: the program-local month to date (Paris: March began at 23:00 UTC).
    let month = app
        .ledger
        .get_liability(request(None, None))
        .await
        .unwrap()
        .into_inner();
    let month_start =
        chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 2, 28, 23, 0, 0).unwrap();
    assert_eq!(month.period_from, Some(timestamp(month_start)));
    assert_eq!(month.period_to, Some(timestamp(now)));
    assert!(!month.to_clamped);
    assert_eq!(month.roll_forward.unwrap().earned_points, 10);
    // A `to` in the future is clamped to now, and the answer says so.
    let clamped = app
        .ledger
        .get_liability(request(
            Some(now - Duration::days(1)),
            Some(now + Duration::days(1)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(clamped.to_clamped);
    assert_eq!(clamped.period_to, Some(timestamp(now)));
    assert_eq!(
        clamped.period_from,
        Some(timestamp(now - Duration::days(1)))
    );
    // Only `to`: from the start of its month.
    let only_to = app
        .ledger
        .get_liability(request(None, Some(now - Duration::hours(1))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_to.period_from, Some(timestamp(month_start)));
    // An empty or backwards period is refused, naming the clamp when there was one.
    let backwards = app
        .ledger
        .get_liability(request(Some(now), Some(now - Duration::days(1))))
        .await
        .unwrap_err();
    assert_eq!(backwards.code(), Code::InvalidArgument);
    let after_now = app
        .ledger
        .get_liability(request(
            Some(now + Duration::hours(1)),
            Some(now + Duration::days(1)),
        ))
        .await
        .unwrap_err();
    assert_eq!(after_now.code(), Code::InvalidArgument);
    assert!(
        after_now.message().contains("clamped to now"),
        "{after_now:?}"
    );
    let unknown = proto::GetLiabilityRequest {
        program_id: "nobody".into(),
        ..request(None, None)
    };
    assert_eq!(
        app.ledger.get_liability(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
}

const QUINTILLION: i64 = 1_000_000_000_000_000_000;

async fn earn_a_quintillion(app: &mut TestApp, member: &str) {
    let mut request = app.purchase(member, flash_loyalty::domain::MAX_AMOUNT_MINOR);
    request.currency = "JPY".into();
    assert_eq!(app.award(request).await.awarded_points, QUINTILLION);
}

fn todays_liability(app: &TestApp) -> proto::GetLiabilityRequest {
    let now = app.clock_now();
    proto::GetLiabilityRequest {
        program_id: PROGRAM.into(),
        from: Some(timestamp(now - Duration::days(1))),
        to: Some(timestamp(now)),
    }
}

#[tokio::test]
async fn program_totals_past_int64_are_out_of_range_naming_the_figure_and_exact_below() {
    let mut app = spawn_app().await;
    app.create_program(crate::helpers::quintillion_rules())
        .await;
    let mut members = vec![];
    for _ in 0..9 {
        let member = app.enroll().await;
        earn_a_quintillion(&mut app, &member).await;
        members.push(member);
    }
    app.clock.advance(Duration::seconds(1));

    // 9 × 10^18 fits an int64: answered exactly.
    let report = app
        .ledger
        .get_liability(todays_liability(&app))
        .await
        .unwrap()
        .into_inner();
    let total = 9 * QUINTILLION;
    assert_eq!(report.outstanding_points, total);
    assert_eq!(report.batches_remaining_points, total);
    let r = report.roll_forward.unwrap();
    assert_eq!((r.earned_points, r.closing_balance_points), (total, total));

    // 10 × 10^18 does not: OUT_OF_RANGE naming the figure, never INTERNAL or CANCELLED.
    let tenth = app.enroll().await;
    earn_a_quintillion(&mut app, &tenth).await;
    members.push(tenth);
    app.clock.advance(Duration::seconds(1));
    let error = app
        .ledger
        .get_liability(todays_liability(&app))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange, "{error:?}");
    assert!(
        error.message().starts_with("outstanding_points")
            && error.message().contains("10000000000000000000"),
        "{}",
        error.message()
    );
    // Each member's own figures still fit.
    for member in &members {
        assert_eq!(app.member(member).await.balance_points, QUINTILLION);
    }
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_member_whose_batches_sum_past_int64_gets_out_of_range_not_internal() {
    let mut app = spawn_app().await;
    app.create_program(crate::helpers::quintillion_rules())
        .await;
    let member = app.enroll().await;
    earn_a_quintillion(&mut app, &member).await;
    earn_a_quintillion(&mut app, &member).await;
    // What an older version's unchecked spend reversal could leave: batches whose sum
    // passes i64::MAX, each row still a valid bigint.
    let client = app.db.get().await.unwrap();
    client
        .execute(
            "UPDATE point_batches SET amount = 5000000000000000000, \
             remaining = 5000000000000000000",
            &[],
        )
        .await
        .unwrap();
    drop(client);

    let error = app
        .ledger
        .get_member(proto::GetMemberRequest {
            program_id: PROGRAM.into(),
            member_id: member.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange, "{error:?}");
    assert!(
        error.message().starts_with("member.balance_points"),
        "{}",
        error.message()
    );
    let report = app
        .ledger
        .get_liability(todays_liability(&app))
        .await
        .unwrap_err();
    assert_eq!(report.code(), Code::OutOfRange, "{report:?}");
}
