//! Jobs per second through the queue: enqueue N no-op jobs (multi-row, in transactions of 500), run them
//! with one runner (8 at a time), and time enqueue → every job done, twice: live (the runner
//! already works while the jobs arrive, as inside `serve`) and backlog (the jobs wait, then a
//! runner starts). The real path: the same claim, heartbeat and completion statements a
//! deployment runs.
//!
//! `cargo bench -p agentdesk-agent-sdk --bench queue` (SQLite in a temp dir); set
//! `AGENTDESK_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/DB` to add PostgreSQL, and
//! `AGENTDESK_BENCH_JOBS` to change N (default 5000), `AGENTDESK_BENCH_CONCURRENCY` the jobs
//! worked at once (default 8).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentdesk_agent_sdk::{
    ActionSpec, Agent, JobContext, JobError, Manifest, Runner, RunnerConfig,
};
use agentdesk_core::Core;
use agentdesk_core::config::Settings;
use agentdesk_core::services::jobs::NewJob;
use figment::Figment;
use figment::providers::Serialized;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Noop;

#[async_trait::async_trait]
impl Agent for Noop {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "noop",
            version: "0",
            description: "bench",
            actions: vec![ActionSpec {
                name: "run",
                description: "run",
            }],
            uses: vec![],
        }
    }
    async fn handle(&self, _ctx: &JobContext) -> Result<Value, JobError> {
        Ok(Value::Null)
    }
}

/// Jobs one runner works at once (`AGENTDESK_BENCH_CONCURRENCY`, default 8).
fn concurrency() -> usize {
    std::env::var("AGENTDESK_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

fn runner_config() -> RunnerConfig {
    RunnerConfig {
        mode: "in_process",
        poll_interval: Duration::from_millis(50),
        lease: Duration::from_secs(30),
        concurrency: HashMap::from([("noop".to_owned(), concurrency())]),
        shutdown_timeout: Duration::from_secs(5),
    }
}

/// Enqueues `n` jobs in transactions of 500 (multi-row inserts), waking the workers after each
/// commit as the API does.
async fn enqueue(core: &Core, n: usize) {
    let mut left = n;
    while left > 0 {
        let txn = core.db.begin().await.unwrap();
        let batch = (0..left.min(500))
            .map(|_| NewJob::new("noop", "noop", json!({})))
            .collect();
        core.enqueue_many(&txn, batch).await.unwrap();
        txn.commit().await.unwrap();
        core.wake_workers().await;
        left = left.saturating_sub(500);
    }
}

/// Waits until no noop job is queued or running (an indexed existence test, so that the
/// watching costs the database next to nothing).
async fn all_done(core: &Core) {
    let sql = "SELECT 1 AS left FROM jobs WHERE status IN ('queued', 'running') AND agent = 'noop' LIMIT 1";
    loop {
        let left = core
            .db
            .reader()
            .query_one_raw(Statement::from_string(core.db.backend(), sql))
            .await
            .unwrap();
        if left.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn start_runner(core: &Core) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(
            core.clone(),
            vec![Arc::new(Noop) as Arc<dyn Agent>],
            runner_config(),
        )
        .run(stop.clone()),
    );
    (stop, runner)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn run(name: &str, core: Core, n: usize) {
    // Live: the runner works (as inside `serve`) while the jobs arrive.
    let (stop, runner) = start_runner(&core);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    enqueue(&core, n).await;
    let enqueued = started.elapsed();
    all_done(&core).await;
    let total = started.elapsed();
    stop.cancel();
    runner.await.unwrap();
    println!(
        "{name} live, {} at a time: {n} jobs; enqueue {:.0} jobs/s; first enqueue → all done {:.2} s = {:.0} jobs/s",
        concurrency(),
        rate(n, enqueued),
        total.as_secs_f64(),
        rate(n, total)
    );
    core.db
        .writer()
        .execute_unprepared("DELETE FROM jobs")
        .await
        .unwrap();
    // Backlog: the jobs wait in the queue, then a runner starts and drains it.
    let started = Instant::now();
    enqueue(&core, n).await;
    let enqueued = started.elapsed();
    let (stop, runner) = start_runner(&core);
    let draining = Instant::now();
    all_done(&core).await;
    let (drained, total) = (draining.elapsed(), started.elapsed());
    stop.cancel();
    runner.await.unwrap();
    println!(
        "{name} backlog, {} at a time: {n} jobs; enqueue {:.0} jobs/s; drain {:.0} jobs/s; enqueue → all done {:.2} s = {:.0} jobs/s",
        concurrency(),
        rate(n, enqueued),
        rate(n, drained),
        total.as_secs_f64(),
        rate(n, total)
    );
}

fn settings(dir: &std::path::Path, url: Option<String>) -> Settings {
    let mut figment = Figment::from(Serialized::defaults(Settings::default()))
        .merge(("data_dir", dir.display().to_string()))
        .merge(("jwt_secret", "bench-secret-bench-secret-bench-secret!"));
    if let Some(url) = url {
        figment = figment.merge(("database_url", url));
    }
    Settings::from_figment(figment).unwrap()
}

fn main() {
    let n: usize = std::env::var("AGENTDESK_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        run(
            "sqlite",
            Core::start(settings(dir.path(), None)).await.unwrap(),
            n,
        )
        .await;
        if let Ok(url) = std::env::var("AGENTDESK_BENCH_POSTGRES_URL") {
            let dir = tempfile::tempdir().unwrap();
            let core = Core::start(settings(dir.path(), Some(url))).await.unwrap();
            core.spawn_job_listener();
            run("postgres", core, n).await;
        }
    });
}
