//! What operations see: `/metrics` counts what committed and every call by method and
//! code; health and `/ready` say what the server can do while a dependency is away.
//! Counters are shared by every server of the test process, so each test compares values
//! before and after its calls, for labels only it uses (its own program ids).
use crate::helpers::{free_port, http_get, spawn_app_with, usd_rules, Proxy, TestApp};
use flash_loyalty::grpc::proto;
use std::collections::HashMap;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use uuid::Uuid;

/// A program id no other test uses.
fn unique_program() -> String {
    format!("tel-{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// The sum of the samples of `name` whose labels include every one of `labels`; 0 when
/// there is none yet.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let found: HashMap<&str, &str> = series_labels
                .split("\",")
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key, value.trim_matches('"')))
                .collect();
            labels
                .iter()
                .all(|(key, wanted)| found.get(key) == Some(wanted))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn scrape(app: &TestApp) -> String {
    let (status, content_type, body) = http_get(app.http, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    body
}

async fn enroll_in(app: &mut TestApp, program: &str) -> String {
    let member_id = Uuid::new_v4().to_string();
    app.ledger
        .enroll_member(proto::EnrollMemberRequest {
            program_id: program.into(),
            member_id: member_id.clone(),
            ..Default::default()
        })
        .await
        .expect("enroll");
    member_id
}

async fn health_of(channel: &Channel, service: &str) -> i32 {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

/// Asks health until `service` reports `wanted`; panics after a generous minute.
async fn wait_for_health(channel: &Channel, service: &str, wanted: ServingStatus) {
    for _ in 0..600 {
        if health_of(channel, service).await == wanted as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} never reported {wanted:?}");
}

async fn channel_to(app: &TestApp) -> Channel {
    Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn metrics_count_committed_points_once_and_every_call_by_method_and_code() {
    // Arrange: a dead Redis, so the capped program's awards are withheld.
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let mut app = spawn_app_with(|settings| settings.redis_url = dead).await;
    let (free, capped) = (unique_program(), unique_program());
    app.create_named_program(&free, usd_rules()).await;
    let mut capped_rules = usd_rules();
    capped_rules.daily_cap_points = Some(500);
    app.create_named_program(&capped, capped_rules).await;
    let member = enroll_in(&mut app, &free).await;
    let capped_member = enroll_in(&mut app, &capped).await;
    let award_ok = [("method", "flash.loyalty.v1.Ledger/Award"), ("code", "OK")];
    let award_unavailable = [
        ("method", "flash.loyalty.v1.Ledger/Award"),
        ("code", "UNAVAILABLE"),
    ];
    let before = scrape(&app).await;

    // Act: an award, its replay, a spend, and a capped award Redis cannot check.
    let mut award = app.purchase(&member, 2_000);
    award.program_id = free.clone();
    let first = app.award(award.clone()).await;
    let replay = app.award(award).await;
    let mut spend = app.spend_request(&member, 5);
    spend.program_id = free.clone();
    app.ledger.spend(spend).await.expect("spend");
    let mut withheld = app.purchase(&capped_member, 2_000);
    withheld.program_id = capped.clone();
    let refused = app.ledger.award(withheld).await.unwrap_err();
    // A subscriber reads the program's first event (its delivery lag is recorded).
    let mut stream = app
        .events
        .subscribe(flash_loyalty::grpc::proto::SubscribeRequest {
            program_id: free.clone(),
            after_cursor: String::new(),
            event_types: vec![],
        })
        .await
        .expect("subscribe")
        .into_inner();
    let first_event = tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
        .await
        .expect("an event in time");
    assert!(first_event.expect("a healthy stream").is_some());
    drop(stream);
    let after = scrape(&app).await;

    // Assert
    assert_eq!((first.awarded_points, replay.replayed), (20, true));
    assert_eq!(refused.code(), Code::Unavailable);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    fn program(id: &str) -> [(&str, &str); 1] {
        [("program", id)]
    }
    assert_eq!(moved("flash_points_awarded_total", &program(&free)), 20.0);
    assert_eq!(moved("flash_points_spent_total", &program(&free)), 5.0);
    assert_eq!(moved("flash_awards_withheld_total", &program(&capped)), 1.0);
    assert_eq!(moved("flash_awards_withheld_total", &program(&free)), 0.0);
    assert_eq!(moved("flash_points_awarded_total", &program(&capped)), 0.0);
    assert_eq!(moved("flash_daily_cap_hits_total", &program(&capped)), 0.0);
    // Other tests of the process call Award too: at least ours moved the RPC counters.
    assert!(
        moved("flash_rpc_requests_total", &award_ok) >= 2.0,
        "{after}"
    );
    assert!(
        moved("flash_rpc_requests_total", &award_unavailable) >= 1.0,
        "{after}"
    );
    assert!(moved("flash_rpc_duration_seconds_count", &award_ok) >= 2.0);
    assert!(sample(&after, "flash_member_lock_wait_seconds_count", &[]) >= 3.0);
    assert!(
        moved("flash_event_delivery_lag_seconds_count", &[]) >= 1.0,
        "{after}"
    );
    assert!(sample(&after, "flash_db_pool_size", &[]) >= 1.0, "{after}");
    assert!(
        after.contains("# TYPE flash_event_subscribers gauge"),
        "{after}"
    );
    app.assert_ties_out().await;
}

#[tokio::test]
async fn health_turns_the_ledger_not_serving_while_postgres_is_unreachable_and_back() {
    // Arrange: the server's database behind a proxy the test controls.
    let postgres: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::start(postgres).await.unwrap();
    let port = proxy.port();
    let app = spawn_app_with(|settings| {
        settings.database_url = settings
            .database_url
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
        settings.health_interval_ms = 100;
    })
    .await;
    let channel = channel_to(&app).await;
    wait_for_health(&channel, "flash.loyalty.v1.Ledger", ServingStatus::Serving).await;

    // Act: PostgreSQL goes away.
    proxy.cut().await;

    // Assert: the database-backed services stop serving, the server does not.
    wait_for_health(
        &channel,
        "flash.loyalty.v1.Ledger",
        ServingStatus::NotServing,
    )
    .await;
    wait_for_health(
        &channel,
        "flash.loyalty.v1.Programs",
        ServingStatus::NotServing,
    )
    .await;
    assert_eq!(health_of(&channel, "").await, ServingStatus::Serving as i32);
    let (status, _, body) = http_get(app.http, "/ready").await;
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["postgres"], "down");

    // Act and assert: it comes back.
    proxy.heal();
    wait_for_health(&channel, "flash.loyalty.v1.Ledger", ServingStatus::Serving).await;
    let (status, _, body) = http_get(app.http, "/ready").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn ready_reports_capped_awards_degraded_while_redis_is_down_and_stays_ready() {
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let app = spawn_app_with(|settings| {
        settings.redis_url = dead;
        settings.health_interval_ms = 100;
    })
    .await;

    let (status, content_type, body) = http_get(app.http, "/ready").await;

    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"postgres": "up", "redis": "down", "capped_awards": "degraded"})
    );
    let channel = channel_to(&app).await;
    assert_eq!(
        health_of(&channel, "flash.loyalty.v1.Ledger").await,
        ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn ready_reports_everything_up_when_both_answer() {
    let app = spawn_app_with(|_| {}).await;

    let (status, _, body) = http_get(app.http, "/ready").await;

    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"postgres": "up", "redis": "up", "capped_awards": "available"})
    );
}
