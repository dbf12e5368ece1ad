//! Callers and trust: every RPC refuses a caller without credentials, with a bad, revoked
//! or rotated-out token, without the scope it needs or outside its programs — and writes
//! nothing when it does; idempotency keys are scoped by client; a flooding client is
//! throttled while another keeps being served.
use crate::helpers::{
    refusal, spawn_app, spawn_app_with, usd_rules, Bearer, Clients, TestApp, PROGRAM,
};
use flash_loyalty::grpc::proto;
use flash_testing_support::dispatch::Call;
use tonic::Code;

/// One request to every unary RPC of the contract, each valid enough to pass validation,
/// all on [`PROGRAM`] and `member`.
fn one_call_per_rpc(app: &TestApp, member: &str) -> Vec<Call> {
    let key = |what: &str| format!("auth-{what}");
    let code = "a".repeat(22);
    let mut award = app.purchase(member, 1_000);
    award.idempotency_key = key("award");
    let mut batched = app.purchase(member, 1_000);
    batched.idempotency_key = key("batched");
    vec![
        proto::CreateProgramRequest {
            program_id: PROGRAM.into(),
            name: "Acme".into(),
            rules: Some(usd_rules()),
        }
        .into(),
        proto::GetProgramRequest {
            program_id: PROGRAM.into(),
        }
        .into(),
        proto::UpdateProgramRequest {
            program_id: PROGRAM.into(),
            rules: Some(proto::ProgramRules {
                min_amount_minor: 200,
                ..usd_rules()
            }),
            ..Default::default()
        }
        .into(),
        proto::EnrollMemberRequest {
            program_id: PROGRAM.into(),
            member_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        }
        .into(),
        proto::EnrollBatchRequest {
            program_id: PROGRAM.into(),
            members: vec![proto::EnrollMemberRequest {
                member_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            }],
        }
        .into(),
        proto::GetMemberRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
        }
        .into(),
        award.into(),
        proto::AwardBatchRequest {
            program_id: PROGRAM.into(),
            awards: vec![batched],
        }
        .into(),
        proto::SpendRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
            idempotency_key: key("spend"),
            points: 1,
            reference: "order".into(),
        }
        .into(),
        proto::ReverseAwardRequest {
            program_id: PROGRAM.into(),
            idempotency_key: key("reverse-award"),
            award: Some(proto::EntryRef {
                r#ref: Some(proto::entry_ref::Ref::IdempotencyKey("seed-award".into())),
            }),
            points: Some(1),
            reason: "refund".into(),
        }
        .into(),
        proto::ReverseSpendRequest {
            program_id: PROGRAM.into(),
            idempotency_key: key("reverse-spend"),
            spend: Some(proto::EntryRef {
                r#ref: Some(proto::entry_ref::Ref::IdempotencyKey("seed-spend".into())),
            }),
            points: Some(1),
            reason: "cancelled".into(),
        }
        .into(),
        proto::AdjustRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
            idempotency_key: key("adjust"),
            points: 5,
            reason: "goodwill".into(),
            actor: "agent-7".into(),
            counts_toward_tier: false,
        }
        .into(),
        proto::ListEntriesRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
            ..Default::default()
        }
        .into(),
        proto::GetLiabilityRequest {
            program_id: PROGRAM.into(),
            ..Default::default()
        }
        .into(),
        proto::GetTierStatusRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
        }
        .into(),
        proto::ListTierHistoryRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
            ..Default::default()
        }
        .into(),
        proto::EvaluateMemberRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
        }
        .into(),
        proto::SetTierRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
            tier_code: "member".into(),
            reason: "support".into(),
            actor: "agent-7".into(),
            idempotency_key: key("set-tier"),
            ..Default::default()
        }
        .into(),
        proto::CreateInvitesRequest {
            program_id: PROGRAM.into(),
            referrer_member_id: member.into(),
            idempotency_key: key("invites"),
            contacts: vec!["friend@example.com".into()],
        }
        .into(),
        proto::AcceptInviteRequest {
            program_id: PROGRAM.into(),
            code: code.clone(),
            referee_member_id: member.into(),
            idempotency_key: key("accept"),
        }
        .into(),
        proto::ConvertInviteRequest {
            program_id: PROGRAM.into(),
            code: code.clone(),
            idempotency_key: key("convert"),
        }
        .into(),
        proto::RevokeInviteRequest {
            program_id: PROGRAM.into(),
            code,
            idempotency_key: key("revoke"),
        }
        .into(),
        proto::ListInvitesRequest {
            program_id: PROGRAM.into(),
            referrer_member_id: member.into(),
            ..Default::default()
        }
        .into(),
        proto::GetReferralStatsRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
        }
        .into(),
        proto::GetGraphRequest {
            program_id: PROGRAM.into(),
            max_nodes: 10,
        }
        .into(),
        proto::GetNeighborhoodRequest {
            program_id: PROGRAM.into(),
            member_id: member.into(),
            depth: 1,
            max_nodes: 10,
        }
        .into(),
        proto::ListTopAdvocatesRequest {
            program_id: PROGRAM.into(),
            limit: 5,
        }
        .into(),
        proto::RebuildSnapshotRequest {
            program_id: PROGRAM.into(),
        }
        .into(),
    ]
}

/// The scope each RPC needs, as the README states it (restated here, not read from the
/// server, so a change to either is caught).
fn scope_of(rpc: &str) -> &'static str {
    match rpc {
        "Award" | "AwardBatch" | "EnrollMember" | "EnrollBatch" => "award",
        "Spend" | "ReverseSpend" => "spend",
        "ReverseAward" => "refund",
        "Adjust" | "SetTier" => "adjust",
        "CreateInvites" | "AcceptInvite" | "ConvertInvite" | "RevokeInvite" => "referrals",
        "CreateProgram" | "UpdateProgram" | "EvaluateMember" | "RebuildSnapshot" => "admin",
        _ => "read",
    }
}

const SCOPES: [&str; 7] = [
    "award",
    "spend",
    "refund",
    "adjust",
    "referrals",
    "read",
    "admin",
];

/// A ledger with a member, an award and a spend to name by key.
async fn seeded() -> (TestApp, String) {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    app.create_named_program("other", usd_rules()).await;
    let member = app.enroll().await;
    let mut award = app.purchase(&member, 5_000);
    award.idempotency_key = "seed-award".into();
    app.award(award).await;
    let mut spend = app.spend_request(&member, 2);
    spend.idempotency_key = "seed-spend".into();
    app.ledger.spend(spend).await.unwrap();
    (app, member)
}

#[tokio::test]
async fn every_rpc_refuses_each_kind_of_bad_caller_and_writes_nothing() {
    let (app, member) = seeded().await;
    let calls = one_call_per_rpc(&app, &member);
    assert_eq!(
        calls.len(),
        28,
        "one call per unary RPC (Subscribe is tested below)"
    );

    let revoked = app.add_client("revoked", &["*"], &["*"], None).await;
    app.api_clients
        .revoke(&flash_loyalty::domain::ClientName::parse("revoked").unwrap())
        .await
        .unwrap();
    let elsewhere = app.add_client("elsewhere", &["other"], &["*"], None).await;
    let forged = format!("flash.tests.{}", "0".repeat(64));
    let callers: Vec<(&str, Bearer, Code)> = vec![
        ("no token", Bearer::none(), Code::Unauthenticated),
        (
            "a malformed token",
            Bearer::new("not-a-token"),
            Code::Unauthenticated,
        ),
        (
            "a forged secret",
            Bearer::new(&forged),
            Code::Unauthenticated,
        ),
        (
            "a revoked client",
            Bearer::new(&revoked),
            Code::Unauthenticated,
        ),
        (
            "another program's client",
            Bearer::new(&elsewhere),
            Code::NotFound,
        ),
    ];
    let mut lacking = Vec::new();
    for call in &calls {
        let rpc = call.rpc();
        let needed = scope_of(rpc);
        let others: Vec<&str> = SCOPES.iter().copied().filter(|s| *s != needed).collect();
        // Enrolment is open to referral services too.
        let others: Vec<&str> = if rpc.starts_with("Enroll") {
            others.into_iter().filter(|s| *s != "referrals").collect()
        } else {
            others
        };
        let name = format!("lacks-{}", rpc.to_lowercase());
        lacking.push(app.add_client(&name, &[PROGRAM], &others, None).await);
    }
    let before = app.table_row_counts().await;
    for (call, lacking) in calls.iter().zip(&lacking) {
        let rpc = call.rpc();
        let mut refusals = callers.clone();
        refusals.push((
            "a client without the scope",
            Bearer::new(lacking),
            Code::PermissionDenied,
        ));
        for (who, bearer, expected) in refusals {
            let mut clients = Clients::new(app.channel.clone(), bearer);
            let status = clients
                .send(call.clone(), None)
                .await
                .expect_err(&format!("{rpc} by {who} must be refused"));
            assert_eq!(status.code(), expected, "{rpc} by {who}: {status:?}");
            let reason = refusal(&status).reason;
            match expected {
                Code::NotFound => assert_eq!(reason, "PROGRAM_NOT_FOUND", "{rpc} by {who}"),
                Code::PermissionDenied => assert_eq!(reason, "SCOPE_MISSING", "{rpc} by {who}"),
                _ => assert_eq!(reason, "UNAUTHENTICATED", "{rpc} by {who}"),
            }
        }
    }
    // The clients were added before the first call; nothing else was written.
    assert_eq!(
        app.table_row_counts().await,
        before,
        "refused calls wrote rows"
    );

    // The right client: a client holding exactly the scope is let through every RPC (it
    // may still be refused for what it asks, never for who it is).
    for call in &calls {
        let rpc = call.rpc();
        let name = format!("only-{}", rpc.to_lowercase());
        let token = app
            .add_client(&name, &[PROGRAM], &[scope_of(rpc)], None)
            .await;
        let mut clients = app.clients_as(&token);
        if let Err(status) = clients.send(call.clone(), None).await {
            assert!(
                !matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ) && refusal(&status).reason != "PROGRAM_NOT_FOUND",
                "{rpc} by a client with its scope: {status:?}"
            );
        }
    }
}

/// A program outside the client's list looks exactly like a program that does not exist.
#[tokio::test]
async fn another_programs_client_cannot_tell_whether_a_program_exists() {
    let (app, member) = seeded().await;
    let token = app
        .add_client("elsewhere", &["other"], &["read"], None)
        .await;
    let mut clients = app.clients_as(&token);
    let existing = clients
        .send(
            proto::GetMemberRequest {
                program_id: PROGRAM.into(),
                member_id: member.clone(),
            }
            .into(),
            None,
        )
        .await
        .unwrap_err();
    let missing = clients
        .send(
            proto::GetMemberRequest {
                program_id: "no-such-program".into(),
                member_id: member,
            }
            .into(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(existing.code(), missing.code());
    assert_eq!(
        existing.message().replace(PROGRAM, "P"),
        missing.message().replace("no-such-program", "P")
    );
    assert_eq!(refusal(&existing).reason, refusal(&missing).reason);
}

#[tokio::test]
async fn the_marketplace_client_awards_its_program_and_nothing_else() {
    let (app, member) = seeded().await;
    let marketplace = app
        .add_client("marketplace", &[PROGRAM], &["award"], None)
        .await;
    let mut ingest = app.clients_as(&marketplace);

    // Its job: awards in its program.
    let mut order = app.purchase(&member, 3_000);
    order.idempotency_key = "seed-award".into(); // the key the admin client used
    let awarded = ingest
        .ledger
        .award(order.clone())
        .await
        .expect("the marketplace awards its orders")
        .into_inner();
    // Not a replay of the other client's award under the same key: its own entry.
    assert!(!awarded.replayed);
    assert_eq!(awarded.awarded_points, 30);
    let again = ingest.ledger.award(order).await.unwrap().into_inner();
    assert!(again.replayed, "its own key replays");
    assert_eq!(again.entry_id, awarded.entry_id);

    // Nothing else.
    let denied = [
        Call::from(app.spend_request(&member, 1)),
        Call::from(proto::AdjustRequest {
            program_id: PROGRAM.into(),
            member_id: member.clone(),
            idempotency_key: "mk-adjust".into(),
            points: 100,
            reason: "free points".into(),
            actor: "nobody".into(),
            counts_toward_tier: false,
        }),
        Call::from(proto::ReverseAwardRequest {
            program_id: PROGRAM.into(),
            idempotency_key: "mk-refund".into(),
            award: Some(proto::EntryRef {
                r#ref: Some(proto::entry_ref::Ref::EntryId(awarded.entry_id.clone())),
            }),
            ..Default::default()
        }),
        Call::from(proto::GetMemberRequest {
            program_id: PROGRAM.into(),
            member_id: member.clone(),
        }),
    ];
    for call in denied {
        let status = ingest.send(call.clone(), None).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{}", call.rpc());
    }
    let mut other_program = app.purchase(&member, 1_000);
    other_program.program_id = "other".into();
    let status = ingest.ledger.award(other_program).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // A refund service cannot name another client's entry by that client's key.
    let refunds = app
        .add_client("refunds", &[PROGRAM], &["refund"], None)
        .await;
    let status = app
        .clients_as(&refunds)
        .ledger
        .reverse_award(proto::ReverseAwardRequest {
            program_id: PROGRAM.into(),
            idempotency_key: "refund-1".into(),
            award: Some(proto::EntryRef {
                r#ref: Some(proto::entry_ref::Ref::IdempotencyKey("seed-award".into())),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Every entry records the client whose call wrote it.
    let rows = app
        .db
        .get()
        .await
        .unwrap()
        .query(
            "SELECT client, count(*) FROM ledger_entries WHERE idempotency_key = 'seed-award' \
             GROUP BY client ORDER BY client",
            &[],
        )
        .await
        .unwrap();
    let by_client: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        by_client,
        [("marketplace".to_owned(), 1), ("tests".to_owned(), 1)]
    );
    app.assert_audit_clean().await;
}

#[tokio::test]
async fn a_client_flooding_past_its_rate_is_throttled_while_another_is_served() {
    let (app, _) = seeded().await;
    let flood = app
        .add_client("flood", &[PROGRAM], &["read"], Some(5))
        .await;
    let calm = app.add_client("calm", &[PROGRAM], &["read"], None).await;
    let read = || -> Call {
        proto::GetProgramRequest {
            program_id: PROGRAM.into(),
        }
        .into()
    };
    // Ten times its rate at once: at most its burst (one second of calls, plus what refills
    // meanwhile) get through.
    let flooding = (0..50).map(|_| {
        let mut clients = app.clients_as(&flood);
        let call = read();
        tokio::spawn(async move { clients.send(call, None).await })
    });
    let calming = (0..20).map(|_| {
        let mut clients = app.clients_as(&calm);
        let call = read();
        tokio::spawn(async move { clients.send(call, None).await })
    });
    let (flooded, calmed) = (
        futures::future::join_all(flooding.collect::<Vec<_>>()).await,
        futures::future::join_all(calming.collect::<Vec<_>>()).await,
    );
    let mut throttled = 0;
    for result in flooded {
        if let Err(status) = result.unwrap() {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            let details = refusal(&status);
            assert_eq!(details.reason, "RATE_LIMITED");
            assert!(details.retry, "RetryInfo says when to come back");
            throttled += 1;
        }
    }
    assert!(
        throttled >= 30,
        "only {throttled} of 50 flooding calls were throttled"
    );
    for result in calmed {
        result
            .unwrap()
            .expect("the other client is served throughout");
    }
}

#[tokio::test]
async fn a_rotated_secret_works_through_its_grace_and_a_revoked_client_is_refused_everywhere() {
    let app = spawn_app_with(|settings| settings.clients_refresh_ms = 50).await;
    let mut app = app;
    app.create_program(usd_rules()).await;
    let name = flash_loyalty::domain::ClientName::parse("storefront").unwrap();
    let old = app
        .add_client("storefront", &[PROGRAM], &["read"], None)
        .await;
    let get = || -> Call {
        proto::GetProgramRequest {
            program_id: PROGRAM.into(),
        }
        .into()
    };
    let new = app
        .api_clients
        .rotate(&name, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    let new = new.expose().to_owned();
    app.clients_as(&old)
        .send(get(), None)
        .await
        .expect("the old secret, in its grace");
    app.clients_as(&new)
        .send(get(), None)
        .await
        .expect("the new secret");
    let newest = app
        .api_clients
        .rotate(&name, std::time::Duration::ZERO)
        .await
        .unwrap();
    let status = app.clients_as(&new).send(get(), None).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "no grace: the previous secret is out"
    );
    let status = app.clients_as(&old).send(get(), None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "two rotations ago");
    app.clients_as(newest.expose())
        .send(get(), None)
        .await
        .expect("the newest secret");

    // A second replica on the same database, which has seen the client.
    let mut settings = flash_loyalty::config::Settings::defaults();
    settings.database_url = app.database_url.clone();
    settings.redis_url = crate::helpers::redis_url();
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.http_listen = String::new();
    settings.contact_hash_key = Some(crate::helpers::TEST_CONTACT_KEY.into());
    settings.clients_refresh_ms = 50;
    let replica =
        flash_loyalty::app::Application::build(&settings, std::sync::Arc::new(app.clock.clone()))
            .await
            .unwrap();
    let address = replica.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(replica.serve(async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut there = Clients::new(channel, Bearer::new(newest.expose()));
    there
        .send(get(), None)
        .await
        .expect("the other replica serves it");

    // Revoked on the first replica: the second refuses it within its refresh interval.
    app.api_clients.revoke(&name).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match there.send(get(), None).await {
            Err(status) if status.code() == Code::Unauthenticated => break,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            other => panic!("the revoked client is still served elsewhere: {other:?}"),
        }
    }
    let _ = stop.send(());
}

#[tokio::test]
async fn health_is_open_reflection_and_subscribe_need_a_client() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let (app, _) = seeded().await;
    let mut health = HealthClient::new(app.channel.clone());
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("load balancers probe without credentials");

    let mut events = proto::events_client::EventsClient::new(app.channel.clone());
    let status = events
        .subscribe(proto::SubscribeRequest {
            program_id: PROGRAM.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let elsewhere = app
        .add_client("elsewhere", &["other"], &["read"], None)
        .await;
    let status = app
        .clients_as(&elsewhere)
        .events
        .subscribe(proto::SubscribeRequest {
            program_id: PROGRAM.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut anonymous = ServerReflectionClient::new(app.channel.clone());
    let status = match anonymous
        .server_reflection_info(tokio_stream::iter([request.clone()]))
        .await
    {
        Err(status) => status,
        Ok(_) => panic!("reflection answered a caller without credentials"),
    };
    assert_eq!(status.code(), Code::Unauthenticated);
    let reader = app.add_client("reader", &[PROGRAM], &["read"], None).await;
    let mut reflection =
        ServerReflectionClient::with_interceptor(app.channel.clone(), Bearer::new(&reader));
    reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("any client may read the contract");
}

/// `flash clients add` prints the token once, alone on its last line; only a keyed hash of
/// the secret is stored; `list` never shows a secret.
#[tokio::test]
async fn the_clients_command_prints_the_secret_once_and_stores_only_its_hash() {
    let app = spawn_app().await;
    let flash = env!("CARGO_BIN_EXE_flash");
    let command = || {
        let mut command = std::process::Command::new(flash);
        command
            .env("FLASH_DATABASE_URL", &app.database_url)
            .env("FLASH_CONTACT_HASH_KEY", crate::helpers::TEST_CONTACT_KEY)
            .env("FLASH_LOG", "warn");
        command
    };
    let token = flash_testing_support::process::add_client(
        command(),
        "support-desk",
        "acme,beta",
        "adjust,read",
        100,
    )
    .unwrap();
    let secret = token.rsplit('.').next().unwrap().to_owned();
    let listed = command().args(["clients", "list"]).output().unwrap();
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("support-desk\tacme,beta\tadjust,read"),
        "{listed}"
    );
    assert!(!listed.contains(&secret));
    let stored: Vec<u8> = app
        .db
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT secret_hash FROM api_clients WHERE name = 'support-desk'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 32);
    assert!(!token
        .as_bytes()
        .windows(8)
        .any(|w| stored.windows(8).any(|s| s == w)));
    // The server knows it at once.
    let mut clients = app.clients_as(&token);
    let status = clients
        .send(
            proto::GetProgramRequest {
                program_id: PROGRAM.into(),
            }
            .into(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "authenticated; the program does not exist"
    );
    // A bad request writes nothing and exits 2.
    let bad = command()
        .args([
            "clients",
            "add",
            "Bad Name",
            "--programs",
            "*",
            "--scopes",
            "root",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let again = command()
        .args([
            "clients",
            "add",
            "support-desk",
            "--programs",
            "*",
            "--scopes",
            "*",
        ])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "names are never given twice");
}
