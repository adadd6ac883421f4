//! Jobs per second through the queue: enqueue N no-op jobs (in transactions of 500), run them
//! with one runner (8 at a time), and time enqueue → every job done. The real path: the same
//! claim, heartbeat and completion statements a deployment runs.
//!
//! `cargo bench -p agentdesk-agent-sdk --bench queue` (SQLite in a temp dir); set
//! `AGENTDESK_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/DB` to add PostgreSQL, and
//! `AGENTDESK_BENCH_JOBS` to change N (default 5000).

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

async fn run(name: &str, core: Core, n: usize) {
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let txn = core.db.begin().await.unwrap();
        for _ in 0..left.min(500) {
            core.enqueue(&txn, NewJob::new("noop", "noop", json!({})))
                .await
                .unwrap();
        }
        txn.commit().await.unwrap();
        left = left.saturating_sub(500);
    }
    let enqueued = started.elapsed();
    let stop = CancellationToken::new();
    let config = RunnerConfig {
        mode: "in_process",
        poll_interval: Duration::from_millis(50),
        lease: Duration::from_secs(30),
        concurrency: HashMap::from([("noop".to_owned(), 8)]),
        shutdown_timeout: Duration::from_secs(5),
    };
    let runner = tokio::spawn(
        Runner::new(core.clone(), vec![Arc::new(Noop) as Arc<dyn Agent>], config).run(stop.clone()),
    );
    loop {
        let depth = core.queue_depths().await.unwrap();
        if depth
            .get("noop")
            .is_none_or(|d| d.queued == 0 && d.running == 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    stop.cancel();
    runner.await.unwrap();
    println!(
        "{name}: {n} jobs; enqueue {:.0} jobs/s; enqueue → all done {:.2} s = {:.0} jobs/s",
        n as f64 / enqueued.as_secs_f64(),
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64()
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
