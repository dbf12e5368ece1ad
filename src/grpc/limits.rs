//! The gRPC server's limits as [`Around`] layers, wired in `app.rs` inside the span and the
//! metering (so a refused call is traced and counted like any other):
//!
//! - [`MessageSize`]: a request message over FLASH_MAX_MESSAGE_BYTES (each service
//!   refuses it with `max_decoding_message_size`, as tonic's OUT_OF_RANGE "Error, decoded
//!   message length too large") is answered RESOURCE_EXHAUSTED, reason
//!   `MESSAGE_TOO_LARGE`, with the limit in bytes. The handler never ran: nothing written.
//! - [`InFlight`]: at most FLASH_MAX_IN_FLIGHT calls at once. A call that finds no
//!   free permit is refused at once, UNAVAILABLE, reason `OVERLOADED` with
//!   `google.rpc.RetryInfo`: load is shed before the database pool saturates. The permit
//!   is held until the response head: the whole of a unary call, the handler of a stream
//!   (Events.Subscribe) but not the stream it returns. Health checks are never shed.
//! - [`Deadline`]: a call gets FLASH_DEFAULT_DEADLINE_MS, or the caller's
//!   `grpc-timeout` when shorter; past it the caller is answered DEADLINE_EXCEEDED. Only
//!   the wait ends: a unit of work already spawned (`run_to_completion`) still commits or
//!   rolls back. (tonic's own `Server::timeout` answers CANCELLED, outside every layer, so
//!   neither the span nor the metrics would see the call; this one sits inside both.)
use super::around::{Answer, Around, Inner};
use crate::service::Error;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::codegen::http;
use tonic::{Code, Status};

/// The paths never shed: a probe must see an overloaded server as alive.
const NEVER_SHED: &[&str] = &["/grpc.health.v1.Health/"];

/// Answers tonic's "decoded message length too large" as RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy)]
pub struct MessageSize {
    max_bytes: usize,
}

impl MessageSize {
    /// `max_bytes`: the limit the services were given, said in the answer.
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl<B, R> Around<B, R> for MessageSize {
    fn around<S: Inner<B, R>>(
        &self,
        request: http::Request<B>,
        mut inner: S,
    ) -> Answer<R, S::Error> {
        let future = inner.call(request);
        let max_bytes = self.max_bytes;
        Box::pin(async move {
            let mut response = future.await?;
            // A refused request is answered "trailers-only": the status is in the head.
            if let Some(status) = Status::from_header_map(response.headers()) {
                if is_too_large(&status) {
                    let headers = response.headers_mut();
                    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
                        headers.remove(name);
                    }
                    if let Err(status) = too_large(max_bytes).add_header(headers) {
                        tracing::error!(%status, "could not rewrite an oversize message's status");
                    }
                }
            }
            Ok(response)
        })
    }
}

/// tonic's refusal of a message over `max_decoding_message_size`.
fn is_too_large(status: &Status) -> bool {
    status.code() == Code::OutOfRange
        && status
            .message()
            .starts_with("Error, decoded message length too large")
}

/// RESOURCE_EXHAUSTED, reason MESSAGE_TOO_LARGE, the limit in the message and metadata.
pub fn too_large(max_bytes: usize) -> Status {
    Status::from(Error::MessageTooLarge {
        limit_bytes: max_bytes,
    })
}

/// Ends the wait for a call's answer at its deadline: the caller's `grpc-timeout` or the
/// default, whichever is shorter.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    default: Duration,
}

impl Deadline {
    pub fn new(default: Duration) -> Self {
        Self { default }
    }
}

impl<B, R: Default + Send + 'static> Around<B, R> for Deadline {
    fn around<S: Inner<B, R>>(
        &self,
        request: http::Request<B>,
        mut inner: S,
    ) -> Answer<R, S::Error> {
        let deadline =
            grpc_timeout(request.headers()).map_or(self.default, |asked| asked.min(self.default));
        let future = inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(deadline, future).await {
                Ok(answered) => answered,
                Err(_) => Ok(deadline_exceeded(deadline).into_http::<R>()),
            }
        })
    }
}

/// The caller's `grpc-timeout`: 1 to 8 digits and a unit (H, M, S, m, u, n). None when
/// absent or malformed (the default applies).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match value.as_bytes().last()? {
        b'H' => Duration::from_secs(amount.checked_mul(3600)?),
        b'M' => Duration::from_secs(amount.checked_mul(60)?),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// DEADLINE_EXCEEDED, saying that work already started may still complete.
pub fn deadline_exceeded(deadline: Duration) -> Status {
    Status::from(Error::DeadlineExceeded {
        deadline_ms: deadline.as_millis(),
    })
}

/// At most `max` calls served at once; the others refused at once (load shedding).
#[derive(Debug, Clone)]
pub struct InFlight {
    permits: Arc<Semaphore>,
    max: usize,
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Permits free now (for tests and the curious).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

impl<B: Send + 'static, R: Default + Send + 'static> Around<B, R> for InFlight {
    fn around<S: Inner<B, R>>(
        &self,
        request: http::Request<B>,
        mut inner: S,
    ) -> Answer<R, S::Error> {
        let path = request.uri().path();
        if NEVER_SHED.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(inner.call(request));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Box::pin(async move {
                let answered = inner.call(request).await;
                drop(permit);
                answered
            }),
            Err(_) => {
                crate::telemetry::metrics::rpc_shed(&super::metered::method_label(path));
                let response = overloaded(self.max).into_http::<R>();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

/// UNAVAILABLE, reason OVERLOADED, with RetryInfo: the server is shedding load.
pub fn overloaded(max: usize) -> Status {
    Status::from(Error::Overloaded { max_in_flight: max })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tonic_types::StatusExt;
    use tower::{Layer, Service};

    #[test]
    fn only_tonics_oversize_refusal_is_rewritten() {
        assert!(is_too_large(&Status::out_of_range(
            "Error, decoded message length too large: found 2000000 bytes, the limit is: 1048576 bytes"
        )));
        assert!(!is_too_large(&Status::out_of_range("cursor expired")));
        let status = too_large(1024);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("1024 bytes"),
            "{}",
            status.message()
        );
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "MESSAGE_TOO_LARGE");
        assert_eq!(info.metadata["limit_bytes"], "1024");
    }

    #[test]
    fn grpc_timeout_is_read_in_every_unit_and_malformed_ones_are_ignored() {
        let timeout = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_call_past_the_limit_is_shed_and_health_never_is() {
        let (release, released) = tokio::sync::watch::channel(false);
        let slow = tower::service_fn(move |_: http::Request<()>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, Infallible>(http::Response::new(String::new()))
            }
        });
        let in_flight = InFlight::new(1);
        let mut service = crate::grpc::around::layer(in_flight.clone()).layer(slow);
        let request = |path: &str| http::Request::builder().uri(path).body(()).unwrap();
        let first = tokio::spawn(service.call(request("/flash.loyalty.v1.Ledger/Award")));
        tokio::task::yield_now().await;
        assert_eq!(in_flight.available(), 0);
        let shed = service
            .call(request("/flash.loyalty.v1.Ledger/Award"))
            .await
            .unwrap();
        let status = Status::from_header_map(shed.headers()).unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.get_error_details().retry_info().is_some());
        let health = tokio::spawn(service.call(request("/grpc.health.v1.Health/Check")));
        release.send(true).unwrap();
        assert!(Status::from_header_map(health.await.unwrap().unwrap().headers()).is_none());
        first.await.unwrap().unwrap();
        assert_eq!(in_flight.available(), 1);
    }
}
