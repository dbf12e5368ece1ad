//! What engineers with grpcurl rely on: reflection lists every service to any client, and
//! health answers anyone, without credentials.
use crate::helpers::{spawn_app, Bearer};
use tonic::transport::Channel;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

/// Reflection as a client of one program with one scope: any valid token will do.
#[tokio::test]
async fn reflection_lists_every_service_without_proto_files() {
    let app = spawn_app().await;
    let token = app
        .add_client("reflection", &["elsewhere"], &["award"], None)
        .await;
    let channel = Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::with_interceptor(channel, Bearer::new(&token));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer: {answer:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for expected in [
        "flash.loyalty.v1.Ledger",
        "flash.loyalty.v1.Programs",
        "flash.loyalty.v1.Tiers",
        "flash.loyalty.v1.Events",
        "flash.loyalty.v1.Referrals",
        "flash.loyalty.v1.Graph",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

/// Health needs no credentials (load balancers have none).
#[tokio::test]
async fn health_reports_the_ledger_serving() {
    let app = spawn_app().await;
    let channel = Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "flash.loyalty.v1.Ledger".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}
