//! Upgrades without downtime: a draining instance answers `/readyz` 503 `draining` at once while
//! it finishes what it started, and migrations only expand the schema, so an older build goes on
//! serving (and can start again) on a database that a newer release has migrated.

use std::time::Duration;

use agentdesk_tests::TestEnv;
use futures::StreamExt;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;

#[tokio::test]
async fn a_draining_instance_turns_unready_at_once_and_finishes_in_flight_requests() {
    let env = TestEnv::new().await;
    let mut app = env.spawn(&[("drain_grace_secs", json!(2))]).await;
    let admin = app.admin_token().await;
    app.get("/readyz", &admin).await.expect(200, None);

    // A request whose body is still arriving when the stop comes: a CSV import streamed slowly.
    let chunks = [
        "name,email\n",
        "Slow One,slow1@example.com\n",
        "Slow Two,slow2@example.com\n",
    ];
    let body = futures::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        Ok::<_, std::io::Error>(chunk)
    });
    let in_flight = tokio::spawn(
        app.client
            .post(format!("{}/api/v1/clients/import", app.base))
            .bearer_auth(&admin)
            .header("content-type", "text/csv")
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.signal_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // At once: not ready, with a stable code, while still alive and accepting.
    let ready = app.get("/readyz", &admin).await;
    ready.expect(503, Some("draining"));
    app.get("/livez", &admin).await.expect(200, None);

    let done = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(
        done.status().as_u16(),
        202,
        "the in-flight import was accepted"
    );

    // After the grace period the listener closes.
    let closed = agentdesk_tests::eventually(Duration::from_secs(10), || async {
        reqwest::Client::new()
            .get(format!("{}/livez", app.base))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .is_err()
    })
    .await;
    assert!(closed, "the listener closed after the grace period");
    app.stop().await;
}

/// What a newer release's expand migration does: adds a table and a nullable column, and
/// records itself as applied.
async fn apply_newer_release(core: &agentdesk_core::Core) {
    let backend = core.db.backend();
    let timestamp = if backend == sea_orm::DatabaseBackend::Postgres {
        "EXTRACT(EPOCH FROM now())::BIGINT"
    } else {
        "CAST(strftime('%s','now') AS INTEGER)"
    };
    for sql in [
        "CREATE TABLE release_notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)".to_owned(),
        "ALTER TABLE clients ADD COLUMN loyalty_tier TEXT NULL".to_owned(),
        format!(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m9000_newer_release', {timestamp})"
        ),
    ] {
        core.db
            .writer()
            .execute_raw(Statement::from_string(backend, sql))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_older_build_serves_and_restarts_on_a_schema_a_newer_release_expanded() {
    let env = TestEnv::new().await;
    let old = env.spawn(&[]).await;
    let admin = old.admin_token().await;
    let before = old
        .post(
            "/api/v1/clients",
            &admin,
            json!({"name": "Before the upgrade"}),
        )
        .await;
    before.expect(201, None);
    let id = before.json["id"].as_str().unwrap().to_owned();

    // The newer release migrates while the old build serves: the old build's reads and writes
    // go on working on the expanded schema.
    apply_newer_release(&old.core).await;
    old.post(
        "/api/v1/clients",
        &admin,
        json!({"name": "During the upgrade"}),
    )
    .await
    .expect(201, None);
    old.patch(
        &format!("/api/v1/clients/{id}"),
        &admin,
        json!({"company": "Still editable"}),
    )
    .await
    .expect(200, None);
    let listed = old.get("/api/v1/clients?limit=10", &admin).await;
    listed.expect(200, None);
    assert_eq!(listed.json["items"].as_array().unwrap().len(), 2);
    old.stop().await;

    // The old build also starts again on it (a rollback): its own migrations are all there, so
    // it serves the newer schema as it is.
    let again = env.spawn(&[]).await;
    let admin = again.admin_token().await;
    let version = again.get("/version", &admin).await;
    version.expect(200, None);
    assert_eq!(
        version.json["database_schema_version"],
        "m9000_newer_release"
    );
    assert_eq!(
        version.json["schema_version"].as_str(),
        agentdesk_core::migration::known_migrations()
            .last()
            .map(String::as_str)
    );
    again
        .get(&format!("/api/v1/clients/{id}"), &admin)
        .await
        .expect(200, None);
    again
        .post(
            "/api/v1/clients",
            &admin,
            json!({"name": "After the rollback"}),
        )
        .await
        .expect(201, None);
    assert!(again.core.verify_audit().await.unwrap().valid);
    again.stop().await;
}

#[tokio::test]
async fn a_database_with_newer_migrations_but_not_all_of_ours_is_refused() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[]).await;
    apply_newer_release(&app.core).await;
    let last = agentdesk_core::migration::known_migrations().pop().unwrap();
    app.core
        .db
        .writer()
        .execute_raw(Statement::from_sql_and_values(
            app.core.db.backend(),
            "DELETE FROM seaql_migrations WHERE version = $1",
            [last.clone().into()],
        ))
        .await
        .unwrap();
    let err = app.core.db.migrate().await.unwrap_err().to_string();
    assert!(
        err.contains("m9000_newer_release") && err.contains(&last),
        "the error names both sides: {err}"
    );
    app.stop().await;
}
