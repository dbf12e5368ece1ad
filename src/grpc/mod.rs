//! The gRPC transport: converts proto ↔ domain, calls the service, maps errors. No SQL.
pub mod codec;
mod ledger;
mod programs;

pub use ledger::LedgerApi;
pub use programs::ProgramsApi;

use crate::domain::InvalidField;
use crate::service::Error;
use chrono::{DateTime, Utc};
use tonic::{Code, Status};

/// The generated code of `flash.loyalty.v1`.
pub mod proto {
    tonic::include_proto!("flash.loyalty.v1");

    /// The encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/flash_descriptor.bin"));
}

/// The one mapping from service errors to gRPC codes. Unexpected errors are logged with
/// their cause chain and answered with an opaque message.
impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = code_of(&error);
        if let Error::Unexpected(cause) = &error {
            tracing::error!(error = format!("{cause:#}"), "unexpected error");
            return Status::internal("internal error");
        }
        Status::new(code, error.to_string())
    }
}

/// The gRPC code an error maps to.
pub fn code_of(error: &Error) -> Code {
    match error {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Unavailable(_) => Code::Unavailable,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::Unexpected(_) => Code::Internal,
    }
}

/// A figure computed in i128 (a sum across rows) as the int64 field `field` answers it;
/// OUT_OF_RANGE naming the field and the exact figure when it does not fit.
fn int64(field: &str, figure: i128) -> Result<i64, Error> {
    i64::try_from(figure).map_err(|_| {
        Error::OutOfRange(format!(
            "{field}: the total {figure} does not fit an int64 (at most {}); nothing is wrong \
             with the request, the figure is too large to answer",
            i64::MAX
        ))
    })
}

/// The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
/// Everything outside it is refused here, before PostgreSQL would fail on it.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A required timestamp field.
fn required_time(
    field: &str,
    value: Option<prost_types::Timestamp>,
) -> Result<DateTime<Utc>, InvalidField> {
    optional_time(field, value)?.ok_or_else(|| InvalidField::new(field, "is required"))
}

/// An optional timestamp field, checked to be a real instant.
fn optional_time(
    field: &str,
    value: Option<prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, InvalidField> {
    let Some(timestamp) = value else {
        return Ok(None);
    };
    let nanos = u32::try_from(timestamp.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000);
    let seconds = Some(timestamp.seconds).filter(|seconds| TIMESTAMP_SECONDS.contains(seconds));
    seconds
        .zip(nanos)
        .and_then(|(seconds, nanos)| DateTime::from_timestamp(seconds, nanos))
        .map(Some)
        .ok_or_else(|| {
            InvalidField::new(
                field,
                "is not a valid timestamp (years 0001 to 9999, nanos 0 to 999999999)",
            )
        })
}

fn timestamp(instant: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: instant.timestamp(),
        nanos: i32::try_from(instant.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
