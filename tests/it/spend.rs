use crate::helpers::{spawn_app, usd_rules, TestApp, PROGRAM};
use chrono::{Duration, TimeZone, Utc};
use flash_loyalty::grpc::proto;
use tonic::Code;

async fn app_with_member() -> (TestApp, String) {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    (app, member)
}

#[tokio::test]
async fn spending_500_takes_400_from_march_and_100_from_april() {
    let (mut app, member) = app_with_member().await;
    let mut batches = vec![];
    for (month, points) in [(3, 400), (4, 250), (5, 600), (6, 300)] {
        app.clock
            .set(Utc.with_ymd_and_hms(2026, month, 1, 12, 0, 0).unwrap());
        let award = app.earn(&member, points).await;
        batches.push(app.allocation_batch_of(&award.entry_id).await);
    }
    let spend = app.spend(&member, 500).await;

    let drawn: Vec<_> = spend
        .allocations
        .iter()
        .map(|a| (a.batch_id.clone(), a.points))
        .collect();
    assert_eq!(
        drawn,
        [(batches[0].clone(), 400), (batches[1].clone(), 100)]
    );
    assert_eq!(
        app.allocation_rows(&spend.entry_id).await,
        [(batches[0].clone(), -400), (batches[1].clone(), -100)]
    );
    let march = &spend.allocations[0];
    assert_eq!(
        march.earned_at.as_ref().unwrap().seconds,
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .unwrap()
            .timestamp()
    );
    // 1,250 status points by May make the member Silver: June's 300 earn 375 (×1.25).
    assert_eq!(spend.balance_points, 1_125);
    assert_eq!(app.member(&member).await.balance_points, 1_125);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn spend_skips_expired_and_empty_batches() {
    let (mut app, member) = app_with_member().await;
    app.earn(&member, 100).await; // will expire unspent
    app.clock.advance(Duration::days(300));
    let refunded = app.earn(&member, 50).await;
    app.ledger
        .reverse_award(proto::ReverseAwardRequest {
            program_id: PROGRAM.into(),
            idempotency_key: "refund-1".into(),
            award: Some(proto::EntryRef {
                r#ref: Some(proto::entry_ref::Ref::EntryId(refunded.entry_id.clone())),
            }),
            points: None,
            reason: "returned".into(),
        })
        .await
        .unwrap(); // empties its own batch
    app.clock.advance(Duration::days(66)); // the first batch is now past expiry
    let live = app.earn(&member, 200).await;
    let live_batch = app.allocation_batch_of(&live.entry_id).await;

    let spend = app.spend(&member, 120).await;

    let drawn: Vec<_> = spend
        .allocations
        .iter()
        .map(|a| (a.batch_id.clone(), a.points))
        .collect();
    assert_eq!(drawn, [(live_batch, 120)]);
    assert_eq!(spend.balance_points, 80);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn an_expired_but_unswept_batch_cannot_be_spent() {
    let (mut app, member) = app_with_member().await;
    app.earn(&member, 300).await;
    app.clock.advance(Duration::days(365));
    assert_eq!(
        app.member(&member).await.balance_points,
        0,
        "expired points never count"
    );
    let error = app
        .ledger
        .spend(app.spend_request(&member, 1))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(app.row_counts().await, (1, 1), "nothing written");
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_spend_larger_than_the_balance_is_refused_and_writes_nothing() {
    let (mut app, member) = app_with_member().await;
    app.earn(&member, 120).await;
    let error = app
        .ledger
        .spend(app.spend_request(&member, 121))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    let refusal = crate::helpers::refusal(&error);
    assert_eq!(refusal.reason, "INSUFFICIENT_POINTS");
    assert_eq!(
        refusal.metadata["balance_points"], "120",
        "names the balance"
    );
    assert_eq!(app.row_counts().await, (1, 1));
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_replayed_spend_returns_the_original_and_a_changed_one_is_already_exists() {
    let (mut app, member) = app_with_member().await;
    app.earn(&member, 300).await;
    let request = app.spend_request(&member, 100);
    let first = app
        .ledger
        .spend(request.clone())
        .await
        .unwrap()
        .into_inner();
    let replay = app
        .ledger
        .spend(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(
        proto::SpendResponse {
            replayed: false,
            ..replay
        },
        first
    );
    let error = app
        .ledger
        .spend(proto::SpendRequest {
            points: 101,
            ..request
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    assert_eq!(app.member(&member).await.balance_points, 200);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn sixteen_concurrent_awards_and_spends_never_overdraw_and_tie_out() {
    let (mut app, member) = app_with_member().await;
    app.earn(&member, 100).await;
    let tasks = (0..16).map(|i| {
        let mut ledger = app.ledger.clone();
        let award = app.purchase(&member, 4_000);
        let spend = app.spend_request(&member, 70);
        tokio::spawn(async move {
            if i % 2 == 0 {
                let r = ledger.award(award).await.unwrap().into_inner();
                (r.awarded_points, 0)
            } else {
                match ledger.spend(spend).await {
                    Ok(r) => (0, r.into_inner().points),
                    Err(status) => {
                        assert_eq!(status.code(), Code::FailedPrecondition);
                        (0, 0)
                    }
                }
            }
        })
    });
    let results: Vec<(i64, i64)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let awarded: i64 = 100 + results.iter().map(|r| r.0).sum::<i64>();
    let spent: i64 = results.iter().map(|r| r.1).sum();
    let balance = app.member(&member).await.balance_points;
    assert_eq!(balance, awarded - spent);
    assert!(balance >= 0);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn spends_racing_the_expiry_sweep_never_spend_an_expired_point() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let mut members = vec![];
    for _ in 0..8 {
        let member = app.enroll().await;
        app.earn(&member, 100).await;
        members.push(member);
    }
    let expiry = crate::helpers::start_of_test() + Duration::days(365);
    // Spends start a moment before the batches expire; the clock reaches the expiry as the
    // sweep starts (a sweep may not run as of the future), so they race across the instant.
    app.clock.set(expiry - Duration::milliseconds(1));
    let spends: Vec<_> = members
        .iter()
        .map(|member| {
            let mut ledger = app.ledger.clone();
            let request = app.spend_request(member, 60);
            tokio::spawn(async move { ledger.spend(request).await.map(|r| r.into_inner().points) })
        })
        .collect();
    app.clock.set(expiry);
    let sweep = {
        let service = app.service.clone();
        tokio::spawn(async move { service.expire_due(expiry).await.unwrap() })
    };
    let spent: Vec<_> = futures::future::join_all(spends).await;
    let swept = sweep.await.unwrap();
    let spent_total: i64 = spent
        .into_iter()
        .map(|r| match r.unwrap() {
            Ok(points) => points,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition);
                0
            }
        })
        .sum();
    assert_eq!(
        spent_total + swept.points_expired,
        800,
        "each point spent or expired, once"
    );
    app.assert_ties_out().await;
}

#[tokio::test]
async fn bad_spends_get_a_precise_status_and_write_nothing() {
    let (mut app, member) = app_with_member().await;
    app.earn(&member, 100).await;
    let base = app.spend_request(&member, 10);
    let cases = [
        (
            "points",
            Code::InvalidArgument,
            proto::SpendRequest {
                points: 0,
                ..base.clone()
            },
        ),
        (
            "points",
            Code::InvalidArgument,
            proto::SpendRequest {
                points: -5,
                ..base.clone()
            },
        ),
        (
            "points",
            Code::InvalidArgument,
            proto::SpendRequest {
                points: i64::MAX,
                ..base.clone()
            },
        ),
        (
            "reference",
            Code::InvalidArgument,
            proto::SpendRequest {
                reference: String::new(),
                ..base.clone()
            },
        ),
        (
            "idempotency_key",
            Code::InvalidArgument,
            proto::SpendRequest {
                idempotency_key: String::new(),
                ..base.clone()
            },
        ),
        (
            "member",
            Code::NotFound,
            proto::SpendRequest {
                member_id: uuid::Uuid::new_v4().to_string(),
                ..base.clone()
            },
        ),
        (
            "program",
            Code::NotFound,
            proto::SpendRequest {
                program_id: "elsewhere".into(),
                ..base.clone()
            },
        ),
    ];
    for (what, code, request) in cases {
        let error = app.ledger.spend(request).await.unwrap_err();
        assert_eq!(error.code(), code, "{what}: {}", error.message());
    }
    assert_eq!(app.row_counts().await, (1, 1));
    let _ = PROGRAM;
}

/// A spend locks only the batches its FIFO draw takes from: while another transaction
/// holds the member's newer batches, a spend the oldest batch covers goes through (it
/// would wait on those rows if it locked every batch the member holds), and one that
/// needs them waits until they are free. The draw's cost does not grow with the history.
#[tokio::test]
async fn a_spend_locks_only_the_batches_it_draws_from() {
    let (mut app, member) = app_with_member().await;
    let mut batches = vec![];
    for month in 3..=6 {
        app.clock
            .set(Utc.with_ymd_and_hms(2026, month, 1, 12, 0, 0).unwrap());
        let award = app.earn(&member, 100).await;
        batches.push(app.allocation_batch_of(&award.entry_id).await);
    }
    let mut holder = app.db.get().await.unwrap();
    let newer: Vec<uuid::Uuid> = batches[1..].iter().map(|id| id.parse().unwrap()).collect();
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM point_batches WHERE program_id = $1 AND batch_id = ANY($2) FOR UPDATE",
        &[&PROGRAM, &newer],
    )
    .await
    .unwrap();

    let covered = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.ledger.spend(app.spend_request(&member, 60)),
    )
    .await
    .expect("a spend the oldest batch covers never waits for the newer ones")
    .unwrap()
    .into_inner();
    assert_eq!(covered.allocations.len(), 1);
    assert_eq!(covered.allocations[0].batch_id, batches[0]);

    // 40 left in March: 50 needs April's batch, held by the other transaction.
    let mut ledger = app.ledger.clone();
    let request = app.spend_request(&member, 50);
    let waiting = tokio::spawn(async move { ledger.spend(request).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a spend needing a held batch waits for it"
    );
    tx.rollback().await.unwrap();
    let needed = waiting.await.unwrap().unwrap().into_inner();
    let drawn: Vec<_> = needed
        .allocations
        .iter()
        .map(|a| (a.batch_id.clone(), a.points))
        .collect();
    assert_eq!(drawn, [(batches[0].clone(), 40), (batches[1].clone(), 10)]);
    app.assert_ties_out().await;
}
