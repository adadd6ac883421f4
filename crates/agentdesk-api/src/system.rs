//! System routes (no auth): health, readiness, version, metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extractors::AppJson;
use crate::problem::{Problem, problem_response};

/// The system routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .routes(routes!(version))
        .routes(routes!(metrics))
}

/// A status answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok`.
    pub status: &'static str,
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "Alive", body = Status)))]
async fn healthz() -> AppJson<Status> {
    AppJson(Status { status: "ok" })
}

/// 200 while the process runs and its runtime answers (liveness: restart the process when not).
#[utoipa::path(get, path = "/livez", tag = "system", responses((status = 200, description = "Alive", body = Status)))]
async fn livez() -> AppJson<Status> {
    AppJson(Status { status: "ok" })
}

/// 200 when the database (and Redis, if configured) answer; else 503 naming the failed check,
/// or 503 `draining` from the moment the process was asked to stop (SIGTERM), so that a proxy
/// sends no new requests while in-flight ones finish.
#[utoipa::path(get, path = "/readyz", tag = "system", responses(
    (status = 200, description = "Ready", body = Status),
    (status = 503, description = "Draining, or a dependency does not answer", body = Problem, content_type = "application/problem+json"),
))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return problem_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this instance is shutting down and takes no new requests".into(),
            None,
        );
    }
    match state.core.ready().await {
        Ok(()) => AppJson(Status { status: "ok" }).into_response(),
        Err((check, error)) => {
            tracing::warn!(check, %error, "readiness check failed");
            problem_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("the {check} check failed"),
                None,
            )
        }
    }
}

/// The build's version.
#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    /// The semantic version.
    pub version: &'static str,
    /// The git commit it was built from, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_sha: Option<&'static str>,
    /// The schema this build migrates to: its last migration.
    pub schema_version: String,
    /// The database's schema: its last applied migration. Newer than `schema_version` while a
    /// newer release serves beside this one (its migrations only add); absent when the database
    /// does not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_schema_version: Option<String>,
}

/// The version of this build and the schema versions of the build and the database.
#[utoipa::path(get, path = "/version", tag = "system", responses((status = 200, description = "Version", body = Version)))]
async fn version(State(state): State<AppState>) -> AppJson<Version> {
    let database_schema_version = match state.core.db.applied_migrations().await {
        Ok(applied) => applied.last().cloned(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the database's schema version");
            None
        }
    };
    AppJson(Version {
        version: env!("CARGO_PKG_VERSION"),
        git_sha: option_env!("AGENTDESK_GIT_SHA"),
        schema_version: agentdesk_core::migration::schema_version(),
        database_schema_version,
    })
}

/// Prometheus metrics: requests and latency by route and status, pool use.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let (open, idle) = state.core.db.pool_stats();
    metrics::gauge!("db_pool_connections").set(open as f64);
    metrics::gauge!("db_pool_idle_connections").set(idle as f64);
    metrics::gauge!("db_pool_in_use_connections").set(open.saturating_sub(idle) as f64);
    if let Ok(depths) = state.core.queue_depths().await {
        for (agent, depth) in depths {
            metrics::gauge!("jobs_queued", "agent" => agent.clone()).set(depth.queued as f64);
            metrics::gauge!("jobs_running", "agent" => agent.clone()).set(depth.running as f64);
            metrics::gauge!("jobs_failed", "agent" => agent).set(depth.failed as f64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
