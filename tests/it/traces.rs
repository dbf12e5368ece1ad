//! Traces over OTLP: a `flash serve` process exporting to a tiny OTLP receiver in this
//! test continues the caller's W3C traceparent, and an award's span tree arrives with its
//! database calls as children of the RPC's span.
use crate::helpers::*;
use flash_loyalty::grpc::proto;
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::wrappers::TcpListenerStream;

/// Collects every span exported to it.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn an_awards_span_tree_arrives_over_otlp_continuing_the_callers_trace() {
    // The receiver.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    // A database with the program, and a server process exporting there.
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let port = flash_testing_support::free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_flash"))
        .args(["serve", "--no-workers"])
        .env("FLASH_DATABASE_URL", &app.database_url)
        .env("FLASH_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLASH_HTTP_LISTEN", "")
        .env(
            "FLASH_REDIS_PREFIX",
            format!("test:{}:", uuid::Uuid::new_v4().simple()),
        )
        .env("FLASH_CONTACT_HASH_KEY", TEST_CONTACT_KEY)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn flash serve");
    let mut ledger = proto::ledger_client::LedgerClient::with_interceptor(
        connect_when_listening(port).await,
        crate::helpers::Bearer::new(&app.admin_token),
    );

    // An award sent inside the caller's trace.
    let member = app.enroll().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut award = app.purchase(&member, 1_000);
    award.occurred_at = Some(timestamp(chrono::Utc::now()));
    let mut request = tonic::Request::new(award);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    ledger.award(request).await.expect("award");

    // Its spans arrive: the RPC's, a child of the caller's, with the database calls under it.
    let mut found = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let spans = receiver.0.lock().unwrap().clone();
        let ours: Vec<Span> = spans
            .into_iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect();
        let rpc = ours
            .iter()
            .find(|s| s.name == "flash.loyalty.v1.Ledger/Award")
            .cloned();
        if let Some(rpc) = rpc {
            // Its descendants: the spans whose chain of parents leads to it.
            let mut tree = vec![rpc.span_id.clone()];
            let mut descendants: Vec<Span> = Vec::new();
            loop {
                let next: Vec<Span> = ours
                    .iter()
                    .filter(|s| tree.contains(&s.parent_span_id) && !tree.contains(&s.span_id))
                    .cloned()
                    .collect();
                if next.is_empty() {
                    break;
                }
                tree.extend(next.iter().map(|s| s.span_id.clone()));
                descendants.extend(next);
            }
            if descendants.iter().any(|s| s.name == "postgres") {
                found = Some((rpc, descendants));
                break;
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let (rpc, children) = found.unwrap_or_else(|| {
        let spans = receiver.0.lock().unwrap().clone();
        let seen: Vec<(String, String, String)> = spans
            .iter()
            .map(|s| (s.name.clone(), hex(&s.trace_id), hex(&s.parent_span_id)))
            .collect();
        panic!("the award's span tree never arrived; spans seen: {seen:?}")
    });
    assert_eq!(hex(&rpc.parent_span_id), caller_span);
    assert_eq!(attribute(&rpc, "program_id").as_deref(), Some(PROGRAM));
    assert_eq!(
        attribute(&rpc, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let operations: Vec<String> = children
        .iter()
        .filter(|s| s.name == "postgres")
        .filter_map(|s| attribute(s, "db.operation"))
        .collect();
    assert!(
        operations.iter().any(|op| op.starts_with("member_tx::")),
        "{operations:?}"
    );
    // No contact, birthday or secret in any attribute.
    for span in std::iter::once(&rpc).chain(&children) {
        for kv in &span.attributes {
            let value = format!("{:?}", kv.value);
            assert!(!value.contains(TEST_CONTACT_KEY), "{kv:?}");
        }
    }
}
