//! `agentdesk worker` as a separate process: it serves health and metrics, works the queue,
//! and when it is killed with SIGKILL mid-job another worker completes the job.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentdesk_tests::{TestApp, TestEnv};
use serde_json::json;

/// The two tests run one after the other: the audio worker's transcription takes every core,
/// and a worker starved of CPU misses its heartbeats, so a lease would expire for no fault of
/// the code under test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The lease of a worker that a test kills: short, so that the next worker takes its job soon.
const KILLED_LEASE_SECS: u64 = 4;
/// The lease of the worker that finishes the job. A worker starved of CPU (a busy CI machine
/// running other tests' transcriptions) can miss heartbeats for seconds; with a 4 s lease that
/// ended its attempt and began a third. 12 s tolerates an 8 s stall and still looks for expired
/// jobs every 4 s.
const FINISHING_LEASE_SECS: u64 = 12;

/// `agentdesk worker --agents <agent>` on the test's database and storage, with a lease of
/// `lease_secs`; its log (warnings and errors) goes to `worker-<port>.log` in `data`.
fn spawn_agent_worker(
    env: &TestEnv,
    storage: &str,
    data: &std::path::Path,
    port: u16,
    agent: &str,
    models: Option<&std::path::Path>,
    lease_secs: u64,
) -> Child {
    let log = std::fs::File::create(data.join(format!("worker-{port}.log")))
        .expect("the worker's log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentdesk"));
    command.env_clear();
    if let Some(models) = models {
        command.env("AGENTDESK_MODELS_DIR", models);
    }
    command
        .env("AGENTDESK_DATA_DIR", data)
        .env("AGENTDESK_DATABASE_URL", env.database_url())
        .env("AGENTDESK_STORAGE_URL", storage)
        .env("AGENTDESK_WORKER_BIND", format!("127.0.0.1:{port}"))
        .env("AGENTDESK_JOB_LEASE_SECS", lease_secs.to_string())
        .env("AGENTDESK_JOB_POLL_MS", "100")
        .env(
            "AGENTDESK_JWT_SECRET",
            "test-secret-test-secret-test-secret-0123",
        )
        .env("AGENTDESK_LOG", "warn")
        .args(["worker", "--agents", agent])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the worker starts")
}

fn spawn_worker(
    env: &TestEnv,
    storage: &str,
    data: &std::path::Path,
    port: u16,
    lease_secs: u64,
) -> Child {
    spawn_agent_worker(
        env,
        storage,
        data,
        port,
        "client_management",
        None,
        lease_secs,
    )
}

/// What the workers of a test logged, for the message of a failed assertion.
fn worker_logs(data: &std::path::Path) -> String {
    let mut logs: Vec<_> = std::fs::read_dir(data)
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    logs.iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            format!("--- {}\n{text}", p.display())
        })
        .collect()
}

#[tokio::test]
async fn a_killed_workers_job_is_completed_by_another_worker() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let files = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", files.path().display());
    // The API instance runs no workers of its own.
    let app = env
        .spawn(&[
            ("agents", json!("none")),
            ("storage_url", json!(storage.clone())),
        ])
        .await;
    let admin = app.admin_token().await;
    let rows = 20_000;
    let mut csv = String::from("name,email,tags\n");
    for i in 0..rows {
        csv.push_str(&format!("Client {i},client{i}@example.com,batch\n"));
    }
    let r = TestApp::read(
        app.client
            .post(format!("{}/api/v1/clients/import", app.base))
            .bearer_auth(&admin)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(202, None);
    let job_id: uuid::Uuid = r.json["id"].as_str().unwrap().parse().unwrap();

    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = spawn_worker(&env, &storage, data.path(), port, KILLED_LEASE_SECS);
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker serves /healthz"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(
        client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Wait until the first worker is in the middle of the job, then kill it.
    loop {
        let job = app.core.find_job(job_id).await.unwrap().unwrap();
        if job.status == "running" && job.progress > 0 {
            break;
        }
        assert!(
            job.status != "succeeded",
            "the import finished before it could be interrupted; make it longer"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the worker took the job: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let agents = app.get("/api/v1/agents", &admin).await;
    let cm = agents
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "client_management")
        .unwrap()
        .clone();
    assert_eq!(cm["queue"]["running"], 1, "{cm}");

    let mut second = spawn_worker(
        &env,
        &storage,
        data.path(),
        free_port(),
        FINISHING_LEASE_SECS,
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let job = loop {
        let job = app.core.find_job(job_id).await.unwrap().unwrap();
        if job.status == "succeeded" || job.status == "failed" {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "the second worker completes the job: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(
        job.status,
        "succeeded",
        "{job:?}\n{}",
        worker_logs(data.path())
    );
    assert_eq!(
        job.attempts,
        2,
        "the killed attempt and the one that finished; the workers logged:\n{}",
        worker_logs(data.path())
    );
    assert!(
        job.errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("lease expired")
    );
    let result = job.result.unwrap();
    let (created, skipped) = (
        result["created"].as_u64().unwrap(),
        result["skipped"].as_u64().unwrap(),
    );
    assert_eq!(created + skipped, rows, "{result}");
    // Every row exactly once: batches the killed worker committed are found by email, not duplicated.
    let listed = app.get("/api/v1/clients?tag=batch&limit=1", &admin).await;
    assert!(listed.json["next_cursor"].is_string());
    use sea_orm::{ConnectionTrait, Statement};
    let db = app.core.db.reader();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) FROM clients WHERE deleted_at IS NULL".to_owned(),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get_by_index::<i64>(0).unwrap() as u64, rows);
}

/// The audio agent as a worker process of its own: the API instance only stores the upload;
/// the worker, with the speech model on its machine, transcribes it.
#[tokio::test]
async fn the_audio_agent_runs_as_a_worker_of_its_own() {
    if !agentdesk_tests::speech_model_available() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let models = agentdesk_tests::speech_models_dir().expect("checked above");
    let env = TestEnv::new().await;
    let files = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", files.path().display());
    let no_models = tempfile::tempdir().unwrap();
    let app = env
        .spawn(&[
            ("agents", json!("none")),
            ("storage_url", json!(storage.clone())),
            // The API machine has no model: the worker's is the one that counts.
            ("models_dir", json!(no_models.path().display().to_string())),
        ])
        .await;
    let admin = app.admin_token().await;
    let client = app
        .post("/api/v1/clients", &admin, json!({"name": "Remote"}))
        .await;
    let client = client.json["id"].as_str().unwrap().to_owned();
    let wav = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/corpus/audio/ps_goforward.wav"),
    )
    .unwrap();
    let part = reqwest::multipart::Part::bytes(wav).file_name("goforward.wav");
    let r = TestApp::read(
        app.client
            .post(format!("{}/api/v1/clients/{client}/recordings", app.base))
            .bearer_auth(&admin)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(202, None);
    let id = r.json["id"].as_str().unwrap().to_owned();

    let data = tempfile::tempdir().unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_agentdesk"))
        .env_clear()
        .env("AGENTDESK_DATA_DIR", data.path())
        .env("AGENTDESK_DATABASE_URL", env.database_url())
        .env("AGENTDESK_STORAGE_URL", &storage)
        .env("AGENTDESK_MODELS_DIR", &models)
        .env(
            "AGENTDESK_WORKER_BIND",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("AGENTDESK_JOB_POLL_MS", "100")
        .env(
            "AGENTDESK_JWT_SECRET",
            "test-secret-test-secret-test-secret-0123",
        )
        .env("AGENTDESK_LOG", "warn")
        .args(["worker", "--agents", "audio_recording"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the worker starts");
    let deadline = Instant::now() + Duration::from_secs(180);
    let recording = loop {
        let r = app.get(&format!("/api/v1/recordings/{id}"), &admin).await;
        if r.json["status"] == "ready" || r.json["status"] == "failed" {
            break r.json;
        }
        assert!(
            Instant::now() < deadline,
            "the worker transcribes: {}",
            r.json
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The worker announces the agent it can run: healthy, in worker mode.
    let agents = app.get("/api/v1/agents", &admin).await;
    let audio = agents
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "audio_recording")
        .unwrap()
        .clone();
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(recording["status"], "ready", "{recording}");
    let text = app
        .get(
            &format!("/api/v1/recordings/{id}/transcript?format=txt"),
            &admin,
        )
        .await
        .text
        .to_lowercase();
    assert!(text.contains("forward"), "{text}");
    assert_eq!(audio["healthy"], true, "{audio}");
    assert_eq!(audio["mode"], "worker", "{audio}");
}

/// Waits until `worker` runs the job, lets it work `ms` more, SIGKILLs it, and checks that the
/// job was still running (`longer` says how to make the work last if not).
async fn kill_while_running(
    app: &agentdesk_tests::TestApp,
    job_id: uuid::Uuid,
    mut worker: Child,
    ms: u64,
    longer: &str,
) {
    let started = Instant::now();
    loop {
        let job = app.core.find_job(job_id).await.unwrap().unwrap();
        if job.status == "running" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the worker took the job: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Well into the work, not at its very start.
    tokio::time::sleep(Duration::from_millis(ms)).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let killed = app.core.find_job(job_id).await.unwrap().unwrap();
    assert_eq!(killed.status, "running", "{longer}");
}

/// The id of the only job of `agent`, once there is one.
async fn only_job(app: &agentdesk_tests::TestApp, agent: &str) -> uuid::Uuid {
    use sea_orm::{ConnectionTrait, Statement};
    let db = app.core.db.reader();
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            match db.get_database_backend() {
                sea_orm::DatabaseBackend::Postgres => "SELECT id FROM jobs WHERE agent = $1",
                _ => "SELECT id FROM jobs WHERE agent = ?",
            },
            [agent.into()],
        ))
        .await
        .unwrap()
        .expect("the job was queued");
    row.try_get_by_index::<uuid::Uuid>(0).unwrap()
}

/// The PDF agent's worker killed while it extracts a long document: another worker extracts it
/// again, and the document ends `ready` with every page once.
#[tokio::test]
async fn a_killed_pdf_workers_document_is_finished_by_another_worker() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let files = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", files.path().display());
    let app = env
        .spawn(&[
            ("agents", json!("none")),
            ("storage_url", json!(storage.clone())),
        ])
        .await;
    let admin = app.admin_token().await;
    let client = app
        .post("/api/v1/clients", &admin, json!({"name": "Paper"}))
        .await;
    let client = client.json["id"].as_str().unwrap().to_owned();
    let pages: Vec<String> = (1..=PDF_PAGES)
        .map(|n| format!("page {n} of the long file"))
        .collect();
    let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
    let r = app
        .upload_document(
            &admin,
            &client,
            "long.pdf",
            agentdesk_tests::tiny_pdf(&pages),
        )
        .await;
    r.expect(202, None);
    let document = r.json["id"].as_str().unwrap().to_owned();
    let job_id = only_job(&app, "pdf_processing").await;

    let data = tempfile::tempdir().unwrap();
    let spawn = |port: u16, lease_secs: u64| {
        spawn_agent_worker(
            &env,
            &storage,
            data.path(),
            port,
            "pdf_processing",
            None,
            lease_secs,
        )
    };
    kill_while_running(
        &app,
        job_id,
        spawn(free_port(), KILLED_LEASE_SECS),
        300,
        "the extraction ended before it could be interrupted; make the file longer",
    )
    .await;

    let mut second = spawn(free_port(), FINISHING_LEASE_SECS);
    let restarted = Instant::now();
    let processed = app
        .processed_document(&admin, &document, Duration::from_secs(300))
        .await;
    eprintln!(
        "{PDF_PAGES} pages: extracted {:?} after the second worker started (leases: {KILLED_LEASE_SECS} s, then {FINISHING_LEASE_SECS} s)",
        restarted.elapsed()
    );
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(
        processed["status"],
        "ready",
        "{processed}\n{}",
        worker_logs(data.path())
    );
    assert_eq!(processed["page_count"], PDF_PAGES, "{processed}");
    let job = app.core.find_job(job_id).await.unwrap().unwrap();
    assert_eq!(
        job.status,
        "succeeded",
        "{job:?}\n{}",
        worker_logs(data.path())
    );
    assert_eq!(
        job.attempts,
        2,
        "the killed attempt and the one that finished; the workers logged:\n{}",
        worker_logs(data.path())
    );
    // One text row per page: the killed attempt left no half-written extraction.
    let text = app
        .get(&format!("/api/v1/documents/{document}/text?page=1"), &admin)
        .await;
    text.expect(200, None);
    assert_eq!(
        text.json["pages"].as_array().map(Vec::len),
        Some(1),
        "{}",
        text.json
    );
}

const PDF_PAGES: u64 = 10_000;

/// The reports agent's worker killed while it writes a report over many clients: another worker
/// makes the report again, and the file holds every client once.
#[tokio::test]
async fn a_killed_reports_workers_report_is_made_by_another_worker() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let files = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", files.path().display());
    // Imports run here; reports only in the worker processes.
    let app = env
        .spawn(&[
            ("agents", json!("client_management")),
            ("storage_url", json!(storage.clone())),
        ])
        .await;
    let admin = app.admin_token().await;
    let mut csv = String::from("name,email\n");
    for i in 0..REPORT_CLIENTS {
        csv.push_str(&format!("Client {i},report{i}@example.com\n"));
    }
    let r = TestApp::read(
        app.client
            .post(format!("{}/api/v1/clients/import", app.base))
            .bearer_auth(&admin)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(202, None);
    let import: uuid::Uuid = r.json["id"].as_str().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while app.core.find_job(import).await.unwrap().unwrap().status != "succeeded" {
        assert!(Instant::now() < deadline, "the import ends");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = app
        .post(
            "/api/v1/reports",
            &admin,
            json!({"kind": "client_summary", "format": "csv"}),
        )
        .await;
    r.expect(202, None);
    let report = r.json["id"].as_str().unwrap().to_owned();
    let job_id = only_job(&app, "reports_analysis").await;

    let data = tempfile::tempdir().unwrap();
    let spawn = |port: u16, lease_secs: u64| {
        spawn_agent_worker(
            &env,
            &storage,
            data.path(),
            port,
            "reports_analysis",
            None,
            lease_secs,
        )
    };
    kill_while_running(
        &app,
        job_id,
        spawn(free_port(), KILLED_LEASE_SECS),
        200,
        "the report was made before it could be interrupted; use more clients",
    )
    .await;

    let mut second = spawn(free_port(), FINISHING_LEASE_SECS);
    let restarted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    let done = loop {
        let r = app.get(&format!("/api/v1/reports/{report}"), &admin).await;
        if r.json["status"] == "ready" || r.json["status"] == "failed" {
            break r.json;
        }
        assert!(Instant::now() < deadline, "the report is made: {}", r.json);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "a report over {REPORT_CLIENTS} clients: made {:?} after the second worker started (leases: {KILLED_LEASE_SECS} s, then {FINISHING_LEASE_SECS} s)",
        restarted.elapsed()
    );
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(
        done["status"],
        "ready",
        "{done}\n{}",
        worker_logs(data.path())
    );
    let job = app.core.find_job(job_id).await.unwrap().unwrap();
    assert_eq!(
        job.attempts,
        2,
        "the killed attempt and the one that finished; the workers logged:\n{}",
        worker_logs(data.path())
    );
    let file = app
        .get(&format!("/api/v1/reports/{report}/download"), &admin)
        .await;
    file.expect(200, None);
    let rows = file
        .text
        .lines()
        .filter(|l| l.contains("@example.com"))
        .count();
    assert_eq!(rows, REPORT_CLIENTS, "every client once");
}

const REPORT_CLIENTS: usize = 30_000;

/// The audio agent's worker killed while it transcribes: another worker transcribes the
/// recording again, and it ends `ready` with its transcript.
#[tokio::test]
async fn a_killed_audio_workers_recording_is_transcribed_by_another_worker() {
    if !agentdesk_tests::speech_model_available() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let models = agentdesk_tests::speech_models_dir().expect("checked above");
    let env = TestEnv::new().await;
    let files = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", files.path().display());
    let app = env
        .spawn(&[
            ("agents", json!("none")),
            ("storage_url", json!(storage.clone())),
        ])
        .await;
    let admin = app.admin_token().await;
    let client = app
        .post("/api/v1/clients", &admin, json!({"name": "Speaker"}))
        .await;
    let client = client.json["id"].as_str().unwrap().to_owned();
    // About 27 s of read speech: seconds of work for the model.
    let wav = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/corpus/audio/librivox_ss01_concat.wav"),
    )
    .unwrap();
    let part = reqwest::multipart::Part::bytes(wav).file_name("reading.wav");
    let r = TestApp::read(
        app.client
            .post(format!("{}/api/v1/clients/{client}/recordings", app.base))
            .bearer_auth(&admin)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(202, None);
    let recording = r.json["id"].as_str().unwrap().to_owned();
    let job_id = only_job(&app, "audio_recording").await;

    let data = tempfile::tempdir().unwrap();
    let spawn = |port: u16, lease_secs: u64| {
        spawn_agent_worker(
            &env,
            &storage,
            data.path(),
            port,
            "audio_recording",
            Some(&models),
            lease_secs,
        )
    };
    kill_while_running(
        &app,
        job_id,
        spawn(free_port(), KILLED_LEASE_SECS),
        300,
        "the transcription ended before it could be interrupted; use a longer recording",
    )
    .await;

    let mut second = spawn(free_port(), FINISHING_LEASE_SECS);
    let restarted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    let done = loop {
        let r = app
            .get(&format!("/api/v1/recordings/{recording}"), &admin)
            .await;
        if r.json["status"] == "ready" || r.json["status"] == "failed" {
            break r.json;
        }
        assert!(Instant::now() < deadline, "transcribed: {}", r.json);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "27 s of speech: transcribed {:?} after the second worker started (leases: {KILLED_LEASE_SECS} s, then {FINISHING_LEASE_SECS} s)",
        restarted.elapsed()
    );
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(
        done["status"],
        "ready",
        "{done}\n{}",
        worker_logs(data.path())
    );
    let job = app.core.find_job(job_id).await.unwrap().unwrap();
    assert_eq!(
        job.attempts,
        2,
        "the killed attempt and the one that finished; the workers logged:\n{}",
        worker_logs(data.path())
    );
    let text = app
        .get(
            &format!("/api/v1/recordings/{recording}/transcript?format=txt"),
            &admin,
        )
        .await;
    text.expect(200, None);
    assert!(text.text.split_whitespace().count() > 20, "{}", text.text);
}
