//! The job runner: claims the jobs of its agents, runs each under a lease that a heartbeat
//! renews, honours cancellation, fires cron schedules, and on shutdown lets running jobs finish
//! within the deadline, then hands the rest back to the queue.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentdesk_core::Core;

use chrono::{DateTime, SubsecRound, Utc};
use futures::FutureExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Agent, CronSpec, JobContext, JobError};

/// How a runner behaves.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// `in_process` (inside `serve`) or `worker` (a standalone `agentdesk worker`).
    pub mode: &'static str,
    /// Longest wait between looks at the queue when nothing wakes the runner.
    pub poll_interval: Duration,
    /// How long a claimed job is held without a heartbeat.
    pub lease: Duration,
    /// Jobs that may run at once per agent; agents not named use their own default.
    pub concurrency: HashMap<String, usize>,
    /// How long a shutdown waits for running jobs before handing them back.
    pub shutdown_timeout: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            mode: "in_process",
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            concurrency: HashMap::new(),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

type Running = Arc<Mutex<HashMap<Uuid, CancellationToken>>>;

/// How long freed slots wait for more to free while most of an agent's slots are busy.
const DISPATCH_COOLDOWN: Duration = Duration::from_millis(1);

/// Works the jobs of a set of agents in this process.
pub struct Runner {
    core: Core,
    agents: Vec<Arc<dyn Agent>>,
    config: RunnerConfig,
    worker_id: String,
}

impl Runner {
    /// A runner for `agents`.
    pub fn new(core: Core, agents: Vec<Arc<dyn Agent>>, config: RunnerConfig) -> Self {
        let worker_id = format!(
            "{}-{}-{}",
            config.mode,
            std::process::id(),
            Uuid::now_v7().simple()
        );
        Self {
            core,
            agents,
            config,
            worker_id,
        }
    }

    /// This runner's id (as in the `workers` table and the jobs it holds).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Runs until `shutdown` is cancelled, then stops gracefully.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.agents.is_empty() {
            shutdown.cancelled().await;
            return;
        }
        let names: Vec<String> = self
            .agents
            .iter()
            .map(|a| a.manifest().name.to_owned())
            .collect();
        tracing::info!(worker_id = %self.worker_id, agents = ?names, mode = self.config.mode, "job runner started");
        for agent in &self.agents {
            if let Some(problem) = agent.problem(&self.core) {
                tracing::warn!(agent = agent.manifest().name, %problem, "agent is unhealthy: its jobs will fail");
            }
        }
        let running: Running = Arc::new(Mutex::new(HashMap::new()));
        let stop_side_tasks = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.core.clone(),
            self.worker_id.clone(),
            self.agents.clone(),
            self.config.clone(),
            running.clone(),
            stop_side_tasks.clone(),
        ));
        let cron = tokio::spawn(cron_loop(
            self.core.clone(),
            self.agents.clone(),
            stop_side_tasks.clone(),
        ));
        let limits: Vec<usize> = self
            .agents
            .iter()
            .map(|a| {
                self.config
                    .concurrency
                    .get(a.manifest().name)
                    .copied()
                    .unwrap_or_else(|| a.concurrency())
                    .max(1)
            })
            .collect();
        let slots: Vec<Arc<Semaphore>> = limits
            .iter()
            .map(|&n| Arc::new(Semaphore::new(n)))
            .collect();
        // Per agent: since when a few of its slots are free while most are busy.
        let mut partly_free: Vec<Option<Instant>> = vec![None; limits.len()];
        let (completions, completed) = mpsc::channel(COMPLETER_BACKLOG);
        let completer = tokio::spawn(completer_loop(
            self.core.clone(),
            self.worker_id.clone(),
            running.clone(),
            completed,
        ));
        let signal = self.core.job_signal();
        let mut tasks = JoinSet::new();
        let mut last_rescue = Instant::now() - self.config.lease;
        while !shutdown.is_cancelled() {
            if last_rescue.elapsed() >= self.config.lease / 3 {
                if let Err(e) = self.core.rescue_expired_jobs().await {
                    tracing::warn!(error = %e, "could not rescue expired jobs");
                }
                last_rescue = Instant::now();
            }
            let mut claimed_any = false;
            let mut claim_at: Option<Instant> = None;
            for (i, (agent, slots)) in self.agents.iter().zip(&slots).enumerate() {
                let free = slots.available_permits();
                if free == 0 {
                    partly_free[i] = None;
                    continue;
                }
                if free * 2 < limits[i] {
                    // Most slots are busy: wait a moment for more to free, so that jobs
                    // finishing together are claimed by one statement (and one commit), not
                    // one each (Oban's dispatch cooldown).
                    let due = *partly_free[i].get_or_insert_with(Instant::now) + DISPATCH_COOLDOWN;
                    if Instant::now() < due {
                        claim_at = Some(claim_at.map_or(due, |at| at.min(due)));
                        continue;
                    }
                }
                partly_free[i] = None;
                let name = vec![agent.manifest().name.to_owned()];
                let jobs = match self
                    .core
                    .claim_jobs(&self.worker_id, &name, free as u64, self.config.lease)
                    .await
                {
                    Ok(jobs) => jobs,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not claim jobs");
                        Vec::new()
                    }
                };
                for job in jobs {
                    claimed_any = true;
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        continue;
                    };
                    let token = CancellationToken::new();
                    if let Ok(mut map) = running.lock() {
                        map.insert(job.id, token.clone());
                    }
                    let ctx = JobContext {
                        core: self.core.clone(),
                        job,
                        worker_id: self.worker_id.clone(),
                        manifest: agent.manifest(),
                        cancel: token.clone(),
                        remove_after_success: Default::default(),
                    };
                    let (agent, running) = (agent.clone(), running.clone());
                    let completions = completions.clone();
                    tasks.spawn(async move {
                        run_job(agent, ctx, token, running, completions).await;
                        drop(slot);
                    });
                }
            }
            while tasks.try_join_next().is_some() {}
            if !claimed_any {
                // Sleep until new jobs arrive, a running job finishes (a slot frees), a
                // waiting claim is due, the poll interval passes, or shutdown.
                let due = claim_at.unwrap_or_else(Instant::now);
                tokio::select! {
                    _ = signal.wait(self.config.poll_interval) => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    _ = tokio::time::sleep_until(due.into()), if claim_at.is_some() => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }

        tracing::info!(worker_id = %self.worker_id, running = tasks.len(), "job runner stopping: waiting for running jobs");
        let finished = tokio::time::timeout(self.config.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // Every sender is gone now: the completer writes what finished, then ends.
        drop(completions);
        let _ = completer.await;
        if finished.is_err() {
            let ids: Vec<Uuid> = running
                .lock()
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default();
            if let Err(e) = self.core.release_jobs(&self.worker_id, &ids).await {
                tracing::error!(error = %e, "could not hand running jobs back; their leases will expire");
            } else {
                tracing::warn!(
                    jobs = ids.len(),
                    "shutdown deadline passed: running jobs went back to the queue"
                );
            }
        }
        stop_side_tasks.cancel();
        let _ = heartbeat.await;
        let _ = cron.await;
        let _ = self.core.forget_worker(&self.worker_id).await;
    }
}

async fn run_job(
    agent: Arc<dyn Agent>,
    ctx: JobContext,
    token: CancellationToken,
    running: Running,
    completions: mpsc::Sender<Done>,
) {
    let (core, id, worker) = (ctx.core.clone(), ctx.job.id, ctx.worker_id.clone());
    let name = agent.manifest().name;
    let started = Instant::now();
    let outcome = tokio::select! {
        result = AssertUnwindSafe(agent.handle(&ctx)).catch_unwind() => Some(result),
        _ = token.cancelled() => None,
    };
    let label = match outcome {
        None => {
            if let Err(e) = core.finish_cancelled(&worker, id).await {
                tracing::error!(error = %e, job_id = %id, "could not mark a cancelled job");
            }
            "cancelled"
        }
        Some(Ok(Ok(result))) => {
            // The completer records it (with the jobs that finish meanwhile) and counts it.
            metrics::histogram!("job_duration_seconds", "agent" => name)
                .record(started.elapsed().as_secs_f64());
            let done = Done {
                id,
                agent: name,
                result,
                remove: ctx.take_removals(),
            };
            if let Err(mpsc::error::SendError(done)) = completions.send(done).await {
                // The completer is gone (it panicked): record it here.
                record_done(&core, &worker, &running, vec![done]).await;
            }
            return;
        }
        Some(Ok(Err(error))) => {
            let retryable = matches!(error, JobError::Retryable(_));
            if let Err(e) = core
                .fail_job(&worker, id, &error.to_string(), retryable)
                .await
            {
                tracing::error!(error = %e, job_id = %id, "could not record a failed attempt");
            }
            "failed"
        }
        Some(Err(_panic)) => {
            if let Err(e) = core
                .fail_job(&worker, id, "the job handler panicked", true)
                .await
            {
                tracing::error!(error = %e, job_id = %id, "could not record a failed attempt");
            }
            "panicked"
        }
    };
    metrics::counter!("jobs_finished_total", "agent" => name, "outcome" => label).increment(1);
    metrics::histogram!("job_duration_seconds", "agent" => name)
        .record(started.elapsed().as_secs_f64());
    if let Ok(mut map) = running.lock() {
        map.remove(&id);
    }
}

/// A job whose handler succeeded, waiting to be recorded.
struct Done {
    id: Uuid,
    agent: &'static str,
    result: serde_json::Value,
    /// Stored files to remove once the success is recorded.
    remove: Vec<String>,
}

/// Finished jobs that may wait for the completer: past this, a finishing job waits (and holds
/// its slot) until the completer catches up.
const COMPLETER_BACKLOG: usize = 1024;

/// Records succeeded jobs in batches, as River's batch completer does: whatever finished while
/// the previous batch was written goes in the next statement, so one commit covers many jobs.
/// A job stays in `running` (its lease renewed by the heartbeat) until its batch is written.
async fn completer_loop(
    core: Core,
    worker_id: String,
    running: Running,
    mut completions: mpsc::Receiver<Done>,
) {
    let mut batch = Vec::new();
    while completions.recv_many(&mut batch, COMPLETER_BACKLOG).await > 0 {
        record_done(&core, &worker_id, &running, std::mem::take(&mut batch)).await;
    }
}

/// Marks `done` succeeded, counts each, and forgets them as running. A job this worker no
/// longer held (its lease ran out and another attempt began) is counted `lost`; on an error
/// their leases expire and they run again.
async fn record_done(core: &Core, worker_id: &str, running: &Running, done: Vec<Done>) {
    let rows: Vec<(Uuid, serde_json::Value)> =
        done.iter().map(|d| (d.id, d.result.clone())).collect();
    let recorded: std::collections::HashSet<Uuid> = match core.complete_jobs(worker_id, &rows).await
    {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            tracing::error!(error = %e, jobs = done.len(), "could not record finished jobs; their leases will expire");
            Default::default()
        }
    };
    for d in &done {
        let label = if recorded.contains(&d.id) {
            if !d.remove.is_empty() {
                // Off the completer: a slow store must not hold back the next batch's record.
                let (storage, id, keys) = (core.storage.clone(), d.id, d.remove.clone());
                tokio::spawn(async move {
                    for key in &keys {
                        if let Err(e) = storage.delete(key).await {
                            // Left in the store; the key is logged and counted so that an
                            // operator can alert on it and remove the file.
                            tracing::warn!(error = %e, job_id = %id, key, "could not remove a finished job's file");
                            metrics::counter!("storage_orphaned_files_total").increment(1);
                        }
                    }
                });
            }
            "succeeded"
        } else {
            tracing::warn!(job_id = %d.id, "finished a job this worker no longer held (its lease had expired)");
            "lost"
        };
        metrics::counter!("jobs_finished_total", "agent" => d.agent, "outcome" => label)
            .increment(1);
    }
    if let Ok(mut map) = running.lock() {
        for d in &done {
            map.remove(&d.id);
        }
    }
}

async fn heartbeat_loop(
    core: Core,
    worker_id: String,
    agents: Vec<Arc<dyn Agent>>,
    config: RunnerConfig,
    running: Running,
    stop: CancellationToken,
) {
    let started_at = Utc::now();
    let every = (config.lease / 3).max(Duration::from_millis(100));
    loop {
        // Only the agents that can work here are announced (see `Agent::problem`).
        let healthy: Vec<String> = agents
            .iter()
            .filter(|a| a.problem(&core).is_none())
            .map(|a| a.manifest().name.to_owned())
            .collect();
        if let Err(e) = core
            .worker_heartbeat(&worker_id, &healthy, config.mode, started_at)
            .await
        {
            tracing::warn!(error = %e, "worker heartbeat failed");
        }
        let ids: Vec<Uuid> = running
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        match core.heartbeat_jobs(&worker_id, &ids, config.lease).await {
            Ok(cancelled) => {
                if let Ok(map) = running.lock() {
                    for id in cancelled {
                        if let Some(token) = map.get(&id) {
                            token.cancel();
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "job lease renewal failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// How often schedules kept as data are read again.
const SCHEDULE_RELOAD: Duration = Duration::from_secs(5);

/// One schedule the cron loop watches, with its next tick.
struct Watched {
    spec: CronSpec,
    cron: croner::Cron,
    next: Option<DateTime<Utc>>,
}

impl Watched {
    fn parse(spec: CronSpec) -> Option<Self> {
        match croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(&spec.cron)
        {
            Ok(cron) => Some(Self {
                spec,
                cron,
                next: None,
            }),
            Err(e) => {
                tracing::error!(schedule = %spec.name, error = %e, "invalid cron expression; schedule ignored");
                None
            }
        }
    }

    /// Where the first look for a tick starts: now, or for a schedule that began moments ago
    /// (before this loop read it), when it began, but never more than two reloads back, so a
    /// restart never replays old ticks.
    fn first_look(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let window = chrono::Duration::from_std(SCHEDULE_RELOAD * 2).unwrap_or_default();
        match self.spec.since {
            Some(since) => since.max(now - window).min(now),
            None => now,
        }
    }

    /// The first tick after `after`, in the schedule's time zone.
    fn tick_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ticks are whole seconds: a fraction of `after` would carry into the tick.
        self.cron
            .find_next_occurrence(
                &after.trunc_subsecs(0).with_timezone(&self.spec.timezone),
                false,
            )
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Reads the agents' data schedules again: new ones are watched from now on, changed ones start
/// over, removed ones are dropped. On an error the previous set stays.
async fn reload_schedules(
    core: &Core,
    agents: &[Arc<dyn Agent>],
    watched: &mut HashMap<String, Watched>,
    dynamic: &mut Vec<String>,
) {
    let mut fresh = Vec::new();
    for agent in agents {
        match agent.schedules(core).await {
            Ok(specs) => fresh.extend(specs),
            Err(e) => {
                tracing::warn!(agent = agent.manifest().name, error = %e, "could not read schedules");
                return;
            }
        }
    }
    let names: Vec<String> = fresh.iter().map(|s| s.name.clone()).collect();
    for gone in dynamic.iter().filter(|n| !names.contains(n)) {
        watched.remove(gone);
    }
    for spec in fresh {
        let unchanged = watched
            .get(&spec.name)
            .is_some_and(|w| w.spec.cron == spec.cron && w.spec.timezone == spec.timezone);
        if unchanged {
            if let Some(w) = watched.get_mut(&spec.name) {
                w.spec = spec;
            }
        } else if let Some(w) = Watched::parse(spec) {
            watched.insert(w.spec.name.clone(), w);
        }
    }
    *dynamic = names;
}

async fn cron_loop(core: Core, agents: Vec<Arc<dyn Agent>>, stop: CancellationToken) {
    let mut watched: HashMap<String, Watched> = agents
        .iter()
        .flat_map(|agent| agent.cron())
        .filter_map(Watched::parse)
        .map(|w| (w.spec.name.clone(), w))
        .collect();
    let mut dynamic = Vec::new();
    let mut reloaded: Option<Instant> = None;
    loop {
        if reloaded.is_none_or(|at| at.elapsed() >= SCHEDULE_RELOAD) {
            reload_schedules(&core, &agents, &mut watched, &mut dynamic).await;
            reloaded = Some(Instant::now());
        }
        let now = Utc::now();
        for w in watched.values_mut() {
            let due = match w.next {
                Some(at) => at,
                None => match w.tick_after(w.first_look(now)) {
                    Some(at) => {
                        w.next = Some(at);
                        at
                    }
                    None => continue,
                },
            };
            if due <= now {
                match core.fire_cron(&w.spec.name, due, (w.spec.job)(due)).await {
                    Ok(Some(job)) => {
                        tracing::info!(schedule = %w.spec.name, job_id = %job.id, tick = %due, "cron fired")
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(schedule = %w.spec.name, error = %e, "cron tick failed")
                    }
                }
                w.next = w.tick_after(due);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.cancelled() => return,
        }
    }
}
