//! Enrolling members: what a birthday may be.
use crate::helpers::{spawn_app, usd_rules, PROGRAM};
use flash_loyalty::grpc::proto;
use tonic::Code;
use uuid::Uuid;

#[tokio::test]
async fn birthdays_outside_years_0001_to_9999_are_invalid_arguments_and_enroll_no_one() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    for birthday in [
        "-5000-01-01",
        "-4714-11-24",
        "-262143-01-01",
        "+10000-01-01",
        "0000-12-31",
    ] {
        let error = app
            .ledger
            .enroll_member(proto::EnrollMemberRequest {
                program_id: PROGRAM.into(),
                member_id: Uuid::new_v4().to_string(),
                birthday: birthday.into(),
                enrolled_at: None,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{birthday}: {error:?}");
        assert!(
            error.message().starts_with("birthday"),
            "{birthday}: {}",
            error.message()
        );
    }
    let client = app.db.get().await.unwrap();
    let members: i64 = client
        .query_one("SELECT count(*) FROM members", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(members, 0, "no member was enrolled");

    let member_id = Uuid::new_v4().to_string();
    let enrolled = app
        .ledger
        .enroll_member(proto::EnrollMemberRequest {
            program_id: PROGRAM.into(),
            member_id,
            birthday: "0001-01-01".into(),
            enrolled_at: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolled.member.unwrap().birthday, "0001-01-01");
}
