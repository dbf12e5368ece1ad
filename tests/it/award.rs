use crate::helpers::{refusal, spawn_app, timestamp, usd_rules, TestApp, PROGRAM};
use chrono::Duration;
use flash_loyalty::grpc::proto;
use std::collections::HashSet;
use tonic::Code;

async fn app_with(rules: proto::ProgramRules) -> (TestApp, String) {
    let mut app = spawn_app().await;
    app.create_program(rules).await;
    let member = app.enroll().await;
    (app, member)
}

fn rules_in(currency: &str, base_rate_bp: i64, multiplier_bp: i64) -> proto::ProgramRules {
    let mut rules = usd_rules();
    rules.currency = currency.into();
    rules.base_rate_bp = base_rate_bp;
    rules.min_amount_minor = 0;
    rules.tiers = vec![proto::Tier {
        code: "member".into(),
        name: "Member".into(),
        qualify_points: 0,
        maintain_points: 0,
        multiplier_bp,
    }];
    rules
}

#[tokio::test]
async fn points_are_floored_and_scaled_by_currency_exponent_rate_and_multiplier() {
    let cases = [
        // (currency, base rate, multiplier, amount, expected points)
        ("USD", 10_000, 10_000, 1_299, 12),
        ("USD", 25_000, 15_000, 10_000, 375),
        ("JPY", 10_000, 10_000, 1_500, 1_500),
        ("JPY", 100, 12_500, 1_999, 24),
        ("KWD", 10_000, 10_000, 1_999, 1),
        ("KWD", 10_000, 20_000, 12_345, 24),
    ];
    for (currency, base_rate_bp, multiplier_bp, amount, expected) in cases {
        let (mut app, member) = app_with(rules_in(currency, base_rate_bp, multiplier_bp)).await;
        let mut request = app.purchase(&member, amount);
        request.currency = currency.into();
        let outcome = app.award(request).await;
        assert_eq!(
            (outcome.requested_points, outcome.awarded_points),
            (expected, expected),
            "{amount} {currency} at {base_rate_bp}bp ×{multiplier_bp}bp"
        );
        assert_eq!(outcome.balance_points, expected);
        app.assert_ties_out().await;
    }
}

#[tokio::test]
async fn a_purchase_below_the_minimum_earns_nothing_but_consumes_its_key() {
    let (mut app, member) = app_with(usd_rules()).await;
    let request = app.purchase(&member, 99);
    let outcome = app.award(request.clone()).await;
    assert_eq!((outcome.requested_points, outcome.awarded_points), (0, 0));
    assert!(!outcome.entry_id.is_empty());
    let replay = app.award(request).await;
    assert!(replay.replayed);
    assert_eq!(app.row_counts().await, (1, 0), "one entry, no batch");
    app.assert_ties_out().await;
}

#[tokio::test]
async fn amounts_past_the_purchase_limit_are_rejected_not_wrapped() {
    let (mut app, member) = app_with(rules_in("JPY", 1_000_000, 100_000)).await;
    let mut request = app.purchase(&member, i64::MAX);
    request.currency = "JPY".into();
    let error = app.ledger.award(request.clone()).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("amount_minor"),
        "{}",
        error.message()
    );
    // The largest accepted amount at the largest rate and multiplier still fits.
    request.amount_minor = flash_loyalty::domain::MAX_AMOUNT_MINOR;
    let outcome = app.award(request).await;
    assert_eq!(outcome.awarded_points, 1_000_000_000_000_000_000);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn thirty_two_concurrent_calls_with_one_key_write_one_entry_and_answer_alike() {
    let (app, member) = app_with(usd_rules()).await;
    let request = app.purchase(&member, 5_000);
    let calls = (0..32).map(|_| {
        let mut ledger = app.ledger.clone();
        let request = request.clone();
        tokio::spawn(async move { ledger.award(request).await.map(|r| r.into_inner()) })
    });
    let outcomes: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().expect("every call succeeds"))
        .collect();
    let originals = outcomes.iter().filter(|o| !o.replayed).count();
    assert_eq!(originals, 1, "exactly one call wrote");
    let first = proto::AwardResponse {
        replayed: false,
        ..outcomes[0].clone()
    };
    for outcome in &outcomes {
        let same = proto::AwardResponse {
            replayed: false,
            ..outcome.clone()
        };
        assert_eq!(same, first, "every answer is the original outcome");
    }
    assert_eq!(app.row_counts().await, (1, 1));
    let mut app = app;
    app.assert_ties_out().await;
}

#[tokio::test]
async fn the_same_key_with_another_amount_is_already_exists_and_writes_nothing() {
    let (mut app, member) = app_with(usd_rules()).await;
    let request = app.purchase(&member, 5_000);
    app.award(request.clone()).await;
    let mut changed = request;
    changed.amount_minor = 6_000;
    let error = app.ledger.award(changed).await.unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    let refusal = refusal(&error);
    assert_eq!(refusal.reason, "KEY_REUSED", "{}", error.message());
    assert_eq!(refusal.metadata["differing_fields"], "amount_minor");
    assert_eq!(app.row_counts().await, (1, 1));
    assert_eq!(app.member(&member).await.balance_points, 50);
}

#[tokio::test]
async fn the_same_order_under_a_new_key_is_already_exists() {
    let (mut app, member) = app_with(usd_rules()).await;
    let request = app.purchase(&member, 5_000);
    app.award(request.clone()).await;
    let mut again = request.clone();
    again.idempotency_key = "another-key".into();
    let error = app.ledger.award(again).await.unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    assert_eq!(refusal(&error).reason, "PURCHASE_ALREADY_AWARDED");
    assert!(
        error.message().contains(&request.external_ref),
        "{}",
        error.message()
    );

    // Even for another member: one order earns once.
    let other = app.enroll().await;
    let mut elsewhere = request;
    elsewhere.idempotency_key = "third-key".into();
    elsewhere.member_id = other;
    let error = app.ledger.award(elsewhere).await.unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    assert_eq!(app.row_counts().await, (1, 1));
    app.assert_ties_out().await;
}

#[tokio::test]
async fn fifty_concurrent_awards_worth_three_caps_award_exactly_the_cap() {
    let mut rules = usd_rules();
    rules.daily_cap_points = Some(500);
    let (app, member) = app_with(rules).await;
    // 50 purchases of $30 = 1,500 points requested against a cap of 500.
    let calls = (0..50).map(|_| {
        let mut ledger = app.ledger.clone();
        let request = app.purchase(&member, 3_000);
        tokio::spawn(async move { ledger.award(request).await.map(|r| r.into_inner()) })
    });
    let outcomes: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().expect("award"))
        .collect();
    let awarded: i64 = outcomes.iter().map(|o| o.awarded_points).sum();
    assert_eq!(awarded, 500);
    assert!(outcomes.iter().any(|o| o.capped));
    let mut app = app;
    assert_eq!(app.member(&member).await.balance_points, 500);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn the_cap_resets_on_the_programs_local_day() {
    let mut rules = usd_rules();
    rules.daily_cap_points = Some(100);
    rules.timezone = "Asia/Tokyo".into();
    let (mut app, member) = app_with(rules).await;
    // 12:00 UTC is 21:00 in Tokyo; 15:30 UTC is already the next day there.
    let first = app.award(app.purchase(&member, 15_000)).await;
    assert_eq!((first.awarded_points, first.capped), (100, true));
    app.clock
        .advance(Duration::hours(3) + Duration::minutes(30));
    let next_day = app.award(app.purchase(&member, 5_000)).await;
    assert_eq!((next_day.awarded_points, next_day.capped), (50, false));
    app.assert_ties_out().await;
}

#[tokio::test]
async fn bad_input_gets_a_precise_status_and_writes_nothing() {
    let (mut app, member) = app_with(usd_rules()).await;
    let now = app.clock_now();
    let base = app.purchase(&member, 1_000);
    let cases: Vec<(&str, Code, proto::AwardRequest)> = vec![
        (
            "amount_minor",
            Code::InvalidArgument,
            proto::AwardRequest {
                amount_minor: 0,
                ..base.clone()
            },
        ),
        (
            "amount_minor",
            Code::InvalidArgument,
            proto::AwardRequest {
                amount_minor: -5,
                ..base.clone()
            },
        ),
        (
            "amount_minor",
            Code::InvalidArgument,
            proto::AwardRequest {
                amount_minor: i64::MIN,
                ..base.clone()
            },
        ),
        (
            "idempotency_key",
            Code::InvalidArgument,
            proto::AwardRequest {
                idempotency_key: String::new(),
                ..base.clone()
            },
        ),
        (
            "idempotency_key",
            Code::InvalidArgument,
            proto::AwardRequest {
                idempotency_key: "k".repeat(129),
                ..base.clone()
            },
        ),
        (
            "member_id",
            Code::InvalidArgument,
            proto::AwardRequest {
                member_id: "not-a-uuid".into(),
                ..base.clone()
            },
        ),
        (
            "program_id",
            Code::InvalidArgument,
            proto::AwardRequest {
                program_id: "Bad Program".into(),
                ..base.clone()
            },
        ),
        (
            "not found",
            Code::NotFound,
            proto::AwardRequest {
                program_id: "nobody".into(),
                ..base.clone()
            },
        ),
        (
            "not enrolled",
            Code::NotFound,
            proto::AwardRequest {
                member_id: uuid::Uuid::new_v4().to_string(),
                ..base.clone()
            },
        ),
        (
            "currency",
            Code::InvalidArgument,
            proto::AwardRequest {
                currency: "EUR".into(),
                ..base.clone()
            },
        ),
        (
            "currency",
            Code::InvalidArgument,
            proto::AwardRequest {
                currency: "dollars".into(),
                ..base.clone()
            },
        ),
        (
            "occurred_at",
            Code::InvalidArgument,
            proto::AwardRequest {
                occurred_at: Some(timestamp(now + Duration::days(1))),
                ..base.clone()
            },
        ),
        (
            "occurred_at",
            Code::InvalidArgument,
            proto::AwardRequest {
                occurred_at: None,
                ..base.clone()
            },
        ),
        (
            "occurred_at",
            Code::InvalidArgument,
            proto::AwardRequest {
                occurred_at: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..base.clone()
            },
        ),
        // Regressions found by the fuzzer: before PostgreSQL's first instant (was INTERNAL),
        // and a huge currency echoed whole into the status header (broke the connection).
        (
            "occurred_at",
            Code::InvalidArgument,
            proto::AwardRequest {
                occurred_at: Some(prost_types::Timestamp {
                    seconds: -210_866_803_201,
                    nanos: 0,
                }),
                ..base.clone()
            },
        ),
        (
            "currency",
            Code::InvalidArgument,
            proto::AwardRequest {
                currency: "X".repeat(70_000),
                ..base.clone()
            },
        ),
        (
            "source",
            Code::InvalidArgument,
            proto::AwardRequest {
                source: 0,
                ..base.clone()
            },
        ),
        (
            "source",
            Code::InvalidArgument,
            proto::AwardRequest {
                source: 99,
                ..base.clone()
            },
        ),
        (
            "external_ref",
            Code::InvalidArgument,
            proto::AwardRequest {
                external_ref: String::new(),
                ..base.clone()
            },
        ),
    ];
    for (what, code, request) in cases {
        let error = app.ledger.award(request).await.unwrap_err();
        assert_eq!(error.code(), code, "{what}: {}", error.message());
        if code == Code::InvalidArgument {
            let refusal = refusal(&error);
            assert_eq!(refusal.reason, "INVALID_FIELD", "{what}");
            assert_eq!(refusal.bad_fields, [what], "{what}: {}", error.message());
        }
    }
    let error = app
        .ledger
        .award(proto::AwardRequest {
            amount_minor: i64::MAX,
            ..base.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(app.row_counts().await, (0, 0));
    app.assert_ties_out().await;
}

#[tokio::test]
async fn one_bad_item_never_fails_the_rest_of_a_batch() {
    let (mut app, member) = app_with(usd_rules()).await;
    let good = app.purchase(&member, 2_000);
    let mut bad_amount = app.purchase(&member, 0);
    bad_amount.amount_minor = -1;
    let mut other_program = app.purchase(&member, 1_000);
    other_program.program_id = "other".into();
    let unknown_member = proto::AwardRequest {
        member_id: uuid::Uuid::new_v4().to_string(),
        ..app.purchase(&member, 1_000)
    };
    let mut unscoped = app.purchase(&member, 3_000);
    unscoped.program_id = String::new();
    let response = app
        .ledger
        .award_batch(proto::AwardBatchRequest {
            program_id: PROGRAM.into(),
            awards: vec![
                good.clone(),
                bad_amount,
                other_program,
                unknown_member,
                unscoped,
                good,
            ],
        })
        .await
        .unwrap()
        .into_inner();
    use proto::award_batch_result::Outcome;
    let codes: Vec<_> = response
        .results
        .iter()
        .map(|result| match result.outcome.as_ref().unwrap() {
            Outcome::Award(award) => format!("ok:{}:{}", award.awarded_points, award.replayed),
            Outcome::Error(error) => format!("err:{:?}", Code::from_i32(error.code)),
        })
        .collect();
    assert_eq!(
        codes[1..5],
        [
            "err:InvalidArgument",
            "err:InvalidArgument",
            "err:NotFound",
            "ok:30:false"
        ]
    );
    // The same award twice in one batch runs concurrently: one writes, one replays.
    let mut duplicates = [codes[0].as_str(), codes[5].as_str()];
    duplicates.sort();
    assert_eq!(duplicates, ["ok:20:false", "ok:20:true"]);
    assert_eq!(app.member(&member).await.balance_points, 50);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_batch_over_five_hundred_awards_is_refused() {
    let (mut app, member) = app_with(usd_rules()).await;
    let awards = (0..501).map(|_| app.purchase(&member, 1_000)).collect();
    let error = app
        .ledger
        .award_batch(proto::AwardBatchRequest {
            program_id: PROGRAM.into(),
            awards,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(app.row_counts().await, (0, 0));
}

#[tokio::test]
async fn get_member_reports_balance_earned_tier_and_next_expiry() {
    let (mut app, member) = app_with(usd_rules()).await;
    app.award(app.purchase(&member, 4_000)).await;
    app.clock.advance(Duration::days(10));
    app.award(app.purchase(&member, 2_500)).await;
    let view = app.member(&member).await;
    assert_eq!(view.balance_points, 65);
    assert_eq!(view.lifetime_earned_points, 65);
    assert_eq!(view.tier_code, "member");
    assert_eq!(view.next_expiry_points, 40);
    let first_expiry = crate::helpers::start_of_test() + Duration::days(365);
    assert_eq!(view.next_expiry_at, Some(timestamp(first_expiry)));
    let unique: HashSet<_> = [view.member_id.clone()].into_iter().collect();
    assert!(unique.contains(&member));
}

#[tokio::test]
async fn programs_never_see_each_others_members() {
    let (mut app, member) = app_with(usd_rules()).await;
    app.create_named_program("globex", usd_rules()).await;
    let error = app
        .ledger
        .get_member(proto::GetMemberRequest {
            program_id: "globex".into(),
            member_id: member.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let mut request = app.purchase(&member, 1_000);
    request.program_id = "globex".into();
    assert_eq!(
        app.ledger.award(request).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn one_key_raced_for_two_members_writes_once_and_refuses_the_other() {
    let (mut app, alice) = app_with(usd_rules()).await;
    let bob = app.enroll().await;
    for round in 0..10 {
        let key = format!("shared-{round}");
        let mut for_alice = app.purchase(&alice, 1_000);
        let mut for_bob = app.purchase(&bob, 1_000);
        for_alice.idempotency_key = key.clone();
        for_bob.idempotency_key = key;
        let (mut a, mut b) = (app.ledger.clone(), app.ledger.clone());
        let (first, second) = tokio::join!(a.award(for_alice), b.award(for_bob));
        let codes = [first.map(|_| Code::Ok), second.map(|_| Code::Ok)]
            .map(|result| result.unwrap_or_else(|status| status.code()));
        let mut sorted = codes;
        sorted.sort_by_key(|code| *code as i32);
        assert_eq!(sorted, [Code::Ok, Code::AlreadyExists], "round {round}");
    }
    assert_eq!(app.row_counts().await, (10, 10));
    app.assert_ties_out().await;
}

/// The awards of one batch share a transaction: repeats inside it answer exactly as they
/// would have one call after the other, and a member's awards count against its cap in
/// request order.
#[tokio::test]
async fn a_batch_answers_each_award_as_if_sent_alone_in_request_order() {
    let mut rules = usd_rules();
    rules.daily_cap_points = Some(500);
    let (mut app, first) = app_with(rules).await;
    let second = app.enroll().await;
    let award = app.purchase(&first, 2_000);
    let mut same_key_other_amount = award.clone();
    same_key_other_amount.amount_minor = 3_000;
    let mut same_purchase_other_key = award.clone();
    same_purchase_other_key.idempotency_key = "another-key".into();
    let awards = vec![
        award.clone(),
        award.clone(),
        same_key_other_amount,
        same_purchase_other_key,
        app.purchase(&second, 30_000),
        app.purchase(&second, 30_000),
        app.purchase(&first, 100_000),
    ];
    let response = app
        .ledger
        .award_batch(proto::AwardBatchRequest {
            program_id: PROGRAM.into(),
            awards,
        })
        .await
        .unwrap()
        .into_inner();
    use proto::award_batch_result::Outcome;
    let answers: Vec<String> = response
        .results
        .iter()
        .map(|result| match result.outcome.as_ref().unwrap() {
            Outcome::Award(award) => format!(
                "ok:{}:{}:{}",
                award.awarded_points, award.replayed, award.balance_points
            ),
            Outcome::Error(error) => format!("err:{:?}", Code::from_i32(error.code)),
        })
        .collect();
    assert_eq!(
        answers,
        [
            "ok:20:false:20",
            "ok:20:true:20",
            "err:AlreadyExists",
            "err:AlreadyExists",
            "ok:300:false:300",
            "ok:200:false:500",
            "ok:480:false:500",
        ]
    );
    let (Some(Outcome::Award(original)), Some(Outcome::Award(replay))) = (
        response.results[0].outcome.as_ref(),
        response.results[1].outcome.as_ref(),
    ) else {
        panic!("two awards");
    };
    assert_eq!(original.entry_id, replay.entry_id);
    // The batch wrote what single calls would have: 4 awards, and a replay later agrees.
    assert_eq!(app.row_counts().await, (4, 4));
    let again = app.award(award).await;
    assert_eq!(
        (again.entry_id, again.replayed),
        (original.entry_id.clone(), true)
    );
    app.assert_ties_out().await;
}
