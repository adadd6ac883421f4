//! The job queue, modelled on Oban and River, in the database so that any process can work it.
//!
//! * Enqueue happens in the caller's transaction: a job whose transaction rolls back never
//!   existed. Unique keys dedupe live (queued or running) jobs.
//! * Claiming is one statement: `FOR UPDATE SKIP LOCKED` on PostgreSQL, and an immediate
//!   transaction on SQLite (which holds the only write lock), so two workers never get the same
//!   job. A claim takes a lease that the worker's heartbeat renews; a job whose lease ran out
//!   (its worker was killed) goes back to the queue, or fails when out of attempts.
//! * A failed attempt is retried after an exponential backoff with jitter, recorded in the job's
//!   `errors`, until `max_attempts`; then the job is `failed` with the error kept.
//! * Cancel: a queued job is cancelled at once; a running one is flagged and its worker, which
//!   reads the flag with every heartbeat, stops it.
//! * Workers are woken by an in-process signal and, on PostgreSQL, `LISTEN/NOTIFY`; polling is
//!   the fallback. Cron schedules fire once per tick however many instances run: the instance
//!   that inserts the `(name, tick)` row enqueues, in the same transaction.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use rand::Rng;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

use super::Core;
use super::audit::{AuditRecord, Outcome};
use super::permissions::Actor;
use crate::config::DatabaseKind;
use crate::error::{Error, Result};
use crate::models::job::{self, Job, status};

const PG_CHANNEL: &str = "agentdesk_jobs";

/// Jobs inserted by one statement of [`Core::enqueue_many`] (25 columns each).
const JOBS_PER_INSERT: usize = 500;

/// Jobs marked done by one statement of [`Core::complete_jobs`] (two parameters each).
const COMPLETIONS_PER_STATEMENT: usize = 500;

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The agent that runs it.
    pub agent: String,
    /// The kind of work (the agent's handler decides).
    pub kind: String,
    /// The input.
    pub args: Value,
    /// Lower runs first (default 0).
    pub priority: i32,
    /// Attempts before it fails for good (default 3).
    pub max_attempts: i32,
    /// Not before this time (default now).
    pub run_at: Option<DateTime<Utc>>,
    /// At most one live (queued or running) job per key.
    pub unique_key: Option<String>,
    /// The client it is about.
    pub client_id: Option<Uuid>,
    /// The user it acts for.
    pub created_by: Option<Uuid>,
    /// The API key the user started it with: the agent acts within the key's narrowing.
    pub api_key_id: Option<Uuid>,
    /// First retry delay; doubles with every attempt (default 1 s).
    pub backoff_base_ms: i64,
}

impl NewJob {
    /// A job with the defaults.
    pub fn new(agent: &str, kind: &str, args: Value) -> Self {
        Self {
            agent: agent.to_owned(),
            kind: kind.to_owned(),
            args,
            priority: 0,
            max_attempts: 3,
            run_at: None,
            unique_key: None,
            client_id: None,
            created_by: None,
            api_key_id: None,
            backoff_base_ms: 1000,
        }
    }

    /// Makes the job act for `actor`: their user, and the API key they used, if any.
    pub fn act_for(&mut self, actor: &crate::services::permissions::Actor) {
        self.created_by = Some(actor.user.id);
        self.api_key_id = actor.api_key.as_ref().map(|k| k.id);
    }
}

/// Wakes workers when jobs arrive.
#[derive(Debug, Clone, Default)]
pub struct JobSignal(Arc<Notify>);

impl JobSignal {
    /// Waits for a wake-up or the timeout, whichever comes first.
    pub async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.0.notified()).await;
    }

    fn wake(&self) {
        self.0.notify_waiters();
    }
}

/// Queue depths of one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueDepth {
    /// Waiting.
    pub queued: i64,
    /// Being worked.
    pub running: i64,
    /// Failed for good.
    pub failed: i64,
}

/// A worker process's record, refreshed by its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    /// Unique per process.
    pub id: String,
    /// The agents it runs.
    pub agents: Vec<String>,
    /// `in_process` or `worker`.
    pub mode: String,
    /// Where it runs.
    pub hostname: String,
    /// When it was last heard from.
    pub last_seen: DateTime<Utc>,
}

/// Filters of the job list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this agent.
    pub agent: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Only this client.
    pub client_id: Option<Uuid>,
    /// Only jobs started by this user (non-admins see their own).
    pub created_by: Option<Uuid>,
}

/// The exponential backoff before attempt `attempts + 1`: base · 2^(attempts−1), at most an
/// hour, ±20 % jitter so that failed jobs do not retry in lockstep.
pub fn backoff(base_ms: i64, attempts: i32) -> Duration {
    let exp = (attempts.max(1) - 1).min(20) as u32;
    let ms = (base_ms.max(1) as f64 * 2f64.powi(exp as i32)).min(3_600_000.0);
    let jitter = rand::rng().random_range(0.8..1.2);
    Duration::from_millis((ms * jitter) as u64)
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A new job's row, queued now (or at its `run_at`).
fn queued_model(new: NewJob) -> job::Model {
    let now = now();
    job::Model {
        id: Uuid::now_v7(),
        agent: new.agent,
        kind: new.kind,
        status: status::QUEUED.into(),
        priority: new.priority,
        args: new.args,
        result: None,
        error: None,
        errors: json!([]),
        progress: 0,
        attempts: 0,
        max_attempts: new.max_attempts.max(1),
        backoff_base_ms: new.backoff_base_ms.max(1),
        run_at: new.run_at.map(|t| t.trunc_subsecs(6)).unwrap_or(now),
        unique_key: new.unique_key,
        client_id: new.client_id,
        created_by: new.created_by,
        api_key_id: new.api_key_id,
        created_at: now,
        started_at: None,
        finished_at: None,
        lease_until: None,
        worker_id: None,
        cancel_requested: false,
    }
}

impl Core {
    /// Enqueues a job in the caller's transaction. With a unique key that a live job holds,
    /// returns that job instead. Call [`Core::wake_workers`] after the commit.
    pub async fn enqueue(&self, conn: &impl ConnectionTrait, new: NewJob) -> Result<Job> {
        if let Some(key) = &new.unique_key {
            let live = job::Entity::find()
                .filter(job::Column::UniqueKey.eq(key.clone()))
                .filter(job::Column::Status.is_in([status::QUEUED, status::RUNNING]))
                .one(conn)
                .await?;
            if let Some(existing) = live {
                return Ok(existing.into());
            }
        }
        let model = queued_model(new);
        let active: job::ActiveModel = model.clone().into();
        job::Entity::insert(active)
            .exec_without_returning(conn)
            .await?;
        Ok(model.into())
    }

    /// Enqueues many jobs in the caller's transaction, by multi-row statements (Oban's
    /// `insert_all`), and returns them in order. Jobs with a unique key go one at a time, as
    /// [`Core::enqueue`] does them. Call [`Core::wake_workers`] after the commit.
    pub async fn enqueue_many(
        &self,
        conn: &impl ConnectionTrait,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Job>> {
        let mut out = Vec::with_capacity(jobs.len());
        let mut plain = Vec::with_capacity(jobs.len());
        for new in jobs {
            if new.unique_key.is_some() {
                out.push(self.enqueue(conn, new).await?);
            } else {
                let model = queued_model(new);
                out.push(Job::from(model.clone()));
                plain.push(job::ActiveModel::from(model));
            }
        }
        let mut rows = plain.into_iter().peekable();
        while rows.peek().is_some() {
            job::Entity::insert_many(rows.by_ref().take(JOBS_PER_INSERT))
                .exec_without_returning(conn)
                .await?;
        }
        Ok(out)
    }

    /// Wakes this process's workers, and on PostgreSQL every other process's.
    pub async fn wake_workers(&self) {
        self.job_signal.wake();
        if self.db.kind() == DatabaseKind::Postgres {
            let sent = self
                .db
                .writer()
                .execute_raw(Statement::from_sql_and_values(
                    DatabaseBackend::Postgres,
                    "SELECT pg_notify($1, '')",
                    [PG_CHANNEL.into()],
                ))
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "could not notify workers; they will poll");
            }
        }
    }

    /// The signal that wakes this process's workers.
    pub fn job_signal(&self) -> JobSignal {
        self.job_signal.clone()
    }

    /// On PostgreSQL, relays other processes' `NOTIFY` to this process's workers.
    pub fn spawn_job_listener(&self) {
        if self.db.kind() != DatabaseKind::Postgres {
            return;
        }
        let (db, signal) = (self.db.clone(), self.job_signal.clone());
        tokio::spawn(async move {
            use sea_orm::sqlx::postgres::PgListener;
            loop {
                let pool = db.writer().get_postgres_connection_pool().clone();
                if let Ok(mut listener) = PgListener::connect_with(&pool).await
                    && listener.listen(PG_CHANNEL).await.is_ok()
                {
                    while listener.recv().await.is_ok() {
                        signal.wake();
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Claims up to `limit` due jobs of `agents` for `worker_id`, with a lease.
    pub async fn claim_jobs(
        &self,
        worker_id: &str,
        agents: &[String],
        limit: u64,
        lease: Duration,
    ) -> Result<Vec<job::Model>> {
        if agents.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let now = now();
        let lease_until = now + chrono::Duration::from_std(lease).map_err(Error::internal)?;
        let mut values: Vec<sea_orm::Value> = vec![
            now.into(),
            lease_until.into(),
            worker_id.to_owned().into(),
            (limit as i64).into(),
        ];
        let placeholders: Vec<String> = agents
            .iter()
            .enumerate()
            .map(|(i, agent)| {
                values.push(agent.clone().into());
                format!("${}", i + 5)
            })
            .collect();
        let lock = if self.db.kind() == DatabaseKind::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = $1, lease_until = $2, worker_id = $3 \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND run_at <= $1 AND agent IN ({}) \
             ORDER BY priority, run_at, id LIMIT $4{lock}) RETURNING *",
            placeholders.join(", ")
        );
        let stmt = Statement::from_sql_and_values(self.db.backend(), sql, values);
        if self.db.kind() == DatabaseKind::Postgres {
            // One statement is atomic by itself; the row locks keep other workers off.
            return Ok(job::Model::find_by_statement(stmt)
                .all(self.db.writer())
                .await?);
        }
        // SQLite: the immediate transaction takes the database's single write lock before the
        // read, so that no other process's commit can come between the two.
        let txn = self.db.begin().await?;
        let rows = job::Model::find_by_statement(stmt).all(&txn).await?;
        txn.commit().await?;
        Ok(rows)
    }

    /// Marks finished jobs done, all in one statement (a runner gathers the jobs that finish
    /// while its previous batch is written). Only the jobs that `worker_id` still holds are
    /// marked; returns their ids.
    pub async fn complete_jobs(
        &self,
        worker_id: &str,
        done: &[(Uuid, Value)],
    ) -> Result<Vec<Uuid>> {
        let mut ids = Vec::with_capacity(done.len());
        for chunk in done.chunks(COMPLETIONS_PER_STATEMENT) {
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(2 + chunk.len() * 2);
            values.push(worker_id.to_owned().into());
            values.push(now().into());
            let (result, ids_in) = super::case_by_id(
                &mut values,
                chunk.iter().map(|(id, result)| (*id, result.clone())),
            );
            let sql = format!(
                "UPDATE jobs SET status = 'succeeded', result = {result}, progress = 100, \
                 finished_at = $2, lease_until = NULL \
                 WHERE worker_id = $1 AND status = 'running' AND id IN ({ids_in}) RETURNING id"
            );
            let rows = self
                .db
                .writer()
                .query_all_raw(Statement::from_sql_and_values(
                    self.db.backend(),
                    sql,
                    values,
                ))
                .await?;
            for row in rows {
                ids.push(row.try_get_by_index::<Uuid>(0)?);
            }
        }
        Ok(ids)
    }

    /// Renews the leases of a worker's running jobs; returns those whose cancel was requested.
    pub async fn heartbeat_jobs(
        &self,
        worker_id: &str,
        ids: &[Uuid],
        lease: Duration,
    ) -> Result<Vec<Uuid>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let until = now() + chrono::Duration::from_std(lease).map_err(Error::internal)?;
        job::Entity::update_many()
            .col_expr(
                job::Column::LeaseUntil,
                sea_orm::sea_query::Expr::value(until),
            )
            .filter(job::Column::Id.is_in(ids.to_vec()))
            .filter(job::Column::WorkerId.eq(worker_id))
            .filter(job::Column::Status.eq(status::RUNNING))
            .exec(self.db.writer())
            .await?;
        let cancelled = job::Entity::find()
            .select_only()
            .column(job::Column::Id)
            .filter(job::Column::Id.is_in(ids.to_vec()))
            .filter(job::Column::CancelRequested.eq(true))
            .into_tuple::<Uuid>()
            .all(self.db.reader())
            .await?;
        Ok(cancelled)
    }

    /// Records progress (0..=100) of a running job.
    pub async fn set_job_progress(&self, worker_id: &str, id: Uuid, progress: i32) -> Result<()> {
        job::Entity::update_many()
            .col_expr(
                job::Column::Progress,
                sea_orm::sea_query::Expr::value(progress.clamp(0, 100)),
            )
            .filter(job::Column::Id.eq(id))
            .filter(job::Column::WorkerId.eq(worker_id))
            .filter(job::Column::Status.eq(status::RUNNING))
            .exec(self.db.writer())
            .await?;
        Ok(())
    }

    /// Marks a job done. Only the worker that holds it may; returns whether it did.
    pub async fn complete_job(&self, worker_id: &str, id: Uuid, result: Value) -> Result<bool> {
        Ok(!self
            .complete_jobs(worker_id, &[(id, result)])
            .await?
            .is_empty())
    }

    /// Records a failed attempt: back to the queue after the backoff, or `failed` when out of
    /// attempts (or when `retryable` is false).
    pub async fn fail_job(
        &self,
        worker_id: &str,
        id: Uuid,
        error: &str,
        retryable: bool,
    ) -> Result<()> {
        let txn = self.db.begin().await?;
        let Some(current) = job::Entity::find_by_id(id).one(&txn).await? else {
            return Ok(());
        };
        if current.status != status::RUNNING || current.worker_id.as_deref() != Some(worker_id) {
            return Ok(());
        }
        let now = now();
        let error: String = error.chars().take(2000).collect();
        let again = retryable && current.attempts < current.max_attempts;
        let retry_at = again.then(|| {
            now + chrono::Duration::from_std(backoff(current.backoff_base_ms, current.attempts))
                .unwrap_or_default()
        });
        let mut errors = current.errors.as_array().cloned().unwrap_or_default();
        errors.push(
            json!({"attempt": current.attempts, "at": now, "error": error, "retry_at": retry_at}),
        );
        let mut active: job::ActiveModel = current.into();
        active.error = sea_orm::Set(Some(error));
        active.errors = sea_orm::Set(Value::Array(errors));
        active.lease_until = sea_orm::Set(None);
        match retry_at {
            Some(at) => {
                active.status = sea_orm::Set(status::QUEUED.into());
                active.run_at = sea_orm::Set(at);
                active.worker_id = sea_orm::Set(None);
            }
            None => {
                active.status = sea_orm::Set(status::FAILED.into());
                active.finished_at = sea_orm::Set(Some(now));
            }
        }
        sea_orm::ActiveModelTrait::update(active, &txn).await?;
        txn.commit().await?;
        if retry_at.is_some() {
            self.job_signal.wake();
        }
        Ok(())
    }

    /// Marks a running job cancelled after its worker stopped it.
    pub async fn finish_cancelled(&self, worker_id: &str, id: Uuid) -> Result<()> {
        job::Entity::update_many()
            .col_expr(
                job::Column::Status,
                sea_orm::sea_query::Expr::value(status::CANCELLED),
            )
            .col_expr(
                job::Column::FinishedAt,
                sea_orm::sea_query::Expr::value(now()),
            )
            .col_expr(
                job::Column::LeaseUntil,
                sea_orm::sea_query::Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(job::Column::Id.eq(id))
            .filter(job::Column::WorkerId.eq(worker_id))
            .exec(self.db.writer())
            .await?;
        Ok(())
    }

    /// Hands a worker's running jobs back to the queue (graceful shutdown past its deadline).
    pub async fn release_jobs(&self, worker_id: &str, ids: &[Uuid]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        job::Entity::update_many()
            .col_expr(
                job::Column::Status,
                sea_orm::sea_query::Expr::value(status::QUEUED),
            )
            .col_expr(
                job::Column::WorkerId,
                sea_orm::sea_query::Expr::value(Option::<String>::None),
            )
            .col_expr(
                job::Column::LeaseUntil,
                sea_orm::sea_query::Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(job::Column::RunAt, sea_orm::sea_query::Expr::value(now()))
            // The interrupted attempt does not count against the job.
            .col_expr(
                job::Column::Attempts,
                sea_orm::sea_query::ExprTrait::sub(
                    sea_orm::sea_query::Expr::col(job::Column::Attempts),
                    1,
                ),
            )
            .filter(job::Column::Id.is_in(ids.to_vec()))
            .filter(job::Column::WorkerId.eq(worker_id))
            .filter(job::Column::Status.eq(status::RUNNING))
            .exec(self.db.writer())
            .await?;
        Ok(())
    }

    /// Returns jobs whose lease ran out (their worker died) to the queue, or fails them when
    /// out of attempts. Any process may run this; it is idempotent.
    pub async fn rescue_expired_jobs(&self) -> Result<u64> {
        let now = now();
        let expired = job::Entity::find()
            .filter(job::Column::Status.eq(status::RUNNING))
            .filter(job::Column::LeaseUntil.lt(now))
            .limit(100)
            .all(self.db.reader())
            .await?;
        let mut rescued = 0;
        for current in expired {
            let worker = current.worker_id.clone().unwrap_or_default();
            // The same path as a failed attempt: the backoff and the attempt limit apply.
            self.fail_job(
                &worker,
                current.id,
                "the worker stopped answering (lease expired)",
                true,
            )
            .await?;
            rescued += 1;
        }
        if rescued > 0 {
            tracing::warn!(
                rescued,
                "jobs whose worker stopped answering went back to the queue"
            );
        }
        Ok(rescued)
    }

    /// One job's row.
    pub async fn find_job_model(&self, id: Uuid) -> Result<Option<job::Model>> {
        Ok(job::Entity::find_by_id(id).one(self.db.reader()).await?)
    }

    /// One job.
    pub async fn find_job(&self, id: Uuid) -> Result<Option<Job>> {
        Ok(job::Entity::find_by_id(id)
            .one(self.db.reader())
            .await?
            .map(Job::from))
    }

    /// A page of jobs, newest first.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: u64,
        after: Option<Uuid>,
    ) -> Result<(Vec<Job>, Option<Uuid>)> {
        let mut c = Condition::all();
        if let Some(v) = &filter.agent {
            c = c.add(job::Column::Agent.eq(v.clone()));
        }
        if let Some(v) = &filter.status {
            c = c.add(job::Column::Status.eq(v.clone()));
        }
        if let Some(v) = filter.client_id {
            c = c.add(job::Column::ClientId.eq(v));
        }
        if let Some(v) = filter.created_by {
            c = c.add(job::Column::CreatedBy.eq(v));
        }
        if let Some(after) = after {
            c = c.add(job::Column::Id.lt(after));
        }
        let rows = job::Entity::find()
            .filter(c)
            .order_by_desc(job::Column::Id)
            .limit(limit + 1)
            .all(self.db.reader())
            .await?;
        let (rows, next) = crate::pagination::split_page(rows, limit, |r| r.id);
        Ok((rows.into_iter().map(Job::from).collect(), next))
    }

    /// Cancels a job: a queued one at once, a running one through its worker (202 either way).
    /// 409 for a job that already finished.
    pub async fn cancel_job(&self, actor: &Actor, id: Uuid) -> Result<Job> {
        let txn = self.db.begin().await?;
        let current = job::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or(Error::NotFound("job"))?;
        match current.status.as_str() {
            status::QUEUED => {
                job::Entity::update_many()
                    .col_expr(
                        job::Column::Status,
                        sea_orm::sea_query::Expr::value(status::CANCELLED),
                    )
                    .col_expr(
                        job::Column::FinishedAt,
                        sea_orm::sea_query::Expr::value(now()),
                    )
                    .filter(job::Column::Id.eq(id))
                    .exec(&txn)
                    .await?;
            }
            status::RUNNING => {
                job::Entity::update_many()
                    .col_expr(
                        job::Column::CancelRequested,
                        sea_orm::sea_query::Expr::value(true),
                    )
                    .filter(job::Column::Id.eq(id))
                    .exec(&txn)
                    .await?;
            }
            other => {
                return Err(Error::Conflict(format!(
                    "the job is {other}; only queued or running jobs can be cancelled"
                )));
            }
        }
        let record = AuditRecord::new("job.cancel", Outcome::Success, &actor.meta)
            .actor(&actor.user)
            .api_key(actor.api_key.as_ref().map(|k| k.id))
            .resource("job", id)
            .client(current.client_id);
        self.append(&txn, record).await?;
        txn.commit().await?;
        self.find_job(id).await?.ok_or(Error::NotFound("job"))
    }

    /// Puts a failed job back in the queue with a fresh set of attempts; 409 unless failed.
    pub async fn retry_job(&self, actor: &Actor, id: Uuid) -> Result<Job> {
        let txn = self.db.begin().await?;
        let current = job::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or(Error::NotFound("job"))?;
        if current.status != status::FAILED {
            return Err(Error::Conflict(format!(
                "the job is {}; only failed jobs can be retried",
                current.status
            )));
        }
        let max = current.attempts + current.max_attempts.max(1);
        job::Entity::update_many()
            .col_expr(
                job::Column::Status,
                sea_orm::sea_query::Expr::value(status::QUEUED),
            )
            .col_expr(job::Column::RunAt, sea_orm::sea_query::Expr::value(now()))
            .col_expr(
                job::Column::MaxAttempts,
                sea_orm::sea_query::Expr::value(max),
            )
            .col_expr(
                job::Column::FinishedAt,
                sea_orm::sea_query::Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(
                job::Column::WorkerId,
                sea_orm::sea_query::Expr::value(Option::<String>::None),
            )
            .filter(job::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        let record = AuditRecord::new("job.retry", Outcome::Success, &actor.meta)
            .actor(&actor.user)
            .api_key(actor.api_key.as_ref().map(|k| k.id))
            .resource("job", id)
            .client(current.client_id);
        self.append(&txn, record).await?;
        txn.commit().await?;
        self.wake_workers().await;
        self.find_job(id).await?.ok_or(Error::NotFound("job"))
    }

    /// Queued, running and failed counts per agent.
    pub async fn queue_depths(&self) -> Result<std::collections::HashMap<String, QueueDepth>> {
        #[derive(FromQueryResult)]
        struct Row {
            agent: String,
            status: String,
            n: i64,
        }
        let rows = Row::find_by_statement(Statement::from_string(
            self.db.backend(),
            "SELECT agent, status, COUNT(*) AS n FROM jobs WHERE status IN ('queued', 'running', 'failed') GROUP BY agent, status",
        ))
        .all(self.db.reader())
        .await?;
        let mut out: std::collections::HashMap<String, QueueDepth> =
            std::collections::HashMap::new();
        for row in rows {
            let depth = out.entry(row.agent).or_default();
            match row.status.as_str() {
                status::QUEUED => depth.queued = row.n,
                status::RUNNING => depth.running = row.n,
                _ => depth.failed = row.n,
            }
        }
        Ok(out)
    }

    /// Records (or refreshes) a worker process's heartbeat.
    pub async fn worker_heartbeat(
        &self,
        id: &str,
        agents: &[String],
        mode: &str,
        started_at: DateTime<Utc>,
    ) -> Result<()> {
        let hostname = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let sql = "INSERT INTO workers (id, agents, mode, hostname, pid, started_at, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                   ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, agents = excluded.agents";
        self.db
            .writer()
            .execute_raw(Statement::from_sql_and_values(
                self.db.backend(),
                sql,
                [
                    id.to_owned().into(),
                    json!(agents).into(),
                    mode.to_owned().into(),
                    hostname.into(),
                    (std::process::id() as i64).into(),
                    started_at.into(),
                    now().into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Workers heard from within `within`.
    pub async fn live_workers(&self, within: Duration) -> Result<Vec<WorkerInfo>> {
        #[derive(FromQueryResult)]
        struct Row {
            id: String,
            agents: Value,
            mode: String,
            hostname: String,
            last_seen: DateTime<Utc>,
        }
        let since = now() - chrono::Duration::from_std(within).unwrap_or_default();
        let rows = Row::find_by_statement(Statement::from_sql_and_values(
            self.db.backend(),
            "SELECT id, agents, mode, hostname, last_seen FROM workers WHERE last_seen >= $1",
            [since.into()],
        ))
        .all(self.db.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| WorkerInfo {
                id: r.id,
                agents: serde_json::from_value(r.agents).unwrap_or_default(),
                mode: r.mode,
                hostname: r.hostname,
                last_seen: r.last_seen,
            })
            .collect())
    }

    /// Removes a worker's record (at a clean stop).
    pub async fn forget_worker(&self, id: &str) -> Result<()> {
        self.db
            .writer()
            .execute_raw(Statement::from_sql_and_values(
                self.db.backend(),
                "DELETE FROM workers WHERE id = $1",
                [id.to_owned().into()],
            ))
            .await?;
        Ok(())
    }

    /// Claims `tick` of the schedule `name` for this instance: true for exactly one instance per
    /// tick (work that is not a job, such as the scheduled backup, runs where this is true).
    pub async fn claim_cron_tick(&self, name: &str, tick: DateTime<Utc>) -> Result<bool> {
        let inserted = self
            .db
            .writer()
            .execute_raw(Statement::from_sql_and_values(
                self.db.backend(),
                "INSERT INTO cron_ticks (name, tick) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                [name.to_owned().into(), tick.trunc_subsecs(0).into()],
            ))
            .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Fires a cron schedule for `tick` once across all instances: the instance whose insert of
    /// `(name, tick)` succeeds enqueues `job` in the same transaction. Returns the job if this
    /// instance fired it.
    pub async fn fire_cron(
        &self,
        name: &str,
        tick: DateTime<Utc>,
        job: NewJob,
    ) -> Result<Option<Job>> {
        let txn = self.db.begin().await?;
        let inserted = txn
            .execute_raw(Statement::from_sql_and_values(
                self.db.backend(),
                "INSERT INTO cron_ticks (name, tick) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                [name.to_owned().into(), tick.trunc_subsecs(0).into()],
            ))
            .await?;
        if inserted.rows_affected() == 0 {
            return Ok(None);
        }
        let job = self.enqueue(&txn, job).await?;
        txn.execute_raw(Statement::from_sql_and_values(
            self.db.backend(),
            "UPDATE cron_ticks SET job_id = $1 WHERE name = $2 AND tick = $3",
            [
                job.id.into(),
                name.to_owned().into(),
                tick.trunc_subsecs(0).into(),
            ],
        ))
        .await?;
        txn.commit().await?;
        self.wake_workers().await;
        Ok(Some(job))
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        for attempt in 1..6 {
            let d = backoff(1000, attempt).as_millis() as f64;
            let expected = 1000.0 * 2f64.powi(attempt - 1);
            assert!(
                d >= expected * 0.8 && d <= expected * 1.2,
                "attempt {attempt}: {d}"
            );
        }
        assert!(backoff(1000, 40).as_secs() <= 3600 * 12 / 10);
    }
}
