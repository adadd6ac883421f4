//! problem+json (RFC 9457): the one place where errors become HTTP responses.

use agentdesk_core::{Error, FieldError};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI that names the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Stable machine-readable code (`invalid_credentials`, `validation_failed`, ...).
    pub code: String,
    /// The request's id, as in the `X-Request-Id` header and the logs.
    pub request_id: String,
    /// Invalid fields, for `validation_failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// The error type of every handler: a core error, or an HTTP-level one.
#[derive(Debug)]
pub enum ApiError {
    /// A core error (status decided here).
    Core(Error),
    /// An error of the HTTP layer itself (bad JSON, wrong media type, ...).
    Http {
        /// Status to answer.
        status: StatusCode,
        /// Stable code.
        code: &'static str,
        /// What went wrong.
        detail: String,
    },
}

impl ApiError {
    /// An HTTP-level error.
    pub fn http(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Http {
            status,
            code,
            detail: detail.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Core(e)
    }
}

/// The status of a core error.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::InvalidCredentials
        | Error::InvalidToken(_)
        | Error::MfaRequired
        | Error::InvalidMfaCode => StatusCode::UNAUTHORIZED,
        Error::AccountDisabled | Error::Forbidden(_) | Error::SessionRequired => {
            StatusCode::FORBIDDEN
        }
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Unavailable(_) | Error::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Config { .. } | Error::Database(_) | Error::Internal(_) | Error::Backup(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// Builds a problem+json response for the request being handled.
pub fn problem_response(
    status: StatusCode,
    code: &str,
    detail: String,
    errors: Option<Vec<FieldError>>,
) -> Response {
    let title = status.canonical_reason().unwrap_or("Error").to_owned();
    let body = Problem {
        kind: format!("https://agentdesk.dev/problems/{}", code.replace('_', "-")),
        title,
        status: status.as_u16(),
        detail,
        code: code.to_owned(),
        request_id: super::current_request_id(),
        errors,
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Http {
                status,
                code,
                detail,
            } => problem_response(status, code, detail, None),
            ApiError::Core(e) => {
                let status = status_of(&e);
                let detail =
                    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
                        // Internal causes go to the log, never into a response.
                        tracing::error!(error = %e, "request failed");
                        "an internal error occurred; the request id identifies it in the logs"
                            .to_owned()
                    } else {
                        if status == StatusCode::SERVICE_UNAVAILABLE {
                            tracing::warn!(error = %e, "dependency unavailable");
                        }
                        match &e {
                            Error::Unavailable(_) => {
                                "a dependency of the service is unavailable; try again shortly"
                                    .to_owned()
                            }
                            Error::DatabaseUnavailable(_) => {
                                "the database is unavailable; try again shortly".to_owned()
                            }
                            Error::Validation(_) => "one or more fields are invalid".to_owned(),
                            other => other.to_string(),
                        }
                    };
                let retry_after = match &e {
                    Error::RateLimited { retry_after_secs } => Some(*retry_after_secs),
                    Error::DatabaseUnavailable(_) => Some(1),
                    _ => None,
                };
                let database_unreachable = matches!(e, Error::DatabaseUnavailable(_));
                let code = e.code();
                let errors = match e {
                    Error::Validation(errors) => Some(errors),
                    _ => None,
                };
                let mut response = problem_response(status, code, detail, errors);
                if let Some(secs) = retry_after
                    && let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string())
                {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                if database_unreachable {
                    // For the layer that stops sending requests to a database that is down.
                    response.extensions_mut().insert(DatabaseUnreachable);
                }
                response
            }
        }
    }
}

/// Marks a response whose request found the database out of reach.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseUnreachable;

/// The result type of handlers.
pub type ApiResult<T> = std::result::Result<T, ApiError>;
