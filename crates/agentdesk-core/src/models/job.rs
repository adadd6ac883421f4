//! Jobs: the durable work queue that agents' workers claim.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use serde::Serialize;

/// A row of `jobs`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub agent: String,
    pub kind: String,
    pub status: String,
    pub priority: i32,
    pub args: Json,
    pub result: Option<Json>,
    pub error: Option<String>,
    pub errors: Json,
    pub progress: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    pub backoff_base_ms: i64,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<String>,
    pub client_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    /// The API key the job was started with, if any: the agent acts within its narrowing.
    pub api_key_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub lease_until: Option<DateTime<Utc>>,
    pub worker_id: Option<String>,
    pub cancel_requested: bool,
}

/// Relations the ORM does not need.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Job statuses.
pub mod status {
    /// Waiting for a worker (or for `run_at`).
    pub const QUEUED: &str = "queued";
    /// Claimed by a worker, under a lease.
    pub const RUNNING: &str = "running";
    /// Done.
    pub const SUCCEEDED: &str = "succeeded";
    /// Out of attempts, or failed for good.
    pub const FAILED: &str = "failed";
    /// Cancelled before it finished.
    pub const CANCELLED: &str = "cancelled";
}

/// A job as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// UUID v7.
    pub id: Uuid,
    /// The agent that runs it.
    pub agent: String,
    /// The kind of work.
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// 0..=100.
    pub progress: i32,
    /// Attempts made so far.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The last error.
    pub error: Option<String>,
    /// What it produced.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The client it is about.
    pub client_id: Option<Uuid>,
    /// Who started it (the job acts for them).
    pub created_by: Option<Uuid>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When the last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Lower runs first.
    pub priority: i32,
    /// Not before this time.
    pub run_at: DateTime<Utc>,
    /// Every failed attempt: `{attempt, at, error, retry_at}` (the backoff, as it happened).
    #[schema(value_type = Vec<Object>)]
    pub errors: serde_json::Value,
    /// The job's input.
    #[schema(value_type = Object)]
    pub args: serde_json::Value,
}

impl From<Model> for Job {
    fn from(m: Model) -> Self {
        Self {
            id: m.id,
            agent: m.agent,
            kind: m.kind,
            status: m.status,
            progress: m.progress,
            attempts: m.attempts,
            max_attempts: m.max_attempts,
            error: m.error,
            result: m.result,
            client_id: m.client_id,
            created_by: m.created_by,
            created_at: m.created_at,
            started_at: m.started_at,
            finished_at: m.finished_at,
            priority: m.priority,
            run_at: m.run_at,
            errors: m.errors,
            args: m.args,
        }
    }
}
