//! Account security: the sessions a user can see and end.

use std::time::Duration;

use agentdesk_tests::{TestApp, unique_email};
use reqwest::Method;
use sea_orm::EntityTrait;
use serde_json::{Value, json};

const PASSWORD: &str = "correct-horse-battery";

/// Logs in with a given user agent; returns (access token, refresh token).
async fn login_as(app: &TestApp, email: &str, user_agent: &str) -> (String, String) {
    let reply = TestApp::read(
        app.client
            .post(format!("{}/api/v1/auth/login", app.base))
            .header("user-agent", user_agent)
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.expect(200, None);
    (
        reply.json["access_token"].as_str().unwrap().to_owned(),
        reply.json["refresh_token"].as_str().unwrap().to_owned(),
    )
}

fn sessions(list: &Value) -> &Vec<Value> {
    list["items"].as_array().expect("items")
}

/// A user lists their live sessions (when, from where, with what, which is this one), ends one
/// of them, and its access and refresh tokens stop working at once. Another user's session, an
/// ended one or a malformed id is a 404; every end is audited.
#[tokio::test]
async fn users_list_and_end_their_own_sessions() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let email = unique_email("sessions");
    app.create_user(&admin, &email, PASSWORD, "member").await;
    let (laptop, laptop_refresh) = login_as(&app, &email, "laptop-browser/1.0").await;
    let (phone, _) = login_as(&app, &email, "phone-app/2.0").await;

    let list = app.get("/api/v1/auth/sessions", &phone).await;
    list.expect(200, None);
    let items = sessions(&list.json);
    assert_eq!(items.len(), 2, "{}", list.json);
    // The most recent login first; only this request's session is current.
    assert_eq!(items[0]["user_agent"], "phone-app/2.0");
    assert_eq!(items[0]["current"], true);
    assert_eq!(items[1]["user_agent"], "laptop-browser/1.0");
    assert_eq!(items[1]["current"], false);
    for item in items {
        assert_eq!(item["ip"], "127.0.0.1", "{item}");
        for field in ["created_at", "last_used_at", "expires_at"] {
            assert!(
                item[field]
                    .as_str()
                    .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
                "{field}: {item}"
            );
        }
    }
    let laptop_id = items[1]["id"].as_str().unwrap().to_owned();

    // Not the admin's session to end, though the admin may do anything else.
    app.delete(&format!("/api/v1/auth/sessions/{laptop_id}"), &admin)
        .await
        .expect(404, Some("not_found"));
    app.delete("/api/v1/auth/sessions/not-a-uuid", &phone)
        .await
        .expect(404, Some("not_found"));
    app.get("/api/v1/auth/me", &laptop).await.expect(200, None);

    app.delete(&format!("/api/v1/auth/sessions/{laptop_id}"), &phone)
        .await
        .expect(204, None);
    app.get("/api/v1/auth/me", &laptop)
        .await
        .expect(401, Some("invalid_token"));
    app.request(
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": laptop_refresh})),
    )
    .await
    .expect(401, Some("invalid_token"));
    let list = app.get("/api/v1/auth/sessions", &phone).await;
    assert_eq!(sessions(&list.json).len(), 1, "{}", list.json);
    app.delete(&format!("/api/v1/auth/sessions/{laptop_id}"), &phone)
        .await
        .expect(404, Some("not_found"));

    // Ending the current session is a logout.
    let phone_id = sessions(&list.json)[0]["id"].as_str().unwrap().to_owned();
    app.delete(&format!("/api/v1/auth/sessions/{phone_id}"), &phone)
        .await
        .expect(204, None);
    app.get("/api/v1/auth/sessions", &phone)
        .await
        .expect(401, Some("invalid_token"));
    app.assert_audited(&admin, &["auth.session_end"]).await;
}

/// A session's last use is kept without a write per request: gathered in memory (the list
/// shows it at once) and written in one statement every few seconds.
#[tokio::test]
async fn last_use_is_recorded_in_batches() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let email = unique_email("last-used");
    app.create_user(&admin, &email, PASSWORD, "member").await;
    let (token, _) = login_as(&app, &email, "script/1.0").await;
    let before = app.get("/api/v1/auth/sessions", &token).await;
    let first = sessions(&before.json)[0].clone();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.get("/api/v1/auth/me", &token).await.expect(200, None);
    let after = app.get("/api/v1/auth/sessions", &token).await;
    let shown = sessions(&after.json)[0]["last_used_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    assert!(
        parse(&shown) > parse(first["last_used_at"].as_str().unwrap()),
        "{first} then {shown}"
    );
    // Written to the database by the flush (the periodic one does the same).
    app.core.last_used.flush(&app.core.db).await.unwrap();
    let id: uuid::Uuid = first["id"].as_str().unwrap().parse().unwrap();
    let row = agentdesk_core::models::session::Entity::find_by_id(id)
        .one(app.core.db.reader())
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.last_used_at >= parse(&shown) - chrono::Duration::milliseconds(1),
        "stored {} against {shown}",
        row.last_used_at
    );
}

fn key_items(list: &Value) -> &Vec<Value> {
    list["items"].as_array().expect("items")
}

/// An API key acts as its owner, or only through the grants it was narrowed to, and never
/// beyond what the owner holds at the moment of each request: a revoked grant stops a narrowed
/// key at once, a deactivated owner stops every key. Keys cannot manage the account.
#[tokio::test]
async fn api_keys_act_as_their_owner_narrowed_by_grants() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let member = app
        .persona(
            &admin,
            "member",
            &[
                json!({"resource": "clients", "actions": ["read", "write"]}),
                json!({"resource": "users", "actions": ["read"]}),
            ],
        )
        .await;
    let held = app
        .get(&format!("/api/v1/users/{}/grants", member.id), &admin)
        .await;
    let grant_of = |resource: &str| {
        held.json
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["resource"] == resource)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (clients_grant, users_grant) = (grant_of("clients"), grant_of("users"));

    // A key for everything the member may do: shown once, recognisable by its prefix.
    let made = app
        .post(
            "/api/v1/api-keys",
            &member.token,
            json!({"name": "nightly sync"}),
        )
        .await;
    made.expect(201, None);
    let full = made.json["key"].as_str().unwrap().to_owned();
    let full_id = made.json["id"].clone();
    assert!(full.starts_with("adk_") && full.len() == 56, "{full}");
    assert_eq!(made.json["prefix"].as_str().unwrap(), &full[..12]);
    assert_eq!(made.json["grants"], Value::Null);
    assert_eq!(
        made.header("location").unwrap(),
        format!("/api/v1/api-keys/{}", made.json["id"].as_str().unwrap())
    );
    app.get("/api/v1/clients", &full).await.expect(200, None);
    app.get("/api/v1/users", &full).await.expect(200, None);
    // Nothing beyond the owner: no grant on permissions, so no key has it either.
    app.get("/api/v1/permissions/grants", &full)
        .await
        .expect(403, Some("forbidden"));
    let created = app
        .post(
            "/api/v1/clients",
            &full,
            json!({"name": "Made by a script"}),
        )
        .await;
    created.expect(201, None);
    // What a key does is audited as its owner's, with the key's id, in the verified chain.
    let events = app
        .get(
            &format!(
                "/api/v1/audit/events?action=client.create&resource_id={}",
                created.json["id"].as_str().unwrap()
            ),
            &admin,
        )
        .await;
    let event = &events.json["items"][0];
    assert_eq!(event["actor_id"], json!(member.id), "{}", events.json);
    assert_eq!(event["api_key_id"], full_id, "{}", events.json);
    let export = app
        .get(
            "/api/v1/audit/export?format=csv&action=client.create",
            &admin,
        )
        .await;
    assert!(
        export.text.contains(full_id.as_str().unwrap()),
        "{}",
        export.text
    );

    // A key narrowed to the clients grant may not read users, though its owner may.
    let made = app
        .post(
            "/api/v1/api-keys",
            &member.token,
            json!({"name": "clients only", "grants": [clients_grant]}),
        )
        .await;
    made.expect(201, None);
    assert_eq!(made.json["grants"], json!([clients_grant]));
    let narrow = made.json["key"].as_str().unwrap().to_owned();
    app.get("/api/v1/clients", &narrow).await.expect(200, None);
    let refused = app.get("/api/v1/users", &narrow).await;
    refused.expect(403, Some("forbidden"));
    assert!(
        refused.json["detail"].as_str().unwrap().contains("API key"),
        "{}",
        refused.json
    );

    // Keys cannot manage the account: a leaked key makes no keys and ends no sessions.
    for (method, path) in [
        (Method::GET, "/api/v1/api-keys"),
        (Method::POST, "/api/v1/api-keys"),
        (Method::GET, "/api/v1/auth/sessions"),
        (Method::POST, "/api/v1/auth/password"),
    ] {
        app.request(method, path, Some(&full), Some(json!({"name": "x"})))
            .await
            .expect(403, Some("session_required"));
    }

    // Bad input: a clear 422 (or 400) each, and no key made.
    for body in [
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "a\u{7}bell"}),
        json!({"name": "k", "grants": []}),
        json!({"name": "k", "grants": [uuid::Uuid::now_v7()]}),
        json!({"name": "k", "grants": ["not-a-uuid"]}),
        json!({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"name": "k", "expires_at": "tomorrow"}),
        json!({"grants": [users_grant]}),
    ] {
        app.post("/api/v1/api-keys", &member.token, body.clone())
            .await
            .expect(422, Some("validation_failed"));
    }
    let malformed = TestApp::read(
        app.client
            .post(format!("{}/api/v1/api-keys", app.base))
            .bearer_auth(&member.token)
            .header("content-type", "application/json")
            .body("{\"name\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    malformed.expect(400, None);
    // Someone else's grant is not the member's to hand to a key.
    let other = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "audit", "actions": ["read"]})],
        )
        .await;
    let others = app
        .get(&format!("/api/v1/users/{}/grants", other.id), &admin)
        .await;
    let others_grant = others.json[0]["id"].clone();
    app.post(
        "/api/v1/api-keys",
        &member.token,
        json!({"name": "k", "grants": [others_grant]}),
    )
    .await
    .expect(422, Some("validation_failed"));

    // The list shows both keys, never a secret.
    let list = app.get("/api/v1/api-keys", &member.token).await;
    list.expect(200, None);
    assert_eq!(key_items(&list.json).len(), 2, "{}", list.json);
    assert!(!list.text.contains(&full[12..]) && !list.text.contains(&narrow[12..]));
    assert_eq!(key_items(&list.json)[0]["name"], "clients only");

    // The grant goes: the narrowed key stops at once; the full key keeps what is left.
    app.delete(
        &format!("/api/v1/permissions/grants/{clients_grant}"),
        &admin,
    )
    .await
    .expect(204, None);
    app.get("/api/v1/clients", &narrow)
        .await
        .expect(403, Some("forbidden"));
    app.get("/api/v1/clients", &full)
        .await
        .expect(403, Some("forbidden"));
    app.get("/api/v1/users", &full).await.expect(200, None);

    // The owner is deactivated: every key stops at once.
    app.delete(&format!("/api/v1/users/{}", member.id), &admin)
        .await
        .expect(204, None);
    app.get("/api/v1/users", &full)
        .await
        .expect(401, Some("invalid_token"));
    app.assert_audited(&admin, &["api_key.create"]).await;
}

/// Revoked and expired keys are refused; a key's last use is kept in batches; a forged key is
/// refused like any bad token; revocation is the owner's own and audited.
#[tokio::test]
async fn api_keys_are_revoked_expire_and_record_their_last_use() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let member = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "clients", "actions": ["read"]})],
        )
        .await;
    let made = app
        .post("/api/v1/api-keys", &member.token, json!({"name": "cron"}))
        .await;
    made.expect(201, None);
    let key = made.json["key"].as_str().unwrap().to_owned();
    let id = made.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        key_items(&app.get("/api/v1/api-keys", &member.token).await.json)[0]["last_used_at"],
        Value::Null
    );
    app.get("/api/v1/clients", &key).await.expect(200, None);
    let list = app.get("/api/v1/api-keys", &member.token).await;
    assert!(
        key_items(&list.json)[0]["last_used_at"].is_string(),
        "{}",
        list.json
    );
    app.core.last_used.flush(&app.core.db).await.unwrap();
    let row =
        agentdesk_core::models::api_key::Entity::find_by_id(id.parse::<uuid::Uuid>().unwrap())
            .one(app.core.db.reader())
            .await
            .unwrap()
            .unwrap();
    assert!(row.last_used_at.is_some());
    assert_ne!(row.key_hash, key, "only a hash is stored");
    assert!(!row.key_hash.contains(&key[4..]));

    // Forged keys: right shape, wrong length, garbage.
    let forged = format!("adk_{}", "a".repeat(52));
    for token in [forged.as_str(), "adk_short", "adk_"] {
        app.get("/api/v1/clients", token)
            .await
            .expect(401, Some("invalid_token"));
    }

    // Only the owner revokes: another user (even an admin) gets a 404.
    app.delete(&format!("/api/v1/api-keys/{id}"), &admin)
        .await
        .expect(404, Some("not_found"));
    app.delete("/api/v1/api-keys/not-a-uuid", &member.token)
        .await
        .expect(404, Some("not_found"));
    app.get("/api/v1/clients", &key).await.expect(200, None);
    app.delete(&format!("/api/v1/api-keys/{id}"), &member.token)
        .await
        .expect(204, None);
    app.get("/api/v1/clients", &key)
        .await
        .expect(401, Some("invalid_token"));
    app.delete(&format!("/api/v1/api-keys/{id}"), &member.token)
        .await
        .expect(404, Some("not_found"));
    assert!(key_items(&app.get("/api/v1/api-keys", &member.token).await.json).is_empty());

    // A key with an expiry works until then, and not after (cached or not).
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let made = app
        .post(
            "/api/v1/api-keys",
            &member.token,
            json!({"name": "short-lived", "expires_at": soon}),
        )
        .await;
    made.expect(201, None);
    let short = made.json["key"].as_str().unwrap().to_owned();
    app.get("/api/v1/clients", &short).await.expect(200, None);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    app.get("/api/v1/clients", &short)
        .await
        .expect(401, Some("invalid_token"));
    app.assert_audited(&admin, &["api_key.create", "api_key.revoke"])
        .await;
}

/// A job started with an API key acts within the key as it is when the job runs: revoked
/// meanwhile, the job fails instead of acting with the owner's full rights; the same job
/// started with a session runs.
#[tokio::test]
async fn a_job_started_with_a_revoked_key_does_not_run() {
    let env = agentdesk_tests::TestEnv::new().await;
    // This instance takes requests but runs no jobs, so the key can be revoked in between.
    let api = env.spawn(&[("agents", json!("none"))]).await;
    let admin = api.admin_token().await;
    let member = api
        .persona(
            &admin,
            "member",
            &[
                json!({"resource": "agent:client_management", "actions": ["run"]}),
                json!({"resource": "clients", "actions": ["read", "write"]}),
            ],
        )
        .await;
    let made = api
        .post(
            "/api/v1/api-keys",
            &member.token,
            json!({"name": "importer"}),
        )
        .await;
    made.expect(201, None);
    let key = made.json["key"].as_str().unwrap().to_owned();
    let import = |token: String, name: &'static str| {
        let api = &api;
        async move {
            let reply = TestApp::read(
                api.client
                    .post(format!("{}/api/v1/clients/import", api.base))
                    .bearer_auth(token)
                    .header("content-type", "text/csv")
                    .body(format!("name,email\n{name},{}\n", unique_email(name)))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            reply.expect(202, None);
            reply.json["id"].as_str().unwrap().to_owned()
        }
    };
    let by_key = import(key.clone(), "by-key").await;
    let by_session = import(member.token.clone(), "by-session").await;
    api.delete(
        &format!("/api/v1/api-keys/{}", made.json["id"].as_str().unwrap()),
        &member.token,
    )
    .await
    .expect(204, None);

    let worker = env.spawn(&[]).await;
    let finished = |id: String| {
        let worker = &worker;
        let admin = admin.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let job = worker.get(&format!("/api/v1/jobs/{id}"), &admin).await;
                if ["succeeded", "failed", "cancelled"]
                    .contains(&job.json["status"].as_str().unwrap_or(""))
                {
                    return job.json;
                }
                assert!(std::time::Instant::now() < deadline, "{}", job.json);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let job = finished(by_key).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap_or("").contains("API key"),
        "{job}"
    );
    let job = finished(by_session).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}
