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

fn item(member_id: &str) -> proto::EnrollMemberRequest {
    proto::EnrollMemberRequest {
        member_id: member_id.into(),
        ..Default::default()
    }
}

/// The outcome of each item of a batch: the member and whether it was already enrolled,
/// or the item's code.
fn outcomes(response: proto::EnrollBatchResponse) -> Vec<Result<(proto::Member, bool), Code>> {
    response
        .results
        .into_iter()
        .map(|result| match result.outcome {
            Some(proto::enroll_batch_result::Outcome::Member(enrolled)) => {
                Ok((enrolled.member.unwrap(), enrolled.already_enrolled))
            }
            Some(proto::enroll_batch_result::Outcome::Error(error)) => {
                Err(Code::from_i32(error.code))
            }
            None => panic!("an item without an outcome"),
        })
        .collect()
}

/// EnrollBatch answers each item as EnrollMember would, in request order: new and
/// existing members, a member named twice (enrolled once, the last birthday kept), an
/// item with contacts, and items refused on their own while the rest are enrolled.
#[tokio::test]
async fn a_batch_enrolls_each_member_as_enroll_member_would() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    app.create_named_program("other", usd_rules()).await;
    let existing = app.enroll().await;
    app.earn(&existing, 40).await;
    app.ledger
        .enroll_member(proto::EnrollMemberRequest {
            program_id: PROGRAM.into(),
            member_id: Uuid::new_v4().to_string(),
            contacts: vec!["taken@example.com".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let members_before = app.table_row_counts().await["members"];
    let (a, b, d, f) = (
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
    );
    let batch = proto::EnrollBatchRequest {
        program_id: PROGRAM.into(),
        members: vec![
            item(&a),
            item(&existing),
            proto::EnrollMemberRequest {
                birthday: "1990-02-02".into(),
                ..item(&a)
            },
            item("not-a-uuid"),
            proto::EnrollMemberRequest {
                contacts: vec!["b@example.com".into()],
                ..item(&b)
            },
            proto::EnrollMemberRequest {
                contacts: vec!["Taken@Example.com".into()],
                ..item(&d)
            },
            proto::EnrollMemberRequest {
                program_id: "other".into(),
                ..item(&f)
            },
            proto::EnrollMemberRequest {
                birthday: "2999-01-01".into(),
                ..item(&f)
            },
        ],
    };
    let results = outcomes(
        app.ledger
            .enroll_batch(batch.clone())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(results.len(), 8);
    let (first_a, already) = results[0].clone().unwrap();
    assert_eq!((first_a.member_id.as_str(), already), (a.as_str(), false));
    assert_eq!(
        first_a.birthday, "1990-02-02",
        "the member as stored after the batch"
    );
    assert_eq!(first_a.balance_points, 0);
    let (old, already) = results[1].clone().unwrap();
    assert_eq!((old.member_id.as_str(), already), (existing.as_str(), true));
    assert_eq!(
        old.balance_points, 40,
        "an existing member's points are read"
    );
    let (again_a, already) = results[2].clone().unwrap();
    assert_eq!((again_a.member_id.as_str(), already), (a.as_str(), true));
    assert_eq!(results[3].clone().unwrap_err(), Code::InvalidArgument);
    let (with_contact, already) = results[4].clone().unwrap();
    assert_eq!(
        (with_contact.member_id.as_str(), already),
        (b.as_str(), false)
    );
    assert_eq!(
        results[5].clone().unwrap_err(),
        Code::AlreadyExists,
        "a taken contact"
    );
    assert_eq!(
        results[6].clone().unwrap_err(),
        Code::InvalidArgument,
        "another program"
    );
    assert_eq!(
        results[7].clone().unwrap_err(),
        Code::InvalidArgument,
        "a future birthday"
    );
    assert_eq!(app.member(&a).await.birthday, "1990-02-02");
    for absent in [&d, &f] {
        let status = app
            .ledger
            .get_member(proto::GetMemberRequest {
                program_id: PROGRAM.into(),
                member_id: absent.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{absent} was not enrolled");
    }
    assert_eq!(app.table_row_counts().await["members"], members_before + 2);

    // The same batch again: every member already enrolled, nothing new.
    let before = app.table_row_counts().await;
    let again = outcomes(app.ledger.enroll_batch(batch).await.unwrap().into_inner());
    for index in [0, 1, 2, 4] {
        assert!(
            again[index].clone().unwrap().1,
            "item {index} already enrolled"
        );
    }
    assert_eq!(app.table_row_counts().await, before);
    app.assert_audit_clean().await;
}

/// A batch of an unknown program enrolls no one, each item NOT_FOUND; a batch past
/// FLASH_MAX_BATCH_ITEMS is refused whole.
#[tokio::test]
async fn a_batch_of_no_program_or_too_many_members_enrolls_no_one() {
    let mut app = crate::helpers::spawn_app_with(|settings| settings.max_batch_items = 3).await;
    app.create_program(usd_rules()).await;
    let before = app.table_row_counts().await;
    let members = |count: usize| -> Vec<proto::EnrollMemberRequest> {
        (0..count)
            .map(|_| item(&Uuid::new_v4().to_string()))
            .collect()
    };
    let results = outcomes(
        app.ledger
            .enroll_batch(proto::EnrollBatchRequest {
                program_id: "nowhere".into(),
                members: members(2),
            })
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(results, vec![Err(Code::NotFound), Err(Code::NotFound)]);
    let status = app
        .ledger
        .enroll_batch(proto::EnrollBatchRequest {
            program_id: PROGRAM.into(),
            members: members(4),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("at most 3"),
        "{}",
        status.message()
    );
    assert_eq!(app.table_row_counts().await, before);
    let served = outcomes(
        app.ledger
            .enroll_batch(proto::EnrollBatchRequest {
                program_id: PROGRAM.into(),
                members: members(3),
            })
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(served.iter().all(|result| matches!(result, Ok((_, false)))));
}

/// Batches naming the same members in opposite orders, at once, never deadlock: each
/// member is enrolled once and every item is answered.
#[tokio::test]
async fn overlapping_batches_at_once_enroll_each_member_once() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let ids: Vec<String> = (0..300).map(|_| Uuid::new_v4().to_string()).collect();
    let forward: Vec<_> = ids[..200].iter().map(|id| item(id)).collect();
    let backward: Vec<_> = ids[100..].iter().rev().map(|id| item(id)).collect();
    let mut calls = Vec::new();
    for round in 0..6 {
        let mut ledger = app.ledger.clone();
        let members = if round % 2 == 0 {
            forward.clone()
        } else {
            backward.clone()
        };
        calls.push(tokio::spawn(async move {
            ledger
                .enroll_batch(proto::EnrollBatchRequest {
                    program_id: PROGRAM.into(),
                    members,
                })
                .await
                .map(|response| response.into_inner())
        }));
    }
    let mut new = 0;
    for call in calls {
        for result in outcomes(call.await.unwrap().unwrap()) {
            let (_, already) = result.unwrap();
            new += usize::from(!already);
        }
    }
    assert_eq!(new, 300, "each member enrolled by exactly one item");
    assert_eq!(app.table_row_counts().await["members"], 300);
}
