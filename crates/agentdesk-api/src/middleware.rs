//! The request pipeline's own layers: request ids, access logs, metrics, security headers, and
//! the net that turns any error response without a problem+json body (axum's 404/405, a body
//! limit, a timeout, a caught panic) into one.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use uuid::Uuid;

use crate::problem::{PROBLEM_JSON, problem_response};

use agentdesk_agent_sdk::http::with_request_id;
pub use agentdesk_agent_sdk::http::{RequestId, X_REQUEST_ID, current_request_id};

/// The route template that matched, carried on the response from the inner layer to the outer.
#[derive(Debug, Clone)]
struct RouteTemplate(String);

/// An incoming id is kept if it is 1..=128 safe characters; otherwise one is generated.
fn accept_request_id(value: Option<&HeaderValue>) -> Option<String> {
    let value = value?.to_str().ok()?;
    let safe = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '+' | '=')
        });
    safe.then(|| value.to_owned())
}

/// Outermost layer: assigns the request id, logs the request, records metrics, adds security
/// headers and makes every error body problem+json.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let id = accept_request_id(req.headers().get(&X_REQUEST_ID))
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let is_api = path.starts_with("/api/");
    let is_docs = path.starts_with("/docs");
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        path = %path,
        user_id = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = with_request_id(id.clone(), next.run(req).instrument(span.clone())).await;
    let mut response = with_request_id(id.clone(), ensure_problem(response)).await;
    let elapsed = started.elapsed();
    let status = response.status();
    let route = response
        .extensions()
        .get::<RouteTemplate>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".into());
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        // A 503 from /readyz is the answer asked for (draining, a dependency down: the readiness
        // check logs why), not a failure of the request.
        if status.is_server_error() && path != "/readyz" {
            tracing::error!(status = status.as_u16(), latency_ms, "request finished");
        } else if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), latency_ms, "request finished");
        } else {
            tracing::info!(status = status.as_u16(), latency_ms, "request finished");
        }
    });

    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !is_docs {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    if is_api && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The database's circuit breaker for `/api` requests: while the database is known to be out of
/// reach they get 503 `database_unavailable` at once (with `Retry-After: 1`) instead of each
/// waiting out the pool's timeout; a response that found it out of reach trips the breaker, and
/// the database's probe closes it again when a ping succeeds (no restart needed).
pub async fn database_breaker(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    req: Request,
    next: Next,
) -> Response {
    if !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let db = &state.core.db;
    if db.is_down() {
        return crate::problem::ApiError::Core(agentdesk_core::Error::DatabaseUnavailable(
            "the breaker is open".into(),
        ))
        .into_response();
    }
    let response = next.run(req).await;
    if response
        .extensions()
        .get::<crate::problem::DatabaseUnreachable>()
        .is_some()
    {
        db.report_unreachable();
    }
    response
}

/// Inner (route) layer: notes which route template matched, for metrics by route.
pub async fn note_route(req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let mut response = next.run(req).await;
    if let Some(template) = template {
        response.extensions_mut().insert(RouteTemplate(template));
    }
    response
}

fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        StatusCode::GATEWAY_TIMEOUT => "timeout",
        s if s.is_server_error() => "internal_error",
        _ => "error",
    }
}

fn detail_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "no such route or resource",
        StatusCode::METHOD_NOT_ALLOWED => {
            "this route does not allow the method; see the Allow header"
        }
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large",
        StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => {
            "the request took too long; try again"
        }
        s if s.is_server_error() => {
            "an internal error occurred; the request id identifies it in the logs"
        }
        _ => "the request could not be processed",
    }
}

async fn ensure_problem(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON));
    if is_problem {
        return response;
    }
    let (parts, _body) = response.into_parts();
    let mut fresh = problem_response(
        status,
        code_for(status),
        detail_for(status).to_owned(),
        None,
    );
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            fresh.headers_mut().insert(name, value.clone());
        }
    }
    if status.is_server_error() {
        tracing::error!(
            status = status.as_u16(),
            "error response without a problem body was replaced"
        );
    }
    fresh.extensions_mut().extend(parts.extensions);
    fresh
}

/// Turns a caught panic into a plain 500 (the problem net above gives it its body).
pub fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}
