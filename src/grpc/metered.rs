//! A tower layer on the gRPC server that counts every call and times it, by method and
//! status code, once for every service (`flash_rpc_*` in [`crate::telemetry::metrics`]).
use super::around::{Answer, Around, Inner};
use std::time::Instant;
use tonic::codegen::http;
use tonic::Code;

/// Records each call when its response head is sent: the unary call's answer (its handler
/// has finished by then), or the start of a stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metered;

impl<B, R> Around<B, R> for Metered {
    fn around<S: Inner<B, R>>(
        &self,
        request: http::Request<B>,
        mut inner: S,
    ) -> Answer<R, S::Error> {
        let method = method_label(request.uri().path());
        let started = Instant::now();
        let future = inner.call(request);
        Box::pin(async move {
            let answered = future.await;
            let code = match &answered {
                Ok(response) => response_code(response),
                Err(_) => Code::Unknown,
            };
            crate::telemetry::metrics::rpc_answered(&method, code_label(code), started.elapsed());
            answered
        })
    }
}

/// The services whose methods are labelled by name; any other path (a caller probing
/// random paths) is `other`, so the label set stays bounded.
const KNOWN_PACKAGES: &[&str] = &["flash.loyalty.v1.", "grpc.health.v1.", "grpc.reflection."];

/// `service/method` of a gRPC path, e.g. `flash.loyalty.v1.Ledger/Award`.
pub(crate) fn method_label(path: &str) -> String {
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    match (segments.next(), segments.next()) {
        (Some(service), Some(method))
            if !method.is_empty()
                && !method.contains('/')
                && KNOWN_PACKAGES.iter().any(|p| service.starts_with(p)) =>
        {
            format!("{service}/{method}")
        }
        _ => "other".into(),
    }
}

/// The call's status as the response head says it: `grpc-status` when the head carries it
/// (tonic puts it there when a unary handler fails), OK for an HTTP 200 head without it
/// (a unary success sends it in the trailers; a stream has started).
fn response_code<B>(response: &http::Response<B>) -> Code {
    match response.headers().get("grpc-status") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.parse::<i32>().ok())
            .map_or(Code::Unknown, Code::from_i32),
        None if response.status() == http::StatusCode::OK => Code::Ok,
        None => Code::Unknown,
    }
}

/// The canonical name of a code, as gRPC documents it.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_label_is_the_service_and_method_of_known_packages_only() {
        assert_eq!(
            method_label("/flash.loyalty.v1.Ledger/Award"),
            "flash.loyalty.v1.Ledger/Award"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/evil.Service/Anything"), "other");
        assert_eq!(method_label("/flash.loyalty.v1.Ledger/a/b"), "other");
        assert_eq!(method_label("/"), "other");
    }

    #[test]
    fn a_head_without_grpc_status_is_ok_only_when_http_200() {
        let ok = http::Response::builder().status(200).body(()).unwrap();
        assert_eq!(response_code(&ok), Code::Ok);
        let failed = http::Response::builder()
            .status(200)
            .header("grpc-status", "14")
            .body(())
            .unwrap();
        assert_eq!(response_code(&failed), Code::Unavailable);
        let broken = http::Response::builder().status(502).body(()).unwrap();
        assert_eq!(response_code(&broken), Code::Unknown);
    }
}
