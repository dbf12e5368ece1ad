//! Every RPC in one span (`rpc`): its method, program (recorded by the codec from the
//! request's `program_id`, field 1 of every request), gRPC status code and duration; the
//! caller's W3C `traceparent` continued when it sends one. Member ids appear only as ids;
//! contacts, birthdays and secrets never reach a span. The database and Redis calls under it
//! are its children (`postgres`, `redis` spans of the store and the cap).
use super::around::{Answer, Around, Inner};
use opentelemetry::propagation::Extractor;
use std::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Puts each call in its span.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpan;

impl<B, R: Send + 'static> Around<B, R> for RpcSpan {
    fn around<S: Inner<B, R>>(
        &self,
        request: http::Request<B>,
        mut inner: S,
    ) -> Answer<R, S::Error> {
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let span = tracing::info_span!(
            "rpc",
            otel.name = %method,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.method = %method,
            program_id = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Headers(request.headers()))
        });
        let _ = span.set_parent(parent);
        let started = Instant::now();
        let future = inner.call(request);
        let recorded = span.clone();
        Box::pin(
            async move {
                let response = future.await;
                // An error answered by a handler is "trailers-only": its grpc-status is in
                // the headers. A success carries it in the trailers, after the body: 0.
                let code = match &response {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<i32>().ok())
                        .unwrap_or(0),
                    Err(_) => tonic::Code::Internal as i32,
                };
                recorded.record("rpc.grpc.status_code", code);
                recorded.record("duration_ms", started.elapsed().as_secs_f64() * 1e3);
                if server_fault(code) {
                    recorded.record("otel.status_code", "ERROR");
                }
                response
            }
            .instrument(span),
        )
    }
}

/// The codes that say the server failed, not the caller (OpenTelemetry's rule for servers).
fn server_fault(code: i32) -> bool {
    use tonic::Code;
    [
        Code::Unknown,
        Code::DeadlineExceeded,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
    ]
    .iter()
    .any(|c| *c as i32 == code)
}

/// Records the request's program on the current RPC span.
pub fn record_program(program_id: &str) {
    tracing::Span::current().record("program_id", program_id);
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}
