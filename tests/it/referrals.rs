//! Referrals: invites under quotas (whole batches refused, concurrency, reclaiming by
//! expiry), per-contact refusals, acceptance rules, conversion paid once on either path
//! under racing attempts, and contacts that never reach the database in plain text.
use crate::helpers::*;
use chrono::Duration;
use flash_loyalty::grpc::proto;
use flash_loyalty::service::{Job, Replica, RunOutcome};
use tonic::Code;
use uuid::Uuid;

pub(crate) fn referral_rules() -> proto::ProgramRules {
    proto::ProgramRules {
        referrer_points: Some(500),
        referee_points: Some(200),
        referral_qualify_min_amount_minor: Some(2_000),
        ..usd_rules()
    }
}

impl TestApp {
    /// Enrolls a new member with contacts and returns its id.
    async fn enroll_with(&mut self, contacts: &[&str]) -> String {
        let member_id = Uuid::new_v4().to_string();
        self.ledger
            .enroll_member(proto::EnrollMemberRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.clone(),
                contacts: contacts.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("enroll with contacts");
        member_id
    }

    async fn invite(
        &mut self,
        referrer: &str,
        key: &str,
        contacts: &[&str],
    ) -> Result<proto::CreateInvitesResponse, tonic::Status> {
        self.referrals
            .create_invites(proto::CreateInvitesRequest {
                program_id: PROGRAM.into(),
                referrer_member_id: referrer.into(),
                idempotency_key: key.into(),
                contacts: contacts.iter().map(|c| c.to_string()).collect(),
            })
            .await
            .map(|response| response.into_inner())
    }

    /// One invite to a fresh contact; its code.
    pub(crate) async fn invite_one(&mut self, referrer: &str) -> String {
        let contact = format!("{}@example.com", Uuid::new_v4().simple());
        let response = self
            .invite(referrer, &format!("inv-{}", Uuid::new_v4()), &[&contact])
            .await
            .expect("invite");
        response.results[0]
            .invite
            .as_ref()
            .expect("an invite")
            .code
            .clone()
    }

    pub(crate) async fn accept(
        &mut self,
        code: &str,
        referee: &str,
        key: &str,
    ) -> Result<proto::InviteChange, tonic::Status> {
        self.referrals
            .accept_invite(proto::AcceptInviteRequest {
                program_id: PROGRAM.into(),
                code: code.into(),
                referee_member_id: referee.into(),
                idempotency_key: key.into(),
            })
            .await
            .map(|response| response.into_inner().change.unwrap())
    }

    async fn stats(&mut self, member: &str) -> proto::GetReferralStatsResponse {
        self.referrals
            .get_referral_stats(proto::GetReferralStatsRequest {
                program_id: PROGRAM.into(),
                member_id: member.into(),
            })
            .await
            .expect("stats")
            .into_inner()
    }

    async fn entry_count(&self) -> i64 {
        let client = self.db.get().await.unwrap();
        client
            .query_one("SELECT count(*) FROM ledger_entries", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Referral credits written: (member, side) of each.
    async fn referral_credits(&self) -> Vec<(String, String)> {
        let client = self.db.get().await.unwrap();
        client
            .query(
                "SELECT member_id::text, request->'cause'->>'side' FROM ledger_entries \
                 WHERE kind = 'bonus' AND reason = 'referral' ORDER BY 2",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }
}

fn refusal_of(result: &proto::InviteResult) -> proto::InviteRefusal {
    proto::InviteRefusal::try_from(result.refusal).unwrap()
}

#[tokio::test]
async fn invites_are_sent_per_contact_and_refused_one_by_one() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let referrer = app
        .enroll_with(&["Ann@Example.com", "+33 6 12 34 56 78"])
        .await;
    app.enroll_with(&["bob@example.com"]).await;
    let contacts = [
        "ann@example.com",   // the referrer's own
        "+33612345678",      // the referrer's own phone, written another way
        " BOB@example.com ", // a member's
        "carol@example.com", // new
        "Carol@Example.com", // the same again
        "+1 (415) 555-0100", // new
    ];
    let response = app.invite(&referrer, "batch-1", &contacts).await.unwrap();
    let refusals: Vec<_> = response.results.iter().map(refusal_of).collect();
    use proto::InviteRefusal::*;
    assert_eq!(
        refusals,
        [
            OwnContact,
            OwnContact,
            AlreadyMember,
            Unspecified,
            DuplicateInBatch,
            Unspecified
        ]
    );
    let codes: Vec<&str> = response
        .results
        .iter()
        .filter_map(|r| r.invite.as_ref().map(|i| i.code.as_str()))
        .collect();
    assert_eq!(codes.len(), 2);
    assert_ne!(codes[0], codes[1]);
    for code in &codes {
        assert!(code.len() >= 22, "a code of 128 bits: {code}");
        assert!(code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    assert_eq!(response.remaining_today, 48);
    // The same key and contacts: the same answer; other contacts: ALREADY_EXISTS.
    let again = app.invite(&referrer, "batch-1", &contacts).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.results, response.results);
    let other = app
        .invite(&referrer, "batch-1", &["dave@example.com"])
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);
    // A pending invite to the same contact from the same referrer.
    let second = app
        .invite(
            &referrer,
            "batch-2",
            &["carol@example.com", "dave@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(refusal_of(&second.results[0]), AlreadyInvited);
    assert_eq!(refusal_of(&second.results[1]), Unspecified);
    // Malformed contacts are refused at the edge, without echoing them.
    let bad = app
        .invite(&referrer, "batch-3", &["not-an-email-or-phone"])
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(!bad.message().contains("not-an-email-or-phone"));
    app.assert_ties_out().await;
}

#[tokio::test]
async fn each_quota_refuses_the_whole_batch_naming_what_remains() {
    let mut app = spawn_app().await;
    app.create_program(proto::ProgramRules {
        max_invites_per_batch: Some(3),
        max_invites_per_day: Some(4),
        max_invites_lifetime: Some(6),
        invite_ttl_days: Some(10),
        ..referral_rules()
    })
    .await;
    let referrer = app.enroll().await;
    let emails: Vec<String> = (0..20).map(|i| format!("friend{i}@example.com")).collect();
    let e = |range: std::ops::Range<usize>| -> Vec<&str> {
        emails[range].iter().map(String::as_str).collect()
    };
    let entries = app.entry_count().await;
    let over_batch = app.invite(&referrer, "q1", &e(0..4)).await.unwrap_err();
    assert_eq!(over_batch.code(), Code::ResourceExhausted);
    let why = refusal(&over_batch);
    assert_eq!(why.reason, "INVITE_QUOTA_EXCEEDED");
    assert_eq!(why.metadata["quota"], "per_batch");
    assert!(
        over_batch.message().contains("per_batch"),
        "{}",
        over_batch.message()
    );
    assert_eq!(
        app.entry_count().await,
        entries,
        "a refused batch writes nothing"
    );

    app.invite(&referrer, "q2", &e(0..3)).await.unwrap();
    let over_day = app.invite(&referrer, "q3", &e(3..5)).await.unwrap_err();
    assert_eq!(over_day.code(), Code::ResourceExhausted);
    assert_eq!(refusal(&over_day).metadata["quota"], "per_day");
    assert_eq!(refusal(&over_day).metadata["remaining"], "1");
    assert!(
        over_day.message().contains("1 left"),
        "{}",
        over_day.message()
    );
    app.invite(&referrer, "q4", &e(3..4)).await.unwrap();

    // The next day: the day's quota is back, the lifetime one is not.
    app.clock.advance(Duration::days(1));
    app.invite(&referrer, "q5", &e(4..6)).await.unwrap();
    let over_life = app.invite(&referrer, "q6", &e(6..7)).await.unwrap_err();
    assert_eq!(refusal(&over_life).metadata["quota"], "lifetime");
    assert_eq!(refusal(&over_life).metadata["remaining"], "0");

    // Expired invites are given back to the lifetime quota (not to their day's): the
    // first day's four are past their ten days, the next day's two are not.
    app.clock.advance(Duration::days(9) + Duration::hours(12));
    let replica = Replica {
        id: "test".into(),
        lease: Duration::seconds(60),
        period: None,
    };
    let run = app
        .service
        .run_job(Job::InviteExpiry, app.clock_now(), &replica)
        .await
        .unwrap();
    let RunOutcome::Done { counts, .. } = run else {
        panic!("the run was not claimed: {run:?}");
    };
    assert_eq!((counts.failed, counts.amount), (0, 4));
    let stats = app.stats(&referrer).await;
    assert_eq!(stats.expired, 4, "the first day's four invites expired");
    assert_eq!(stats.pending, 2);
    assert_eq!(stats.remaining_lifetime, 4);
    app.invite(&referrer, "q7", &e(6..9)).await.unwrap();
    app.assert_ties_out().await;
}

#[tokio::test]
async fn concurrent_invites_never_pass_the_lifetime_quota() {
    let mut app = spawn_app().await;
    app.create_program(proto::ProgramRules {
        max_invites_lifetime: Some(5),
        max_invites_per_day: Some(1_000),
        ..referral_rules()
    })
    .await;
    let referrer = app.enroll().await;
    let mut calls = vec![];
    for i in 0..100 {
        let mut client = app.referrals.clone();
        let referrer = referrer.clone();
        calls.push(tokio::spawn(async move {
            client
                .create_invites(proto::CreateInvitesRequest {
                    program_id: PROGRAM.into(),
                    referrer_member_id: referrer,
                    idempotency_key: format!("race-{i}"),
                    contacts: vec![format!("racer{i}@example.com")],
                })
                .await
        }));
    }
    let mut sent = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => sent += 1,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status}"),
        }
    }
    assert_eq!(sent, 5);
    assert_eq!(app.stats(&referrer).await.sent, 5);
}

#[tokio::test]
async fn conversion_credits_both_sides_once_under_racing_attempts() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let referrer = app.enroll().await;
    let code = app.invite_one(&referrer).await;
    app.clock.advance(Duration::minutes(1));
    let referee = app.enroll().await;
    let accepted = app.accept(&code, &referee, "accept-1").await.unwrap();
    assert_eq!(accepted.status, proto::InviteStatus::Accepted as i32);
    // A purchase below the qualifying amount converts nothing.
    app.award(app.purchase(&referee, 1_999)).await;
    assert!(app.referral_credits().await.is_empty());
    // Ten explicit conversions and ten qualifying purchases at once.
    let mut calls = vec![];
    for i in 0..20 {
        let mut referrals = app.referrals.clone();
        let mut ledger = app.ledger.clone();
        let purchase = app.purchase(&referee, 2_500);
        let code = code.clone();
        calls.push(tokio::spawn(async move {
            if i % 2 == 0 {
                referrals
                    .convert_invite(proto::ConvertInviteRequest {
                        program_id: PROGRAM.into(),
                        code,
                        idempotency_key: format!("convert-{i}"),
                    })
                    .await
                    .map(|_| ())
            } else {
                ledger.award(purchase).await.map(|_| ())
            }
        }));
    }
    for call in calls {
        if let Err(status) = call.await.unwrap() {
            // Only the explicit conversions that lost the race are refused, precisely.
            assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
            assert_eq!(refusal(&status).reason, "INVITE_NOT_OPEN");
        }
    }
    let credits = app.referral_credits().await;
    assert_eq!(
        credits,
        [
            (referee.clone(), "referee".into()),
            (referrer.clone(), "referrer".into())
        ]
    );
    assert_eq!(app.stats(&referrer).await.converted, 1);
    assert_eq!(app.stats(&referrer).await.points_earned, 500);
    let referee_stats = app.stats(&referee).await;
    assert_eq!(referee_stats.points_earned, 200);
    assert_eq!(referee_stats.referred_by_member_id, referrer);
    assert_eq!(app.member(&referrer).await.balance_points, 500);
    // The referral credits count toward status; they go through the ledger.
    let status = app
        .tiers
        .get_tier_status(proto::GetTierStatusRequest {
            program_id: PROGRAM.into(),
            member_id: referrer.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.status_points, 500);
    // A converted invite converts no more.
    let late = app
        .referrals
        .convert_invite(proto::ConvertInviteRequest {
            program_id: PROGRAM.into(),
            code: code.clone(),
            idempotency_key: "convert-late".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(refusal(&late).metadata["status"], "converted");
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_purchase_made_before_acceptance_converts_when_accepted() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let referrer = app.enroll().await;
    let code = app.invite_one(&referrer).await;
    app.clock.advance(Duration::minutes(1));
    let referee = app.enroll().await;
    app.award(app.purchase(&referee, 5_000)).await;
    let change = app.accept(&code, &referee, "accept").await.unwrap();
    assert_eq!(change.status, proto::InviteStatus::Converted as i32);
    assert!(!change.referrer_bonus_entry_id.is_empty());
    assert!(!change.referee_bonus_entry_id.is_empty());
    let replay = app.accept(&code, &referee, "accept").await.unwrap();
    assert!(replay.replayed);
    assert_eq!(app.referral_credits().await.len(), 2);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn refused_referrals_have_precise_statuses_and_write_nothing() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let early = app.enroll().await;
    let referrer = app.enroll().await;
    let other_referrer = app.enroll().await;
    let code = app.invite_one(&referrer).await;
    let revoked = app.invite_one(&referrer).await;
    app.clock.advance(Duration::minutes(1));
    let referee = app.enroll().await;
    let entries = app.entry_count().await;

    let expect = |result: Result<proto::InviteChange, tonic::Status>, code: Code, reason: &str| {
        let status = result.unwrap_err();
        assert_eq!(status.code(), code, "{status}");
        assert_eq!(refusal(&status).reason, reason, "{status}");
    };
    expect(
        app.accept(&code, &referrer, "self").await,
        Code::FailedPrecondition,
        "SELF_REFERRAL",
    );
    expect(
        app.accept(&code, &early, "early").await,
        Code::FailedPrecondition,
        "ENROLLED_BEFORE_INVITE",
    );
    expect(
        app.accept("AAAAAAAAAAAAAAAAAAAAAA", &referee, "unknown")
            .await,
        Code::NotFound,
        "INVITE_NOT_FOUND",
    );
    expect(
        app.accept("short", &referee, "typo").await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_eq!(app.entry_count().await, entries, "refusals write nothing");

    // Revoked: no longer acceptable.
    app.referrals
        .revoke_invite(proto::RevokeInviteRequest {
            program_id: PROGRAM.into(),
            code: revoked.clone(),
            idempotency_key: "revoke".into(),
        })
        .await
        .unwrap();
    expect(
        app.accept(&revoked, &referee, "revoked").await,
        Code::FailedPrecondition,
        "INVITE_NOT_OPEN",
    );

    // The first accepted invite wins; a second referral of the same person is refused.
    let second = app.invite_one(&other_referrer).await;
    app.clock.advance(Duration::minutes(1));
    let later_referee = app.enroll().await;
    app.accept(&code, &later_referee, "first").await.unwrap();
    expect(
        app.accept(&second, &later_referee, "second").await,
        Code::FailedPrecondition,
        "ALREADY_REFERRED",
    );

    // Expired: refused even before the job marks it.
    let stale = app.invite_one(&other_referrer).await;
    app.clock.advance(Duration::days(31));
    let late_referee = app.enroll().await;
    expect(
        app.accept(&stale, &late_referee, "stale").await,
        Code::FailedPrecondition,
        "INVITE_NOT_OPEN",
    );
    app.assert_ties_out().await;
}

#[tokio::test]
async fn accepting_supersedes_every_other_pending_invite_to_the_person() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let first = app.enroll().await;
    let second = app.enroll().await;
    let a = app
        .invite(&first, "a", &["erin@example.com"])
        .await
        .unwrap();
    let b = app
        .invite(&second, "b", &["ERIN@example.com"])
        .await
        .unwrap();
    app.clock.advance(Duration::minutes(1));
    let erin = app.enroll_with(&["erin@example.com"]).await;
    let code = &a.results[0].invite.as_ref().unwrap().code;
    app.accept(code, &erin, "erin").await.unwrap();
    let listed = app
        .referrals
        .list_invites(proto::ListInvitesRequest {
            program_id: PROGRAM.into(),
            referrer_member_id: second.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.invites.len(), 1);
    assert_eq!(
        listed.invites[0].status,
        proto::InviteStatus::Superseded as i32
    );
    assert_eq!(
        listed.invites[0].code,
        b.results[0].invite.as_ref().unwrap().code
    );
    assert!(listed.invites[0].closed_at.is_some());
    // Inviting an enrolled member is refused per contact.
    let again = app
        .invite(&second, "c", &["erin@example.com"])
        .await
        .unwrap();
    assert_eq!(
        refusal_of(&again.results[0]),
        proto::InviteRefusal::AlreadyMember
    );
}

#[tokio::test]
async fn contacts_are_stored_only_as_keyed_hashes() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let plain = ["frank@example.com", "+442071838750", "grace@example.org"];
    let referrer = app
        .enroll_with(&["Frank@Example.com", "+44 20 7183 8750"])
        .await;
    app.invite(&referrer, "k", &["grace@example.org"])
        .await
        .unwrap();
    // Another member with a taken contact is refused whole.
    let taken = app
        .ledger
        .enroll_member(proto::EnrollMemberRequest {
            program_id: PROGRAM.into(),
            member_id: Uuid::new_v4().to_string(),
            contacts: vec!["new@example.com".into(), "frank@example.com".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert_eq!(refusal(&taken).reason, "CONTACT_TAKEN");
    assert_eq!(refusal(&taken).metadata["field"], "contacts[1]");
    // Every row of every table, as text: no contact in any form.
    let client = app.db.get().await.unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT quote_ident(table_name) FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut dump = String::new();
    for table in tables {
        for row in client
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await
            .unwrap()
        {
            dump.push_str(row.get::<_, &str>(0));
            dump.push('\n');
        }
    }
    assert!(
        dump.contains("invites sent"),
        "the dump has the referral entry"
    );
    for contact in plain
        .iter()
        .chain(&["Frank@Example.com", "7183 8750", "frank", "grace@"])
    {
        assert!(
            !dump.to_lowercase().contains(&contact.to_lowercase()),
            "{contact} is stored in plain text"
        );
    }
    let hashes: i64 = client
        .query_one("SELECT count(*) FROM member_contacts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(hashes, 2);
}

#[tokio::test]
async fn the_server_refuses_to_start_with_a_short_contact_key() {
    let mut settings = flash_loyalty::config::Settings::defaults();
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.http_listen = String::new();
    settings.contact_hash_key = Some("too-short".into());
    let clock = std::sync::Arc::new(flash_loyalty::clock::ManualClock::starting_at(
        start_of_test(),
    ));
    let error = flash_loyalty::app::Application::build(&settings, clock.clone())
        .await
        .err()
        .expect("a short key is refused");
    assert!(
        format!("{error:#}").contains("FLASH_CONTACT_HASH_KEY"),
        "{error:#}"
    );
    settings.contact_hash_key = None;
    let error = flash_loyalty::app::Application::build(&settings, clock)
        .await
        .err()
        .expect("a missing key is refused");
    assert!(
        format!("{error:#}").contains("FLASH_CONTACT_HASH_KEY"),
        "{error:#}"
    );
}

#[tokio::test]
async fn the_audit_checks_the_referral_invariants() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let referrer = app.enroll().await;
    let code = app.invite_one(&referrer).await;
    app.invite(&referrer, "two", &["x@example.com", "y@example.com"])
        .await
        .unwrap();
    app.clock.advance(Duration::minutes(1));
    let referee = app.enroll().await;
    app.accept(&code, &referee, "accept").await.unwrap();
    app.award(app.purchase(&referee, 5_000)).await;
    let program = flash_loyalty::domain::ProgramId::parse(PROGRAM).unwrap();
    let audit = |app: &TestApp| {
        let service = app.service.clone();
        let program = program.clone();
        async move { service.audit(&program).await.unwrap() }
    };
    assert!(audit(&app).await.is_clean(), "{}", audit(&app).await);
    let client = app.db.get().await.unwrap();

    // An invite that forgets the credit it paid.
    client
        .execute(
            "UPDATE invites SET referrer_entry_id = NULL WHERE status = 'converted'",
            &[],
        )
        .await
        .unwrap();
    let report = audit(&app).await;
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("referral credit")),
        "{report}"
    );
    client
        .execute(
            "UPDATE invites i SET referrer_entry_id = e.entry_id FROM ledger_entries e \
             WHERE i.status = 'converted' AND e.kind = 'bonus' AND e.reason = 'referral' \
               AND e.member_id = i.referrer_member_id",
            &[],
        )
        .await
        .unwrap();
    assert!(audit(&app).await.is_clean(), "{}", audit(&app).await);

    // A converted referral still waiting for its purchase (it would pay again).
    client
        .execute(
            "UPDATE members SET referral_open = true WHERE referral_invite_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    let report = audit(&app).await;
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("waiting: true")),
        "{report}"
    );
    client
        .execute("UPDATE members SET referral_open = false", &[])
        .await
        .unwrap();

    // Rules that allowed fewer invites a day than were sent.
    client
        .execute(
            "UPDATE program_rules SET rules = rules || '{\"max_invites_per_day\": 2}'",
            &[],
        )
        .await
        .unwrap();
    let report = audit(&app).await;
    assert!(
        report.violations.iter().any(|v| v.contains("quota 2")),
        "{report}"
    );
}

impl TestApp {
    pub(crate) async fn refund(&mut self, award_entry: &str, key: &str, points: Option<i64>) {
        self.ledger
            .reverse_award(proto::ReverseAwardRequest {
                program_id: PROGRAM.into(),
                idempotency_key: key.into(),
                award: Some(proto::EntryRef {
                    r#ref: Some(proto::entry_ref::Ref::EntryId(award_entry.into())),
                }),
                points,
                reason: "refund".into(),
            })
            .await
            .expect("refund");
    }

    /// A converted referral: (referrer, referee, the qualifying award's entry id).
    pub(crate) async fn converted_referral(&mut self) -> (String, String, String) {
        let referrer = self.enroll().await;
        let code = self.invite_one(&referrer).await;
        self.clock.advance(Duration::minutes(1));
        let referee = self.enroll().await;
        self.accept(&code, &referee, &format!("accept-{code}"))
            .await
            .unwrap();
        let award = self.award(self.purchase(&referee, 5_000)).await;
        assert_eq!(self.referral_credits_of(&referrer).await, 1);
        (referrer, referee, award.entry_id)
    }

    async fn referral_credits_of(&self, member: &str) -> usize {
        self.referral_credits()
            .await
            .iter()
            .filter(|(m, _)| m == member)
            .count()
    }

    pub(crate) async fn invite_status_of(&mut self, referrer: &str) -> proto::InviteStatus {
        let listed = self
            .referrals
            .list_invites(proto::ListInvitesRequest {
                program_id: PROGRAM.into(),
                referrer_member_id: referrer.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        proto::InviteStatus::try_from(listed.invites[0].status).unwrap()
    }
}

#[tokio::test]
async fn a_full_refund_in_time_claws_both_credits_back() {
    let mut app = spawn_app().await;
    app.create_program(proto::ProgramRules {
        referral_clawback_days: Some(14),
        ..referral_rules()
    })
    .await;
    let (referrer, referee, award) = app.converted_referral().await;
    // The referrer spent most of its credit already.
    app.spend(&referrer, 300).await;
    // A partial refund takes nothing back.
    app.refund(&award, "partial", Some(10)).await;
    assert_eq!(
        app.invite_status_of(&referrer).await,
        proto::InviteStatus::Converted
    );
    assert_eq!(app.member(&referrer).await.balance_points, 200);
    // The rest of it, within 14 days: both credits reversed through the ledger.
    app.clock.advance(Duration::days(3));
    app.refund(&award, "rest", None).await;
    assert_eq!(
        app.invite_status_of(&referrer).await,
        proto::InviteStatus::ClawedBack
    );
    assert_eq!(app.member(&referrer).await.balance_points, 0);
    assert_eq!(app.member(&referee).await.balance_points, 0);
    let stats = app.stats(&referrer).await;
    assert_eq!(
        (stats.points_earned, stats.clawed_back, stats.converted),
        (0, 1, 0)
    );
    assert_eq!(app.stats(&referee).await.points_earned, 0);
    // What the referrer had spent is owed, as for any refund of spent points.
    let client = app.db.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT reversed_points, unrecovered_points FROM ledger_entries \
             WHERE kind = 'award_reversal' AND reason = 'referral clawback' \
               AND member_id = $1::text::uuid",
            &[&referrer],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (500, 300));
    app.assert_ties_out().await;
}

#[tokio::test]
async fn a_refund_after_the_clawback_window_keeps_the_credits() {
    let mut app = spawn_app().await;
    app.create_program(proto::ProgramRules {
        referral_clawback_days: Some(14),
        ..referral_rules()
    })
    .await;
    let (referrer, _, award) = app.converted_referral().await;
    app.clock.advance(Duration::days(15));
    app.refund(&award, "late", None).await;
    assert_eq!(
        app.invite_status_of(&referrer).await,
        proto::InviteStatus::Converted
    );
    assert_eq!(app.member(&referrer).await.balance_points, 500);
    app.assert_ties_out().await;
}

/// A real server at the most verbose log level, JSON and text alike, is sent contacts
/// through every RPC that takes them (accepted and refused): no log line holds one.
#[tokio::test]
async fn no_contact_reaches_a_log_line() {
    use std::process::{Command, Stdio};
    let app = spawn_app().await;
    let port = free_port();
    let log_path = std::env::temp_dir().join(format!("flash-contacts-{}.log", Uuid::new_v4()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_flash"))
        .arg("serve")
        .arg("--no-workers")
        .env("FLASH_DATABASE_URL", &app.database_url)
        .env("FLASH_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLASH_HTTP_LISTEN", "")
        .env(
            "FLASH_REDIS_PREFIX",
            format!("test:{}:", Uuid::new_v4().simple()),
        )
        .env("FLASH_CONTACT_HASH_KEY", TEST_CONTACT_KEY)
        .env("FLASH_LOG", "trace,h2=info,tower=info,hyper=info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn flash serve");
    let channel = connect_when_listening(port).await;
    let clients =
        crate::helpers::Clients::new(channel, crate::helpers::Bearer::new(&app.admin_token));
    let (mut programs, mut ledger, mut referrals) =
        (clients.programs, clients.ledger, clients.referrals);
    programs
        .create_program(proto::CreateProgramRequest {
            program_id: PROGRAM.into(),
            name: "Acme".into(),
            rules: Some(referral_rules()),
        })
        .await
        .unwrap();
    let secrets = [
        "heidi.secret@example.com",
        "+41 79 555 12 34",
        "ivan.secret@example.net",
        "malformed-secret-contact",
    ];
    let referrer = Uuid::new_v4().to_string();
    ledger
        .enroll_member(proto::EnrollMemberRequest {
            program_id: PROGRAM.into(),
            member_id: referrer.clone(),
            contacts: vec![secrets[0].into(), secrets[1].into()],
            ..Default::default()
        })
        .await
        .unwrap();
    // Taken by the first member: refused.
    let _ = ledger
        .enroll_member(proto::EnrollMemberRequest {
            program_id: PROGRAM.into(),
            member_id: Uuid::new_v4().to_string(),
            contacts: vec![secrets[0].into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    referrals
        .create_invites(proto::CreateInvitesRequest {
            program_id: PROGRAM.into(),
            referrer_member_id: referrer.clone(),
            idempotency_key: "leak-1".into(),
            contacts: vec![secrets[2].into(), secrets[0].into()],
        })
        .await
        .unwrap();
    let _ = referrals
        .create_invites(proto::CreateInvitesRequest {
            program_id: PROGRAM.into(),
            referrer_member_id: referrer.clone(),
            idempotency_key: "leak-2".into(),
            contacts: vec![secrets[3].into()],
        })
        .await
        .unwrap_err();
    let _ = server.kill();
    let _ = server.wait();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        logs.contains("create_invites"),
        "the log has the calls:\n{logs}"
    );
    for secret in secrets {
        let digits: String = secret.chars().filter(char::is_ascii_digit).collect();
        assert!(!logs.contains(secret), "{secret} is in the log");
        if secret.starts_with('+') {
            assert!(!logs.contains(&digits), "{secret} is in the log as digits");
        } else {
            let local = secret.split('@').next().unwrap();
            assert!(!logs.contains(local), "{local} is in the log");
        }
    }
}

/// A chain of referrals (each member referred by the one before, so most are referrer and
/// referee at once) converted all at once by single awards, a batch award spanning the
/// chain and explicit conversions: both members of each are locked in the one global
/// order, so no call sees a deadlock, and each referral pays each side once.
#[tokio::test]
async fn crossing_referral_chains_convert_once_without_deadlocks() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let mut chain = vec![app.enroll().await];
    let mut codes = vec![];
    for i in 0..10 {
        let code = app.invite_one(&chain[i]).await;
        app.clock.advance(Duration::minutes(1));
        let referee = app.enroll().await;
        app.accept(&code, &referee, &format!("accept-{i}"))
            .await
            .unwrap();
        chain.push(referee);
        codes.push(code);
    }
    let mut calls = vec![];
    for round in 0..2 {
        for (i, member) in chain.iter().enumerate().skip(1) {
            let mut ledger = app.ledger.clone();
            let purchase = app.purchase(member, 3_000);
            calls.push(tokio::spawn(async move {
                ledger.award(purchase).await.map(|_| ())
            }));
            if round == 0 {
                let mut referrals = app.referrals.clone();
                let code = codes[i - 1].clone();
                calls.push(tokio::spawn(async move {
                    referrals
                        .convert_invite(proto::ConvertInviteRequest {
                            program_id: PROGRAM.into(),
                            code,
                            idempotency_key: format!("chain-convert-{i}"),
                        })
                        .await
                        .map(|_| ())
                }));
            }
        }
        let batch: Vec<proto::AwardRequest> = chain
            .iter()
            .rev()
            .map(|member| app.purchase(member, 3_000))
            .collect();
        let mut ledger = app.ledger.clone();
        calls.push(tokio::spawn(async move {
            let response = ledger
                .award_batch(proto::AwardBatchRequest {
                    program_id: PROGRAM.into(),
                    awards: batch,
                })
                .await?
                .into_inner();
            for result in response.results {
                if let Some(proto::award_batch_result::Outcome::Error(error)) = result.outcome {
                    return Err(tonic::Status::internal(format!("batch item: {error:?}")));
                }
            }
            Ok(())
        }));
    }
    for call in calls {
        if let Err(status) = call.await.unwrap() {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
            assert_eq!(refusal(&status).reason, "INVITE_NOT_OPEN", "{status}");
        }
    }
    assert_eq!(app.referral_credits().await.len(), 20);
    for member in &chain[..10] {
        assert_eq!(app.stats(member).await.converted, 1);
    }
    app.assert_ties_out().await;
}
