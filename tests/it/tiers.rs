//! The tier engine end to end: real-time upgrades with the crossing credit, the grace
//! ladder one rank at a time, the re-upgrade bonus once per demotion, holds, and the
//! outbox rows that go with each change.
use crate::helpers::{spawn_app, timestamp, usd_rules, TestApp, PROGRAM};
use chrono::Duration;
use flash_loyalty::grpc::proto;

/// The default ladder (Member 0, Silver 1,000/800, Gold 5,000/4,000, VIP 20,000/16,000 at
/// 1×, 1.25×, 1.5×, 2×), a 30-day grace with reminders 7 and 1 days before its end, and a
/// 250-point re-upgrade bonus within 90 days.
fn tier_rules() -> proto::ProgramRules {
    proto::ProgramRules {
        grace_days: Some(30),
        grace_reminder_days: vec![7, 1],
        reupgrade_window_days: Some(90),
        reupgrade_bonus_points: Some(250),
        ..usd_rules()
    }
}

async fn status(app: &mut TestApp, member: &str) -> proto::TierStatus {
    app.tiers
        .get_tier_status(proto::GetTierStatusRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
        })
        .await
        .expect("tier status")
        .into_inner()
        .status
        .unwrap()
}

async fn evaluate(app: &mut TestApp, member: &str) -> Vec<proto::TierStepKind> {
    app.tiers
        .evaluate_member(proto::EvaluateMemberRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
        })
        .await
        .expect("evaluate")
        .into_inner()
        .steps
        .into_iter()
        .map(|step| proto::TierStepKind::try_from(step).unwrap())
        .collect()
}

async fn history(app: &mut TestApp, member: &str) -> Vec<(String, String, String)> {
    app.tiers
        .list_tier_history(proto::ListTierHistoryRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
            ..Default::default()
        })
        .await
        .expect("tier history")
        .into_inner()
        .changes
        .into_iter()
        .rev()
        .map(|c| (c.from_tier_code, c.to_tier_code, c.actor))
        .collect()
}

/// The member's outbox events, in stream order: (type, payload).
async fn events(app: &TestApp, member: &str) -> Vec<(String, serde_json::Value)> {
    let member: uuid::Uuid = member.parse().unwrap();
    app.db
        .get()
        .await
        .unwrap()
        .query(
            "SELECT event_type, payload FROM events WHERE member_id = $1 ORDER BY txid, seq",
            &[&member],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn event_types(app: &TestApp, member: &str, prefix: &str) -> Vec<String> {
    events(app, member)
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .filter(|kind| kind.starts_with(prefix))
        .collect()
}

async fn reupgrade_bonuses(app: &TestApp, member: &str) -> Vec<i64> {
    let member: uuid::Uuid = member.parse().unwrap();
    app.db
        .get()
        .await
        .unwrap()
        .query(
            "SELECT points FROM ledger_entries WHERE member_id = $1 AND kind = 'bonus' \
             AND reason = 'reupgrade' ORDER BY seq",
            &[&member],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn a_member_rises_in_real_time_and_the_crossing_award_earns_at_the_old_rate() {
    let mut app = spawn_app().await;
    app.create_program(tier_rules()).await;
    let member = app.enroll().await;
    assert_eq!(app.earn(&member, 600).await.awarded_points, 600);
    assert_eq!(status(&mut app, &member).await.tier_code, "member");
    // Crossing Silver's 1,000: this award still earns at Member's 1×.
    assert_eq!(app.earn(&member, 600).await.awarded_points, 600);
    let silver = status(&mut app, &member).await;
    assert_eq!(silver.tier_code, "silver");
    assert_eq!(silver.status_points, 1_200);
    assert_eq!(silver.next_tier_code, "gold");
    assert_eq!(silver.points_to_next_tier, 3_800);
    assert_eq!(app.member(&member).await.tier_code, "silver");
    // The next one earns at Silver's 1.25× and crosses Gold.
    assert_eq!(app.earn(&member, 3_200).await.awarded_points, 4_000);
    assert_eq!(status(&mut app, &member).await.tier_code, "gold");
    assert_eq!(
        history(&mut app, &member).await,
        [
            ("member".into(), "silver".into(), "system".into()),
            ("silver".into(), "gold".into(), "system".into())
        ]
    );
    assert_eq!(
        event_types(&app, &member, "tier.").await,
        ["tier.upgraded", "tier.upgraded"]
    );

    // One award crossing two thresholds lands two ranks up, at the old multiplier.
    let jumper = app.enroll().await;
    assert_eq!(app.earn(&jumper, 5_000).await.awarded_points, 5_000);
    assert_eq!(status(&mut app, &jumper).await.tier_code, "gold");
    assert_eq!(
        history(&mut app, &jumper).await,
        [("member".into(), "gold".into(), "system".into())]
    );
    let upgraded = &events(&app, &jumper).await[1];
    assert_eq!(upgraded.0, "tier.upgraded");
    assert_eq!(upgraded.1["from_tier_code"], "member");
    assert_eq!(upgraded.1["to_tier_code"], "gold");
    assert_eq!(upgraded.1["status_points"], 5_000);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_year_without_earning_warns_reminds_and_moves_down_one_rank_at_a_time() {
    let mut app = spawn_app().await;
    app.create_program(tier_rules()).await;
    let member = app.enroll().await;
    app.earn(&member, 6_000).await;
    assert_eq!(status(&mut app, &member).await.tier_code, "gold");
    // Within the window nothing is due.
    app.clock.advance(Duration::days(300));
    assert!(evaluate(&mut app, &member).await.is_empty());
    assert_eq!(status(&mut app, &member).await.points_aging_out_30d, 0);
    app.clock.advance(Duration::days(40));
    let aging = status(&mut app, &member).await;
    assert_eq!(aging.points_aging_out_30d, 6_000);
    assert_eq!(aging.status_points, 6_000);
    // The points leave the 12-month window: a grace starts, the tier stays.
    app.clock.advance(Duration::days(30));
    assert_eq!(
        evaluate(&mut app, &member).await,
        [proto::TierStepKind::GraceStarted]
    );
    let graced = status(&mut app, &member).await;
    assert_eq!(graced.tier_code, "gold");
    assert_eq!(graced.status_points, 0);
    assert_eq!(graced.points_to_keep_tier, 4_000);
    let ends = graced.grace_ends_at.unwrap();
    assert_eq!(ends, timestamp(app.clock_now() + Duration::days(30)));
    assert_eq!(graced.tier_if_evaluated_now, "gold");
    // Evaluating again the same day changes nothing.
    assert!(evaluate(&mut app, &member).await.is_empty());
    app.clock.advance(Duration::days(23));
    assert_eq!(
        evaluate(&mut app, &member).await,
        [proto::TierStepKind::Reminded]
    );
    app.clock.advance(Duration::days(6));
    assert_eq!(
        evaluate(&mut app, &member).await,
        [proto::TierStepKind::Reminded]
    );
    assert!(evaluate(&mut app, &member).await.is_empty());
    app.clock.advance(Duration::days(1));
    assert_eq!(
        status(&mut app, &member).await.tier_if_evaluated_now,
        "silver"
    );
    // The grace ends: exactly one rank down, and a fresh grace for the next step.
    assert_eq!(
        evaluate(&mut app, &member).await,
        [
            proto::TierStepKind::Downgraded,
            proto::TierStepKind::GraceStarted
        ]
    );
    let silver = status(&mut app, &member).await;
    assert_eq!(silver.tier_code, "silver");
    assert!(silver.grace_ends_at.is_some());
    assert_eq!(
        event_types(&app, &member, "tier.").await,
        [
            "tier.upgraded",
            "tier.downgrade_warning",
            "tier.downgrade_warning",
            "tier.downgrade_warning",
            "tier.downgraded",
            "tier.downgrade_warning"
        ]
    );
    let warnings: Vec<serde_json::Value> = events(&app, &member)
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "tier.downgrade_warning")
        .map(|(_, payload)| payload["reminder_days_before_end"].clone())
        .collect();
    assert_eq!(
        warnings,
        [
            serde_json::Value::Null,
            7.into(),
            1.into(),
            serde_json::Value::Null
        ]
    );
    app.clock.advance(Duration::days(30));
    evaluate(&mut app, &member).await;
    assert_eq!(status(&mut app, &member).await.tier_code, "member");
    assert_eq!(
        history(&mut app, &member).await,
        [
            ("member".into(), "gold".into(), "system".into()),
            ("gold".into(), "silver".into(), "system".into()),
            ("silver".into(), "member".into(), "system".into())
        ]
    );
    app.assert_audit_clean().await;
}

#[tokio::test]
async fn recovering_inside_the_grace_clears_it() {
    let mut app = spawn_app().await;
    app.create_program(tier_rules()).await;
    let member = app.enroll().await;
    app.earn(&member, 1_000).await;
    app.clock.advance(Duration::days(370));
    assert_eq!(
        evaluate(&mut app, &member).await,
        [proto::TierStepKind::GraceStarted]
    );
    app.clock.advance(Duration::days(10));
    // 800 at Silver's 1.25× = 1,000 status points: the tier is kept.
    app.earn(&member, 800).await;
    assert_eq!(
        evaluate(&mut app, &member).await,
        [proto::TierStepKind::GraceCleared]
    );
    app.clock.advance(Duration::days(30));
    assert!(evaluate(&mut app, &member).await.is_empty());
    let kept = status(&mut app, &member).await;
    assert_eq!(kept.tier_code, "silver");
    assert_eq!(kept.grace_ends_at, None);
    assert_eq!(
        event_types(&app, &member, "tier.").await,
        [
            "tier.upgraded",
            "tier.downgrade_warning",
            "tier.grace_cleared"
        ]
    );
    app.assert_audit_clean().await;
}

/// Demoted from Gold, then re-qualifying inside the window pays the bonus once; bouncing
/// around the threshold afterwards pays nothing more, and the bonus never counts toward
/// status.
#[tokio::test]
async fn re_qualifying_after_a_demotion_pays_the_bonus_once() {
    let mut app = spawn_app().await;
    app.create_program(tier_rules()).await;
    let member = app.enroll().await;
    app.earn(&member, 5_000).await;
    app.clock.advance(Duration::days(370));
    evaluate(&mut app, &member).await;
    app.clock.advance(Duration::days(30));
    evaluate(&mut app, &member).await;
    assert_eq!(status(&mut app, &member).await.tier_code, "silver");
    // 4,000 at Silver's 1.25× = 5,000: Gold again, within 90 days of the demotion.
    let back = app.earn(&member, 4_000).await;
    assert_eq!(back.awarded_points, 5_000);
    let gold = status(&mut app, &member).await;
    assert_eq!(gold.tier_code, "gold");
    assert_eq!(
        gold.status_points, 5_000,
        "the bonus never counts toward status"
    );
    assert_eq!(reupgrade_bonuses(&app, &member).await, [250]);
    assert_eq!(
        app.member(&member).await.balance_points,
        back.balance_points + 250
    );
    // Bounce: a refund below Gold's qualify points, then the points again.
    let refund = proto::ReverseAwardRequest {
        program_id: PROGRAM.into(),
        idempotency_key: "refund-bounce".into(),
        award: Some(proto::EntryRef {
            r#ref: Some(proto::entry_ref::Ref::EntryId(back.entry_id.clone())),
        }),
        points: Some(100),
        reason: "returned".into(),
    };
    app.ledger.reverse_award(refund).await.unwrap();
    assert_eq!(status(&mut app, &member).await.status_points, 4_900);
    app.earn(&member, 100).await;
    evaluate(&mut app, &member).await;
    evaluate(&mut app, &member).await;
    assert_eq!(reupgrade_bonuses(&app, &member).await, [250]);
    assert_eq!(
        event_types(&app, &member, "bonus.").await,
        ["bonus.awarded"]
    );
    app.assert_ties_out().await;
}

#[tokio::test]
async fn spending_expiry_and_debits_never_lower_the_tier() {
    let mut app = spawn_app().await;
    let mut rules = tier_rules();
    rules.points_validity_days = 30;
    app.create_program(rules).await;
    let member = app.enroll().await;
    app.earn(&member, 1_500).await;
    app.spend(&member, 1_000).await;
    app.ledger
        .adjust(proto::AdjustRequest {
            program_id: PROGRAM.into(),
            member_id: member.clone(),
            idempotency_key: "debit".into(),
            points: -400,
            reason: "correction".into(),
            actor: "support@acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    app.clock.advance(Duration::days(31));
    assert_eq!(app.expire().await.points_expired, 100);
    assert_eq!(app.member(&member).await.balance_points, 0);
    let kept = status(&mut app, &member).await;
    assert_eq!(
        (kept.tier_code.as_str(), kept.status_points),
        ("silver", 1_500)
    );
    assert!(evaluate(&mut app, &member).await.is_empty());
    // An adjustment counts only when it says so.
    app.ledger
        .adjust(proto::AdjustRequest {
            program_id: PROGRAM.into(),
            member_id: member.clone(),
            idempotency_key: "goodwill".into(),
            points: 4_000,
            reason: "goodwill".into(),
            actor: "support@acme".into(),
            counts_toward_tier: true,
        })
        .await
        .unwrap();
    assert_eq!(status(&mut app, &member).await.status_points, 5_500);
    evaluate(&mut app, &member).await;
    assert_eq!(status(&mut app, &member).await.tier_code, "gold");
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_refund_below_maintain_starts_a_grace_instead_of_demoting() {
    let mut app = spawn_app().await;
    app.create_program(tier_rules()).await;
    let member = app.enroll().await;
    let award = app.earn(&member, 1_000).await;
    app.ledger
        .reverse_award(proto::ReverseAwardRequest {
            program_id: PROGRAM.into(),
            idempotency_key: "refund".into(),
            award: Some(proto::EntryRef {
                r#ref: Some(proto::entry_ref::Ref::EntryId(award.entry_id)),
            }),
            points: Some(500),
            reason: "returned".into(),
        })
        .await
        .unwrap();
    let after = status(&mut app, &member).await;
    assert_eq!(
        (after.tier_code.as_str(), after.status_points),
        ("silver", 500)
    );
    assert_eq!(after.points_to_keep_tier, 300);
    assert_eq!(
        evaluate(&mut app, &member).await,
        [proto::TierStepKind::GraceStarted]
    );
    assert_eq!(status(&mut app, &member).await.tier_code, "silver");
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_manual_tier_holds_downgrades_until_the_hold_ends() {
    let mut app = spawn_app().await;
    app.create_program(tier_rules()).await;
    let member = app.enroll().await;
    let set = proto::SetTierRequest {
        program_id: PROGRAM.into(),
        member_id: member.clone(),
        tier_code: "gold".into(),
        hold_until: Some(timestamp(app.clock_now() + Duration::days(60))),
        reason: "status match from a competitor".into(),
        actor: "support@acme".into(),
        idempotency_key: "match-1".into(),
    };
    let outcome = app.tiers.set_tier(set.clone()).await.unwrap().into_inner();
    assert_eq!(
        (outcome.from_tier_code.as_str(), outcome.tier_code.as_str()),
        ("member", "gold")
    );
    let replay = app.tiers.set_tier(set.clone()).await.unwrap().into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.change_id, outcome.change_id);
    let other = app
        .tiers
        .set_tier(proto::SetTierRequest {
            tier_code: "vip".into(),
            ..set.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::AlreadyExists);
    let unknown = app
        .tiers
        .set_tier(proto::SetTierRequest {
            tier_code: "platinum".into(),
            idempotency_key: "match-2".into(),
            ..set.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(unknown.message().contains("member, silver, gold, vip"));
    assert_eq!(app.member(&member).await.tier_code, "gold");
    app.clock.advance(Duration::days(59));
    assert!(evaluate(&mut app, &member).await.is_empty());
    assert_eq!(
        status(&mut app, &member).await.tier_if_evaluated_now,
        "gold"
    );
    app.clock.advance(Duration::days(2));
    assert_eq!(
        evaluate(&mut app, &member).await,
        [proto::TierStepKind::GraceStarted]
    );
    let changes = app
        .tiers
        .list_tier_history(proto::ListTierHistoryRequest {
            program_id: PROGRAM.into(),
            member_id: member.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, proto::TierChangeKind::Set as i32);
    assert_eq!(changes[0].reason, "status match from a competitor");
    assert_eq!(changes[0].actor, "support@acme");
    assert_eq!(changes[0].entry_id, outcome.entry_id);
    assert_eq!(
        event_types(&app, &member, "tier.").await,
        ["tier.set", "tier.downgrade_warning"]
    );
    app.assert_audit_clean().await;
}

/// The upgrade event is written by the award's transaction: a rolled-back award leaves
/// none, and the retried award leaves exactly one.
#[tokio::test]
async fn an_upgrade_event_exists_only_if_its_award_commits() {
    let mut app = spawn_app().await;
    app.create_program(tier_rules()).await;
    let member = app.enroll().await;
    let client = app.db.get().await.unwrap();
    // A fault at the last write of the award's transaction: the tier change.
    client
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON tier_changes \
               FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let purchase = app.purchase(&member, 150_000);
    let failed = app.ledger.award(purchase.clone()).await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Internal);
    assert!(events(&app, &member).await.is_empty());
    assert_eq!(app.member(&member).await.balance_points, 0);
    client
        .batch_execute("DROP TRIGGER refuse ON tier_changes")
        .await
        .unwrap();
    app.award(purchase.clone()).await;
    let replay = app.ledger.award(purchase).await.unwrap().into_inner();
    assert!(replay.replayed);
    assert_eq!(
        event_types(&app, &member, "").await,
        ["points.awarded", "tier.upgraded"]
    );
    app.assert_ties_out().await;
}

#[tokio::test]
async fn the_audit_checks_the_tier_invariants() {
    let mut app = spawn_app().await;
    app.create_program(tier_rules()).await;
    let member = app.enroll().await;
    app.earn(&member, 5_000).await;
    app.clock.advance(Duration::days(370));
    evaluate(&mut app, &member).await;
    app.clock.advance(Duration::days(30));
    evaluate(&mut app, &member).await;
    app.earn(&member, 4_000).await;
    app.assert_audit_clean().await;
    let client = app.db.get().await.unwrap();
    let corrupt = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .batch_execute(&format!("BEGIN; {sql}"))
                .await
                .unwrap();
        }
    };
    let report = |app: &TestApp| {
        let service = app.service.clone();
        async move {
            let program = flash_loyalty::domain::ProgramId::parse(PROGRAM).unwrap();
            service.audit(&program).await.unwrap().to_string()
        }
    };
    // A tier moved outside the history.
    corrupt("UPDATE members SET tier_rank = 3;").await;
    client.batch_execute("COMMIT").await.unwrap();
    assert!(report(&app).await.contains("its tier history ends at 2"));
    client
        .batch_execute("UPDATE members SET tier_rank = 2")
        .await
        .unwrap();
    // A re-upgrade bonus without its demotion; a tier bonus counted toward status.
    corrupt(
        "DELETE FROM tier_changes WHERE change = 'downgraded'; \
         UPDATE ledger_entries SET status_points = points, status_at = created_at \
           WHERE reason = 'reupgrade';",
    )
    .await;
    client.batch_execute("COMMIT").await.unwrap();
    let found = report(&app).await;
    assert!(found.contains("no demotion of member"), "{found}");
    assert!(found.contains("toward status, expected None"), "{found}");
}
