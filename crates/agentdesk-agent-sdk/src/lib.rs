//! What an agentdesk agent is, and how its jobs run.
//!
//! An agent is a crate that implements [`Agent`]: a [`Manifest`] (name, version, description,
//! the actions of its permission resource `agent:<name>`, and the core resources it may use on
//! a user's behalf), a job handler, and optional cron schedules. Agents know this SDK and the
//! core, never the API crate.
//!
//! An agent contributes HTTP routes as a function of its crate,
//! `pub fn routes<S>() -> utoipa_axum::router::OpenApiRouter<S> where Core: FromRef<S>`, whose
//! handlers use the extractors and problem+json of [`http`] (so every route names its
//! permission requirement with [`http::extractors::Authorized`]); the API mounts the routes
//! and their OpenAPI description.
//!
//! A job acts for the user who started it. The [`JobContext`] hands the handler permits only
//! for what both that user (now, not when the job was queued) and the agent's manifest allow;
//! every core service that touches data requires such a permit.
//!
//! The [`Runner`] works the jobs of a set of agents. `agentdesk serve` runs one in the API
//! process and `agentdesk worker` runs one alone: the same code path, two deployments.

pub mod http;
pub mod metrics;
mod runner;
pub mod search;

use std::sync::Arc;

use agentdesk_core::models::job;
use agentdesk_core::models::user::User;
use agentdesk_core::services::jobs::NewJob;
use agentdesk_core::services::permissions::{Actor, Need, Permit};
use agentdesk_core::{Core, RequestMeta};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use agentdesk_core as core;
pub use axum;
pub use runner::{Runner, RunnerConfig};
pub use utoipa;
pub use utoipa_axum;

/// `found`, a row of `kind` with id `id`, when the permit's client scope covers its client;
/// a 404 otherwise, as for a row that does not exist (with a `denied` audit event when it does).
pub async fn scoped_row<T>(
    core: &Core,
    permit: &agentdesk_core::services::permissions::Permit,
    kind: &'static str,
    id: uuid::Uuid,
    found: Option<T>,
    client_of: impl Fn(&T) -> uuid::Uuid,
) -> Result<T, agentdesk_core::Error> {
    let found = found.ok_or(agentdesk_core::Error::NotFound(kind))?;
    let client = client_of(&found);
    if !permit.scope().covers(client) {
        return Err(core.deny_out_of_scope(permit, kind, id, Some(client)).await);
    }
    Ok(found)
}

/// One action an agent declares for the permission catalog.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActionSpec {
    /// The action's name (`read`, `upload`, ...).
    pub name: &'static str,
    /// What the action allows.
    pub description: &'static str,
}

/// A core resource an agent may use for the job's user, with the actions it may use there.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ResourceUse {
    /// `clients`, `audit`, ...
    pub resource: &'static str,
    /// The actions.
    pub actions: &'static [&'static str],
}

/// An agent's declaration of itself.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Manifest {
    /// The agent's name (`pdf_processing`); its resource is `agent:<name>`.
    pub name: &'static str,
    /// The agent's version.
    pub version: &'static str,
    /// What the agent does.
    pub description: &'static str,
    /// The actions it declares on its own resource.
    pub actions: Vec<ActionSpec>,
    /// The core resources it may use for the job's user.
    pub uses: Vec<ResourceUse>,
}

impl Manifest {
    /// The permission resource of this agent: `agent:<name>`.
    pub fn resource(&self) -> String {
        format!("agent:{}", self.name)
    }

    /// Whether the manifest lets the agent use `action` on `resource` at all.
    pub fn permits(&self, resource: &str, action: &str) -> bool {
        (resource == self.resource() && self.actions.iter().any(|a| a.name == action))
            || self
                .uses
                .iter()
                .any(|u| u.resource == resource && u.actions.contains(&action))
    }
}

/// How a job attempt ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Worth another attempt (after the backoff).
    Retryable(String),
    /// Will not get better: the job fails now.
    Fatal(String),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Retryable(m) | JobError::Fatal(m) => f.write_str(m),
        }
    }
}

impl From<agentdesk_core::Error> for JobError {
    fn from(e: agentdesk_core::Error) -> Self {
        if e.is_retryable() {
            JobError::Retryable(e.to_string())
        } else {
            JobError::Fatal(e.to_string())
        }
    }
}

/// A cron schedule of an agent: `cron` (with optional seconds), read in `timezone`, enqueues
/// `job(tick)` once per tick across every instance.
#[derive(Clone)]
pub struct CronSpec {
    /// Unique name of the schedule; with the tick, what makes a firing happen once.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The time zone its fields are read in (daylight saving included).
    pub timezone: chrono_tz::Tz,
    /// The job to enqueue for a tick.
    pub job: Arc<dyn Fn(DateTime<Utc>) -> NewJob + Send + Sync>,
    /// When the schedule began: a schedule read while its first tick has just passed still
    /// fires it (the runner looks back a few seconds, never further).
    pub since: Option<DateTime<Utc>>,
}

impl CronSpec {
    /// A schedule read in UTC.
    pub fn new(
        name: impl Into<String>,
        cron: impl Into<String>,
        job: impl Fn(DateTime<Utc>) -> NewJob + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            cron: cron.into(),
            timezone: chrono_tz::UTC,
            job: Arc::new(job),
            since: None,
        }
    }

    /// The same schedule, begun at `since`.
    pub fn since(mut self, since: DateTime<Utc>) -> Self {
        self.since = Some(since);
        self
    }

    /// The same schedule read in `timezone`.
    pub fn in_timezone(mut self, timezone: chrono_tz::Tz) -> Self {
        self.timezone = timezone;
        self
    }
}

/// An agent: a manifest and a job handler.
#[async_trait::async_trait]
pub trait Agent: Send + Sync + 'static {
    /// The agent's manifest.
    fn manifest(&self) -> Manifest;

    /// Runs one attempt of a job. The context checks permissions for the job's user.
    async fn handle(&self, ctx: &JobContext) -> Result<Value, JobError>;

    /// Jobs this agent runs on a schedule.
    fn cron(&self) -> Vec<CronSpec> {
        Vec::new()
    }

    /// Schedules kept as data (users' report schedules, say): the runner reads them again every
    /// few seconds, so that one created, changed or removed takes effect without a restart, and
    /// fires each like those of [`Self::cron`].
    async fn schedules(&self, _core: &Core) -> Result<Vec<CronSpec>, agentdesk_core::Error> {
        Ok(Vec::new())
    }

    /// How many of its jobs may run at once in one process, unless configured.
    fn concurrency(&self) -> usize {
        2
    }

    /// Why this agent cannot do its work in this process (a missing model, say), or `None`
    /// when it can. A worker does not announce an agent with a problem, so `GET /agents` shows
    /// it unhealthy; its jobs still run and fail with a clear error.
    fn problem(&self, _core: &Core) -> Option<String> {
        None
    }
}

/// What a job handler may reach: the job, its user's permits (within the manifest), progress,
/// follow-up jobs and cancellation.
pub struct JobContext {
    core: Core,
    job: job::Model,
    worker_id: String,
    manifest: Manifest,
    cancel: CancellationToken,
    remove_after_success: std::sync::Mutex<Vec<String>>,
}

impl JobContext {
    /// Removes a stored file once this attempt's success is recorded, never before: a crash
    /// between the two runs the job again, and that attempt still needs its input (an import's
    /// upload, say). At worst a crash right after the record leaves the file behind.
    pub fn remove_after_success(&self, storage_key: impl Into<String>) {
        if let Ok(mut keys) = self.remove_after_success.lock() {
            keys.push(storage_key.into());
        }
    }

    fn take_removals(&self) -> Vec<String> {
        self.remove_after_success
            .lock()
            .map(|mut keys| std::mem::take(&mut *keys))
            .unwrap_or_default()
    }

    /// The job being run.
    pub fn job(&self) -> &job::Model {
        &self.job
    }

    /// The core services. Those that touch data require a [`Permit`] from [`Self::permit`].
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The user the job acts for.
    pub async fn user(&self) -> Result<User, JobError> {
        let id = self
            .job
            .created_by
            .ok_or_else(|| JobError::Fatal("the job has no user to act for".into()))?;
        self.core
            .user_by_id(id)
            .await
            .map_err(|_| JobError::Fatal("the job's user no longer exists".into()))
    }

    /// A permit for `action` on `resource`, if both the job's user (as of now) and this agent's
    /// manifest allow it.
    pub async fn permit(
        &self,
        resource: &str,
        action: &str,
        need: Need,
    ) -> Result<Permit, JobError> {
        if !self.manifest.permits(resource, action) {
            return Err(JobError::Fatal(format!(
                "the {} agent's manifest does not allow `{action}` on `{resource}`",
                self.manifest.name
            )));
        }
        let user = self.user().await?;
        let mut actor = Actor::system(user, RequestMeta::system(&format!("job:{}", self.job.id)));
        if let Some(key) = self.job.api_key_id {
            // Started with an API key: no more than the key allows, as of now.
            actor.api_key = Some(
                self.core
                    .api_key_scope(key)
                    .await
                    .map_err(JobError::from)?
                    .ok_or_else(|| {
                        JobError::Fatal(
                            "the API key that started this job was revoked or has expired".into(),
                        )
                    })?,
            );
        }
        self.core
            .authorize(actor, resource, action, need)
            .await
            .map_err(|e| JobError::Fatal(e.to_string()))
    }

    /// Records progress (0..=100).
    pub async fn progress(&self, percent: i32) {
        if let Err(e) = self
            .core
            .set_job_progress(&self.worker_id, self.job.id, percent)
            .await
        {
            tracing::warn!(error = %e, job_id = %self.job.id, "could not record progress");
        }
    }

    /// Enqueues a follow-up job that acts for the same user.
    pub async fn enqueue(&self, mut new: NewJob) -> Result<job::Model, JobError> {
        new.created_by = self.job.created_by;
        new.api_key_id = self.job.api_key_id;
        let txn = self.core.db.begin().await.map_err(JobError::from)?;
        let job = self.core.enqueue(&txn, new).await.map_err(JobError::from)?;
        txn.commit()
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))?;
        self.core.wake_workers().await;
        self.core
            .find_job_model(job.id)
            .await
            .map_err(JobError::from)?
            .ok_or_else(|| JobError::Fatal("lost the new job".into()))
    }

    /// Whether the job was cancelled; long handlers should check between steps.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the job is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}
