//! `/agents` and `/jobs`: the agents with their queues and health, and the jobs a caller may
//! see (their own; admins see all).

use agentdesk_core::models::job::Job;
use agentdesk_core::pagination::PageRequest;
use agentdesk_core::services::jobs::{JobFilter, QueueDepth};
use agentdesk_core::services::permissions::Actor;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::extractors::{AppJson, AppQuery, AuthUser, Meta};
use crate::problem::{ApiResult, Problem};
use crate::v1::users::parse_id;

/// The routes of `/agents` and `/jobs`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(agents))
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(cancel))
        .routes(routes!(retry))
}

/// An agent with its queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// The actions of its resource `agent:<name>`.
    pub actions: Vec<String>,
    /// `in_process` when this API process runs its workers, `worker` when separate processes do.
    pub mode: String,
    /// Whether a worker that can run it was heard from in the last 30 seconds.
    pub healthy: bool,
    /// Why it cannot work in this process (a missing speech model, say), when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Its queue.
    pub queue: QueueDepth,
}

/// The agents, their mode, health and queue depths.
#[utoipa::path(get, path = "/api/v1/agents", tag = "jobs", security(("bearer" = [])),
    responses((status = 200, description = "The agents", body = Vec<AgentInfo>)))]
#[tracing::instrument(skip_all)]
async fn agents(
    State(state): State<AppState>,
    _caller: AuthUser,
) -> ApiResult<AppJson<Vec<AgentInfo>>> {
    let depths = state.core.queue_depths().await?;
    let workers = state
        .core
        .live_workers(std::time::Duration::from_secs(30))
        .await?;
    let here_agents = crate::agents();
    let infos = crate::agent_manifests()
        .into_iter()
        .map(|m| {
            let here = state.in_process_agents.iter().any(|a| a == m.name);
            // A worker elsewhere answers for itself: it announces only agents it can run.
            let problem = here_agents
                .iter()
                .filter(|_| here)
                .find(|a| a.manifest().name == m.name)
                .and_then(|a| a.problem(&state.core));
            let serving: Vec<_> = workers
                .iter()
                .filter(|w| w.agents.iter().any(|a| a == m.name))
                .collect();
            let mode =
                if here || serving.iter().any(|w| w.mode == "in_process") || serving.is_empty() {
                    "in_process"
                } else {
                    "worker"
                };
            AgentInfo {
                name: m.name.to_owned(),
                version: m.version.to_owned(),
                description: m.description.to_owned(),
                actions: m.actions.iter().map(|a| a.name.to_owned()).collect(),
                mode: mode.to_owned(),
                healthy: !serving.is_empty() && problem.is_none(),
                problem,
                queue: depths.get(m.name).cloned().unwrap_or_default(),
            }
        })
        .collect();
    Ok(AppJson(infos))
}

/// Filters and paging of the job list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Only this agent.
    pub agent: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[param(schema_with = status_schema)]
    pub status: Option<String>,
    /// Only this client.
    pub client_id: Option<Uuid>,
    /// Page size, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(schema_with = agentdesk_core::pagination::id_cursor_schema)]
    pub cursor: Option<String>,
}

/// The values of the job list's `status` filter.
const JOB_STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

fn status_schema() -> utoipa::openapi::Object {
    agentdesk_agent_sdk::http::choice_schema(&JOB_STATUSES)
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// The jobs, newest first.
    pub items: Vec<Job>,
    /// The next page's cursor, or null.
    pub next_cursor: Option<String>,
}

/// The jobs the caller may see: their own, or all for an admin.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Bad parameter", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    AppQuery(query): AppQuery<JobQuery>,
) -> ApiResult<AppJson<JobPage>> {
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    if let Some(s) = &query.status
        && !JOB_STATUSES.contains(&s.as_str())
    {
        return Err(agentdesk_core::Error::BadRequest(format!(
            "status must be one of {}",
            JOB_STATUSES.join(", ")
        ))
        .into());
    }
    let filter = JobFilter {
        agent: query.agent,
        status: query.status,
        client_id: query.client_id,
        created_by: (!caller.user.is_admin()).then_some(caller.user.id),
    };
    let (items, next) = state
        .core
        .list_jobs(&filter, page.limit, page.after)
        .await?;
    Ok(AppJson(JobPage {
        items,
        next_cursor: next.map(agentdesk_core::pagination::encode_cursor),
    }))
}

async fn visible_job(
    state: &AppState,
    caller: &agentdesk_core::cache::AuthContext,
    raw: &str,
) -> ApiResult<Job> {
    let id = parse_id(raw, "job")?;
    match state.core.find_job(id).await? {
        Some(job) if caller.user.is_admin() || job.created_by == Some(caller.user.id) => Ok(job),
        _ => Err(agentdesk_core::Error::NotFound("job").into()),
    }
}

/// One job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "No such job the caller may see", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn get(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<AppJson<Job>> {
    Ok(AppJson(visible_job(&state, &caller, &id).await?))
}

/// Cancel a job: a queued one at once, a running one is told and stops.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job id")), security(("bearer" = [])),
    responses(
        (status = 202, description = "Cancelled, or being cancelled", body = Job),
        (status = 404, description = "No such job the caller may see", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job already finished", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn cancel(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, AppJson<Job>)> {
    let job = visible_job(&state, &caller, &id).await?;
    let job = state
        .core
        .cancel_job(&Actor::from_request(&caller, meta), job.id)
        .await?;
    Ok((StatusCode::ACCEPTED, AppJson(job)))
}

/// Retry a failed job.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs", params(("id" = String, Path, description = "Job id")), security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued again", body = Job),
        (status = 404, description = "No such job the caller may see", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Only failed jobs can be retried", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn retry(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, AppJson<Job>)> {
    let job = visible_job(&state, &caller, &id).await?;
    let job = state
        .core
        .retry_job(&Actor::from_request(&caller, meta), job.id)
        .await?;
    Ok((StatusCode::ACCEPTED, AppJson(job)))
}
