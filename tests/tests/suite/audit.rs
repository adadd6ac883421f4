//! The audit log: what is recorded, secrets never, queries and paging, the hash chain under
//! concurrent writers, tamper detection, streamed export and client scope.

use agentdesk_core::RequestMeta;
use agentdesk_core::services::audit::{AuditRecord, Outcome};
use agentdesk_tests::{ADMIN_PASSWORD, TestApp, unique_email};
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
use serde_json::{Value, json};

/// What the chain triggers say when they refuse an event.
const HEAD_MOVED: &str = "audit chain head moved";

async fn events(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/api/v1/audit/events?limit=200&{query}"), token)
        .await;
    r.expect(200, None);
    r.json["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn logins_changes_and_denials_are_recorded_without_secrets() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.login("admin@test.local", "wrong-password-123")
        .await
        .expect(401, None);
    app.login("ghost@test.local", "another-wrong-pass")
        .await
        .expect(401, None);
    let email = unique_email("aud");
    let user = app
        .create_user(&admin, &email, "secret-password-77", "member")
        .await;
    let uid = user["id"].as_str().unwrap();
    app.patch(
        &format!("/api/v1/users/{uid}"),
        &admin,
        json!({"full_name": "Renamed", "password": "reset-password-88"}),
    )
    .await
    .expect(200, None);
    let (member, _) = app.tokens(&email, "reset-password-88").await;
    app.get("/api/v1/users", &member).await.expect(403, None);

    let all = events(&app, &admin, "").await;
    let text = serde_json::to_string(&all).unwrap();
    for secret in [
        "wrong-password-123",
        "another-wrong-pass",
        "secret-password-77",
        "reset-password-88",
        ADMIN_PASSWORD,
        "argon2",
        &admin,
        &member,
    ] {
        assert!(
            !text.contains(secret),
            "a secret is in the audit log: {secret}"
        );
    }
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for expected in [
        "auth.login",
        "auth.login_failed",
        "user.create",
        "user.update",
        "users.read",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let failed = events(&app, &admin, "action=auth.login_failed").await;
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|e| e["outcome"] == "denied"));
    assert!(
        failed
            .iter()
            .any(|e| e["actor_email"] == "ghost@test.local" && e["actor_id"].is_null())
    );
    let update = &events(
        &app,
        &admin,
        &format!("action=user.update&resource_id={uid}"),
    )
    .await[0];
    assert_eq!(update["changes"]["before"]["full_name"], "Test User");
    assert_eq!(update["changes"]["after"]["full_name"], "Renamed");
    assert_eq!(update["changes"]["after"]["password"], "[changed]");
    assert_eq!(update["resource_type"], "user");
    assert!(update["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(update["ip"].as_str().is_some());
    let denied = events(&app, &admin, "outcome=denied&action=users.read").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["actor_email"], email.as_str());
    // One event by id.
    let id = update["id"].as_str().unwrap();
    let one = app.get(&format!("/api/v1/audit/events/{id}"), &admin).await;
    one.expect(200, None);
    assert_eq!(&one.json, update);
    app.get(
        "/api/v1/audit/events/0190b3b0-0000-7000-8000-000000000001",
        &admin,
    )
    .await
    .expect(404, Some("not_found"));
}

#[tokio::test]
async fn a_change_that_rolls_back_leaves_no_event() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let before = events(&app, &admin, "action=user.create").await.len();
    app.post(
        "/api/v1/users",
        &admin,
        json!({"email": "admin@test.local", "password": "some-long-password", "full_name": "Dup"}),
    )
    .await
    .expect(409, Some("conflict"));
    assert_eq!(
        events(&app, &admin, "action=user.create").await.len(),
        before
    );

    // A client write whose event goes to the database with the change (one call on SQLite):
    // the change fails after the event was inserted, and both roll back.
    let first = app
        .post(
            "/api/v1/clients",
            &admin,
            json!({"name": "A", "email": "a@example.com"}),
        )
        .await;
    first.expect(201, None);
    let second = app
        .post(
            "/api/v1/clients",
            &admin,
            json!({"name": "B", "email": "b@example.com"}),
        )
        .await;
    second.expect(201, None);
    app.post(
        "/api/v1/clients",
        &admin,
        json!({"name": "C", "email": "A@example.com"}),
    )
    .await
    .expect(409, Some("conflict"));
    let path = format!("/api/v1/clients/{}", second.json["id"].as_str().unwrap());
    app.patch(&path, &admin, json!({"email": "a@example.com"}))
        .await
        .expect(409, Some("conflict"));
    assert_eq!(events(&app, &admin, "action=client.create").await.len(), 2);
    assert!(
        events(&app, &admin, "action=client.update")
            .await
            .is_empty()
    );
    // The chain goes on without a gap from the head the failed writes did not move.
    app.patch(&path, &admin, json!({"notes": "still writable"}))
        .await
        .expect(200, None);
    let updates = events(&app, &admin, "action=client.update").await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0]["changes"]["after"]["notes"], "still writable");
    // A delete records the client as it was; a second delete finds nothing and records nothing.
    app.delete(&path, &admin).await.expect(204, None);
    app.delete(&path, &admin)
        .await
        .expect(404, Some("not_found"));
    let deletes = events(&app, &admin, "action=client.delete").await;
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0]["changes"]["before"]["email"], "b@example.com");
    assert_eq!(deletes[0]["changes"]["after"], Value::Null);
    let verified = app.get("/api/v1/audit/verify", &admin).await;
    assert_eq!(verified.json["valid"], true, "{}", verified.text);
    let latest = app.get("/api/v1/audit/events?limit=1", &admin).await.json["items"][0]["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(
        latest,
        verified.json["checked"].as_u64().unwrap(),
        "no gaps"
    );
}

#[tokio::test]
async fn filters_and_paging_newest_first() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    for _ in 0..5 {
        app.login("admin@test.local", ADMIN_PASSWORD)
            .await
            .expect(200, None);
    }
    let logins = events(&app, &admin, "action=auth.login").await;
    assert_eq!(logins.len(), 6);
    let seqs: Vec<i64> = logins.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = app
            .get(
                &format!("/api/v1/audit/events?action=auth.login&limit=4&cursor={cursor}"),
                &admin,
            )
            .await;
        r.expect(200, None);
        paged.extend(
            r.json["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_i64().unwrap()),
        );
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(paged, seqs);
    let me = app.get("/api/v1/auth/me", &admin).await;
    let uid = me.json["user"]["id"].as_str().unwrap();
    assert_eq!(
        events(&app, &admin, &format!("actor_id={uid}&action=auth.login"))
            .await
            .len(),
        6
    );
    let future = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339()
        .replace('+', "%2B");
    assert_eq!(
        events(&app, &admin, &format!("from={future}")).await.len(),
        0
    );
    assert_eq!(
        events(&app, &admin, &format!("to={future}&action=auth.login"))
            .await
            .len(),
        6
    );
    assert_eq!(
        events(&app, &admin, "resource_type=session&action=auth.login")
            .await
            .len(),
        6
    );
    app.get("/api/v1/audit/events?outcome=maybe", &admin)
        .await
        .expect(400, Some("invalid_parameter"));
    app.get("/api/v1/audit/events?from=yesterday", &admin)
        .await
        .expect(400, Some("invalid_parameter"));
    app.get("/api/v1/audit/events?actor_id=nope", &admin)
        .await
        .expect(400, Some("invalid_parameter"));
    app.get("/api/v1/audit/events?cursor=bogus", &admin)
        .await
        .expect(400, Some("bad_request"));
    app.get("/api/v1/audit/events?limit=1000", &admin)
        .await
        .expect(400, Some("bad_request"));
}

#[tokio::test]
async fn the_chain_holds_under_eight_concurrent_writers() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mut writers = Vec::new();
    for w in 0..8 {
        let core = app.core.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                let meta = RequestMeta {
                    request_id: format!("w{w}-{i}"),
                    ..Default::default()
                };
                core.audit_alone(AuditRecord::new("test.write", Outcome::Success, &meta))
                    .await
                    .unwrap();
            }
        }));
    }
    // HTTP writers at the same time.
    let mut http = Vec::new();
    for i in 0..8 {
        let body = json!({"role": format!("r{i}"), "resource": "users", "actions": ["read"]});
        http.push(app.post("/api/v1/permissions/grants", &admin, body));
    }
    for r in futures::future::join_all(http).await {
        r.expect(201, None);
    }
    for w in writers {
        w.await.unwrap();
    }
    let r = app.get("/api/v1/audit/verify", &admin).await;
    r.expect(200, None);
    assert_eq!(r.json["valid"], true, "{}", r.text);
    let checked = r.json["checked"].as_u64().unwrap();
    assert!(checked >= 8 * 25 + 8);
    let latest = app.get("/api/v1/audit/events?limit=1", &admin).await.json["items"].clone();
    assert_eq!(
        latest[0]["seq"].as_u64().unwrap(),
        checked,
        "seq has no gaps: the last seq is the count"
    );
}

/// The first row `sql` reads straight from the database (none is a test failure).
async fn row(app: &TestApp, sql: &str) -> sea_orm::QueryResult {
    let conn = app.core.db.writer();
    conn.query_one_raw(Statement::from_string(
        conn.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("no row: {sql}"))
}

async fn raw(app: &TestApp, sql: &str) -> Result<u64, sea_orm::DbErr> {
    let conn = app.core.db.writer();
    conn.execute_raw(Statement::from_string(
        conn.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .map(|r| r.rows_affected())
}

#[tokio::test]
async fn the_database_refuses_to_change_events_and_verify_finds_tampering() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    for _ in 0..3 {
        app.login("admin@test.local", ADMIN_PASSWORD)
            .await
            .expect(200, None);
    }
    // On PostgreSQL the logins' events may still wait in the queue; chain them first.
    app.core.flush_audit().await.unwrap();
    assert!(
        raw(
            &app,
            "UPDATE audit_events SET outcome = 'denied' WHERE seq = 2"
        )
        .await
        .is_err(),
        "UPDATE is refused"
    );
    assert!(
        raw(&app, "DELETE FROM audit_events WHERE seq = 2")
            .await
            .is_err(),
        "DELETE is refused"
    );
    let postgres = app.core.db.backend() == DatabaseBackend::Postgres;
    // An event that does not continue the chain (a gap, or the wrong previous hash) is not
    // inserted: the chain trigger refuses it (per row on SQLite, per statement on PostgreSQL).
    for (seq, prev_hash) in [
        (
            "1000",
            "(SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1)",
        ),
        ("(SELECT MAX(seq) + 1 FROM audit_events)", "'forged'"),
    ] {
        let insert = format!(
            "INSERT INTO audit_events (id, seq, at, action, outcome, prev_hash, hash) \
             VALUES ('{}', {seq}, '2026-01-01T00:00:00Z', 'forged', 'success', {prev_hash}, 'x')",
            uuid::Uuid::now_v7()
        );
        let refused = raw(&app, &insert).await.expect_err(&insert);
        assert!(
            refused.to_string().contains(HEAD_MOVED),
            "{insert}: {refused}"
        );
    }
    let r = app.get("/api/v1/audit/verify", &admin).await;
    assert_eq!(r.json["valid"], true);

    // Someone with direct database access disables the guard and edits a row.
    if postgres {
        raw(
            &app,
            "ALTER TABLE audit_events DISABLE TRIGGER audit_events_immutable",
        )
        .await
        .unwrap();
    } else {
        raw(&app, "DROP TRIGGER audit_events_no_update")
            .await
            .unwrap();
        raw(&app, "DROP TRIGGER audit_events_no_delete")
            .await
            .unwrap();
    }
    raw(
        &app,
        "UPDATE audit_events SET actor_email = 'someone-else@test.local' WHERE seq = 3",
    )
    .await
    .unwrap();
    let r = app.get("/api/v1/audit/verify", &admin).await;
    r.expect(200, None);
    assert_eq!(r.json["valid"], false);
    assert_eq!(r.json["first_invalid_seq"], 3);
    assert_eq!(r.json["checked"], 2);

    // A deleted row is found too.
    let app2 = TestApp::spawn().await;
    let admin2 = app2.admin_token().await;
    for _ in 0..3 {
        app2.login("admin@test.local", ADMIN_PASSWORD)
            .await
            .expect(200, None);
    }
    app2.core.flush_audit().await.unwrap();
    if postgres {
        raw(
            &app2,
            "ALTER TABLE audit_events DISABLE TRIGGER audit_events_immutable",
        )
        .await
        .unwrap();
    } else {
        raw(&app2, "DROP TRIGGER audit_events_no_delete")
            .await
            .unwrap();
    }
    raw(&app2, "DELETE FROM audit_events WHERE seq = 2")
        .await
        .unwrap();
    let r = app2.get("/api/v1/audit/verify", &admin2).await;
    assert_eq!(r.json["valid"], false);
    assert_eq!(r.json["first_invalid_seq"], 2);
}

#[tokio::test]
async fn export_streams_csv_and_jsonl() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    for _ in 0..3 {
        app.login("admin@test.local", ADMIN_PASSWORD)
            .await
            .expect(200, None);
    }
    let r = app
        .client
        .get(format!(
            "{}/api/v1/audit/export?format=jsonl&action=auth.login",
            app.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let body = r.text().await.unwrap();
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()),
        "oldest first"
    );

    let r = app
        .client
        .get(format!("{}/api/v1/audit/export?format=csv", app.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let body = r.text().await.unwrap();
    let mut lines = body.lines();
    assert!(lines.next().unwrap().starts_with("id,seq,at,actor_id"));
    let rows = lines.count();
    let all = events(&app, &admin, "").await;
    assert!(rows >= 4 && rows <= all.len(), "{rows} rows");
    app.get("/api/v1/audit/export?format=xml", &admin)
        .await
        .expect(400, Some("invalid_parameter"));
    let exports = events(&app, &admin, "action=audit.export").await;
    assert_eq!(exports.len(), 2, "each export is itself recorded");
}

#[tokio::test]
async fn client_limited_audit_readers_see_only_their_clients() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let client_a = uuid::Uuid::now_v7();
    let client_b = uuid::Uuid::now_v7();
    for (client, n) in [(client_a, 2), (client_b, 3)] {
        for _ in 0..n {
            let record =
                AuditRecord::new("client.update", Outcome::Success, &RequestMeta::default())
                    .resource("client", client)
                    .client(Some(client));
            app.core.audit_alone(record).await.unwrap();
        }
    }
    let reader = app.persona(&admin, "member", &[json!({"resource": "audit", "actions": ["read", "export"], "client_ids": [client_a]})]).await;
    let seen = events(&app, &reader.token, "").await;
    assert_eq!(
        seen.len(),
        2,
        "only client A's events, filtered in the query"
    );
    assert!(
        seen.iter()
            .all(|e| e["client_id"] == client_a.to_string().as_str())
    );
    let paged = app.get("/api/v1/audit/events?limit=1", &reader.token).await;
    assert_eq!(
        paged.json["items"].as_array().unwrap().len(),
        1,
        "pages stay full"
    );
    assert!(paged.json["next_cursor"].is_string());
    let b_event = &events(&app, &admin, &format!("client_id={client_b}")).await[0];
    app.get(
        &format!("/api/v1/audit/events/{}", b_event["id"].as_str().unwrap()),
        &reader.token,
    )
    .await
    .expect(404, Some("not_found"));
    assert_eq!(
        events(&app, &reader.token, &format!("client_id={client_b}"))
            .await
            .len(),
        0
    );
    app.get("/api/v1/audit/verify", &reader.token)
        .await
        .expect(403, Some("forbidden"));
    let r = app
        .client
        .get(format!("{}/api/v1/audit/export?format=jsonl", app.base))
        .bearer_auth(&reader.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap().lines().count(), 2);
}

#[tokio::test]
async fn a_stale_chain_head_never_breaks_the_chain() {
    use agentdesk_tests::TestEnv;
    let env = TestEnv::new().await;
    let a = env.spawn(&[]).await;
    let b = env.spawn(&[]).await;
    let write = |core: agentdesk_core::Core, rollback: bool| async move {
        let txn = core.db.begin().await.unwrap();
        core.append(
            &txn,
            AuditRecord::new("test.write", Outcome::Success, &RequestMeta::default()),
        )
        .await
        .unwrap();
        if rollback {
            txn.rollback().await.unwrap();
        } else {
            txn.commit().await.unwrap();
        }
    };
    // An append whose transaction rolls back leaves this process's cached head ahead of the table.
    write(a.core.clone(), false).await;
    write(a.core.clone(), true).await;
    write(a.core.clone(), false).await;
    // Two processes (instances) writing in turn each find the other's events, through a plain
    // append and through a client write whose event goes with the change.
    let token_a = a.admin_token().await;
    let token_b = b.admin_token().await;
    for i in 0..5 {
        write(a.core.clone(), false).await;
        write(b.core.clone(), false).await;
        for (app, token) in [(&a, &token_a), (&b, &token_b)] {
            app.post(
                "/api/v1/clients",
                token,
                json!({"name": format!("Client {i}")}),
            )
            .await
            .expect(201, None);
        }
    }
    let report = a.core.verify_audit().await.unwrap();
    assert!(report.valid, "{report:?}");
    let admin = a.admin_token().await;
    let last = a.get("/api/v1/audit/events?limit=1", &admin).await.json["items"][0]["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(
        last,
        a.core.verify_audit().await.unwrap().checked,
        "no gaps"
    );
}

/// PostgreSQL queues events and chains them after commit. Events that an instance queued but
/// never chained (it stopped first) are chained by any other instance: by its next read of the
/// log, and by its sequencer's tick without one. The queue refuses changes as the log does.
#[tokio::test]
async fn queued_events_are_chained_by_any_instance() {
    use agentdesk_tests::TestEnv;
    let env = TestEnv::new().await;
    let a = env.spawn(&[]).await;
    if a.core.db.backend() != DatabaseBackend::Postgres {
        return;
    }
    let queue = |request_id: &str| {
        format!(
            "INSERT INTO audit_queue (id, at, action, outcome, request_id, changes) \
             VALUES ('{}', now(), 'test.left_queued', 'success', '{request_id}', '{{\"b\": 1.50, \"a\": [true, null]}}')",
            uuid::Uuid::now_v7()
        )
    };
    // As a stopped instance leaves them: queued and committed, no sequencer woken.
    raw(&a, &queue("by-read")).await.unwrap();
    let admin = a.admin_token().await;
    let found = events(&a, &admin, "action=test.left_queued").await;
    assert_eq!(found.len(), 1, "a read chains what is queued first");
    assert_eq!(found[0]["request_id"], "by-read");

    raw(&a, &queue("by-tick")).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let chained = row(
            &a,
            "SELECT COUNT(*) FROM audit_events WHERE request_id = 'by-tick'",
        )
        .await
        .try_get_by_index::<i64>(0)
        .unwrap();
        if chained == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sequencer's tick chains it without a read"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A second instance reading the log sees the first one's writes.
    let b = env.spawn(&[]).await;
    let admin_b = b.admin_token().await;
    a.post("/api/v1/clients", &admin, json!({"name": "Queued"}))
        .await
        .expect(201, None);
    let created = events(&b, &admin_b, "action=client.create").await;
    assert_eq!(created.len(), 1);
    let verified = b.get("/api/v1/audit/verify", &admin_b).await;
    assert_eq!(verified.json["valid"], true, "{}", verified.text);

    // Instances taking turns continue each other's chain: each reads the head under the
    // chain's lock before it chains a batch.
    for (round, app) in [&a, &b, &a, &b].into_iter().enumerate() {
        raw(app, &queue(&format!("turn-{round}"))).await.unwrap();
        app.core.flush_audit().await.unwrap();
    }
    let report = a.core.verify_audit().await.unwrap();
    assert!(report.valid, "{report:?}");
    let turns = events(&a, &admin, "action=test.left_queued").await;
    assert_eq!(turns.len(), 6, "every queued event chained once");
    assert_eq!(turns[0]["seq"].as_u64().unwrap(), report.checked, "no gaps");

    for refused in [
        "UPDATE audit_queue SET action = 'forged'",
        "TRUNCATE audit_queue",
        "TRUNCATE audit_events",
    ] {
        let e = raw(&a, refused).await.expect_err(refused);
        assert!(e.to_string().contains("immutable"), "{refused}: {e}");
    }
}

/// Events wait outside the indexed log until a batch moves them in (PostgreSQL's queue, SQLite's
/// tail), and a move copies and deletes in one transaction. When the log refuses the batch, as a
/// damaged schema would, by an error or by skipping rows, the move is undone whole: the events
/// still wait, none is lost, and the next move takes them in once, in order. The sequencer moves
/// them without any read asking.
#[tokio::test]
async fn a_refused_move_leaves_the_events_waiting() {
    let app = TestApp::spawn().await;
    let postgres = app.core.db.backend() == DatabaseBackend::Postgres;
    app.core.flush_audit().await.unwrap();
    let before = app.core.verify_audit().await.unwrap().checked;
    let waiting_table = if postgres {
        "audit_queue"
    } else {
        "audit_tail"
    };
    let count = |sql: String| {
        let conn = app.core.db.writer();
        async move {
            conn.query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index::<i64>(0)
                .unwrap()
        }
    };
    let append = || async {
        let txn = app.core.db.begin().await.unwrap();
        app.core
            .append(
                &txn,
                AuditRecord::new("test.refused", Outcome::Success, &RequestMeta::default()),
            )
            .await
            .unwrap();
        txn.commit().await.unwrap();
    };
    // An error, and rows skipped without one. Each round's trigger is in place before the one
    // before it goes, so that the sequencer, which runs all along, never finds the log whole.
    let refusals: [&[&str]; 2] = if postgres {
        [
            &[
                "CREATE FUNCTION test_refuse_0() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
                "CREATE TRIGGER test_refuse_0 BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION test_refuse_0()",
            ],
            &[
                "CREATE FUNCTION test_refuse_1() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
                "CREATE TRIGGER test_refuse_1 BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION test_refuse_1()",
            ],
        ]
    } else {
        [
            &[
                "CREATE TRIGGER test_refuse_0 BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'refused'); END",
            ],
            &[
                "CREATE TRIGGER test_refuse_1 BEFORE INSERT ON audit_events BEGIN SELECT RAISE(IGNORE); END",
            ],
        ]
    };
    let restore = |round: usize| {
        if postgres {
            format!("DROP TRIGGER test_refuse_{round} ON audit_events")
        } else {
            format!("DROP TRIGGER test_refuse_{round}")
        }
    };
    for (round, refusal) in refusals.iter().enumerate() {
        for sql in *refusal {
            raw(&app, sql).await.unwrap();
        }
        if round > 0 {
            raw(&app, &restore(round - 1)).await.unwrap();
        }
        for _ in 0..3 {
            append().await;
        }
        let refused = app.core.flush_audit().await;
        assert!(
            refused.is_err(),
            "refusal {round}: a refused move is an error: {refused:?}"
        );
        assert_eq!(
            count(format!(
                "SELECT COUNT(*) FROM {waiting_table} WHERE action = 'test.refused'"
            ))
            .await,
            3 * (round as i64 + 1),
            "refusal {round}: the events still wait"
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM audit_events WHERE action = 'test.refused'".into()).await,
            0,
            "refusal {round}"
        );
        if round == 0 {
            // The waiting events are as immutable as the log's.
            let e = raw(
                &app,
                &format!("UPDATE {waiting_table} SET action = 'forged'"),
            )
            .await
            .expect_err("waiting events are immutable too");
            assert!(e.to_string().contains("immutable"), "{e}");
        }
    }

    raw(&app, &restore(refusals.len() - 1)).await.unwrap();

    // With the log whole again, the sequencer moves them, and a new one, without a read.
    append().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while count(format!("SELECT COUNT(*) FROM {waiting_table}")).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sequencer moves waiting events by itself"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let report = app.core.verify_audit().await.unwrap();
    assert!(report.valid, "{report:?}");
    assert_eq!(report.checked, before + 7, "each event in the log once");
}

/// Undoes every migration after `name` (later ones, whatever they hold, included), as rolling
/// back to the release that ended with `name` would.
async fn undo_migrations_after(conn: &sea_orm::DatabaseConnection, name: &str) {
    use sea_orm_migration::MigratorTrait;
    let migrations = agentdesk_core::migration::Migrator::migrations();
    let position = migrations
        .iter()
        .position(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no migration {name}"));
    let later = (migrations.len() - position - 1) as u32;
    agentdesk_core::migration::Migrator::down(conn, Some(later))
        .await
        .unwrap();
}

/// The audit migrations m0010 (the body digest) and m0009 (on PostgreSQL: the chain checked once
/// per statement) can be undone and done again, and the chain is guarded in between: by m0006's
/// per-row trigger, which skips a forged event on PostgreSQL, and once more by m0009's, which
/// refuses it.
#[tokio::test]
async fn the_chain_stays_guarded_through_the_last_migration_down_and_up() {
    use sea_orm_migration::MigratorTrait;
    let app = TestApp::spawn().await;
    let postgres = app.core.db.backend() == DatabaseBackend::Postgres;
    app.core.flush_audit().await.unwrap();
    let forged = || {
        format!(
            "INSERT INTO audit_events (id, seq, at, action, outcome, prev_hash, hash) \
             VALUES ('{}', (SELECT MAX(seq) + 1 FROM audit_events), '2026-01-01T00:00:00Z', \
             'forged', 'success', 'forged', 'x')",
            uuid::Uuid::now_v7()
        )
    };
    let conn = app.core.db.writer();
    undo_migrations_after(conn, "m0008_audit_tail").await;
    match raw(&app, &forged()).await {
        Ok(rows) => assert!(postgres && rows == 0, "m0006 skips a forged row: {rows}"),
        Err(e) => assert!(!postgres && e.to_string().contains(HEAD_MOVED)),
    }
    agentdesk_core::migration::Migrator::up(conn, None)
        .await
        .unwrap();
    let refused = raw(&app, &forged()).await.expect_err("m0009 refuses it");
    assert!(refused.to_string().contains(HEAD_MOVED), "{refused}");
    // And the sequencer's batches still pass the check.
    for _ in 0..3 {
        app.login("admin@test.local", ADMIN_PASSWORD)
            .await
            .expect(200, None);
    }
    app.core.flush_audit().await.unwrap();
    assert!(app.core.verify_audit().await.unwrap().valid);
}

/// The chain triggers judge a statement that appends several events as a whole (per statement
/// on PostgreSQL, per row on SQLite): rows that continue the head and each other go in, one bad
/// row refuses them all, and on PostgreSQL rows that continue the head are refused when an event
/// already follows it.
#[tokio::test]
async fn an_append_that_breaks_the_chain_anywhere_is_refused_whole() {
    let app = TestApp::spawn().await;
    let postgres = app.core.db.backend() == DatabaseBackend::Postgres;
    app.login("admin@test.local", ADMIN_PASSWORD)
        .await
        .expect(200, None);
    app.core.flush_audit().await.unwrap();
    let conn = app.core.db.writer();
    let head = || async {
        let row = conn
            .query_one_raw(Statement::from_string(
                conn.get_database_backend(),
                "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            ))
            .await
            .unwrap()
            .unwrap();
        (
            row.try_get_by_index::<i64>(0).unwrap(),
            row.try_get_by_index::<String>(1).unwrap(),
        )
    };
    let insert = |rows: &[(i64, &str, &str)]| {
        let values: Vec<String> = rows
            .iter()
            .map(|(seq, prev_hash, hash)| {
                format!(
                    "('{}', {seq}, '2026-01-01T00:00:00Z', 'forged', 'success', '{prev_hash}', '{hash}')",
                    uuid::Uuid::now_v7()
                )
            })
            .collect();
        format!(
            "INSERT INTO audit_events (id, seq, at, action, outcome, prev_hash, hash) VALUES {}",
            values.join(", ")
        )
    };

    let (seq, hash) = head().await;
    let refused = raw(
        &app,
        &insert(&[(seq + 1, &hash, "h1"), (seq + 2, "forged", "h2")]),
    )
    .await
    .expect_err("the second row breaks the chain");
    assert!(refused.to_string().contains(HEAD_MOVED), "{refused}");
    assert_eq!(head().await, (seq, hash.clone()), "neither row went in");

    let rows = raw(
        &app,
        &insert(&[(seq + 1, &hash, "h1"), (seq + 2, "h1", "h2")]),
    )
    .await
    .expect("two rows that continue the chain go in");
    assert_eq!(rows, 2);
    assert_eq!(head().await, (seq + 2, "h2".to_owned()));

    if postgres {
        // An event past a gap, put there with the check disabled: a row that continues the head
        // is then not the log's last, and is refused.
        raw(
            &app,
            "ALTER TABLE audit_events DISABLE TRIGGER audit_events_chain_check",
        )
        .await
        .unwrap();
        raw(&app, &insert(&[(seq + 10, "x", "h10")])).await.unwrap();
        raw(
            &app,
            "ALTER TABLE audit_events ENABLE TRIGGER audit_events_chain_check",
        )
        .await
        .unwrap();
        let refused = raw(&app, &insert(&[(seq + 3, "h2", "h3")]))
            .await
            .expect_err("an event follows it");
        assert!(refused.to_string().contains(HEAD_MOVED), "{refused}");
    }
}

/// PostgreSQL: events chained before migration m0010 (hash version 1, `changes` stored as JSONB
/// and hashed as read back) still verify after it, beside the version 2 events written since;
/// a change to either kind is found.
#[tokio::test]
async fn events_hashed_before_the_body_digest_verify_beside_those_after() {
    use agentdesk_core::models::audit::AuditEvent;
    use agentdesk_core::services::audit::{GENESIS_HASH, event_hash};
    use agentdesk_tests::{Backend, TestEnv, backend};
    use chrono::SubsecRound;
    if backend() != Backend::Postgres {
        return;
    }
    let env = TestEnv::new().await;
    let old = sea_orm::Database::connect(env.database_url())
        .await
        .unwrap();
    // The schema of the release before m0010 (its `down` keeps what version 2 events need).
    undo_migrations_after(&old, "m0009_audit_chain_per_statement").await;
    for sql in [
        "ALTER TABLE audit_events DROP COLUMN hash_version",
        "ALTER TABLE audit_events ALTER COLUMN changes TYPE JSONB",
        "ALTER TABLE audit_queue ALTER COLUMN changes TYPE JSONB",
    ] {
        old.execute_unprepared(sql).await.unwrap();
    }
    // As the sequencer chained them before m0010: the hash over the value read back from JSONB,
    // which re-encodes numbers (`1e16` comes back as an integer, `1.50` as 1.50, -0.0 as 0.0).
    let mut prev_hash = GENESIS_HASH.to_owned();
    let written = [
        json!({"before": null, "after": {"n": 1e16, "f": 1.5, "z": -0.0, "s": "é \"q\""}}),
        json!({"b": [1, {"y": null}], "a": u64::MAX}),
    ];
    for (seq, changes) in (1..).zip(written) {
        let stored: Value = old
            .query_one_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT $1::jsonb AS v",
                [changes.into()],
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get("", "v")
            .unwrap();
        let mut event = AuditEvent {
            id: uuid::Uuid::now_v7(),
            seq,
            at: chrono::Utc::now().trunc_subsecs(6),
            actor_id: None,
            actor_email: Some("old@test.local".into()),
            action: "test.before_digest".into(),
            resource_type: None,
            resource_id: None,
            client_id: None,
            outcome: "success".into(),
            ip: None,
            user_agent: None,
            request_id: None,
            api_key_id: None,
            changes: Some(stored.clone()),
            prev_hash: prev_hash.clone(),
            hash: String::new(),
        };
        event.hash = event_hash(&event);
        old.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "INSERT INTO audit_events (id, seq, at, actor_email, action, outcome, changes, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [
                event.id.into(),
                event.seq.into(),
                event.at.into(),
                event.actor_email.clone().into(),
                event.action.clone().into(),
                event.outcome.clone().into(),
                stored.into(),
                event.prev_hash.clone().into(),
                event.hash.clone().into(),
            ],
        ))
        .await
        .unwrap();
        prev_hash = event.hash;
    }
    old.close().await.unwrap();

    // The instance migrates to m0010 as it starts; its own events are version 2, `changes`
    // kept as the text that was hashed (numbers that JSONB would re-encode included).
    let app = env.spawn(&[]).await;
    let admin = app.admin_token().await;
    let client = app
        .post(
            "/api/v1/clients",
            &admin,
            json!({"name": "Digest Ltd", "metadata": {"big": 1e16, "neg": -0.0, "f": 1.5e-7}}),
        )
        .await;
    client.expect(201, None);
    let report = app.core.verify_audit().await.unwrap();
    assert!(report.valid, "{report:?}");
    let versions = app
        .core
        .db
        .writer()
        .query_all_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT hash_version, MIN(seq) AS first, COUNT(*) AS n FROM audit_events \
             GROUP BY hash_version ORDER BY hash_version",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| {
            (
                row.try_get::<i16>("", "hash_version").unwrap(),
                row.try_get::<i64>("", "first").unwrap(),
                row.try_get::<i64>("", "n").unwrap(),
            )
        })
        .collect::<Vec<_>>();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!((versions[0].0, versions[0].1, versions[0].2), (1, 1, 2));
    assert_eq!((versions[1].0, versions[1].1), (2, 3));
    assert_eq!(report.checked as i64, 2 + versions[1].2);

    // A version 2 event relabelled as version 1 breaks the chain at its seq; so does a changed
    // event of either version (only the first break is reported, so the later one goes first).
    raw(
        &app,
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_immutable",
    )
    .await
    .unwrap();
    let last = report.checked as i64;
    raw(
        &app,
        &format!("UPDATE audit_events SET hash_version = 1 WHERE seq = {last}"),
    )
    .await
    .unwrap();
    let report = app.core.verify_audit().await.unwrap();
    assert_eq!(report.first_invalid_seq, Some(last), "{report:?}");
    raw(
        &app,
        &format!("UPDATE audit_events SET hash_version = 2 WHERE seq = {last}"),
    )
    .await
    .unwrap();
    assert!(app.core.verify_audit().await.unwrap().valid);
    // The client's event keeps `1e+16` and `-0.0` as they were hashed (JSONB would not).
    let created = row(
        &app,
        "SELECT seq, changes::text AS text FROM audit_events WHERE action = 'client.create'",
    )
    .await;
    let created_seq = created.try_get::<i64>("", "seq").unwrap();
    let text = created.try_get::<String>("", "text").unwrap();
    assert!(
        text.contains("1e+16") && text.contains("-0.0"),
        "stored as hashed: {text}"
    );
    raw(
        &app,
        &format!(
            "UPDATE audit_events SET changes = replace(changes::text, '1e+16', '2e+16')::json \
             WHERE seq = {created_seq}"
        ),
    )
    .await
    .unwrap();
    let report = app.core.verify_audit().await.unwrap();
    assert_eq!(report.first_invalid_seq, Some(created_seq), "{report:?}");
    raw(
        &app,
        "UPDATE audit_events SET changes = '{\"b\": [1, {\"y\": 2}], \"a\": 0}' WHERE seq = 2",
    )
    .await
    .unwrap();
    let report = app.core.verify_audit().await.unwrap();
    assert_eq!(report.first_invalid_seq, Some(2), "{report:?}");
}

/// PostgreSQL: the sequencer chains a queued event over the digest its writer queued with it,
/// so a forged queue row (a body with a digest that is not its own) is found by verify at its
/// place in the chain.
#[tokio::test]
async fn a_queued_digest_that_is_not_the_bodys_is_found_by_verify() {
    let app = TestApp::spawn().await;
    if app.core.db.backend() != DatabaseBackend::Postgres {
        return;
    }
    app.core.flush_audit().await.unwrap();
    assert!(app.core.verify_audit().await.unwrap().valid);
    raw(
        &app,
        &format!(
            "INSERT INTO audit_queue (id, at, action, outcome, changes, digest) \
             VALUES ('{}', now(), 'test.forged_digest', 'success', '{{\"a\": 1}}', '{}')",
            uuid::Uuid::now_v7(),
            "0".repeat(64)
        ),
    )
    .await
    .unwrap();
    app.core.flush_audit().await.unwrap();
    let report = app.core.verify_audit().await.unwrap();
    // The sequencer chained it (`row` fails the test otherwise).
    let forged = row(
        &app,
        "SELECT seq FROM audit_events WHERE action = 'test.forged_digest'",
    )
    .await
    .try_get_by_index::<i64>(0)
    .unwrap();
    assert_eq!(report.first_invalid_seq, Some(forged), "{report:?}");
}
