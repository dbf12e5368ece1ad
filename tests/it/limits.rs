//! The server's limits under attack: oversize messages, over-long strings in every field of
//! every request, batches past the maximum, floods of concurrent calls, calls without a
//! deadline, and a shutdown in the middle of a call. Each refusal writes nothing.
use crate::helpers::*;
use flash_loyalty::domain::{member_lock_key, MemberId, ProgramId};
use flash_loyalty::grpc::proto;
use flash_testing_support::dispatch::{Call, Reply};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tonic::Code;

/// Longer than any bound of a string field, far shorter than a message may be.
const LONG: usize = 10_000;

fn long(prefix: &str) -> String {
    format!("{prefix}{}", "a".repeat(LONG))
}

/// The rules of these tests: USD with two tiers, so SetTier has a code to set.
fn tiered_rules() -> proto::ProgramRules {
    let mut rules = usd_rules();
    rules.tiers = vec![
        proto::Tier {
            code: "member".into(),
            name: "Member".into(),
            qualify_points: 0,
            maintain_points: 0,
            multiplier_bp: 10_000,
        },
        proto::Tier {
            code: "gold".into(),
            name: "Gold".into(),
            qualify_points: 1_000,
            maintain_points: 500,
            multiplier_bp: 15_000,
        },
    ];
    rules
}

/// Holds a member's lock (the one every write of theirs takes) in a transaction of its
/// own until dropped or released: the calls on that member wait behind it.
struct HeldLock {
    release: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl HeldLock {
    async fn take(app: &TestApp, member: &str) -> HeldLock {
        let key = member_lock_key(
            &ProgramId::parse(PROGRAM).unwrap(),
            MemberId::parse(member).unwrap(),
        );
        let pool = app.db.clone();
        let (taken, is_taken) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            let mut client = pool.get().await.unwrap();
            let tx = client.transaction().await.unwrap();
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
                .await
                .unwrap();
            let _ = taken.send(());
            let _ = released.await;
            tx.rollback().await.unwrap();
        });
        is_taken.await.expect("the lock is taken");
        HeldLock { release, done }
    }

    async fn release(self) {
        let _ = self.release.send(());
        self.done.await.unwrap();
    }
}

/// Waits until `count` sessions of the test database wait for a lock.
async fn sessions_waiting_for_a_lock(app: &TestApp, count: i64) {
    let client = app.db.get().await.unwrap();
    for _ in 0..200 {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{count} sessions never waited for the member's lock");
}

async fn entries_of(app: &TestApp, idempotency_key: &str) -> i64 {
    let client = app.db.get().await.unwrap();
    client
        .query_one(
            "SELECT count(*) FROM ledger_entries WHERE idempotency_key = $1",
            &[&idempotency_key],
        )
        .await
        .unwrap()
        .get(0)
}

/// Every string field of every request message of `flash.loyalty.v1`, nested messages
/// included, as `Request.field.subfield` paths.
fn string_fields_of_every_request() -> BTreeSet<String> {
    use prost::Message;
    use prost_types::field_descriptor_proto::Type;
    let set =
        prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let messages: std::collections::HashMap<String, prost_types::DescriptorProto> = set
        .file
        .iter()
        .filter(|file| file.package() == "flash.loyalty.v1")
        .flat_map(|file| file.message_type.iter())
        .map(|message| {
            (
                format!(".flash.loyalty.v1.{}", message.name()),
                message.clone(),
            )
        })
        .collect();
    fn walk(
        messages: &std::collections::HashMap<String, prost_types::DescriptorProto>,
        message: &prost_types::DescriptorProto,
        path: &str,
        found: &mut BTreeSet<String>,
    ) {
        for field in &message.field {
            let here = format!("{path}.{}", field.name());
            match field.r#type() {
                Type::String => {
                    found.insert(here);
                }
                Type::Message => {
                    if let Some(nested) = messages.get(field.type_name()) {
                        walk(messages, nested, &here, found);
                    }
                }
                _ => {}
            }
        }
    }
    let mut found = BTreeSet::new();
    for message in messages.values() {
        if message.name().ends_with("Request") {
            walk(&messages, message, message.name(), &mut found);
        }
    }
    found
}

/// Every string field of every request, sent over-long in an otherwise valid request,
/// is refused as INVALID_ARGUMENT naming the field (an AwardBatch item: that item's
/// INVALID_ARGUMENT), and no row of any table changes.
#[tokio::test]
async fn an_over_long_string_in_any_field_of_any_request_is_refused_and_writes_nothing() {
    let mut app = spawn_app().await;
    app.create_program(tiered_rules()).await;
    let member = app.enroll().await;
    let award = app.earn(&member, 10).await;
    let spend = app.spend(&member, 1).await;
    let award_key = {
        let client = app.db.get().await.unwrap();
        let id: uuid::Uuid = award.entry_id.parse().unwrap();
        let row = client
            .query_one(
                "SELECT idempotency_key FROM ledger_entries WHERE entry_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    let before = app.table_row_counts().await;

    let new_member = uuid::Uuid::new_v4().to_string();
    let code = "abcdefghijklmnopqrstuvwx".to_owned();
    let key = || format!("key-{}", uuid::Uuid::new_v4().simple());
    let program = || PROGRAM.to_owned();
    let create = || proto::CreateProgramRequest {
        program_id: "fresh".into(),
        name: "Fresh".into(),
        rules: Some(tiered_rules()),
    };
    let update = || proto::UpdateProgramRequest {
        program_id: program(),
        rules: Some(tiered_rules()),
        expected_rules_version: 0,
        name: "Acme renamed".into(),
    };
    let enroll = || proto::EnrollMemberRequest {
        program_id: program(),
        member_id: new_member.clone(),
        birthday: "1990-04-01".into(),
        contacts: vec!["new@example.com".into()],
        ..Default::default()
    };
    let purchase = || app.purchase(&member, 1_000);
    let batch = |award: proto::AwardRequest| proto::AwardBatchRequest {
        program_id: program(),
        awards: vec![proto::AwardRequest {
            program_id: String::new(),
            ..award
        }],
    };
    let spend_request = || app.spend_request(&member, 1);
    let reverse_award = || proto::ReverseAwardRequest {
        program_id: program(),
        idempotency_key: key(),
        award: Some(proto::EntryRef {
            r#ref: Some(proto::entry_ref::Ref::EntryId(award.entry_id.clone())),
        }),
        points: None,
        reason: "refund".into(),
    };
    let reverse_spend = || proto::ReverseSpendRequest {
        program_id: program(),
        idempotency_key: key(),
        spend: Some(proto::EntryRef {
            r#ref: Some(proto::entry_ref::Ref::EntryId(spend.entry_id.clone())),
        }),
        points: None,
        reason: "cancelled".into(),
    };
    let adjust = || proto::AdjustRequest {
        program_id: program(),
        member_id: member.clone(),
        idempotency_key: key(),
        points: 5,
        reason: "goodwill".into(),
        actor: "support@acme".into(),
        counts_toward_tier: false,
    };
    let set_tier = || proto::SetTierRequest {
        program_id: program(),
        member_id: member.clone(),
        tier_code: "gold".into(),
        reason: "vip".into(),
        actor: "support@acme".into(),
        idempotency_key: key(),
        ..Default::default()
    };
    let invites = || proto::CreateInvitesRequest {
        program_id: program(),
        referrer_member_id: member.clone(),
        idempotency_key: key(),
        contacts: vec!["friend@example.com".into()],
    };
    let accept = || proto::AcceptInviteRequest {
        program_id: program(),
        code: code.clone(),
        referee_member_id: new_member.clone(),
        idempotency_key: key(),
    };
    let convert = || proto::ConvertInviteRequest {
        program_id: program(),
        code: code.clone(),
        idempotency_key: key(),
    };
    let revoke = || proto::RevokeInviteRequest {
        program_id: program(),
        code: code.clone(),
        idempotency_key: key(),
    };
    let member_of = || (program(), member.clone());
    // A phone number may carry spaces; as many as a message can hold are refused.
    let long_phone = format!("+33{}612345678", " ".repeat(LONG));
    let long_email = format!("{}@example.com", "a".repeat(LONG));

    // (the field's path, the field the refusal names, the call)
    let mut table: Vec<(&str, &str, Call)> = vec![
        (
            "CreateProgramRequest.program_id",
            "program_id",
            proto::CreateProgramRequest {
                program_id: long("p"),
                ..create()
            }
            .into(),
        ),
        (
            "CreateProgramRequest.name",
            "name",
            proto::CreateProgramRequest {
                name: long("n"),
                ..create()
            }
            .into(),
        ),
        (
            "GetProgramRequest.program_id",
            "program_id",
            proto::GetProgramRequest {
                program_id: long("p"),
            }
            .into(),
        ),
        (
            "UpdateProgramRequest.program_id",
            "program_id",
            proto::UpdateProgramRequest {
                program_id: long("p"),
                ..update()
            }
            .into(),
        ),
        (
            "UpdateProgramRequest.name",
            "name",
            proto::UpdateProgramRequest {
                name: long("n"),
                ..update()
            }
            .into(),
        ),
        (
            "EnrollMemberRequest.program_id",
            "program_id",
            proto::EnrollMemberRequest {
                program_id: long("p"),
                ..enroll()
            }
            .into(),
        ),
        (
            "EnrollMemberRequest.member_id",
            "member_id",
            proto::EnrollMemberRequest {
                member_id: long(&new_member),
                ..enroll()
            }
            .into(),
        ),
        (
            "EnrollMemberRequest.birthday",
            "birthday",
            proto::EnrollMemberRequest {
                birthday: long("1990-04-01"),
                ..enroll()
            }
            .into(),
        ),
        (
            "EnrollMemberRequest.contacts",
            "contacts[1]",
            proto::EnrollMemberRequest {
                contacts: vec!["new@example.com".into(), long_phone.clone()],
                ..enroll()
            }
            .into(),
        ),
        (
            "EnrollMemberRequest.contacts",
            "contacts[0]",
            proto::EnrollMemberRequest {
                contacts: vec![long_email.clone()],
                ..enroll()
            }
            .into(),
        ),
        (
            "GetMemberRequest.program_id",
            "program_id",
            proto::GetMemberRequest {
                program_id: long("p"),
                member_id: member.clone(),
            }
            .into(),
        ),
        (
            "GetMemberRequest.member_id",
            "member_id",
            proto::GetMemberRequest {
                program_id: program(),
                member_id: long(&member),
            }
            .into(),
        ),
        (
            "SpendRequest.program_id",
            "program_id",
            proto::SpendRequest {
                program_id: long("p"),
                ..spend_request()
            }
            .into(),
        ),
        (
            "SpendRequest.member_id",
            "member_id",
            proto::SpendRequest {
                member_id: long(&member),
                ..spend_request()
            }
            .into(),
        ),
        (
            "SpendRequest.idempotency_key",
            "idempotency_key",
            proto::SpendRequest {
                idempotency_key: long("k"),
                ..spend_request()
            }
            .into(),
        ),
        (
            "SpendRequest.reference",
            "reference",
            proto::SpendRequest {
                reference: long("r"),
                ..spend_request()
            }
            .into(),
        ),
        (
            "ReverseAwardRequest.program_id",
            "program_id",
            proto::ReverseAwardRequest {
                program_id: long("p"),
                ..reverse_award()
            }
            .into(),
        ),
        (
            "ReverseAwardRequest.idempotency_key",
            "idempotency_key",
            proto::ReverseAwardRequest {
                idempotency_key: long("k"),
                ..reverse_award()
            }
            .into(),
        ),
        (
            "ReverseAwardRequest.award.entry_id",
            "award.entry_id",
            proto::ReverseAwardRequest {
                award: Some(proto::EntryRef {
                    r#ref: Some(proto::entry_ref::Ref::EntryId(long(&award.entry_id))),
                }),
                ..reverse_award()
            }
            .into(),
        ),
        (
            "ReverseAwardRequest.award.idempotency_key",
            "award.idempotency_key",
            proto::ReverseAwardRequest {
                award: Some(proto::EntryRef {
                    r#ref: Some(proto::entry_ref::Ref::IdempotencyKey(long(&award_key))),
                }),
                ..reverse_award()
            }
            .into(),
        ),
        (
            "ReverseAwardRequest.reason",
            "reason",
            proto::ReverseAwardRequest {
                reason: long("r"),
                ..reverse_award()
            }
            .into(),
        ),
        (
            "ReverseSpendRequest.program_id",
            "program_id",
            proto::ReverseSpendRequest {
                program_id: long("p"),
                ..reverse_spend()
            }
            .into(),
        ),
        (
            "ReverseSpendRequest.idempotency_key",
            "idempotency_key",
            proto::ReverseSpendRequest {
                idempotency_key: long("k"),
                ..reverse_spend()
            }
            .into(),
        ),
        (
            "ReverseSpendRequest.spend.entry_id",
            "spend.entry_id",
            proto::ReverseSpendRequest {
                spend: Some(proto::EntryRef {
                    r#ref: Some(proto::entry_ref::Ref::EntryId(long(&spend.entry_id))),
                }),
                ..reverse_spend()
            }
            .into(),
        ),
        (
            "ReverseSpendRequest.spend.idempotency_key",
            "spend.idempotency_key",
            proto::ReverseSpendRequest {
                spend: Some(proto::EntryRef {
                    r#ref: Some(proto::entry_ref::Ref::IdempotencyKey(long("spend-"))),
                }),
                ..reverse_spend()
            }
            .into(),
        ),
        (
            "ReverseSpendRequest.reason",
            "reason",
            proto::ReverseSpendRequest {
                reason: long("r"),
                ..reverse_spend()
            }
            .into(),
        ),
        (
            "AdjustRequest.program_id",
            "program_id",
            proto::AdjustRequest {
                program_id: long("p"),
                ..adjust()
            }
            .into(),
        ),
        (
            "AdjustRequest.member_id",
            "member_id",
            proto::AdjustRequest {
                member_id: long(&member),
                ..adjust()
            }
            .into(),
        ),
        (
            "AdjustRequest.idempotency_key",
            "idempotency_key",
            proto::AdjustRequest {
                idempotency_key: long("k"),
                ..adjust()
            }
            .into(),
        ),
        (
            "AdjustRequest.reason",
            "reason",
            proto::AdjustRequest {
                reason: long("r"),
                ..adjust()
            }
            .into(),
        ),
        (
            "AdjustRequest.actor",
            "actor",
            proto::AdjustRequest {
                actor: long("a"),
                ..adjust()
            }
            .into(),
        ),
        (
            "ListEntriesRequest.program_id",
            "program_id",
            proto::ListEntriesRequest {
                program_id: long("p"),
                member_id: member.clone(),
                ..Default::default()
            }
            .into(),
        ),
        (
            "ListEntriesRequest.member_id",
            "member_id",
            proto::ListEntriesRequest {
                program_id: program(),
                member_id: long(&member),
                ..Default::default()
            }
            .into(),
        ),
        (
            "ListEntriesRequest.page_token",
            "page_token",
            proto::ListEntriesRequest {
                program_id: program(),
                member_id: member.clone(),
                page_token: format!("1{}", "0".repeat(LONG)),
                ..Default::default()
            }
            .into(),
        ),
        (
            "GetLiabilityRequest.program_id",
            "program_id",
            proto::GetLiabilityRequest {
                program_id: long("p"),
                ..Default::default()
            }
            .into(),
        ),
        (
            "GetTierStatusRequest.program_id",
            "program_id",
            proto::GetTierStatusRequest {
                program_id: long("p"),
                member_id: member.clone(),
            }
            .into(),
        ),
        (
            "GetTierStatusRequest.member_id",
            "member_id",
            proto::GetTierStatusRequest {
                program_id: program(),
                member_id: long(&member),
            }
            .into(),
        ),
        (
            "ListTierHistoryRequest.program_id",
            "program_id",
            proto::ListTierHistoryRequest {
                program_id: long("p"),
                member_id: member.clone(),
                ..Default::default()
            }
            .into(),
        ),
        (
            "ListTierHistoryRequest.member_id",
            "member_id",
            proto::ListTierHistoryRequest {
                program_id: program(),
                member_id: long(&member),
                ..Default::default()
            }
            .into(),
        ),
        ("ListTierHistoryRequest.page_token", "page_token", {
            let (program_id, member_id) = member_of();
            proto::ListTierHistoryRequest {
                program_id,
                member_id,
                page_token: format!("1{}", "0".repeat(LONG)),
                ..Default::default()
            }
            .into()
        }),
        (
            "EvaluateMemberRequest.program_id",
            "program_id",
            proto::EvaluateMemberRequest {
                program_id: long("p"),
                member_id: member.clone(),
            }
            .into(),
        ),
        (
            "EvaluateMemberRequest.member_id",
            "member_id",
            proto::EvaluateMemberRequest {
                program_id: program(),
                member_id: long(&member),
            }
            .into(),
        ),
        (
            "SetTierRequest.program_id",
            "program_id",
            proto::SetTierRequest {
                program_id: long("p"),
                ..set_tier()
            }
            .into(),
        ),
        (
            "SetTierRequest.member_id",
            "member_id",
            proto::SetTierRequest {
                member_id: long(&member),
                ..set_tier()
            }
            .into(),
        ),
        (
            "SetTierRequest.tier_code",
            "tier_code",
            proto::SetTierRequest {
                tier_code: long("gold"),
                ..set_tier()
            }
            .into(),
        ),
        (
            "SetTierRequest.reason",
            "reason",
            proto::SetTierRequest {
                reason: long("r"),
                ..set_tier()
            }
            .into(),
        ),
        (
            "SetTierRequest.actor",
            "actor",
            proto::SetTierRequest {
                actor: long("a"),
                ..set_tier()
            }
            .into(),
        ),
        (
            "SetTierRequest.idempotency_key",
            "idempotency_key",
            proto::SetTierRequest {
                idempotency_key: long("k"),
                ..set_tier()
            }
            .into(),
        ),
        (
            "CreateInvitesRequest.program_id",
            "program_id",
            proto::CreateInvitesRequest {
                program_id: long("p"),
                ..invites()
            }
            .into(),
        ),
        (
            "CreateInvitesRequest.referrer_member_id",
            "member_id",
            proto::CreateInvitesRequest {
                referrer_member_id: long(&member),
                ..invites()
            }
            .into(),
        ),
        (
            "CreateInvitesRequest.idempotency_key",
            "idempotency_key",
            proto::CreateInvitesRequest {
                idempotency_key: long("k"),
                ..invites()
            }
            .into(),
        ),
        (
            "CreateInvitesRequest.contacts",
            "contacts[0]",
            proto::CreateInvitesRequest {
                contacts: vec![long_phone.clone()],
                ..invites()
            }
            .into(),
        ),
        (
            "CreateInvitesRequest.contacts",
            "contacts[0]",
            proto::CreateInvitesRequest {
                contacts: vec![long_email.clone()],
                ..invites()
            }
            .into(),
        ),
        (
            "AcceptInviteRequest.program_id",
            "program_id",
            proto::AcceptInviteRequest {
                program_id: long("p"),
                ..accept()
            }
            .into(),
        ),
        (
            "AcceptInviteRequest.code",
            "code",
            proto::AcceptInviteRequest {
                code: long(&code),
                ..accept()
            }
            .into(),
        ),
        (
            "AcceptInviteRequest.referee_member_id",
            "member_id",
            proto::AcceptInviteRequest {
                referee_member_id: long(&new_member),
                ..accept()
            }
            .into(),
        ),
        (
            "AcceptInviteRequest.idempotency_key",
            "idempotency_key",
            proto::AcceptInviteRequest {
                idempotency_key: long("k"),
                ..accept()
            }
            .into(),
        ),
        (
            "ConvertInviteRequest.program_id",
            "program_id",
            proto::ConvertInviteRequest {
                program_id: long("p"),
                ..convert()
            }
            .into(),
        ),
        (
            "ConvertInviteRequest.code",
            "code",
            proto::ConvertInviteRequest {
                code: long(&code),
                ..convert()
            }
            .into(),
        ),
        (
            "ConvertInviteRequest.idempotency_key",
            "idempotency_key",
            proto::ConvertInviteRequest {
                idempotency_key: long("k"),
                ..convert()
            }
            .into(),
        ),
        (
            "RevokeInviteRequest.program_id",
            "program_id",
            proto::RevokeInviteRequest {
                program_id: long("p"),
                ..revoke()
            }
            .into(),
        ),
        (
            "RevokeInviteRequest.code",
            "code",
            proto::RevokeInviteRequest {
                code: long(&code),
                ..revoke()
            }
            .into(),
        ),
        (
            "RevokeInviteRequest.idempotency_key",
            "idempotency_key",
            proto::RevokeInviteRequest {
                idempotency_key: long("k"),
                ..revoke()
            }
            .into(),
        ),
        (
            "ListInvitesRequest.program_id",
            "program_id",
            proto::ListInvitesRequest {
                program_id: long("p"),
                referrer_member_id: member.clone(),
                ..Default::default()
            }
            .into(),
        ),
        (
            "ListInvitesRequest.referrer_member_id",
            "member_id",
            proto::ListInvitesRequest {
                program_id: program(),
                referrer_member_id: long(&member),
                ..Default::default()
            }
            .into(),
        ),
        (
            "ListInvitesRequest.page_token",
            "page_token",
            proto::ListInvitesRequest {
                program_id: program(),
                referrer_member_id: member.clone(),
                page_token: long(&uuid::Uuid::new_v4().to_string()),
                ..Default::default()
            }
            .into(),
        ),
        (
            "GetReferralStatsRequest.program_id",
            "program_id",
            proto::GetReferralStatsRequest {
                program_id: long("p"),
                member_id: member.clone(),
            }
            .into(),
        ),
        (
            "GetReferralStatsRequest.member_id",
            "member_id",
            proto::GetReferralStatsRequest {
                program_id: program(),
                member_id: long(&member),
            }
            .into(),
        ),
        (
            "GetGraphRequest.program_id",
            "program_id",
            proto::GetGraphRequest {
                program_id: long("p"),
                ..Default::default()
            }
            .into(),
        ),
        (
            "GetNeighborhoodRequest.program_id",
            "program_id",
            proto::GetNeighborhoodRequest {
                program_id: long("p"),
                member_id: member.clone(),
                ..Default::default()
            }
            .into(),
        ),
        (
            "GetNeighborhoodRequest.member_id",
            "member_id",
            proto::GetNeighborhoodRequest {
                program_id: program(),
                member_id: long(&member),
                ..Default::default()
            }
            .into(),
        ),
        (
            "ListTopAdvocatesRequest.program_id",
            "program_id",
            proto::ListTopAdvocatesRequest {
                program_id: long("p"),
                ..Default::default()
            }
            .into(),
        ),
        (
            "RebuildSnapshotRequest.program_id",
            "program_id",
            proto::RebuildSnapshotRequest {
                program_id: long("p"),
            }
            .into(),
        ),
        (
            "AwardBatchRequest.program_id",
            "program_id",
            proto::AwardBatchRequest {
                program_id: long("p"),
                ..batch(purchase())
            }
            .into(),
        ),
    ];
    // The rules' string fields, in a new program's rules and in an update's alike.
    let long_rules: Vec<(&str, &str, proto::ProgramRules)> = vec![
        (
            "currency",
            "rules.currency",
            proto::ProgramRules {
                currency: long("U"),
                ..tiered_rules()
            },
        ),
        (
            "timezone",
            "rules.timezone",
            proto::ProgramRules {
                timezone: long("Europe/"),
                ..tiered_rules()
            },
        ),
        ("tiers.code", "rules.tiers[1].code", {
            let mut rules = tiered_rules();
            rules.tiers[1].code = long("g");
            rules
        }),
        ("tiers.name", "rules.tiers[1].name", {
            let mut rules = tiered_rules();
            rules.tiers[1].name = long("G");
            rules
        }),
    ];
    for (field, named, rules) in long_rules {
        let path: &'static str =
            Box::leak(format!("CreateProgramRequest.rules.{field}").into_boxed_str());
        table.push((
            path,
            named,
            proto::CreateProgramRequest {
                rules: Some(rules.clone()),
                ..create()
            }
            .into(),
        ));
        let path: &'static str =
            Box::leak(format!("UpdateProgramRequest.rules.{field}").into_boxed_str());
        table.push((
            path,
            named,
            proto::UpdateProgramRequest {
                rules: Some(rules),
                ..update()
            }
            .into(),
        ));
    }
    // Award, and each of its fields inside a batch: that item refused INVALID_ARGUMENT.
    let award_fields: Vec<(&str, &str, proto::AwardRequest)> = vec![
        (
            "program_id",
            "program_id",
            proto::AwardRequest {
                program_id: long("p"),
                ..purchase()
            },
        ),
        (
            "member_id",
            "member_id",
            proto::AwardRequest {
                member_id: long(&member),
                ..purchase()
            },
        ),
        (
            "idempotency_key",
            "idempotency_key",
            proto::AwardRequest {
                idempotency_key: long("k"),
                ..purchase()
            },
        ),
        (
            "external_ref",
            "external_ref",
            proto::AwardRequest {
                external_ref: long("order-"),
                ..purchase()
            },
        ),
        (
            "currency",
            "currency",
            proto::AwardRequest {
                currency: long("USD"),
                ..purchase()
            },
        ),
    ];
    let mut batch_items = Vec::new();
    for (field, named, request) in award_fields {
        let path: &'static str = Box::leak(format!("AwardRequest.{field}").into_boxed_str());
        table.push((path, named, request.clone().into()));
        let path: &'static str =
            Box::leak(format!("AwardBatchRequest.awards.{field}").into_boxed_str());
        // In a batch, an item's own program_id may only repeat the batch's.
        batch_items.push((
            path,
            proto::AwardBatchRequest {
                awards: vec![request],
                ..batch(purchase())
            }
            .into(),
        ));
    }
    // Each field of an enrolment, inside an EnrollBatch: that item refused.
    let enrolments: Vec<(&str, proto::EnrollMemberRequest)> = table
        .iter()
        .filter_map(
            |(path, _, call)| match (path.strip_prefix("EnrollMemberRequest."), call) {
                (Some(field), Call::EnrollMember(request)) => Some((field, request.clone())),
                _ => None,
            },
        )
        .collect();
    for (field, request) in enrolments {
        let path: &'static str =
            Box::leak(format!("EnrollBatchRequest.members.{field}").into_boxed_str());
        batch_items.push((
            path,
            proto::EnrollBatchRequest {
                program_id: program(),
                members: vec![request],
            }
            .into(),
        ));
    }
    table.push((
        "EnrollBatchRequest.program_id",
        "program_id",
        proto::EnrollBatchRequest {
            program_id: long("p"),
            members: vec![enroll()],
        }
        .into(),
    ));

    let mut covered = BTreeSet::new();
    let mut clients = app.clients();
    for (path, field, call) in table {
        covered.insert(path.to_owned());
        let status = clients
            .send(call, None)
            .await
            .expect_err(&format!("{path} over-long is refused"));
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        let refusal = refusal(&status);
        assert_eq!(refusal.reason, "INVALID_FIELD", "{path}");
        assert!(
            refusal.bad_fields.iter().any(|named| named == field),
            "{path}: names {:?}, not {field}",
            refusal.bad_fields
        );
    }
    for (path, call) in batch_items {
        covered.insert(path.to_owned());
        let error = match clients.send(call, None).await.unwrap() {
            Reply::AwardBatch(answer) => match &answer.results[0].outcome {
                Some(proto::award_batch_result::Outcome::Error(error)) => error.clone(),
                other => panic!("{path}: {other:?}"),
            },
            Reply::EnrollBatch(answer) => match &answer.results[0].outcome {
                Some(proto::enroll_batch_result::Outcome::Error(error)) => error.clone(),
                other => panic!("{path}: {other:?}"),
            },
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(
            error.code,
            Code::InvalidArgument as i32,
            "{path}: {error:?}"
        );
    }
    // The stream: its cursor and its types.
    for (path, request) in [
        (
            "SubscribeRequest.program_id",
            proto::SubscribeRequest {
                program_id: long("p"),
                ..Default::default()
            },
        ),
        (
            "SubscribeRequest.after_cursor",
            proto::SubscribeRequest {
                program_id: program(),
                after_cursor: long("0"),
                ..Default::default()
            },
        ),
        (
            "SubscribeRequest.event_types",
            proto::SubscribeRequest {
                program_id: program(),
                event_types: vec![long("points.awarded")],
                ..Default::default()
            },
        ),
        (
            "SubscribeRequest.event_types",
            proto::SubscribeRequest {
                program_id: program(),
                event_types: vec!["points.awarded".into(); 65],
                ..Default::default()
            },
        ),
    ] {
        covered.insert(path.to_owned());
        let status = app
            .events
            .subscribe(request)
            .await
            .expect_err(&format!("{path} over-long is refused"));
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
    }

    let every = string_fields_of_every_request();
    let missing: Vec<_> = every.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "string fields not attacked: {missing:?}"
    );
    assert_eq!(app.table_row_counts().await, before, "a refused call wrote");
}

/// A message over FLASH_MAX_MESSAGE_BYTES (1 MiB by default) is RESOURCE_EXHAUSTED with
/// the limit in bytes, on the services and on health, and writes nothing; the server
/// then serves as before.
#[tokio::test]
async fn a_message_over_the_limit_is_resource_exhausted_and_writes_nothing() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let before = app.table_row_counts().await;
    let huge = "a".repeat(2 * 1024 * 1024);
    let status = app
        .ledger
        .enroll_member(proto::EnrollMemberRequest {
            program_id: PROGRAM.into(),
            member_id: uuid::Uuid::new_v4().to_string(),
            contacts: vec![huge.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("1048576 bytes"), "{status:?}");
    let refusal = refusal(&status);
    assert_eq!(refusal.reason, "MESSAGE_TOO_LARGE");
    assert_eq!(refusal.metadata["limit_bytes"], "1048576");

    let stream = app
        .events
        .subscribe(proto::SubscribeRequest {
            program_id: PROGRAM.into(),
            after_cursor: huge.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stream.code(), Code::ResourceExhausted, "{stream:?}");

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    assert_eq!(
        app.table_row_counts().await,
        before,
        "an oversize call wrote"
    );
    // Just under the limit is decoded (and refused for what it says, not its size).
    let status = app
        .ledger
        .enroll_member(proto::EnrollMemberRequest {
            program_id: PROGRAM.into(),
            member_id: uuid::Uuid::new_v4().to_string(),
            contacts: vec!["a".repeat(1024 * 1024 - 100)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    app.enroll().await;
}

/// FLASH_MAX_MESSAGE_BYTES is the limit the server applies and says.
#[tokio::test]
async fn the_message_limit_is_configurable() {
    let mut app = spawn_app_with(|settings| settings.max_message_bytes = 4096).await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let mut request = app.purchase(&member, 100);
    request.external_ref = "r".repeat(5000);
    let status = app.ledger.award(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("4096 bytes"), "{status:?}");
    assert_eq!(app.row_counts().await, (0, 0));
}

/// AwardBatch past FLASH_MAX_BATCH_ITEMS (500 by default) is refused whole, nothing
/// written; at the maximum it is served.
#[tokio::test]
async fn a_batch_past_the_maximum_is_refused_whole() {
    let mut app = spawn_app_with(|settings| settings.max_batch_items = 3).await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let batch = |app: &TestApp, items: usize| proto::AwardBatchRequest {
        program_id: PROGRAM.into(),
        awards: (0..items).map(|_| app.purchase(&member, 100)).collect(),
    };
    let status = app.ledger.award_batch(batch(&app, 4)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(refusal(&status).bad_fields, vec!["awards".to_owned()]);
    assert!(status.message().contains("at most 3"), "{status:?}");
    assert_eq!(app.row_counts().await, (0, 0));
    let served = app.ledger.award_batch(batch(&app, 3)).await.unwrap();
    assert_eq!(served.into_inner().results.len(), 3);
    assert_eq!(app.row_counts().await, (3, 3));

    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let request = proto::AwardBatchRequest {
        program_id: PROGRAM.into(),
        awards: (0..501).map(|_| app.purchase(&member, 100)).collect(),
    };
    let status = app.ledger.award_batch(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most 500"), "{status:?}");
    assert_eq!(app.row_counts().await, (0, 0));
}

/// With FLASH_MAX_IN_FLIGHT calls in flight, the next is refused at once: UNAVAILABLE,
/// reason OVERLOADED, RetryInfo, counted in `flash_rpc_shed_total`; health checks still
/// answer. Once the calls in flight end, calls are served again; a burst of concurrent
/// awards is partly served, partly shed, and the books tie out.
#[tokio::test]
async fn calls_past_the_in_flight_limit_are_shed_at_once_and_nothing_is_half_written() {
    let mut app = spawn_app_with(|settings| settings.max_in_flight = Some(2)).await;
    app.create_program(usd_rules()).await;
    let stuck_member = app.enroll().await;
    let other = app.enroll().await;
    let lock = HeldLock::take(&app, &stuck_member).await;
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let mut ledger = app.ledger.clone();
            let request = app.purchase(&stuck_member, 500);
            tokio::spawn(async move { ledger.award(request).await })
        })
        .collect();
    sessions_waiting_for_a_lock(&app, 2).await;

    let started = Instant::now();
    let shed: Vec<_> = (0..10)
        .map(|_| {
            let mut ledger = app.ledger.clone();
            let request = app.purchase(&other, 100);
            tokio::spawn(async move { ledger.award(request).await })
        })
        .collect();
    for call in shed {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shedding load"), "{status:?}");
        let refusal = refusal(&status);
        assert_eq!(refusal.reason, "OVERLOADED");
        assert!(refusal.retry, "RetryInfo");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shed at once, not queued"
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let served = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health is never shed")
        .into_inner();
    assert_eq!(served.status, 1, "SERVING");
    let (_, _, metrics) = http_get(app.http, "/metrics").await;
    assert!(
        metrics.contains("flash_rpc_shed_total{method=\"flash.loyalty.v1.Ledger/Award\"}"),
        "{metrics}"
    );
    assert_eq!(entries_of_member(&app, &other).await, 0);

    lock.release().await;
    for call in stuck {
        call.await.unwrap().expect("a call in flight is served");
    }

    // A burst: each call served or shed, whole.
    let members: Vec<String> = {
        let mut members = Vec::new();
        for _ in 0..4 {
            members.push(app.enroll().await);
        }
        members
    };
    let burst: Vec<_> = (0..40)
        .map(|index| {
            let mut ledger = app.ledger.clone();
            let request = app.purchase(&members[index % members.len()], 100);
            tokio::spawn(async move { ledger.award(request).await })
        })
        .collect();
    let (mut served, mut shed) = (0_i64, 0);
    for call in burst {
        match call.await.unwrap() {
            Ok(_) => served += 1,
            Err(status) if status.code() == Code::Unavailable => shed += 1,
            Err(status) => panic!("{status:?}"),
        }
    }
    assert!(served >= 1, "some calls are served");
    eprintln!("burst of 40 at FLASH_MAX_IN_FLIGHT=2: {served} served, {shed} shed");
    let mut written = 0;
    for member in &members {
        written += entries_of_member(&app, member).await;
    }
    assert_eq!(written, served, "every served award written, no shed one");
    app.assert_ties_out().await;
}

/// Waits (up to 5 s) for the entry of `idempotency_key` to be committed.
async fn committed_once(app: &TestApp, idempotency_key: &str) {
    for _ in 0..100 {
        if entries_of(app, idempotency_key).await == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the award that had started never committed");
}

async fn entries_of_member(app: &TestApp, member: &str) -> i64 {
    let client = app.db.get().await.unwrap();
    let member: uuid::Uuid = member.parse().unwrap();
    client
        .query_one(
            "SELECT count(*) FROM ledger_entries WHERE member_id = $1",
            &[&member],
        )
        .await
        .unwrap()
        .get(0)
}

/// A call without grpc-timeout gets FLASH_DEFAULT_DEADLINE_MS: past it the caller is
/// answered DEADLINE_EXCEEDED (and counted so), while the unit of work that
/// already started still commits: the retry with the same key is a replay. A caller's
/// shorter grpc-timeout wins over the default.
#[tokio::test]
async fn a_call_without_deadline_gets_the_default_and_its_started_work_still_commits() {
    let mut app = spawn_app_with(|settings| settings.default_deadline_ms = 500).await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let lock = HeldLock::take(&app, &member).await;
    let request = app.purchase(&member, 700);
    let started = Instant::now();
    let status = app.ledger.award(request.clone()).await.unwrap_err();
    let waited = started.elapsed();
    assert!(status.code() == Code::DeadlineExceeded, "{status:?}");
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    let (_, _, metrics) = http_get(app.http, "/metrics").await;
    assert!(
        metrics.contains(
            "flash_rpc_requests_total{method=\"flash.loyalty.v1.Ledger/Award\",code=\"DEADLINE_EXCEEDED\"}"
        ),
        "the call past its deadline is counted: {metrics}"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    eprintln!(
        "default deadline answered {:?}: {}",
        status.code(),
        status.message()
    );
    assert_eq!(entries_of(&app, &request.idempotency_key).await, 0);
    lock.release().await;
    // The unit of work was spawned before the deadline: it commits after it.
    committed_once(&app, &request.idempotency_key).await;
    let replay = app.award(request).await;
    assert!(replay.replayed);
    assert_eq!(replay.awarded_points, 7);

    // A shorter grpc-timeout than the default wins.
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let lock = HeldLock::take(&app, &member).await;
    let award = app.purchase(&member, 100);
    let mut request = tonic::Request::new(award.clone());
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = app.ledger.award(request).await.unwrap_err();
    assert!(
        // tonic's own grpc-timeout, outside the layers, expires at the same instant and
        // may answer first, CANCELLED.
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    lock.release().await;
    committed_once(&app, &award.idempotency_key).await;
    app.assert_ties_out().await;
}

/// A shutdown while a call is in flight: the server stops taking calls but waits for that
/// one, which commits and is answered; then serving ends.
#[tokio::test]
async fn a_shutdown_lets_the_call_in_flight_commit_and_be_answered() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let lock = HeldLock::take(&app, &member).await;
    let request = app.purchase(&member, 900);
    let in_flight = {
        let mut ledger = app.ledger.clone();
        let request = request.clone();
        tokio::spawn(async move { ledger.award(request).await })
    };
    sessions_waiting_for_a_lock(&app, 1).await;
    let served = app.shut_down();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !served.is_finished(),
        "serving waits for the call in flight"
    );
    // A new connection is not taken any more.
    let refused = tokio::time::timeout(
        Duration::from_secs(2),
        tonic::transport::Channel::from_shared(format!("http://{}", app.address))
            .unwrap()
            .connect(),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a new connection after shutdown"
    );
    lock.release().await;
    let answered = in_flight
        .await
        .unwrap()
        .expect("the call in flight is answered");
    assert_eq!(answered.into_inner().awarded_points, 9);
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("serving ends once the call is answered")
        .unwrap()
        .unwrap();
    assert_eq!(entries_of(&app, &request.idempotency_key).await, 1);
}
