//! The referral graph: only converted referrals are edges and a clawed-back one leaves at
//! the next snapshot; the same referrals give the same bytes; reads run no SQL once the
//! snapshot is cached and down-sampling keeps the top hubs; a replica sees another's new
//! snapshot; the job waits for the program's hour and prunes past the retention; the page
//! and its JSON.
use crate::helpers::*;
use crate::referrals::referral_rules;
use chrono::Duration;
use flash_loyalty::grpc::proto::{self, graph_client::GraphClient};
use flash_loyalty::service::{Job, Replica, RunOutcome};
use flash_testing_support::proxy::Proxy;
use std::collections::BTreeSet;
use std::sync::Arc;
use tonic::Code;

impl TestApp {
    /// `referrer` recruits a new member, the referral converted explicitly; the recruit.
    async fn recruit(&mut self, referrer: &str) -> String {
        let code = self.invite_one(referrer).await;
        self.clock.advance(Duration::seconds(1));
        let referee = self.enroll().await;
        self.accept(&code, &referee, &format!("accept-{code}"))
            .await
            .expect("accept");
        self.referrals
            .convert_invite(proto::ConvertInviteRequest {
                program_id: PROGRAM.into(),
                code: code.clone(),
                idempotency_key: format!("convert-{code}"),
            })
            .await
            .expect("convert");
        referee
    }

    /// A hub with `recruits` recruits; (hub, recruits).
    async fn hub(&mut self, recruits: usize) -> (String, Vec<String>) {
        let hub = self.enroll().await;
        let mut referees = Vec::new();
        for _ in 0..recruits {
            referees.push(self.recruit(&hub).await);
        }
        (hub, referees)
    }

    async fn rebuild(&mut self) -> proto::RebuildSnapshotResponse {
        self.graph
            .rebuild_snapshot(proto::RebuildSnapshotRequest {
                program_id: PROGRAM.into(),
            })
            .await
            .expect("rebuild")
            .into_inner()
    }

    async fn get_graph(&mut self, max_nodes: i32) -> proto::GetGraphResponse {
        get_graph(&mut self.graph, max_nodes).await
    }

    async fn snapshot_rows(&self) -> Vec<(String, i64, Vec<u8>)> {
        let client = self.db.get().await.unwrap();
        client
            .query(
                "SELECT snapshot_date::text, version, blob FROM graph_snapshots \
                 ORDER BY snapshot_date",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect()
    }
}

async fn get_graph(
    client: &mut GraphClient<crate::helpers::Authed>,
    max_nodes: i32,
) -> proto::GetGraphResponse {
    client
        .get_graph(proto::GetGraphRequest {
            program_id: PROGRAM.into(),
            max_nodes,
        })
        .await
        .expect("get graph")
        .into_inner()
}

/// The answer's edges as (referrer id, referee id).
fn edges_of(graph: &proto::GetGraphResponse) -> BTreeSet<(String, String)> {
    graph
        .edges
        .iter()
        .map(|edge| {
            (
                graph.nodes[edge.referrer as usize].member_id.clone(),
                graph.nodes[edge.referee as usize].member_id.clone(),
            )
        })
        .collect()
}

fn ids_of(graph: &proto::GetGraphResponse) -> BTreeSet<String> {
    graph
        .nodes
        .iter()
        .map(|node| node.member_id.clone())
        .collect()
}

fn replica() -> Replica {
    Replica {
        id: "graph-test".into(),
        lease: Duration::seconds(60),
        period: None,
    }
}

#[tokio::test]
async fn only_converted_referrals_are_edges_and_a_clawback_leaves_at_the_next_snapshot() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    // Converted by the referee's purchase, and explicitly.
    let (buyer_referrer, buyer, award) = app.converted_referral().await;
    let referrer = app.enroll().await;
    let recruit = app.recruit(&referrer).await;
    // Pending, accepted without converting, revoked: none of them is an edge.
    let lonely = app.enroll().await;
    app.invite_one(&lonely).await;
    let accepted_code = app.invite_one(&referrer).await;
    app.clock.advance(Duration::seconds(1));
    let accepted = app.enroll().await;
    app.accept(&accepted_code, &accepted, "accept-only")
        .await
        .unwrap();
    let revoked = app.invite_one(&lonely).await;
    app.referrals
        .revoke_invite(proto::RevokeInviteRequest {
            program_id: PROGRAM.into(),
            code: revoked,
            idempotency_key: "revoke".into(),
        })
        .await
        .unwrap();

    let rebuilt = app.rebuild().await;
    assert!(rebuilt.changed);
    let first = app.get_graph(0).await;
    assert_eq!(
        edges_of(&first),
        BTreeSet::from([
            (buyer_referrer.clone(), buyer.clone()),
            (referrer.clone(), recruit.clone())
        ])
    );
    assert_eq!(
        ids_of(&first),
        BTreeSet::from([
            buyer_referrer.clone(),
            buyer.clone(),
            referrer.clone(),
            recruit.clone()
        ])
    );
    let snapshot = first.snapshot.clone().unwrap();
    assert_eq!(
        (
            snapshot.node_count,
            snapshot.edge_count,
            first.dropped_nodes
        ),
        (4, 2, 0)
    );
    assert_eq!(snapshot.snapshot_date, "2026-03-01");

    // The purchase is refunded in full: the referral is clawed back.
    app.refund(&award, "refund-all", None).await;
    assert_eq!(
        app.invite_status_of(&buyer_referrer).await,
        proto::InviteStatus::ClawedBack
    );
    // Today's snapshot is kept until the next one: the next day's job.
    assert_eq!(edges_of(&app.get_graph(0).await).len(), 2);
    app.clock.advance(Duration::days(1));
    let run = app
        .service
        .run_job(Job::GraphSnapshot, app.clock_now(), &replica())
        .await
        .unwrap();
    assert!(
        matches!(run, RunOutcome::Done { ref counts, .. } if counts.changed == 1),
        "{run:?}"
    );
    let next = app.get_graph(0).await;
    assert_eq!(next.snapshot.as_ref().unwrap().snapshot_date, "2026-03-02");
    assert!(next.snapshot.as_ref().unwrap().version > snapshot.version);
    assert_eq!(
        edges_of(&next),
        BTreeSet::from([(referrer.clone(), recruit.clone())])
    );
    assert_eq!(app.snapshot_rows().await.len(), 2);
}

#[tokio::test]
async fn the_same_referrals_give_byte_identical_snapshots() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let (_, recruits) = app.hub(5).await;
    app.recruit(&recruits[0]).await;
    let first = app.rebuild().await;
    assert!(first.changed);
    // Rebuilt with nothing new: the same content, nothing written, the same version.
    let again = app.rebuild().await;
    assert!(!again.changed);
    assert_eq!(again.snapshot, first.snapshot);
    let stored = app.snapshot_rows().await;
    // Built from scratch again: the same bytes.
    {
        let client = app.db.get().await.unwrap();
        client
            .execute("DELETE FROM graph_snapshots", &[])
            .await
            .unwrap();
    }
    let rebuilt = app.rebuild().await;
    assert!(rebuilt.changed);
    let restored = app.snapshot_rows().await;
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].2, stored[0].2, "the blobs differ");
    let (first, rebuilt) = (first.snapshot.unwrap(), rebuilt.snapshot.unwrap());
    assert_eq!(first.content_hash, rebuilt.content_hash);
    assert!(rebuilt.version > first.version);
}

#[tokio::test]
async fn reads_run_no_sql_once_cached_and_down_sampling_keeps_the_top_hubs() {
    // Every statement of the server goes through a proxy that counts its bytes.
    let postgres: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Arc::new(Proxy::start(postgres).await.unwrap());
    let port = proxy.port();
    let mut app = spawn_app_with(|settings| {
        settings.database_url = settings
            .database_url
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
        // No background refresh or health probe during the count.
        settings.graph_refresh_seconds = 86_400;
        settings.health_interval_ms = 86_400_000;
        settings.clients_refresh_ms = 600_000;
    })
    .await;
    app.create_program(referral_rules()).await;
    let (top, top_recruits) = app.hub(12).await;
    let (second, _) = app.hub(8).await;
    for _ in 0..4 {
        app.hub(3).await;
    }
    let total = app.rebuild().await.snapshot.unwrap();
    assert_eq!((total.node_count, total.edge_count), (2 + 12 + 8 + 16, 32));

    // The first read loads the snapshot; the reads after it send PostgreSQL nothing.
    let whole = app.get_graph(0).await;
    assert_eq!(whole.nodes.len(), 38);
    let loads = app.service.graph_cache_stats().loads;
    let before = proxy.bytes_sent();
    let sampled = app.get_graph(15).await;
    for max_nodes in [15, 0, 15, 38, 1000, 15] {
        let answer = app.get_graph(max_nodes).await;
        if max_nodes == 15 {
            assert_eq!(answer, sampled);
        }
    }
    app.graph
        .get_neighborhood(proto::GetNeighborhoodRequest {
            program_id: PROGRAM.into(),
            member_id: second.clone(),
            depth: 3,
            max_nodes: 0,
        })
        .await
        .unwrap();
    let advocates = app
        .graph
        .list_top_advocates(proto::ListTopAdvocatesRequest {
            program_id: PROGRAM.into(),
            limit: 3,
        })
        .await
        .unwrap()
        .into_inner()
        .advocates;
    let (status, _, _) = http_get_as(
        app.http,
        "/graph/acme/data.json?max_nodes=15",
        Some(&app.admin_token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(proxy.bytes_sent(), before, "a graph read ran SQL");
    let stats = app.service.graph_cache_stats();
    assert_eq!(stats.loads, loads, "the snapshot was loaded again");
    // Views: the whole graph and the 15-member one, each computed once.
    assert_eq!(stats.views_computed, 2);

    // The 15 kept: the top hub with its 12 recruits, then the second hub and one of its
    // recruits; what was left out is counted.
    let kept = ids_of(&sampled);
    assert_eq!(kept.len(), 15);
    assert!(kept.contains(&top) && kept.contains(&second));
    assert!(top_recruits.iter().all(|recruit| kept.contains(recruit)));
    assert_eq!(sampled.dropped_nodes, 38 - 15);
    assert_eq!(sampled.dropped_edges as usize, 32 - sampled.edges.len());
    assert_eq!(sampled.edges.len(), 13);
    // Its edges are the snapshot's between kept members, and nothing else.
    let whole_edges = edges_of(&whole);
    let expected: BTreeSet<_> = whole_edges
        .iter()
        .filter(|(a, b)| kept.contains(a) && kept.contains(b))
        .cloned()
        .collect();
    assert_eq!(edges_of(&sampled), expected);
    // Top advocates: most recruits first.
    let ranked: Vec<(String, i32)> = advocates
        .iter()
        .map(|a| (a.member_id.clone(), a.recruits))
        .collect();
    assert_eq!(ranked[0], (top.clone(), 12));
    assert_eq!(ranked[1], (second.clone(), 8));
    assert_eq!(ranked[2].1, 3);
}

#[tokio::test]
async fn a_replica_sees_the_snapshot_another_wrote() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let (hub, _) = app.hub(2).await;
    app.rebuild().await;
    // A second replica on the same database, checking for new snapshots every second.
    let mut settings = flash_loyalty::config::Settings::defaults();
    settings.database_url = app.database_url.clone();
    settings.redis_url = redis_url();
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.http_listen = String::new();
    settings.contact_hash_key = Some(TEST_CONTACT_KEY.into());
    settings.graph_refresh_seconds = 1;
    let replica = flash_loyalty::app::Application::build(&settings, Arc::new(app.clock.clone()))
        .await
        .unwrap();
    let address = replica.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(replica.serve(async {
        let _ = stopped.await;
    }));
    let mut other = GraphClient::with_interceptor(
        tonic::transport::Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
        crate::helpers::Bearer::new(&app.admin_token),
    );
    let cached = get_graph(&mut other, 0).await;
    assert_eq!(cached.nodes.len(), 3);

    // The first replica writes a new snapshot; the second answers it within seconds.
    app.recruit(&hub).await;
    let written = app.rebuild().await.snapshot.unwrap();
    let mut seen = None;
    for _ in 0..100 {
        let answer = get_graph(&mut other, 0).await;
        if answer.snapshot.as_ref().unwrap().version == written.version {
            seen = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let seen = seen.expect("the other replica kept its stale snapshot");
    assert_eq!(seen.nodes.len(), 4);
    // The writer itself answered the new one at once.
    assert_eq!(
        app.get_graph(0).await.snapshot.unwrap().version,
        written.version
    );
    let _ = stop.send(());
}

#[tokio::test]
async fn the_snapshot_job_waits_for_the_hour_and_prunes_past_the_retention() {
    let mut app = spawn_app().await;
    // The test starts at 13:00 in Paris.
    app.create_program(proto::ProgramRules {
        graph_snapshot_hour: Some(14),
        graph_snapshot_retention_days: Some(2),
        ..referral_rules()
    })
    .await;
    app.hub(1).await;
    let run = |app: &TestApp| {
        let (service, at) = (app.service.clone(), app.clock_now());
        async move {
            match service
                .run_job(Job::GraphSnapshot, at, &replica())
                .await
                .unwrap()
            {
                RunOutcome::Done { counts, .. } => counts.changed,
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(run(&app).await, 0, "before the program's hour");
    assert!(app.snapshot_rows().await.is_empty());
    app.clock.advance(Duration::hours(1));
    assert_eq!(run(&app).await, 1);
    // Later the same day: the day has its snapshot.
    app.clock.advance(Duration::hours(2));
    assert_eq!(run(&app).await, 0);
    for _ in 0..3 {
        app.clock.advance(Duration::days(1));
        assert_eq!(run(&app).await, 1);
    }
    let days: Vec<String> = app
        .snapshot_rows()
        .await
        .into_iter()
        .map(|(day, _, _)| day)
        .collect();
    assert_eq!(days, vec!["2026-03-02", "2026-03-03", "2026-03-04"]);
}

#[tokio::test]
async fn graph_reads_refuse_precisely() {
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let stranger = app.enroll().await;
    let graph = |program: &str, max_nodes: i32| proto::GetGraphRequest {
        program_id: program.into(),
        max_nodes,
    };
    let before = app.graph.get_graph(graph(PROGRAM, 0)).await.unwrap_err();
    assert_eq!(before.code(), Code::NotFound);
    assert_eq!(refusal(&before).reason, "GRAPH_SNAPSHOT_NOT_FOUND");
    let missing = app.graph.get_graph(graph("nope", 0)).await.unwrap_err();
    assert_eq!(refusal(&missing).reason, "PROGRAM_NOT_FOUND");
    app.hub(1).await;
    app.rebuild().await;
    for max_nodes in [-1, 50_001, i32::MAX, i32::MIN] {
        let refused = app
            .graph
            .get_graph(graph(PROGRAM, max_nodes))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{max_nodes}");
        assert!(refused.message().contains("max_nodes"), "{refused:?}");
    }
    let around = |member_id: &str, depth: i32| proto::GetNeighborhoodRequest {
        program_id: PROGRAM.into(),
        member_id: member_id.into(),
        depth,
        max_nodes: 0,
    };
    let deep = app
        .graph
        .get_neighborhood(around(&stranger, 4))
        .await
        .unwrap_err();
    assert_eq!(deep.code(), Code::InvalidArgument);
    assert!(deep.message().contains("depth"));
    let outside = app
        .graph
        .get_neighborhood(around(&stranger, 2))
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Code::NotFound);
    assert_eq!(refusal(&outside).reason, "MEMBER_NOT_IN_GRAPH");
    let bad_id = app
        .graph
        .get_neighborhood(around("not-a-uuid", 1))
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    let limit = app
        .graph
        .list_top_advocates(proto::ListTopAdvocatesRequest {
            program_id: PROGRAM.into(),
            limit: 1001,
        })
        .await
        .unwrap_err();
    assert_eq!(limit.code(), Code::InvalidArgument);
    let rebuild_missing = app
        .graph
        .rebuild_snapshot(proto::RebuildSnapshotRequest {
            program_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refusal(&rebuild_missing).reason, "PROGRAM_NOT_FOUND");
}

#[tokio::test]
async fn the_page_and_its_json_serve_the_latest_snapshot() {
    let mut app = spawn_app_with(|settings| {
        settings.profile_url_template =
            Some("https://crm.example/members/{member_id}?from=</script>".into());
    })
    .await;
    app.create_program(referral_rules()).await;
    let (status, _, body) =
        http_get_as(app.http, "/graph/acme/data.json", Some(&app.admin_token)).await;
    assert_eq!(status, 404);
    assert!(body.contains("no referral graph snapshot yet"), "{body}");
    let (hub, recruits) = app.hub(3).await;
    app.rebuild().await;

    let (status, content_type, page) = http_get(app.http, "/graph/acme").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.contains("<canvas"));
    assert!(!page.contains("__FLASH_PROFILE_URL_TEMPLATE__"));
    assert!(page.contains(r#""https://crm.example/members/{member_id}?from=\u003c/script>""#));
    assert!(
        !page.contains("http://") && !page.contains("//cdn"),
        "no external assets"
    );

    let (status, content_type, body) = http_get_as(
        app.http,
        "/graph/acme/data.json?max_nodes=2",
        Some(&app.admin_token),
    )
    .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/json"));
    let data: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(data["total_nodes"], 4);
    assert_eq!(data["downsampled"], true);
    assert_eq!(data["dropped_nodes"], 2);
    let nodes = data["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let hub_node = nodes.iter().find(|n| n["id"] == hub.as_str()).unwrap();
    assert_eq!(
        (hub_node["recruits"].as_u64(), hub_node["hub"].as_bool()),
        (Some(3), Some(true))
    );
    assert!(recruits
        .iter()
        .any(|r| nodes.iter().any(|n| n["id"] == r.as_str())));
    let (status, _, body) = http_get_as(
        app.http,
        "/graph/acme/data.json?max_nodes=-3",
        Some(&app.admin_token),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("max_nodes"));
    let (status, _, _) = http_get_as(
        app.http,
        "/graph/NOT_A_PROGRAM/data.json",
        Some(&app.admin_token),
    )
    .await;
    assert_eq!(status, 400);

    // The data is a read of the program: a client with the read scope on it.
    let (status, _, body) = http_get(app.http, "/graph/acme/data.json").await;
    assert_eq!(status, 401, "{body}");
    let writer = app.add_client("writer", &[PROGRAM], &["award"], None).await;
    let (status, _, _) = http_get_as(app.http, "/graph/acme/data.json", Some(&writer)).await;
    assert_eq!(status, 403);
    let elsewhere = app
        .add_client("elsewhere", &["other"], &["read"], None)
        .await;
    let (status, _, _) = http_get_as(app.http, "/graph/acme/data.json", Some(&elsewhere)).await;
    assert_eq!(status, 404);
}

/// The page in a real headless Chromium (tests/browser/graph.mjs through puppeteer-core):
/// the nodes are drawn, hovering a hub highlights its neighbourhood, reduced motion stops
/// the animation; the screenshot is left in target/test-artifacts/graph.png.
#[tokio::test]
async fn the_page_draws_the_snapshot_in_a_real_browser() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = ensure_chromium();
    ensure_node_tools(root);
    let mut app = spawn_app_with(|settings| {
        settings.profile_url_template = Some("https://crm.example/members/{member_id}".into());
    })
    .await;
    app.create_program(referral_rules()).await;
    let (hub, recruits) = app.hub(6).await;
    let (_, second) = app.hub(3).await;
    let grandchild = app.recruit(&recruits[0]).await;
    app.recruit(&second[0]).await;
    for _ in 0..3 {
        app.hub(1).await;
    }
    let snapshot = app.rebuild().await.snapshot.unwrap();
    let expected = serde_json::json!({
        "hub": hub,
        "neighbours": recruits,
        "nodes": snapshot.node_count,
    });
    assert!(!recruits.contains(&grandchild));
    let artefacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let screenshot = artefacts.join("graph.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!(
        "http://{}/graph/{PROGRAM}#token={}",
        app.http, app.admin_token
    );
    let mut node = std::process::Command::new("node");
    node.arg(root.join("tests/browser/graph.mjs"))
        .arg(&url)
        .arg(&screenshot)
        .arg(expected.to_string())
        .env("CHROMIUM", &chromium);
    let output = tokio::task::spawn_blocking(move || node.output())
        .await
        .unwrap()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

/// Debian's chromium, installed when missing (as the bootstrap does).
fn ensure_chromium() -> String {
    let found = |name: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    if let Some(path) = std::env::var("CHROMIUM")
        .ok()
        .filter(|c| found(c).is_some())
    {
        return path;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(path) = found(name) {
            return path;
        }
    }
    let installed = std::process::Command::new("apt-get")
        .args(["install", "-y", "-q", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("run apt-get");
    assert!(installed.success(), "installing chromium failed");
    found("chromium").expect("chromium after installing it")
}

/// puppeteer-core from package-lock.json, installed when missing.
fn ensure_node_tools(root: &std::path::Path) {
    if root
        .join("node_modules/puppeteer-core/package.json")
        .exists()
    {
        return;
    }
    let installed = std::process::Command::new("npm")
        .args(["ci", "--silent"])
        .current_dir(root)
        .status()
        .expect("run npm");
    assert!(installed.success(), "npm ci failed");
}

#[tokio::test]
async fn the_audit_checks_every_kept_snapshot() {
    use flash_loyalty::domain::graph::{content_hash, ReferralGraph};
    let mut app = spawn_app().await;
    app.create_program(referral_rules()).await;
    let (hub, _) = app.hub(2).await;
    let lonely = app.enroll().await;
    app.invite_one(&hub).await;
    app.rebuild().await;
    let program = flash_loyalty::domain::ProgramId::parse(PROGRAM).unwrap();
    let report = app.service.audit(&program).await.unwrap();
    assert!(report.is_clean(), "{report}");

    // A well-formed snapshot claiming a referral that never converted.
    let pair = (
        hub.parse::<uuid::Uuid>().unwrap(),
        lonely.parse::<uuid::Uuid>().unwrap(),
    );
    let (blob, index) = ReferralGraph::build(PROGRAM, &[pair], 1).encode();
    let client = app.db.get().await.unwrap();
    client
        .execute(
            "UPDATE graph_snapshots SET blob = $1, graph_index = $2, content_hash = $3, \
             node_count = 2, edge_count = 1",
            &[&blob, &index, &content_hash(&blob, &index)],
        )
        .await
        .unwrap();
    let report = app.service.audit(&program).await.unwrap();
    assert_eq!(report.violations.len(), 1, "{report}");
    assert!(
        report.violations[0].contains(&format!(
            "edge {hub} → {lonely} is not a converted referral"
        )),
        "{report}"
    );
    // Bytes that are not what the row's hash and counts say.
    client
        .execute(
            "UPDATE graph_snapshots SET content_hash = repeat('0', 64), node_count = 3",
            &[],
        )
        .await
        .unwrap();
    let report = app.service.audit(&program).await.unwrap();
    let all = report.violations.join("\n");
    assert!(all.contains("do not match its content hash"), "{all}");
    assert!(
        all.contains("holds 2 members and 1 referrals, its row says 3 and 1"),
        "{all}"
    );
}
