use crate::helpers::{spawn_app, usd_rules, TestApp, PROGRAM};
use chrono::Duration;
use flash_loyalty::grpc::proto::{self, entry_ref::Ref};
use tonic::Code;

async fn app_with_member() -> (TestApp, String) {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    (app, member)
}

fn by_id(entry_id: &str) -> Option<proto::EntryRef> {
    Some(proto::EntryRef {
        r#ref: Some(Ref::EntryId(entry_id.into())),
    })
}

fn reverse_award(key: &str, award: &str, points: Option<i64>) -> proto::ReverseAwardRequest {
    proto::ReverseAwardRequest {
        program_id: PROGRAM.into(),
        idempotency_key: key.into(),
        award: by_id(award),
        points,
        reason: "refund".into(),
    }
}

fn reverse_spend(key: &str, spend: &str, points: Option<i64>) -> proto::ReverseSpendRequest {
    proto::ReverseSpendRequest {
        program_id: PROGRAM.into(),
        idempotency_key: key.into(),
        spend: by_id(spend),
        points,
        reason: "order cancelled".into(),
    }
}

#[tokio::test]
async fn a_full_award_reversal_takes_every_point_back_from_its_batch() {
    let (mut app, member) = app_with_member().await;
    app.earn(&member, 40).await;
    let award = app.earn(&member, 100).await;
    let reversal = app
        .ledger
        .reverse_award(reverse_award("r1", &award.entry_id, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            reversal.reversed_points,
            reversal.recovered_points,
            reversal.unrecovered_points
        ),
        (100, 100, 0)
    );
    let own_batch = app.allocation_batch_of(&award.entry_id).await;
    assert_eq!(
        reversal
            .allocations
            .iter()
            .map(|a| (a.batch_id.clone(), a.points))
            .collect::<Vec<_>>(),
        [(own_batch, 100)]
    );
    assert_eq!(reversal.balance_points, 40);
    let member_view = app.member(&member).await;
    assert_eq!(
        member_view.lifetime_earned_points, 40,
        "reversed points stop counting as earned"
    );
    app.assert_ties_out().await;
}

/// A partial refund of a newer award takes from its own batch, though an older batch
/// alone would cover a FIFO draw of as many points.
#[tokio::test]
async fn a_partial_reversal_of_a_newer_award_takes_from_its_own_batch() {
    let (mut app, member) = app_with_member().await;
    app.earn(&member, 40).await;
    let award = app.earn(&member, 100).await;
    let reversal = app
        .ledger
        .reverse_award(reverse_award("r1", &award.entry_id, Some(30)))
        .await
        .unwrap()
        .into_inner();
    let own_batch = app.allocation_batch_of(&award.entry_id).await;
    assert_eq!(
        reversal
            .allocations
            .iter()
            .map(|a| (a.batch_id.clone(), a.points))
            .collect::<Vec<_>>(),
        [(own_batch, 30)]
    );
    assert_eq!(reversal.balance_points, 110);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn partial_reversals_add_up_and_over_reversal_is_refused() {
    let (mut app, member) = app_with_member().await;
    let award = app.earn(&member, 100).await;
    let first = app
        .ledger
        .reverse_award(reverse_award("r1", &award.entry_id, Some(30)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.remaining_reversible_points, 70);
    let second = app
        .ledger
        .reverse_award(reverse_award("r2", &award.entry_id, Some(60)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.remaining_reversible_points, 10);
    let before = app.row_counts().await;
    let error = app
        .ledger
        .reverse_award(reverse_award("r3", &award.entry_id, Some(11)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    let refusal = crate::helpers::refusal(&error);
    assert_eq!(refusal.reason, "REVERSAL_EXCEEDS_REMAINING");
    assert_eq!(refusal.metadata["left_points"], "10");
    assert_eq!(app.row_counts().await, before);
    let rest = app
        .ledger
        .reverse_award(reverse_award("r4", &award.entry_id, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.reversed_points, 10);
    let error = app
        .ledger
        .reverse_award(reverse_award("r5", &award.entry_id, None))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(app.member(&member).await.balance_points, 0);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn reversing_a_partly_spent_award_reports_the_unrecovered_points() {
    let (mut app, member) = app_with_member().await;
    let award = app.earn(&member, 100).await;
    app.clock.advance(Duration::days(1));
    let other = app.earn(&member, 30).await;
    app.spend(&member, 80).await; // 80 of the award's 100
    let reversal = app
        .ledger
        .reverse_award(reverse_award("r1", &award.entry_id, None))
        .await
        .unwrap()
        .into_inner();
    // 20 left in its own batch, then 30 from the other batch; 50 could not be recovered.
    assert_eq!(
        (reversal.recovered_points, reversal.unrecovered_points),
        (50, 50)
    );
    let other_batch = app.allocation_batch_of(&other.entry_id).await;
    assert_eq!(
        reversal
            .allocations
            .iter()
            .find(|a| a.batch_id == other_batch)
            .unwrap()
            .points,
        30
    );
    assert_eq!(reversal.balance_points, 0, "never negative");
    let history = app
        .ledger
        .list_entries(proto::ListEntriesRequest {
            program_id: PROGRAM.into(),
            member_id: member.clone(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.entries[0].unrecovered_points, 50);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_reversal_by_the_awards_idempotency_key_works_and_replays() {
    let (mut app, member) = app_with_member().await;
    let request = app.purchase(&member, 5_000);
    app.award(request.clone()).await;
    let by_key = proto::ReverseAwardRequest {
        award: Some(proto::EntryRef {
            r#ref: Some(Ref::IdempotencyKey(request.idempotency_key.clone())),
        }),
        ..reverse_award("refund-by-key", "", None)
    };
    let first = app
        .ledger
        .reverse_award(by_key.clone())
        .await
        .unwrap()
        .into_inner();
    let replay = app
        .ledger
        .reverse_award(by_key.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(
        proto::ReverseAwardResponse {
            replayed: false,
            ..replay
        },
        first
    );
    let changed = proto::ReverseAwardRequest {
        points: Some(1),
        ..by_key
    };
    assert_eq!(
        app.ledger.reverse_award(changed).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_spend_reversal_restores_the_original_batches_with_their_expiry() {
    let (mut app, member) = app_with_member().await;
    let march = app.earn(&member, 400).await;
    app.clock.advance(Duration::days(30));
    let april = app.earn(&member, 250).await;
    let spend = app.spend(&member, 500).await;
    app.clock.advance(Duration::days(5));
    let partial = app
        .ledger
        .reverse_spend(reverse_spend("c1", &spend.entry_id, Some(450)))
        .await
        .unwrap()
        .into_inner();
    let (march_batch, april_batch) = (
        app.allocation_batch_of(&march.entry_id).await,
        app.allocation_batch_of(&april.entry_id).await,
    );
    let restored: Vec<_> = partial
        .allocations
        .iter()
        .map(|a| (a.batch_id.clone(), a.points))
        .collect();
    assert_eq!(
        restored,
        [(march_batch.clone(), 400), (april_batch.clone(), 50)]
    );
    assert_eq!(
        partial.allocations[0].expires_at, spend.allocations[0].expires_at,
        "original expiry kept"
    );
    let rest = app
        .ledger
        .reverse_spend(reverse_spend("c2", &spend.entry_id, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rest.reversed_points, rest.restored_points), (50, 50));
    let error = app
        .ledger
        .reverse_spend(reverse_spend("c3", &spend.entry_id, Some(1)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(app.member(&member).await.balance_points, 650);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_spend_reversal_skips_a_batch_that_has_expired_since() {
    let (mut app, member) = app_with_member().await;
    app.earn(&member, 100).await;
    app.clock.advance(Duration::days(200));
    app.earn(&member, 100).await;
    let spend = app.spend(&member, 150).await; // 100 from the first, 50 from the second
    app.clock.advance(Duration::days(170)); // the first batch has expired
    let reversal = app
        .ledger
        .reverse_spend(reverse_spend("c1", &spend.entry_id, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reversal.restored_points, reversal.expired_points),
        (50, 100)
    );
    assert_eq!(reversal.balance_points, 100);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn reversing_the_wrong_kind_or_an_unknown_entry_is_refused_and_writes_nothing() {
    let (mut app, member) = app_with_member().await;
    let award = app.earn(&member, 100).await;
    let spend = app.spend(&member, 10).await;
    let before = app.row_counts().await;
    let cases = [
        (
            Code::InvalidArgument,
            app.ledger
                .reverse_award(reverse_award("x1", &spend.entry_id, None))
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            app.ledger
                .reverse_spend(reverse_spend("x2", &award.entry_id, None))
                .await
                .unwrap_err(),
        ),
        (
            Code::NotFound,
            app.ledger
                .reverse_award(reverse_award("x3", &uuid::Uuid::new_v4().to_string(), None))
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            app.ledger
                .reverse_award(reverse_award("x4", "not-a-uuid", None))
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            app.ledger
                .reverse_award(reverse_award("x5", &award.entry_id, Some(0)))
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            app.ledger
                .reverse_award(reverse_award("x6", &award.entry_id, Some(-3)))
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            app.ledger
                .reverse_award(proto::ReverseAwardRequest {
                    award: None,
                    ..reverse_award("x7", "", None)
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::NotFound,
            app.ledger
                .reverse_award(proto::ReverseAwardRequest {
                    program_id: "elsewhere".into(),
                    ..reverse_award("x8", &award.entry_id, None)
                })
                .await
                .unwrap_err(),
        ),
    ];
    for (index, (code, error)) in cases.into_iter().enumerate() {
        assert_eq!(error.code(), code, "case {index}: {}", error.message());
    }
    assert_eq!(app.row_counts().await, before);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn adjustments_credit_and_debit_with_reason_and_actor_in_history() {
    let (mut app, member) = app_with_member().await;
    app.earn(&member, 100).await;
    let adjust = |key: &str, points: i64| proto::AdjustRequest {
        program_id: PROGRAM.into(),
        member_id: member.clone(),
        idempotency_key: key.into(),
        points,
        reason: format!("goodwill {key}"),
        actor: "agent@acme".into(),
        ..Default::default()
    };
    let credit = app
        .ledger
        .adjust(adjust("a1", 25))
        .await
        .unwrap()
        .into_inner();
    assert!(!credit.batch_id.is_empty());
    assert_eq!(credit.balance_points, 125);
    let debit = app
        .ledger
        .adjust(adjust("a2", -110))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(debit.allocations.iter().map(|a| a.points).sum::<i64>(), 110);
    assert_eq!(debit.balance_points, 15);
    let error = app.ledger.adjust(adjust("a3", -16)).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(
        app.ledger.adjust(adjust("a4", 0)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // Regression found by the fuzzer: i64::MIN used to panic the handler (abs overflow).
    let error = app.ledger.adjust(adjust("a6", i64::MIN)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let no_actor = proto::AdjustRequest {
        actor: String::new(),
        ..adjust("a5", 5)
    };
    assert_eq!(
        app.ledger.adjust(no_actor).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let history = app
        .ledger
        .list_entries(proto::ListEntriesRequest {
            program_id: PROGRAM.into(),
            member_id: member.clone(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<_> = history
        .entries
        .iter()
        .map(|e| (e.kind, e.points, e.reason.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                proto::EntryKind::Adjustment as i32,
                -110,
                "goodwill a2",
                "agent@acme"
            ),
            (
                proto::EntryKind::Adjustment as i32,
                25,
                "goodwill a1",
                "agent@acme"
            ),
        ]
    );
    assert_eq!(history.entries[1].batch_id, credit.batch_id);
    let older = app
        .ledger
        .list_entries(proto::ListEntriesRequest {
            program_id: PROGRAM.into(),
            member_id: member.clone(),
            page_size: 2,
            page_token: history.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(older.entries.len(), 1);
    assert_eq!(older.entries[0].kind, proto::EntryKind::Award as i32);
    assert!(older.next_page_token.is_empty());
    app.assert_ties_out().await;
}

/// Award 100, spend 100, then the refund and the cancelled redemption, in one order or
/// the other; returns the balance and what each reversal answered.
async fn refund_and_cancel(
    refund_first: bool,
) -> (
    i64,
    proto::ReverseAwardResponse,
    proto::ReverseSpendResponse,
) {
    let (mut app, member) = app_with_member().await;
    let award = app.earn(&member, 100).await;
    let spend = app.spend(&member, 100).await;
    let refund = reverse_award("refund", &award.entry_id, None);
    let cancel = reverse_spend("cancel", &spend.entry_id, None);
    let (refunded, cancelled) = if refund_first {
        let refunded = app.ledger.reverse_award(refund).await.unwrap().into_inner();
        let cancelled = app.ledger.reverse_spend(cancel).await.unwrap().into_inner();
        (refunded, cancelled)
    } else {
        let cancelled = app.ledger.reverse_spend(cancel).await.unwrap().into_inner();
        let refunded = app.ledger.reverse_award(refund).await.unwrap().into_inner();
        (refunded, cancelled)
    };
    let balance = app.member(&member).await.balance_points;
    app.assert_ties_out().await;
    (balance, refunded, cancelled)
}

#[tokio::test]
async fn a_refund_then_the_cancelled_redemption_leave_no_refunded_points_behind() {
    let (balance, refunded, cancelled) = refund_and_cancel(true).await;
    assert_eq!(
        (refunded.recovered_points, refunded.unrecovered_points),
        (0, 100)
    );
    assert_eq!(
        (
            cancelled.reversed_points,
            cancelled.restored_points,
            cancelled.repaid_points,
            cancelled.expired_points
        ),
        (100, 0, 100, 0),
        "the cancelled spend repays the refunded points it had spent"
    );
    assert!(cancelled.allocations.is_empty());
    assert_eq!(balance, 0);
}

#[tokio::test]
async fn the_cancelled_redemption_then_the_refund_end_at_the_same_balance() {
    let (balance, refunded, cancelled) = refund_and_cancel(false).await;
    assert_eq!(
        (cancelled.restored_points, cancelled.repaid_points),
        (100, 0)
    );
    assert_eq!(
        (refunded.recovered_points, refunded.unrecovered_points),
        (100, 0)
    );
    assert_eq!(balance, 0);
}

#[tokio::test]
async fn owed_points_are_repaid_only_up_to_what_is_owed() {
    let (mut app, member) = app_with_member().await;
    let award = app.earn(&member, 100).await;
    app.clock.advance(Duration::days(1));
    app.earn(&member, 50).await;
    // Takes all 100 of the award and 20 of the second batch.
    let spend = app.spend(&member, 120).await;
    let refunded = app
        .ledger
        .reverse_award(reverse_award("refund", &award.entry_id, Some(60)))
        .await
        .unwrap()
        .into_inner();
    // 30 left in the second batch are taken back; 30 could not be.
    assert_eq!(
        (refunded.recovered_points, refunded.unrecovered_points),
        (30, 30)
    );
    let cancelled = app
        .ledger
        .reverse_spend(reverse_spend("cancel", &spend.entry_id, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (cancelled.restored_points, cancelled.repaid_points),
        (90, 30)
    );
    // Credited 150, refunded 60, spent 120 then cancelled: 90 left.
    assert_eq!(app.member(&member).await.balance_points, 90);
    // Nothing more is owed: a second purchase's cancellation restores in full.
    app.earn(&member, 10).await;
    let spend = app.spend(&member, 10).await;
    let cancelled = app
        .ledger
        .reverse_spend(reverse_spend("cancel-2", &spend.entry_id, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (cancelled.restored_points, cancelled.repaid_points),
        (10, 0)
    );
    app.assert_ties_out().await;
}

/// Awards until the member holds `points` (at 1,000 points per yen).
async fn earn_jumbo(app: &mut TestApp, member: &str, mut points: i64) {
    while points > 0 {
        let yen = (points / 1_000).min(flash_loyalty::domain::MAX_AMOUNT_MINOR);
        let mut request = app.purchase(member, yen);
        request.currency = "JPY".into();
        points -= app.award(request).await.awarded_points;
    }
}

#[tokio::test]
async fn a_spend_reversal_that_would_take_the_balance_past_i64_is_refused_and_writes_nothing() {
    let mut app = spawn_app().await;
    app.create_program(crate::helpers::quintillion_rules())
        .await;
    let member = app.enroll().await;
    earn_jumbo(&mut app, &member, i64::MAX - 807).await;
    let spend = app.spend(&member, 1_000_000_000_000).await;
    app.ledger
        .adjust(proto::AdjustRequest {
            program_id: PROGRAM.into(),
            member_id: member.clone(),
            idempotency_key: "top-up".into(),
            points: 1_000_000_000_000,
            reason: "goodwill".into(),
            actor: "support".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = app.row_counts().await;
    let refused = app
        .ledger
        .reverse_spend(reverse_spend("cancel", &spend.entry_id, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(crate::helpers::refusal(&refused).reason, "BALANCE_OVERFLOW");
    // An award past it is refused the same way.
    let mut request = app.purchase(&member, 1);
    request.currency = "JPY".into();
    let refused = app.ledger.award(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(app.row_counts().await, before);
    let held = app.member(&member).await;
    assert_eq!(held.balance_points, i64::MAX - 807);
    app.assert_ties_out().await;
}
