use crate::helpers::{spawn_app, usd_rules, PROGRAM};
use flash_loyalty::grpc::proto;
use tonic::Code;

#[tokio::test]
async fn creating_a_program_twice_with_the_same_settings_replays() {
    let mut app = spawn_app().await;
    let request = proto::CreateProgramRequest {
        program_id: PROGRAM.into(),
        name: "Acme".into(),
        rules: Some(usd_rules()),
    };
    let first = app
        .programs
        .create_program(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = app
        .programs
        .create_program(request)
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    assert!(second.replayed);
    assert_eq!(first.program, second.program);
    let tiers = &first.program.unwrap().rules.unwrap().tiers;
    assert_eq!(tiers.len(), 4, "empty tiers become the default ladder");
}

#[tokio::test]
async fn creating_a_program_again_with_other_settings_is_already_exists() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let mut rules = usd_rules();
    rules.base_rate_bp = 20_000;
    let error = app
        .programs
        .create_program(proto::CreateProgramRequest {
            program_id: PROGRAM.into(),
            name: "Acme".into(),
            rules: Some(rules),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    assert!(
        error.message().contains("rules.base_rate_bp"),
        "{}",
        error.message()
    );
}

#[tokio::test]
async fn invalid_rules_are_refused_naming_the_field() {
    let mut app = spawn_app().await;
    type Change = Box<dyn Fn(&mut proto::ProgramRules)>;
    let cases: Vec<(&str, Change)> = vec![
        ("rules.currency", Box::new(|r| r.currency = "usd".into())),
        (
            "rules.timezone",
            Box::new(|r| r.timezone = "Nowhere/City".into()),
        ),
        // Regression found by the fuzzer: a NUL in a tier name reached the jsonb column.
        (
            "rules.tiers[0].name",
            Box::new(|r| r.tiers = vec![tier("member\0", 0, 0)]),
        ),
        ("rules.base_rate_bp", Box::new(|r| r.base_rate_bp = -1)),
        (
            "rules.daily_cap_points",
            Box::new(|r| r.daily_cap_points = Some(0)),
        ),
        (
            "rules.points_validity_days",
            Box::new(|r| r.points_validity_days = 0),
        ),
        (
            "rules.tiers[1].qualify_points",
            Box::new(|r| r.tiers = vec![tier("member", 0, 0), tier("silver", 0, 0)]),
        ),
    ];
    for (field, change) in cases {
        let mut rules = usd_rules();
        change(&mut rules);
        let error = app
            .programs
            .create_program(proto::CreateProgramRequest {
                program_id: PROGRAM.into(),
                name: "Acme".into(),
                rules: Some(rules),
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert_eq!(crate::helpers::refusal(&error).bad_fields, [field]);
        assert!(
            error.message().starts_with(field),
            "{field}: {}",
            error.message()
        );
    }
    let error = app
        .programs
        .get_program(proto::GetProgramRequest {
            program_id: PROGRAM.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "nothing was created");
}

#[tokio::test]
async fn updating_rules_bumps_the_version_and_an_identical_update_writes_nothing() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let mut rules = usd_rules();
    rules.base_rate_bp = 20_000;
    let update = proto::UpdateProgramRequest {
        program_id: PROGRAM.into(),
        rules: Some(rules),
        expected_rules_version: 1,
        name: String::new(),
    };
    let first = app
        .programs
        .update_program(update.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!first.unchanged);
    assert_eq!(first.program.as_ref().unwrap().rules_version, 2);
    let again = app
        .programs
        .update_program(update.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(again.unchanged, "a retried update writes nothing");
    assert_eq!(again.program.unwrap().rules_version, 2);

    let mut stale = update;
    stale.rules.as_mut().unwrap().base_rate_bp = 30_000;
    let error = app.programs.update_program(stale).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn awards_record_the_rules_version_they_were_computed_under() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let before = app.award(app.purchase(&member, 1_000)).await;
    let mut rules = usd_rules();
    rules.base_rate_bp = 20_000;
    app.programs
        .update_program(proto::UpdateProgramRequest {
            program_id: PROGRAM.into(),
            rules: Some(rules),
            expected_rules_version: 0,
            name: String::new(),
        })
        .await
        .unwrap();
    let after = app.award(app.purchase(&member, 1_000)).await;
    assert_eq!((before.rules_version, before.awarded_points), (1, 10));
    assert_eq!((after.rules_version, after.awarded_points), (2, 20));
    app.assert_ties_out().await;
}

fn tier(name: &str, qualify: i64, maintain: i64) -> proto::Tier {
    proto::Tier {
        code: name.trim_end_matches('\0').into(),
        name: name.into(),
        qualify_points: qualify,
        maintain_points: maintain,
        multiplier_bp: 10_000,
    }
}

/// Regression found by the fuzzer: a cap counter kept under earlier rules did not count
/// the awards made while no cap applied, so a cap brought back mid-day let a member earn
/// past it.
#[tokio::test]
async fn a_cap_brought_back_mid_day_counts_the_points_earned_without_one() {
    let mut app = spawn_app().await;
    let with_cap = |cap: Option<i64>| {
        let mut rules = usd_rules();
        rules.daily_cap_points = cap;
        proto::UpdateProgramRequest {
            program_id: PROGRAM.into(),
            rules: Some(rules),
            expected_rules_version: 0,
            name: String::new(),
        }
    };
    let mut first = usd_rules();
    first.daily_cap_points = Some(2_000);
    app.create_program(first).await;
    let member = app.enroll().await;
    app.earn(&member, 100).await; // counted in Redis under version 1
    app.programs.update_program(with_cap(None)).await.unwrap();
    app.earn(&member, 1_000).await; // no cap, not counted in Redis
    app.programs
        .update_program(with_cap(Some(500)))
        .await
        .unwrap();
    let after = app.earn(&member, 10).await;
    assert_eq!((after.awarded_points, after.capped), (0, true));
    app.assert_ties_out().await;
}

fn capped_in(timezone: &str) -> proto::ProgramRules {
    let mut rules = usd_rules();
    rules.timezone = timezone.into();
    rules.daily_cap_points = Some(500);
    rules
}

async fn change_zone(app: &mut crate::helpers::TestApp, timezone: &str) {
    app.programs
        .update_program(proto::UpdateProgramRequest {
            program_id: PROGRAM.into(),
            rules: Some(capped_in(timezone)),
            expected_rules_version: 0,
            name: String::new(),
        })
        .await
        .unwrap();
}

/// Regression (outside review): moving a UTC program to Pacific/Kiritimati, where it is
/// already the next day, let a member earn the cap again within minutes.
#[tokio::test]
async fn a_time_zone_change_never_opens_a_second_cap_in_one_local_day() {
    let mut app = spawn_app().await;
    app.create_program(capped_in("UTC")).await;
    let member = app.enroll().await;
    assert_eq!(app.earn(&member, 600).await.awarded_points, 500);
    change_zone(&mut app, "Pacific/Kiritimati").await;
    let after = app.earn(&member, 600).await;
    assert_eq!((after.awarded_points, after.capped), (0, true));
    app.assert_ties_out().await;
}

/// After a zone change the cap holds for the local day of every zone in force that day:
/// the old zone's day still counts what was earned under it, the new zone's day counts
/// what was earned in its hours before the change, and two days later only the new
/// zone remains.
#[tokio::test]
async fn after_a_zone_change_the_cap_holds_under_the_old_and_the_new_zone() {
    let mut app = spawn_app().await;
    let day = crate::helpers::start_of_test().date_naive();
    let at = |hour: u32, days: u64| {
        (day + chrono::Days::new(days))
            .and_hms_opt(hour, 0, 0)
            .unwrap()
            .and_utc()
    };
    app.clock.set(at(5, 0)); // 19:00 of the same day in Kiritimati
    app.create_program(capped_in("UTC")).await;
    let member = app.enroll().await;
    assert_eq!(app.earn(&member, 300).await.awarded_points, 300);
    app.clock.set(at(11, 0)); // 01:00 of the next day in Kiritimati
    change_zone(&mut app, "Pacific/Kiritimati").await;
    // A new Kiritimati day, but the UTC day holds 300 already.
    assert_eq!(app.earn(&member, 600).await.awarded_points, 200);
    app.clock.set(at(0, 1) + chrono::Duration::minutes(30)); // 14:30 in Kiritimati
                                                             // A new UTC day, but the Kiritimati day holds 200 already.
    assert_eq!(app.earn(&member, 600).await.awarded_points, 300);
    app.clock.set(at(12, 2)); // 49 hours after the change: Kiritimati alone
    assert_eq!(app.earn(&member, 600).await.awarded_points, 500);
    app.assert_ties_out().await;
}
