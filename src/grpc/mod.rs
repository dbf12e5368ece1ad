//! The gRPC transport: converts proto ↔ domain, calls the service, maps errors. No SQL.
pub mod around;
pub mod auth;
pub mod codec;
mod events;
pub mod graph;
mod ledger;
pub mod limits;
pub mod metered;
pub mod observe;
mod programs;
mod referrals;
mod tiers;
pub mod tls;

pub use events::EventsApi;
pub use graph::GraphApi;
pub use ledger::LedgerApi;
pub use programs::ProgramsApi;
pub use referrals::ReferralsApi;
pub use tiers::TiersApi;

use crate::domain::InvalidField;
use crate::service::{Error, Unavailable};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The generated code of `flash.loyalty.v1`.
pub mod proto {
    tonic::include_proto!("flash.loyalty.v1");

    /// The encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/flash_descriptor.bin"));
}

/// The `google.rpc.ErrorInfo` domain of every reason below.
pub const ERROR_DOMAIN: &str = "flash.loyalty.v1";

/// How long a caller should wait before retrying a request refused as UNAVAILABLE.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a caller shed under load should wait before retrying.
const SHED_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// The one mapping from service errors to gRPC statuses: a code, a message a person can
/// act on, and details a program can: `google.rpc.ErrorInfo` with a reason (listed in the
/// README) and metadata, `BadRequest` field violations for an invalid field, `RetryInfo`
/// when retrying with the same key is right. Unexpected errors are logged with their cause
/// chain and answered with an opaque message.
impl From<Error> for Status {
    fn from(error: Error) -> Self {
        if let Error::Unexpected(cause) = &error {
            tracing::error!(error = format!("{cause:#}"), "unexpected error");
            return Status::internal("internal error");
        }
        let (code, reason) = code_and_reason(&error);
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, ERROR_DOMAIN, error_metadata(&error));
        match &error {
            Error::InvalidArgument(invalid) => {
                details.add_bad_request_violation(&invalid.field, &invalid.message);
            }
            Error::Unavailable(_) => {
                details.set_retry_info(Some(RETRY_AFTER));
            }
            Error::Overloaded { .. } => {
                details.set_retry_info(Some(SHED_RETRY_AFTER));
            }
            Error::InviteQuotaExceeded {
                retry_after: Some(after),
                ..
            }
            | Error::RateLimited {
                retry_after: after, ..
            } => {
                details.set_retry_info(Some(*after));
            }
            _ => {}
        }
        Status::with_error_details(code, error.to_string(), details)
    }
}

/// The gRPC code an error maps to.
pub fn code_of(error: &Error) -> Code {
    code_and_reason(error).0
}

/// The machine-readable reason of an error (`google.rpc.ErrorInfo.reason`).
pub fn reason_of(error: &Error) -> &'static str {
    code_and_reason(error).1
}

fn code_and_reason(error: &Error) -> (Code, &'static str) {
    match error {
        Error::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_FIELD"),
        Error::ProgramNotFound { .. } => (Code::NotFound, "PROGRAM_NOT_FOUND"),
        Error::MemberNotFound { .. } => (Code::NotFound, "MEMBER_NOT_FOUND"),
        Error::EntryNotFound { .. } => (Code::NotFound, "ENTRY_NOT_FOUND"),
        Error::KeyReused { .. } => (Code::AlreadyExists, "KEY_REUSED"),
        Error::KeyRaced => (Code::AlreadyExists, "KEY_RACED"),
        Error::PurchaseAlreadyAwarded { .. } | Error::PurchaseRaced => {
            (Code::AlreadyExists, "PURCHASE_ALREADY_AWARDED")
        }
        Error::ProgramExists { .. } => (Code::AlreadyExists, "PROGRAM_EXISTS"),
        Error::InsufficientPoints { .. } => (Code::FailedPrecondition, "INSUFFICIENT_POINTS"),
        Error::NothingLeftToReverse { .. } => (Code::FailedPrecondition, "NOTHING_LEFT_TO_REVERSE"),
        Error::ReversalExceedsRemaining { .. } => {
            (Code::FailedPrecondition, "REVERSAL_EXCEEDS_REMAINING")
        }
        Error::BalanceOverflow => (Code::FailedPrecondition, "BALANCE_OVERFLOW"),
        Error::StaleRulesVersion { .. } => (Code::FailedPrecondition, "STALE_RULES_VERSION"),
        Error::FigureOutOfRange { .. } => (Code::OutOfRange, "FIGURE_OUT_OF_RANGE"),
        Error::CursorExpired { .. } => (Code::OutOfRange, "CURSOR_EXPIRED"),
        Error::InviteNotFound { .. } => (Code::NotFound, "INVITE_NOT_FOUND"),
        Error::InviteQuotaExceeded { .. } => (Code::ResourceExhausted, "INVITE_QUOTA_EXCEEDED"),
        Error::InviteNotOpen { .. } => (Code::FailedPrecondition, "INVITE_NOT_OPEN"),
        Error::ReferralRefused(refusal) => (Code::FailedPrecondition, refusal.reason()),
        Error::ContactTaken { .. } => (Code::AlreadyExists, "CONTACT_TAKEN"),
        Error::GraphSnapshotNotFound { .. } => (Code::NotFound, "GRAPH_SNAPSHOT_NOT_FOUND"),
        Error::NotInGraph { .. } => (Code::NotFound, "MEMBER_NOT_IN_GRAPH"),
        Error::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
        Error::ScopeMissing { .. } => (Code::PermissionDenied, "SCOPE_MISSING"),
        Error::RateLimited { .. } => (Code::ResourceExhausted, "RATE_LIMITED"),
        Error::MessageTooLarge { .. } => (Code::ResourceExhausted, "MESSAGE_TOO_LARGE"),
        Error::Overloaded { .. } => (Code::Unavailable, "OVERLOADED"),
        Error::DeadlineExceeded { .. } => (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
        Error::ClientExists { .. } => (Code::AlreadyExists, "CLIENT_EXISTS"),
        Error::ClientNotFound { .. } => (Code::NotFound, "CLIENT_NOT_FOUND"),
        Error::Unavailable(Unavailable::DailyCap) => (Code::Unavailable, "DAILY_CAP_UNAVAILABLE"),
        Error::Unavailable(_) => (Code::Unavailable, "DATABASE_UNAVAILABLE"),
        Error::Unexpected(_) => (Code::Internal, "INTERNAL"),
    }
}

/// What a program needs to act on a refusal without parsing its message.
fn error_metadata(error: &Error) -> HashMap<String, String> {
    let pairs: Vec<(&str, String)> = match error {
        Error::InvalidArgument(invalid) => vec![("field", invalid.field.clone())],
        Error::ProgramNotFound { program } | Error::GraphSnapshotNotFound { program } => {
            vec![("program_id", program.to_string())]
        }
        Error::NotInGraph {
            member,
            snapshot_date,
        } => vec![
            ("member_id", member.to_string()),
            ("snapshot_date", snapshot_date.to_string()),
        ],
        Error::MemberNotFound { program, member } => vec![
            ("program_id", program.to_string()),
            ("member_id", member.to_string()),
        ],
        Error::EntryNotFound { reference, .. } => vec![("entry", reference.clone())],
        Error::KeyReused {
            entry,
            differing_fields,
            ..
        } => vec![
            ("entry_id", entry.to_string()),
            ("differing_fields", differing_fields.join(",")),
        ],
        Error::PurchaseAlreadyAwarded { entry, .. } => vec![("entry_id", entry.to_string())],
        Error::ProgramExists {
            differing_fields, ..
        } => vec![("differing_fields", differing_fields.join(","))],
        Error::InsufficientPoints {
            balance_points,
            requested_points,
        } => vec![
            ("balance_points", balance_points.to_string()),
            ("requested_points", requested_points.to_string()),
        ],
        Error::ReversalExceedsRemaining { left_points, .. } => {
            vec![("left_points", left_points.to_string())]
        }
        Error::StaleRulesVersion { current, .. } => {
            vec![("current_rules_version", current.to_string())]
        }
        Error::CursorExpired {
            program,
            retention_days,
        } => vec![
            ("program_id", program.to_string()),
            ("retention_days", retention_days.to_string()),
        ],
        Error::FigureOutOfRange { field, .. } => vec![("field", field.clone())],
        Error::InviteQuotaExceeded {
            quota,
            limit,
            remaining,
            ..
        } => vec![
            ("quota", (*quota).to_owned()),
            ("limit", limit.to_string()),
            ("remaining", remaining.to_string()),
        ],
        Error::InviteNotOpen { status, .. } => vec![("status", (*status).to_owned())],
        Error::MessageTooLarge { limit_bytes } => vec![("limit_bytes", limit_bytes.to_string())],
        Error::Overloaded { max_in_flight } => {
            vec![("max_in_flight", max_in_flight.to_string())]
        }
        Error::ScopeMissing { client, needs } => {
            vec![("client", client.clone()), ("scope", needs.clone())]
        }
        Error::RateLimited {
            client,
            rate_per_second,
            ..
        } => vec![
            ("client", client.clone()),
            ("rate_per_second", rate_per_second.to_string()),
        ],
        Error::ContactTaken { index } => vec![("field", format!("contacts[{index}]"))],
        _ => vec![],
    };
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

/// A figure computed in i128 (a sum across rows) as the int64 field `field` answers it;
/// OUT_OF_RANGE naming the field and the exact figure when it does not fit.
fn int64(field: &str, figure: i128) -> Result<i64, Error> {
    i64::try_from(figure).map_err(|_| Error::FigureOutOfRange {
        field: field.to_owned(),
        value: figure,
    })
}

/// The size and position of a page request: `page_size` 1 to 200 (0: 50) and the token
/// of the previous page (a positive sequence number this API returned; empty: the first).
fn page_request(page_size: i32, page_token: &str) -> Result<(usize, Option<i64>), Error> {
    let size = match page_size {
        0 => 50,
        size @ 1..=200 => usize::try_from(size).unwrap_or(50),
        _ => return Err(Error::invalid("page_size", "must be between 0 and 200")),
    };
    if page_token.is_empty() {
        return Ok((size, None));
    }
    let seq = page_token
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq > 0)
        .ok_or_else(|| Error::invalid("page_token", "is not a token this API returned"))?;
    Ok((size, Some(seq)))
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
