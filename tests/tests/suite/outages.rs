//! Outages of the services the server depends on, played by a proxy between them that a test
//! takes down and brings back (the shared PostgreSQL and Redis of the suite stay up for the
//! other tests): requests fail fast with a clear 503, `/readyz` says which check fails, and the
//! instance recovers by itself when the service is back.

use std::time::{Duration, Instant};

use agentdesk_tests::proxy::OutageProxy;
use agentdesk_tests::{Backend, TestApp, TestEnv, backend, eventually, redis_url};
use reqwest::Method;
use serde_json::{Value, json};

/// `url` with its `host:port` replaced by `addr`.
fn through(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"));
    format!("{scheme}://{}{addr}/{path}", user.unwrap_or_default())
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, hp)| hp)
        .to_owned()
}

/// A request that must end in a success or a 503 `database_unavailable` while the database is
/// away; anything else (another 5xx above all) fails the test.
fn outage_answer(r: &agentdesk_tests::Reply, what: &str) -> bool {
    if r.status.is_success() {
        return true;
    }
    assert_eq!(r.status.as_u16(), 503, "{what}: {} {}", r.status, r.text);
    assert_eq!(r.json["code"], "database_unavailable", "{what}: {}", r.json);
    assert!(r.header("retry-after").is_some(), "{what}: Retry-After");
    false
}

#[tokio::test]
async fn postgres_going_away_answers_503_at_once_and_the_instance_recovers_by_itself() {
    if backend() != Backend::Postgres {
        return;
    }
    let env = TestEnv::new().await;
    let proxy = OutageProxy::start(&host_port(env.database_url())).await;
    let app = env
        .spawn(&[(
            "database_url",
            json!(through(env.database_url(), proxy.addr())),
        )])
        .await;
    let admin = app.admin_token().await;
    let client = app
        .post("/api/v1/clients", &admin, json!({"name": "Before"}))
        .await;
    client.expect(201, None);
    let id = client.json["id"].as_str().unwrap().to_owned();

    proxy.cut().await;
    // The first requests find the database gone (a reset, or no connection within the pool's
    // timeout); from then on the breaker answers at once.
    let mut acknowledged: Vec<Value> = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    while refused < 3 {
        let r = app
            .post("/api/v1/clients", &admin, json!({"name": "During"}))
            .await;
        if outage_answer(&r, "create during the outage") {
            acknowledged.push(r.json.clone());
        } else {
            refused += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the outage is noticed"
        );
    }
    eprintln!(
        "PostgreSQL away: 3 creates refused {:?} after the cut ({} acknowledged)",
        started.elapsed(),
        acknowledged.len()
    );
    for path in [
        format!("/api/v1/clients/{id}"),
        "/api/v1/clients?limit=5".to_owned(),
        "/api/v1/audit/events?limit=5".to_owned(),
    ] {
        let asked = Instant::now();
        let r = app.get(&path, &admin).await;
        assert!(!outage_answer(&r, &path), "{path} answered from nowhere");
        // Fail fast: not the pool's 10-second wait for a connection.
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            asked.elapsed()
        );
    }
    let patch = app
        .patch(
            &format!("/api/v1/clients/{id}"),
            &admin,
            json!({"notes": "lost?"}),
        )
        .await;
    assert!(!outage_answer(&patch, "patch during the outage"));
    let ready = app.request(Method::GET, "/readyz", None, None).await;
    ready.expect(503, Some("not_ready"));
    assert!(
        ready.json["detail"].as_str().unwrap().contains("database"),
        "{}",
        ready.json
    );
    // Liveness does not depend on the database: the process is fine, it must not be restarted.
    app.request(Method::GET, "/livez", None, None)
        .await
        .expect(200, None);

    proxy.restore();
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.request(Method::GET, "/readyz", None, None)
                .await
                .status
                .is_success()
        })
        .await,
        "/readyz recovers"
    );
    eprintln!("PostgreSQL back: ready again after {:?}", back.elapsed());
    let r = app.get(&format!("/api/v1/clients/{id}"), &admin).await;
    r.expect(200, None);
    assert!(r.json["notes"].is_null(), "the refused patch left nothing");
    let after = app
        .post("/api/v1/clients", &admin, json!({"name": "After"}))
        .await;
    after.expect(201, None);
    for created in &acknowledged {
        app.get(
            &format!("/api/v1/clients/{}", created["id"].as_str().unwrap()),
            &admin,
        )
        .await
        .expect(200, None);
    }
    // The audit chain went on where it stopped: the write after the outage is in it, valid.
    let after_id = after.json["id"].as_str().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.get(
                &format!("/api/v1/audit/events?resource_id={after_id}"),
                &admin,
            )
            .await
            .json["items"]
                .as_array()
                .is_some_and(|items| !items.is_empty())
        })
        .await,
        "the write after the outage is audited"
    );
    app.assert_audited(&admin, &["client.create"]).await;
    // Jobs too: the queue's runner picks up again.
    let import = TestApp::read(
        app.client
            .post(format!("{}/api/v1/clients/import", app.base))
            .bearer_auth(&admin)
            .header("content-type", "text/csv")
            .body("name,email\nImported,imported@example.com\n")
            .send()
            .await
            .unwrap(),
    )
    .await;
    import.expect(202, None);
    let job = import.json["id"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.get(&format!("/api/v1/jobs/{job}"), &admin).await.json["status"] == "succeeded"
        })
        .await,
        "a job after the outage runs"
    );
}

#[tokio::test]
async fn redis_going_away_keeps_logins_working_and_revocation_reaches_every_instance_once_it_is_back()
 {
    let Some(redis) = redis_url() else {
        return;
    };
    let env = TestEnv::new().await;
    let proxy = OutageProxy::start(&host_port(&redis)).await;
    let redis = json!(through(&redis, proxy.addr()).trim_end_matches('/'));
    // A long session cache, so that only the invalidation bus can end a session early on B.
    let settings = [("redis_url", redis), ("session_cache_ttl_secs", json!(60))];
    let a = env.spawn(&settings).await;
    let b = env.spawn(&settings).await;
    let (token, refresh) = a
        .tokens("admin@test.local", agentdesk_tests::ADMIN_PASSWORD)
        .await;
    b.get("/api/v1/auth/me", &token).await.expect(200, None);

    proxy.cut().await;
    // Readiness names Redis; logins go on, counted per instance; reads do not need Redis.
    let ready = a.request(Method::GET, "/readyz", None, None).await;
    ready.expect(503, Some("not_ready"));
    assert!(
        ready.json["detail"].as_str().unwrap().contains("redis"),
        "{}",
        ready.json
    );
    let (other, _) = a
        .tokens("admin@test.local", agentdesk_tests::ADMIN_PASSWORD)
        .await;
    a.get("/api/v1/clients?limit=1", &other)
        .await
        .expect(200, None);
    // The rate limit still holds on this instance while Redis is away.
    let mut limited = false;
    for _ in 0..30 {
        let r = a.login("admin@test.local", "wrong password").await;
        if r.status.as_u16() == 429 {
            limited = true;
            break;
        }
        r.expect(401, Some("invalid_credentials"));
    }
    assert!(limited, "failed logins are still limited without Redis");
    // A revocation on A while the bus is down: A applies it at once.
    a.request(
        Method::POST,
        "/api/v1/auth/logout",
        Some(&token),
        Some(json!({"refresh_token": refresh})),
    )
    .await
    .expect(204, None);
    a.get("/api/v1/auth/me", &token).await.expect(401, None);

    proxy.restore();
    // Once Redis is back, B resubscribes and drops what it may have missed: within a second.
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            b.get("/api/v1/auth/me", &token).await.status.as_u16() == 401
        })
        .await,
        "B rejects the revoked session once Redis is back"
    );
    let took = back.elapsed();
    eprintln!("Redis back: B rejects the revoked session after {took:?}");
    // About 0.4 s here (the listener retries every 500 ms); the bound leaves room for a loaded
    // machine while still telling the bus apart from the 60-second cache expiry.
    assert!(
        took < Duration::from_secs(3),
        "revocation reached B {took:?} after Redis came back"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.request(Method::GET, "/readyz", None, None)
                .await
                .status
                .is_success()
        })
        .await,
        "A is ready again"
    );
    drop(b);
    drop(a);
}

/// Storage that cannot be written: uploads fail with a clear 503, nothing half-written is left,
/// and once it is writable again uploads work.
#[tokio::test]
async fn unwritable_storage_fails_uploads_clearly_and_leaves_nothing_behind() {
    let env = TestEnv::new().await;
    let files = tempfile::tempdir().unwrap();
    let root = files.path().join("store");
    let app = env
        .spawn(&[("storage_url", json!(format!("file://{}", root.display())))])
        .await;
    let admin = app.admin_token().await;
    let client = app
        .post("/api/v1/clients", &admin, json!({"name": "Files"}))
        .await;
    let client = client.json["id"].as_str().unwrap().to_owned();
    let pdf = agentdesk_tests::tiny_pdf(&["stored twice"]);

    // Even root cannot write below a path whose parent is a plain file.
    let _ = std::fs::remove_dir_all(&root);
    std::fs::write(&root, b"not a folder").unwrap();
    let r = app
        .upload_document(&admin, &client, "a.pdf", pdf.clone())
        .await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.text);
    assert_eq!(r.json["code"], "service_unavailable", "{}", r.json);
    let listed = app
        .get(&format!("/api/v1/clients/{client}/documents"), &admin)
        .await;
    listed.expect(200, None);
    assert_eq!(
        listed.json["items"].as_array().map(Vec::len),
        Some(0),
        "no document row without its file: {}",
        listed.json
    );

    std::fs::remove_file(&root).unwrap();
    let r = app.upload_document(&admin, &client, "a.pdf", pdf).await;
    r.expect(202, None);
}

#[test]
fn urls_are_rewritten_through_the_proxy() {
    let addr: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
    assert_eq!(
        through("postgres://postgres@127.0.0.1:5432/db_1", addr),
        "postgres://postgres@127.0.0.1:4000/db_1"
    );
    assert_eq!(
        through("redis://127.0.0.1:6379", addr),
        "redis://127.0.0.1:4000/"
    );
    assert_eq!(host_port("redis://127.0.0.1:6379"), "127.0.0.1:6379");
    assert_eq!(
        host_port("postgres://postgres@127.0.0.1:5432/x"),
        "127.0.0.1:5432"
    );
}

/// The breaker itself, on every database: once a request has found the database out of reach,
/// `/api` answers 503 at once while `/healthz` does not depend on it, and the probe closes the
/// breaker as soon as a ping succeeds.
#[tokio::test]
async fn the_breaker_answers_503_until_the_probe_finds_the_database() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    // What the API layer does when a response says the database was out of reach; here the
    // database answers, so the first probe (250 ms) closes the breaker again.
    // (Up to three tries, in case a loaded machine lets the probe run before the request.)
    let mut refused = false;
    for _ in 0..3 {
        app.core.db.report_unreachable();
        assert!(app.core.db.is_down());
        let r = app.get("/api/v1/clients?limit=1", &admin).await;
        if !outage_answer(&r, "a read while the breaker is open") {
            refused = true;
            break;
        }
    }
    assert!(refused, "the open breaker refuses /api requests");
    app.request(Method::GET, "/healthz", None, None)
        .await
        .expect(200, None);
    assert!(
        eventually(Duration::from_secs(5), || async { !app.core.db.is_down() }).await,
        "the probe closes the breaker"
    );
    app.get("/api/v1/clients?limit=1", &admin)
        .await
        .expect(200, None);
}
