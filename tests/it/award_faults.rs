//! The daily cap fails closed: these tests cut Redis away from the server. They use a
//! dead port, a proxy the test controls, or a private redis-server, never the shared one.
use crate::helpers::{free_port, spawn_app_with, usd_rules, PrivateRedis, Proxy};
use flash_loyalty::grpc::proto;
use std::time::{Duration, Instant};
use tonic::Code;

fn capped_rules(cap: i64) -> proto::ProgramRules {
    let mut rules = usd_rules();
    rules.daily_cap_points = Some(cap);
    rules
}

/// Retries an award with the same key, as a caller would, until Redis answers again.
async fn award_once_redis_answers(
    app: &mut crate::helpers::TestApp,
    request: &proto::AwardRequest,
) -> proto::AwardResponse {
    for _ in 0..100 {
        match app.ledger.award(request.clone()).await {
            Ok(response) => return response.into_inner(),
            Err(status) if status.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
    panic!("the award never went through once Redis was back");
}

#[tokio::test]
async fn redis_unreachable_is_unavailable_quickly_and_writes_nothing() {
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let mut app = spawn_app_with(|settings| settings.redis_url = dead).await;
    app.create_program(capped_rules(500)).await;
    let member = app.enroll().await;

    let started = Instant::now();
    let error = app
        .ledger
        .award(app.purchase(&member, 2_000))
        .await
        .unwrap_err();
    let waited = started.elapsed();

    assert_eq!(error.code(), Code::Unavailable);
    assert!(error.message().contains("withheld"), "{}", error.message());
    let refusal = crate::helpers::refusal(&error);
    assert_eq!(refusal.reason, "DAILY_CAP_UNAVAILABLE");
    assert!(refusal.retry, "UNAVAILABLE carries RetryInfo");
    // A generous bound: the point is "bounded", not a timing measurement.
    assert!(waited < Duration::from_secs(5), "took {waited:?}");
    assert_eq!(app.row_counts().await, (0, 0));
    app.assert_ties_out().await;
}

#[tokio::test]
async fn an_award_refused_while_redis_was_down_awards_exactly_once_when_it_is_back() {
    let redis: std::net::SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let proxy = Proxy::start(redis).await.expect("start the proxy");
    let url = format!("redis://{}", proxy.address);
    let mut app = spawn_app_with(|settings| settings.redis_url = url).await;
    app.create_program(capped_rules(500)).await;
    let member = app.enroll().await;
    let request = app.purchase(&member, 2_000);

    proxy.cut().await;
    let error = app.ledger.award(request.clone()).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(app.row_counts().await, (0, 0));

    proxy.heal();
    let outcome = award_once_redis_answers(&mut app, &request).await;
    assert_eq!(outcome.awarded_points, 20);
    let replay = app.award(request).await;
    assert!(replay.replayed);
    assert_eq!(app.row_counts().await, (1, 1));
    app.assert_ties_out().await;
}

/// Regression (chaos seeds 20 and 30): after Redis froze, the server kept its silent
/// connection and refused every capped award until restarted.
#[tokio::test]
async fn awards_resume_after_redis_connections_go_silent() {
    let redis: std::net::SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let proxy = Proxy::start(redis).await.expect("start the proxy");
    let url = format!("redis://{}", proxy.address);
    let mut app = spawn_app_with(|settings| settings.redis_url = url).await;
    app.create_program(capped_rules(500)).await;
    let member = app.enroll().await;
    app.award(app.purchase(&member, 1_000)).await;

    proxy.black_hole().await;
    let request = app.purchase(&member, 2_000);
    let error = app.ledger.award(request.clone()).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    proxy.heal();

    let outcome = award_once_redis_answers(&mut app, &request).await;
    assert_eq!(outcome.awarded_points, 20);
    app.assert_ties_out().await;
}

/// Regression (chaos seeds 20 and 30): a server started while Redis was unreachable never
/// connected once Redis came back.
#[tokio::test]
async fn a_server_started_while_redis_is_down_connects_when_it_comes_back() {
    let redis: std::net::SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let proxy = Proxy::start(redis).await.expect("start the proxy");
    proxy.cut().await;
    let url = format!("redis://{}", proxy.address);
    let mut app = spawn_app_with(|settings| settings.redis_url = url).await;
    app.create_program(capped_rules(500)).await;
    let member = app.enroll().await;
    let request = app.purchase(&member, 2_000);
    let error = app.ledger.award(request.clone()).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);

    proxy.heal();
    let outcome = award_once_redis_answers(&mut app, &request).await;
    assert_eq!(outcome.awarded_points, 20);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn the_cap_still_holds_after_redis_is_flushed_mid_day() {
    let redis = PrivateRedis::start(None).expect("start a private redis-server");
    let url = redis.url();
    let mut app = spawn_app_with(|settings| settings.redis_url = url).await;
    app.create_program(capped_rules(100)).await;
    let member = app.enroll().await;

    let first = app.award(app.purchase(&member, 6_000)).await;
    assert_eq!(first.awarded_points, 60);
    assert_eq!(redis.cli(&["FLUSHALL"]).expect("redis-cli"), "OK");

    let second = app.award(app.purchase(&member, 6_000)).await;
    assert_eq!((second.awarded_points, second.capped), (40, true));
    let third = app.award(app.purchase(&member, 6_000)).await;
    assert_eq!((third.awarded_points, third.capped), (0, true));
    assert_eq!(app.member(&member).await.balance_points, 100);
    app.assert_ties_out().await;
}

#[tokio::test]
async fn awards_without_a_cap_never_need_redis() {
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let mut app = spawn_app_with(|settings| settings.redis_url = dead).await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let outcome = app.award(app.purchase(&member, 2_000)).await;
    assert_eq!(outcome.awarded_points, 20);
    app.assert_ties_out().await;
}
