//! The core's error type. Every variant carries a stable machine-readable code; the HTTP layer
//! decides the status. Internal causes are kept for the log and never shown to a client.

use serde::Serialize;

/// One invalid field of a request, as listed in problem+json `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field's name as the client sent it (dotted for nested fields).
    pub field: String,
    /// What is wrong with it, in words.
    pub message: String,
}

impl FieldError {
    /// A field error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Well-formed input that breaks a rule; the fields say which.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// A malformed parameter or value that is not a single field's fault.
    #[error("{0}")]
    BadRequest(String),
    /// Wrong email or password (never says which).
    #[error("invalid email or password")]
    InvalidCredentials,
    /// A correct password for a deactivated account.
    #[error("this account is disabled")]
    AccountDisabled,
    /// The password was right, but the account has a second factor and no code came with it.
    #[error(
        "this account has a second factor: send `code` (a TOTP or a recovery code) with the password"
    )]
    MfaRequired,
    /// The second factor's code was wrong, already used, or out of its time window.
    #[error("the second-factor code is not valid (wrong, already used, or expired)")]
    InvalidMfaCode,
    /// A missing, malformed, expired or revoked token.
    #[error("{0}")]
    InvalidToken(&'static str),
    /// Authenticated, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// An API key was used where only a user's session may act (the account's own settings).
    #[error("this route needs a user's session; API keys cannot use it")]
    SessionRequired,
    /// No such record (or one outside the caller's scope).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request clashes with the current state (a duplicate email, say).
    #[error("{0}")]
    Conflict(String),
    /// An `If-Match` precondition did not hold.
    #[error("the resource has changed since it was read")]
    PreconditionFailed,
    /// Too many attempts; try again after the given number of seconds.
    #[error("too many attempts, try again in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the limit resets.
        retry_after_secs: u64,
    },
    /// A dependency (database, Redis) did not answer.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Invalid configuration: names the key and what is wrong.
    #[error("configuration key `{key}`: {message}")]
    Config {
        /// The configuration key (e.g. `max_upload_mb`).
        key: String,
        /// What is wrong with its value.
        message: String,
    },
    /// The database could not be reached (refused, reset, shutting down, or no connection
    /// within the pool's timeout): the request may succeed once it is back.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    /// A database error that is not the client's fault.
    #[error("database error: {0}")]
    Database(sea_orm::DbErr),
    /// Anything else that is our fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// A backup, verification or restore failed; says why in words.
    #[error("{0}")]
    Backup(String),
}

impl Error {
    /// The stable, snake_case code clients can match on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Validation(_) => "validation_failed",
            Error::BadRequest(_) => "bad_request",
            Error::InvalidCredentials => "invalid_credentials",
            Error::AccountDisabled => "account_disabled",
            Error::MfaRequired => "mfa_required",
            Error::InvalidMfaCode => "invalid_mfa_code",
            Error::InvalidToken(_) => "invalid_token",
            Error::Forbidden(_) => "forbidden",
            Error::SessionRequired => "session_required",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::PreconditionFailed => "precondition_failed",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable(_) => "service_unavailable",
            Error::DatabaseUnavailable(_) => "database_unavailable",
            Error::Config { .. } => "invalid_configuration",
            Error::Database(_) | Error::Internal(_) => "internal_error",
            Error::Backup(_) => "backup_failed",
        }
    }

    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::Unavailable(_)
                | Error::DatabaseUnavailable(_)
                | Error::Database(_)
        )
    }

    /// A validation error with a single field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Validation(vec![FieldError::new(field, message)])
    }

    /// An internal error from anything displayable.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Error::Internal(cause.to_string())
    }
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps a unique-constraint violation to a conflict, by the constraint's name, so that the check
/// is the database's own and cannot race. `names` are matched against the driver's message:
/// PostgreSQL names the index (`ux_users_email_key`), SQLite the columns (`users.email_key`).
/// Other errors pass through unchanged.
pub fn map_unique(err: sea_orm::DbErr, names: &[&str], message: &str) -> Error {
    if let Some(sea_orm::SqlErr::UniqueConstraintViolation(detail)) = err.sql_err()
        && names.iter().any(|name| detail.contains(name))
    {
        return Error::Conflict(message.to_owned());
    }
    Error::from(err)
}

impl From<sea_orm::DbErr> for Error {
    /// Errors that mean the database is out of reach become [`Error::DatabaseUnavailable`]
    /// (503, retryable); every other database error stays internal.
    fn from(err: sea_orm::DbErr) -> Self {
        if is_unreachable(&err) {
            Error::DatabaseUnavailable(err.to_string())
        } else {
            Error::Database(err)
        }
    }
}

/// Whether `err` says the database could not be reached, rather than that a statement failed.
fn is_unreachable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    match err {
        // No connection within the pool's timeout: the server refuses connections (sqlx retries
        // a refused connect until this timeout), or every connection is busy.
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => sqlx_unreachable(e),
        DbErr::Conn(_) => true,
        _ => false,
    }
}

fn sqlx_unreachable(err: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as SqlxError;
    match err {
        SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::PoolTimedOut
        | SqlxError::PoolClosed
        | SqlxError::WorkerCrashed => true,
        // PostgreSQL's connection exceptions (class 08) and its shutdown and start-up answers
        // (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now).
        SqlxError::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};
    use std::sync::Arc;

    fn sqlx(e: sea_orm::sqlx::Error) -> RuntimeErr {
        RuntimeErr::SqlxError(Arc::new(e))
    }

    #[test]
    fn a_database_out_of_reach_is_a_503_and_a_failed_statement_is_not() {
        let gone = [
            DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
            DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
            DbErr::Query(sqlx(sea_orm::sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )))),
            DbErr::Exec(sqlx(sea_orm::sqlx::Error::PoolTimedOut)),
            DbErr::Conn(sqlx(sea_orm::sqlx::Error::PoolClosed)),
        ];
        for err in gone {
            let what = err.to_string();
            let e = Error::from(err);
            assert!(matches!(e, Error::DatabaseUnavailable(_)), "{what}");
            assert_eq!(e.code(), "database_unavailable");
            assert!(e.is_retryable());
        }
        let failed = [
            DbErr::RecordNotFound("x".into()),
            DbErr::Query(RuntimeErr::Internal("syntax".into())),
            DbErr::Query(sqlx(sea_orm::sqlx::Error::RowNotFound)),
            DbErr::Custom("bad".into()),
        ];
        for err in failed {
            let what = err.to_string();
            let e = Error::from(err);
            assert!(matches!(e, Error::Database(_)), "{what}");
            assert_eq!(e.code(), "internal_error");
        }
    }
}
