//! The one place that reads PostgreSQL error codes.
use tokio_postgres::error::SqlState;

/// What a PostgreSQL error means to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbFailure {
    /// The database could not be reached or gave up on the statement (lock or statement
    /// timeout, shutdown, serialization failure): retrying the same request is right.
    Unavailable,
    /// A unique constraint or index refused the row; the name says which.
    UniqueViolation(String),
    /// A foreign key refused the row; the name says which.
    ForeignKeyViolation(String),
    /// Anything else is a bug or a broken invariant.
    Unexpected,
}

pub fn classify(error: &tokio_postgres::Error) -> DbFailure {
    let Some(db) = error.as_db_error() else {
        // No server answer: the connection failed or closed.
        return if error.is_closed() || error.code().is_none() {
            DbFailure::Unavailable
        } else {
            DbFailure::Unexpected
        };
    };
    let constraint = || db.constraint().unwrap_or_default().to_owned();
    match *db.code() {
        SqlState::UNIQUE_VIOLATION => DbFailure::UniqueViolation(constraint()),
        SqlState::FOREIGN_KEY_VIOLATION => DbFailure::ForeignKeyViolation(constraint()),
        SqlState::LOCK_NOT_AVAILABLE
        | SqlState::QUERY_CANCELED
        | SqlState::T_R_SERIALIZATION_FAILURE
        | SqlState::T_R_DEADLOCK_DETECTED
        | SqlState::ADMIN_SHUTDOWN
        | SqlState::CRASH_SHUTDOWN
        | SqlState::CANNOT_CONNECT_NOW
        | SqlState::TOO_MANY_CONNECTIONS
        | SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT => DbFailure::Unavailable,
        ref code if code.code().starts_with("08") => DbFailure::Unavailable,
        _ => DbFailure::Unexpected,
    }
}
