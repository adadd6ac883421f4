//! Crash safety: `agentdesk serve` killed with SIGKILL in the middle of a write load loses no
//! write it acknowledged. After a restart on the same database every acknowledged create and
//! patch is there with its audit event, the audit chain is valid, and every acknowledged job
//! ends, its rows imported exactly once.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentdesk_tests::TestEnv;
use serde_json::{Value, json};
use tokio::sync::Mutex;

const ADMIN_EMAIL: &str = "crash-admin@test.local";
const ADMIN_PASSWORD: &str = "crash-admin-password-1";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(env: &TestEnv, data: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_agentdesk"))
        .env_clear()
        .env("AGENTDESK_DATA_DIR", data)
        .env("AGENTDESK_DATABASE_URL", env.database_url())
        .env("AGENTDESK_BIND", format!("127.0.0.1:{port}"))
        .env("AGENTDESK_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("AGENTDESK_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("AGENTDESK_JOB_LEASE_SECS", "4")
        .env("AGENTDESK_JOB_POLL_MS", "100")
        .env(
            "AGENTDESK_JWT_SECRET",
            "test-secret-test-secret-test-secret-0123",
        )
        .env("AGENTDESK_LOG", "warn")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts")
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server gets ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn login(http: &reqwest::Client, base: &str) -> String {
    let r: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["access_token"].as_str().expect("logged in").to_owned()
}

/// What the server acknowledged before it was killed.
#[derive(Default)]
struct Acknowledged {
    /// Client id → name, for every 201 to a create.
    created: HashMap<String, String>,
    /// Client id → notes, for every 200 to a patch.
    patched: HashMap<String, String>,
    /// Import job id → the tag its rows carry and how many rows it had.
    imports: HashMap<String, (String, usize)>,
}

const IMPORT_ROWS: usize = 5;

/// One writer: creates a client, patches it, now and then starts an import, until the server
/// stops answering. Only 2xx answers are recorded.
async fn writer(
    http: reqwest::Client,
    base: String,
    token: String,
    n: usize,
    seen: Arc<Mutex<Acknowledged>>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let name = format!("Writer {n} client {i}");
        let Ok(r) = http
            .post(format!("{base}/api/v1/clients"))
            .bearer_auth(&token)
            .json(&json!({"name": name, "email": format!("w{n}-{i}@crash.test")}))
            .send()
            .await
        else {
            return;
        };
        if r.status() != 201 {
            assert!(!r.status().is_client_error(), "a create refused: {r:?}");
            continue;
        }
        let Ok(created) = r.json::<Value>().await else {
            return;
        };
        let id = created["id"].as_str().unwrap().to_owned();
        seen.lock().await.created.insert(id.clone(), name);
        let notes = format!("patched {n}-{i}");
        let Ok(r) = http
            .patch(format!("{base}/api/v1/clients/{id}"))
            .bearer_auth(&token)
            .json(&json!({"notes": notes}))
            .send()
            .await
        else {
            return;
        };
        if r.status() == 200 {
            seen.lock().await.patched.insert(id, notes);
        }
        if i % 10 == 0 {
            let tag = format!("import-{n}-{i}");
            let mut csv = String::from("name,email,tags\n");
            for row in 0..IMPORT_ROWS {
                csv.push_str(&format!("Imported {row},{tag}-{row}@crash.test,{tag}\n"));
            }
            let Ok(r) = http
                .post(format!("{base}/api/v1/clients/import"))
                .bearer_auth(&token)
                .header("content-type", "text/csv")
                .body(csv)
                .send()
                .await
            else {
                return;
            };
            if r.status() == 202
                && let Ok(job) = r.json::<Value>().await
            {
                let id = job["id"].as_str().unwrap().to_owned();
                seen.lock().await.imports.insert(id, (tag, IMPORT_ROWS));
            }
        }
    }
}

/// Every item of a list route, following its cursors.
async fn all_items(http: &reqwest::Client, base: &str, token: &str, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{base}{path}{sep}limit=200&cursor={c}"),
            None => format!("{base}{path}{sep}limit=200"),
        };
        let page: Value = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        items.extend(page["items"].as_array().expect("a page").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
}

#[tokio::test]
async fn sigkill_under_a_write_load_loses_no_acknowledged_write() {
    let env = TestEnv::new().await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut server = serve(&env, data.path(), port);
    wait_ready(&http, &base).await;
    let token = login(&http, &base).await;

    let seen = Arc::new(Mutex::new(Acknowledged::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|n| {
            tokio::spawn(writer(
                http.clone(),
                base.clone(),
                token.clone(),
                n,
                seen.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // Kill it once the load is well under way (some imports acknowledged, so some jobs are
    // queued or running at the kill).
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = seen.lock().await;
        if seen.imports.len() >= 3 && seen.created.len() >= 100 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the load makes progress: {} created",
            seen.created.len()
        );
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner();
    eprintln!(
        "killed after {:?}: {} creates, {} patches, {} imports acknowledged",
        started.elapsed(),
        seen.created.len(),
        seen.patched.len(),
        seen.imports.len()
    );

    let mut server = serve(&env, data.path(), port);
    wait_ready(&http, &base).await;
    let token = login(&http, &base).await;

    // Every acknowledged create and patch survived.
    let clients = all_items(&http, &base, &token, "/api/v1/clients").await;
    let by_id: HashMap<&str, &Value> = clients
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c))
        .collect();
    for (id, name) in &seen.created {
        let client = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("acknowledged client {id} ({name}) is gone after the crash"));
        assert_eq!(client["name"], *name);
    }
    for (id, notes) in &seen.patched {
        assert_eq!(by_id[id.as_str()]["notes"], *notes, "patch of {id} lost");
    }
    // And its audit event, in a chain that is still valid.
    let audited = |action: &'static str| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            all_items(
                &http,
                &base,
                &token,
                &format!("/api/v1/audit/events?action={action}"),
            )
            .await
            .iter()
            .filter_map(|e| e["resource_id"].as_str().map(str::to_owned))
            .collect::<HashSet<String>>()
        }
    };
    let creates = audited("client.create").await;
    let updates = audited("client.update").await;
    for id in seen.created.keys() {
        assert!(
            creates.contains(id),
            "no audit event for the create of {id}"
        );
    }
    for id in seen.patched.keys() {
        assert!(updates.contains(id), "no audit event for the patch of {id}");
    }
    let verify: Value = http
        .get(format!("{base}/api/v1/audit/verify"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verify["valid"], true, "{verify}");

    // Every acknowledged import ends, its rows there exactly once (a job the kill interrupted
    // runs again when its lease expires; one that had finished is not run again).
    let deadline = Instant::now() + Duration::from_secs(120);
    for (job, (tag, rows)) in &seen.imports {
        let finished = loop {
            let job: Value = http
                .get(format!("{base}/api/v1/jobs/{job}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if job["status"] == "succeeded" || job["status"] == "failed" {
                break job;
            }
            assert!(Instant::now() < deadline, "job {job} never ends");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(finished["status"], "succeeded", "{finished}");
        let imported = all_items(&http, &base, &token, &format!("/api/v1/clients?tag={tag}")).await;
        assert_eq!(imported.len(), *rows, "rows of {tag}: {imported:?}");
    }

    server.kill().unwrap();
    server.wait().unwrap();
}
