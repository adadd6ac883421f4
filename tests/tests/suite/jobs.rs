//! The job queue and runner: exactly-once under concurrent workers, rollback safety, backoff,
//! fatal errors, cancel, retry, priorities, run_at, unique keys, cron once per tick across two
//! instances, and graceful shutdown handing work back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentdesk_agent_sdk::{
    ActionSpec, Agent, CronSpec, JobContext, JobError, Manifest, Runner, RunnerConfig,
};
use agentdesk_core::Core;
use agentdesk_core::models::job::Job;
use agentdesk_core::services::jobs::NewJob;
use agentdesk_tests::{TestApp, TestEnv, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A test agent whose behaviour the job's kind picks.
#[derive(Default)]
struct Probe {
    runs: Mutex<HashMap<Uuid, u32>>,
    order: Mutex<Vec<String>>,
    cron: Option<String>,
}

#[async_trait::async_trait]
impl Agent for Probe {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "probe",
            version: "0",
            description: "test agent",
            actions: vec![ActionSpec {
                name: "run",
                description: "run",
            }],
            uses: vec![],
        }
    }

    async fn handle(&self, ctx: &JobContext) -> Result<Value, JobError> {
        let job = ctx.job();
        *self.runs.lock().unwrap().entry(job.id).or_default() += 1;
        self.order
            .lock()
            .unwrap()
            .push(job.args["label"].as_str().unwrap_or_default().to_owned());
        match job.kind.as_str() {
            "fail" => Err(JobError::Retryable("boom".into())),
            "fatal" => Err(JobError::Fatal("cannot ever work".into())),
            "panic" => panic!("the handler panicked on purpose"),
            "sleep" => {
                ctx.progress(50).await;
                tokio::time::sleep(Duration::from_millis(
                    job.args["ms"].as_u64().unwrap_or(10_000),
                ))
                .await;
                Ok(json!({"slept": true}))
            }
            _ => Ok(json!({"ok": job.args["label"]})),
        }
    }

    fn cron(&self) -> Vec<CronSpec> {
        self.cron
            .iter()
            .map(|expr| {
                CronSpec::new("probe-every-second", expr.clone(), |_| {
                    NewJob::new("probe", "noop", json!({"label": "cron"}))
                })
            })
            .collect()
    }

    fn concurrency(&self) -> usize {
        4
    }
}

fn config(lease_ms: u64, shutdown_ms: u64) -> RunnerConfig {
    RunnerConfig {
        mode: "in_process",
        poll_interval: Duration::from_millis(50),
        lease: Duration::from_millis(lease_ms),
        concurrency: HashMap::new(),
        shutdown_timeout: Duration::from_millis(shutdown_ms),
    }
}

fn start(
    core: &Core,
    probe: Arc<Probe>,
    config: RunnerConfig,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn(
        Runner::new(core.clone(), vec![probe as Arc<dyn Agent>], config).run(stop.clone()),
    );
    (stop, handle)
}

async fn enqueue(core: &Core, new: NewJob) -> Job {
    let txn = core.db.begin().await.unwrap();
    let job = core.enqueue(&txn, new).await.unwrap();
    txn.commit().await.unwrap();
    core.wake_workers().await;
    job
}

fn job(kind: &str, label: &str) -> NewJob {
    NewJob::new("probe", kind, json!({"label": label}))
}

async fn wait_status(core: &Core, id: Uuid, status: &str, within: Duration) -> Job {
    assert!(
        eventually(within, || async {
            core.find_job(id)
                .await
                .unwrap()
                .is_some_and(|j| j.status == status)
        })
        .await,
        "job {id} did not become {status}: {:?}",
        core.find_job(id).await.unwrap()
    );
    core.find_job(id).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_thousand_jobs_four_workers_each_job_exactly_once() {
    let app = TestApp::spawn().await;
    let probe = Arc::new(Probe::default());
    let txn = app.core.db.begin().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..1000 {
        ids.push(
            app.core
                .enqueue(&txn, job("noop", &i.to_string()))
                .await
                .unwrap()
                .id,
        );
    }
    txn.commit().await.unwrap();
    let runners: Vec<_> = (0..4)
        .map(|_| start(&app.core, probe.clone(), config(30_000, 5_000)))
        .collect();
    app.core.wake_workers().await;
    assert!(
        eventually(Duration::from_secs(120), || async {
            app.core
                .queue_depths()
                .await
                .unwrap()
                .get("probe")
                .is_none_or(|d| d.queued == 0 && d.running == 0)
        })
        .await
    );
    for (stop, handle) in runners {
        stop.cancel();
        handle.await.unwrap();
    }
    let runs = probe.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 1000, "every job ran");
    assert!(runs.values().all(|&n| n == 1), "no job ran twice");
    for id in ids.iter().step_by(97) {
        let j = app.core.find_job(*id).await.unwrap().unwrap();
        assert_eq!(
            (j.status.as_str(), j.attempts, j.progress),
            ("succeeded", 1, 100)
        );
    }
}

#[tokio::test]
async fn a_job_enqueued_in_a_rolled_back_transaction_never_runs() {
    let app = TestApp::spawn().await;
    let probe = Arc::new(Probe::default());
    let (stop, handle) = start(&app.core, probe.clone(), config(30_000, 1_000));
    let txn = app.core.db.begin().await.unwrap();
    let ghost = app.core.enqueue(&txn, job("noop", "ghost")).await.unwrap();
    txn.rollback().await.unwrap();
    app.core.wake_workers().await;
    let real = enqueue(&app.core, job("noop", "real")).await;
    wait_status(&app.core, real.id, "succeeded", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    handle.await.unwrap();
    assert!(app.core.find_job(ghost.id).await.unwrap().is_none());
    assert_eq!(*probe.order.lock().unwrap(), ["real"]);
}

#[tokio::test]
async fn failed_attempts_back_off_exponentially_then_fail() {
    let app = TestApp::spawn().await;
    let probe = Arc::new(Probe::default());
    let (stop, handle) = start(&app.core, probe.clone(), config(30_000, 1_000));
    let mut new = job("fail", "flaky");
    new.max_attempts = 4;
    new.backoff_base_ms = 200;
    let j = enqueue(&app.core, new).await;
    let done = wait_status(&app.core, j.id, "failed", Duration::from_secs(20)).await;
    stop.cancel();
    handle.await.unwrap();
    assert_eq!(done.attempts, 4);
    assert_eq!(done.error.as_deref(), Some("boom"));
    let errors = done.errors.as_array().unwrap();
    assert_eq!(errors.len(), 4, "every attempt is recorded: {errors:?}");
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let mut delays = Vec::new();
    for e in &errors[..3] {
        delays.push((time(&e["retry_at"]) - time(&e["at"])).num_milliseconds());
    }
    assert!(
        errors[3]["retry_at"].is_null(),
        "no retry after the last attempt"
    );
    // 200 ms, 400 ms, 800 ms, each ±20 %.
    for (i, d) in delays.iter().enumerate() {
        let expected = 200.0 * 2f64.powi(i as i32);
        assert!(
            (*d as f64) >= expected * 0.79 && (*d as f64) <= expected * 1.21,
            "delay {i}: {d} ms, expected ~{expected}"
        );
    }
    assert_eq!(probe.runs.lock().unwrap()[&j.id], 4);
}

#[tokio::test]
async fn fatal_errors_and_panics() {
    let app = TestApp::spawn().await;
    let probe = Arc::new(Probe::default());
    let (stop, handle) = start(&app.core, probe.clone(), config(30_000, 1_000));
    let fatal = enqueue(&app.core, job("fatal", "f")).await;
    let done = wait_status(&app.core, fatal.id, "failed", Duration::from_secs(10)).await;
    assert_eq!(
        (done.attempts, done.error.as_deref()),
        (1, Some("cannot ever work"))
    );
    let mut panicky = job("panic", "p");
    panicky.max_attempts = 2;
    panicky.backoff_base_ms = 10;
    let panicky = enqueue(&app.core, panicky).await;
    let done = wait_status(&app.core, panicky.id, "failed", Duration::from_secs(10)).await;
    assert_eq!(done.attempts, 2);
    assert!(done.error.unwrap().contains("panicked"));
    // The runner is still alive.
    let after = enqueue(&app.core, job("noop", "after")).await;
    wait_status(&app.core, after.id, "succeeded", Duration::from_secs(10)).await;
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn cancel_and_retry_through_the_api() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let me: Uuid = app.get("/api/v1/auth/me", &admin).await.json["user"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let probe = Arc::new(Probe::default());
    let (stop, handle) = start(&app.core, probe.clone(), config(600, 1_000));
    // A running job is told and stops.
    let mut long = job("sleep", "long");
    long.created_by = Some(me);
    long.args["ms"] = json!(60_000);
    let long = enqueue(&app.core, long).await;
    wait_status(&app.core, long.id, "running", Duration::from_secs(10)).await;
    let started = std::time::Instant::now();
    let r = app
        .post(
            &format!("/api/v1/jobs/{}/cancel", long.id),
            &admin,
            json!({}),
        )
        .await;
    r.expect(202, None);
    let done = wait_status(&app.core, long.id, "cancelled", Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(done.finished_at.is_some());
    app.post(
        &format!("/api/v1/jobs/{}/cancel", long.id),
        &admin,
        json!({}),
    )
    .await
    .expect(409, Some("conflict"));
    // A failed job can be retried; others cannot.
    let mut fatal = job("fatal", "retry-me");
    fatal.created_by = Some(me);
    let fatal = enqueue(&app.core, fatal).await;
    wait_status(&app.core, fatal.id, "failed", Duration::from_secs(10)).await;
    app.post(
        &format!("/api/v1/jobs/{}/retry", long.id),
        &admin,
        json!({}),
    )
    .await
    .expect(409, Some("conflict"));
    let r = app
        .post(
            &format!("/api/v1/jobs/{}/retry", fatal.id),
            &admin,
            json!({}),
        )
        .await;
    r.expect(202, None);
    let again = wait_status(&app.core, fatal.id, "failed", Duration::from_secs(10)).await;
    assert_eq!(again.attempts, 2, "it ran once more");
    let listed = app
        .get("/api/v1/jobs?agent=probe&status=failed", &admin)
        .await;
    assert_eq!(listed.json["items"][0]["id"], fatal.id.to_string().as_str());
    app.get("/api/v1/jobs?status=weird", &admin)
        .await
        .expect(400, Some("bad_request"));
    app.get(&format!("/api/v1/jobs/{}", Uuid::now_v7()), &admin)
        .await
        .expect(404, Some("not_found"));
    let events = app
        .get("/api/v1/audit/events?action=job.cancel", &admin)
        .await;
    assert_eq!(events.json["items"].as_array().unwrap().len(), 1);
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn priorities_run_at_and_unique_keys() {
    let app = TestApp::spawn().await;
    let probe = Arc::new(Probe::default());
    let mut later = job("noop", "later");
    later.run_at = Some(chrono::Utc::now() + chrono::Duration::milliseconds(1500));
    let later = enqueue(&app.core, later).await;
    let mut low = job("noop", "low");
    low.priority = 10;
    enqueue(&app.core, low).await;
    let mut high = job("noop", "high");
    high.priority = -5;
    enqueue(&app.core, high).await;
    let mut unique = job("noop", "unique");
    unique.unique_key = Some("only-one".into());
    let first = enqueue(&app.core, unique.clone()).await;
    let second = enqueue(&app.core, unique.clone()).await;
    assert_eq!(first.id, second.id, "a live job with the key is reused");
    let mut cfg = config(30_000, 1_000);
    cfg.concurrency.insert("probe".into(), 1);
    let (stop, handle) = start(&app.core, probe.clone(), cfg);
    wait_status(&app.core, later.id, "succeeded", Duration::from_secs(10)).await;
    stop.cancel();
    handle.await.unwrap();
    let order = probe.order.lock().unwrap().clone();
    assert_eq!(
        order,
        ["high", "unique", "low", "later"],
        "priority first, run_at respected"
    );
    // Once finished, the key is free again.
    let third = enqueue(&app.core, unique).await;
    assert_ne!(third.id, first.id);
}

#[tokio::test]
async fn cron_fires_once_per_tick_across_two_instances() {
    let env = TestEnv::new().await;
    let a = env.spawn(&[]).await;
    let b = env.spawn(&[]).await;
    let probe = Arc::new(Probe {
        cron: Some("* * * * * *".into()),
        ..Default::default()
    });
    let runners = [
        start(&a.core, probe.clone(), config(30_000, 1_000)),
        start(&b.core, probe.clone(), config(30_000, 1_000)),
    ];
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for (stop, handle) in runners {
        stop.cancel();
        handle.await.unwrap();
    }
    use sea_orm::{ConnectionTrait, Statement};
    let db = a.core.db.reader();
    let count = |sql: &str| {
        let sql = sql.to_owned();
        async move {
            let row = db
                .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        }
    };
    let ticks = count("SELECT COUNT(*) FROM cron_ticks WHERE name = 'probe-every-second'").await;
    let jobs = count("SELECT COUNT(*) FROM jobs WHERE agent = 'probe' AND kind = 'noop'").await;
    assert!(ticks >= 3, "{ticks} ticks in 3.5 s");
    assert_eq!(
        jobs, ticks,
        "one job per tick, although two instances run the schedule"
    );
}

#[tokio::test]
async fn graceful_shutdown_hands_running_jobs_back() {
    let app = TestApp::spawn().await;
    let probe = Arc::new(Probe::default());
    let (stop, handle) = start(&app.core, probe.clone(), config(30_000, 300));
    let mut long = job("sleep", "long");
    long.args["ms"] = json!(60_000);
    let long = enqueue(&app.core, long).await;
    let running = wait_status(&app.core, long.id, "running", Duration::from_secs(10)).await;
    assert_eq!(running.attempts, 1);
    stop.cancel();
    handle.await.unwrap();
    let back = app.core.find_job(long.id).await.unwrap().unwrap();
    assert_eq!(back.status, "queued", "the job went back to the queue");
    assert_eq!(back.attempts, 0, "the interrupted attempt does not count");
    // A new runner picks it up.
    let probe2 = Arc::new(Probe::default());
    let (stop, handle) = start(&app.core, probe2.clone(), config(30_000, 300));
    wait_status(&app.core, long.id, "running", Duration::from_secs(10)).await;
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_returns_the_job_to_the_queue() {
    let app = TestApp::spawn().await;
    // A worker that claimed the job and then vanished: no heartbeat ever renews its lease.
    let j = enqueue(&app.core, job("noop", "orphan")).await;
    let claimed = app
        .core
        .claim_jobs(
            "ghost-worker",
            &["probe".into()],
            1,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let probe = Arc::new(Probe::default());
    let (stop, handle) = start(&app.core, probe.clone(), config(300, 300));
    let done = wait_status(&app.core, j.id, "succeeded", Duration::from_secs(10)).await;
    stop.cancel();
    handle.await.unwrap();
    assert_eq!(done.attempts, 2, "the lost attempt counts");
    assert!(
        done.errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("lease expired")
    );
    assert!(
        !app.core
            .complete_job("ghost-worker", j.id, json!({}))
            .await
            .unwrap(),
        "the vanished worker cannot finish it"
    );
}
