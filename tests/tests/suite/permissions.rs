//! Grants: the catalog, validation, the decision rule (direct, role, client scope, expiry),
//! delegation, and revocation seen by every instance.

use std::time::Duration;

use agentdesk_tests::{Backend, TestApp, TestEnv, backend, eventually, unique_email};
use serde_json::json;

#[tokio::test]
async fn the_catalog_has_core_and_agent_resources() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let r = app.get("/api/v1/permissions/catalog", &admin).await;
    r.expect(200, None);
    let resources: Vec<&str> = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["resource"].as_str().unwrap())
        .collect();
    for expected in [
        "users",
        "clients",
        "permissions",
        "audit",
        "agent:client_management",
        "agent:pdf_processing",
        "agent:reports_analysis",
        "agent:audio_recording",
    ] {
        assert!(resources.contains(&expected), "{expected} in {resources:?}");
    }
    let pdf = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["resource"] == "agent:pdf_processing")
        .unwrap();
    let actions: Vec<&str> = pdf["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["read", "upload", "delete"]);
    assert!(pdf["actions"][0]["description"].is_string());
}

#[tokio::test]
async fn invalid_grants_are_422_with_the_field() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let user = app
        .create_user(&admin, &unique_email("v"), "persona-password-42", "member")
        .await;
    let uid = user["id"].as_str().unwrap();
    let cases = [
        (
            json!({"user_id": uid, "resource": "nope", "actions": ["read"]}),
            "resource",
        ),
        (
            json!({"user_id": uid, "resource": "users", "actions": ["fly"]}),
            "actions",
        ),
        (
            json!({"user_id": uid, "resource": "users", "actions": []}),
            "actions",
        ),
        (
            json!({"user_id": uid, "role": "sales", "resource": "users", "actions": ["read"]}),
            "role",
        ),
        (json!({"resource": "users", "actions": ["read"]}), "user_id"),
        (
            json!({"user_id": uid, "resource": "users", "actions": ["read"], "client_ids": ["0190b3b0-0000-7000-8000-000000000001"]}),
            "client_ids",
        ),
        (
            json!({"user_id": uid, "resource": "clients", "actions": ["read"], "client_ids": []}),
            "client_ids",
        ),
        (
            json!({"user_id": uid, "resource": "clients", "actions": ["read"], "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"user_id": "0190b3b0-0000-7000-8000-000000000001", "resource": "clients", "actions": ["read"]}),
            "user_id",
        ),
        (
            json!({"role": "Not A Role", "resource": "clients", "actions": ["read"]}),
            "role",
        ),
    ];
    for (body, field) in cases {
        let r = app
            .post("/api/v1/permissions/grants", &admin, body.clone())
            .await;
        r.expect(422, Some("validation_failed"));
        let fields: Vec<&str> = r.json["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&field),
            "{body}: expected {field} in {fields:?}"
        );
    }
    let r = app
        .post(
            "/api/v1/permissions/grants",
            &admin,
            json!({"user_id": "nope", "resource": "users", "actions": ["read"]}),
        )
        .await;
    r.expect(422, Some("validation_failed"));
    let r = app
        .post(
            "/api/v1/permissions/grants",
            &admin,
            json!({"user_id": uid, "resource": "users", "actions": ["read"], "extra": 1}),
        )
        .await;
    r.expect(422, Some("validation_failed"));
}

#[tokio::test]
async fn direct_grants_allow_and_deleting_them_denies_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let member = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "users", "actions": ["read"]})],
        )
        .await;
    app.get("/api/v1/users", &member.token)
        .await
        .expect(200, None);
    app.post(
        "/api/v1/users",
        &member.token,
        json!({"email": unique_email("x"), "password": "persona-password-42", "full_name": "X"}),
    )
    .await
    .expect(403, Some("forbidden"));
    let grants = app
        .get(
            &format!("/api/v1/permissions/grants?user_id={}", member.id),
            &admin,
        )
        .await;
    grants.expect(200, None);
    let grant_id = grants.json["items"][0]["id"].as_str().unwrap().to_owned();
    let me = app.get("/api/v1/auth/me", &member.token).await;
    assert_eq!(me.json["grants"][0]["id"], grant_id.as_str());
    app.delete(&format!("/api/v1/permissions/grants/{grant_id}"), &admin)
        .await
        .expect(204, None);
    app.get("/api/v1/users", &member.token)
        .await
        .expect(403, Some("forbidden"));
    app.delete(&format!("/api/v1/permissions/grants/{grant_id}"), &admin)
        .await
        .expect(404, Some("not_found"));
}

#[tokio::test]
async fn role_grants_apply_to_everyone_with_the_role() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let sales = app.persona(&admin, "sales", &[]).await;
    let other = app.persona(&admin, "member", &[]).await;
    app.get("/api/v1/users", &sales.token)
        .await
        .expect(403, Some("forbidden"));
    app.grant(
        &admin,
        json!({"role": "sales", "resource": "users", "actions": ["read"]}),
    )
    .await;
    app.get("/api/v1/users", &sales.token)
        .await
        .expect(200, None);
    app.get("/api/v1/users", &other.token)
        .await
        .expect(403, Some("forbidden"));
    let effective = app
        .get(&format!("/api/v1/users/{}/grants", sales.id), &admin)
        .await;
    effective.expect(200, None);
    assert_eq!(effective.json[0]["role"], "sales");
    // Moving the user out of the role takes the grant away.
    app.patch(
        &format!("/api/v1/users/{}", sales.id),
        &admin,
        json!({"role": "member"}),
    )
    .await
    .expect(200, None);
    app.get("/api/v1/users", &sales.token)
        .await
        .expect(403, Some("forbidden"));
}

#[tokio::test]
async fn expired_grants_stop_matching_without_any_job() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let expires = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let member = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "users", "actions": ["read"], "expires_at": expires})],
        )
        .await;
    app.get("/api/v1/users", &member.token)
        .await
        .expect(200, None);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let r = app.get("/api/v1/users", &member.token).await;
    r.expect(403, Some("forbidden"));
    assert!(
        r.json["detail"].as_str().unwrap().contains("expired"),
        "{}",
        r.text
    );
    let effective = app
        .get(&format!("/api/v1/users/{}/grants", member.id), &admin)
        .await;
    assert_eq!(effective.json, json!([]), "expired grants are left out");
    let me = app.get("/api/v1/auth/me", &member.token).await;
    assert_eq!(me.json["grants"], json!([]));
}

#[tokio::test]
async fn check_explains_the_decision() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let client_a = "0190b3b0-0000-7000-8000-00000000000a";
    let client_b = "0190b3b0-0000-7000-8000-00000000000b";
    let member = app
        .persona(&admin, "member", &[json!({"resource": "agent:pdf_processing", "actions": ["read", "upload"], "client_ids": [client_a]})])
        .await;
    let check = |resource: &str, action: &str, client: Option<&str>| {
        let mut body = json!({"user_id": member.id, "resource": resource, "action": action});
        if let Some(c) = client {
            body["client_id"] = json!(c);
        }
        app.post("/api/v1/permissions/check", &admin, body)
    };
    let r = check("agent:pdf_processing", "upload", Some(client_a)).await;
    r.expect(200, None);
    assert_eq!(r.json["allowed"], true);
    assert!(r.json["grant_id"].is_string());
    assert!(r.json["reason"].as_str().unwrap().contains("grant"));
    let r = check("agent:pdf_processing", "upload", Some(client_b)).await;
    assert_eq!(r.json["allowed"], false);
    assert!(
        r.json["reason"]
            .as_str()
            .unwrap()
            .contains("do not cover client"),
        "{}",
        r.text
    );
    let r = check("agent:pdf_processing", "upload", None).await;
    assert_eq!(r.json["allowed"], false);
    let r = check("agent:pdf_processing", "delete", Some(client_a)).await;
    assert_eq!(r.json["allowed"], false);
    assert!(
        r.json["reason"].as_str().unwrap().contains("no grant"),
        "{}",
        r.text
    );
    let me = app.get("/api/v1/auth/me", &admin).await;
    let r = app
        .post(
            "/api/v1/permissions/check",
            &admin,
            json!({"user_id": me.json["user"]["id"], "resource": "audit", "action": "export"}),
        )
        .await;
    assert_eq!(r.json["allowed"], true);
    assert!(r.json["reason"].as_str().unwrap().contains("admin"));
    check("agent:nope", "read", None)
        .await
        .expect(422, Some("validation_failed"));
    check("users", "fly", None)
        .await
        .expect(422, Some("validation_failed"));
    app.post("/api/v1/permissions/check", &admin, json!({"user_id": "0190b3b0-0000-7000-8000-000000000001", "resource": "users", "action": "read"}))
        .await
        .expect(422, Some("validation_failed"));
}

#[tokio::test]
async fn nobody_grants_more_than_they_hold() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let client_a = "0190b3b0-0000-7000-8000-00000000000a";
    let delegate = app
        .persona(
            &admin,
            "member",
            &[
                json!({"resource": "permissions", "actions": ["write", "read"]}),
                json!({"resource": "clients", "actions": ["read"], "client_ids": [client_a]}),
            ],
        )
        .await;
    let other = app.persona(&admin, "member", &[]).await;
    // What they hold, they may pass on.
    app.post("/api/v1/permissions/grants", &delegate.token, json!({"user_id": other.id, "resource": "clients", "actions": ["read"], "client_ids": [client_a]}))
        .await
        .expect(201, None);
    // More clients, another action, another resource: no.
    for body in [
        json!({"user_id": other.id, "resource": "clients", "actions": ["read"]}),
        json!({"user_id": other.id, "resource": "clients", "actions": ["write"], "client_ids": [client_a]}),
        json!({"user_id": other.id, "resource": "users", "actions": ["read"]}),
        json!({"user_id": delegate.id, "resource": "audit", "actions": ["read"]}),
    ] {
        app.post("/api/v1/permissions/grants", &delegate.token, body.clone())
            .await
            .expect(403, Some("forbidden"));
    }
}

#[tokio::test]
async fn only_admins_make_admins() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let manager = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "users", "actions": ["read", "write"]})],
        )
        .await;
    let member = app.persona(&admin, "member", &[]).await;
    app.post("/api/v1/users", &manager.token, json!({"email": unique_email("a"), "password": "persona-password-42", "full_name": "A", "role": "admin"}))
        .await
        .expect(403, Some("forbidden"));
    app.patch(
        &format!("/api/v1/users/{}", member.id),
        &manager.token,
        json!({"role": "admin"}),
    )
    .await
    .expect(403, Some("forbidden"));
    app.patch(
        &format!("/api/v1/users/{}", manager.id),
        &manager.token,
        json!({"role": "admin"}),
    )
    .await
    .expect(403, Some("forbidden"));
    let me = app.get("/api/v1/auth/me", &admin).await;
    app.delete(
        &format!("/api/v1/users/{}", me.json["user"]["id"].as_str().unwrap()),
        &manager.token,
    )
    .await
    .expect(403, Some("forbidden"));
    app.patch(
        &format!("/api/v1/users/{}", member.id),
        &manager.token,
        json!({"full_name": "Renamed"}),
    )
    .await
    .expect(200, None);
    let denied = app
        .get(
            "/api/v1/audit/events?outcome=denied&action=users.write",
            &admin,
        )
        .await;
    assert!(
        denied.json["items"].as_array().unwrap().len() >= 4,
        "each refusal is audited: {}",
        denied.text
    );
}

/// Two instances on one database: a grant deleted through one stops working on the other
/// within a second (Redis pub/sub, or PostgreSQL LISTEN/NOTIFY without Redis).
#[tokio::test]
async fn grant_revocation_reaches_every_instance_within_a_second() {
    if backend() != Backend::Postgres {
        eprintln!("skipped: multi-instance revocation needs AGENTDESK_TEST_DATABASE=postgres");
        return;
    }
    let env = TestEnv::new().await;
    let a = env.spawn(&[]).await;
    let b = env.spawn(&[]).await;
    let admin = a.admin_token().await;
    let member = a
        .persona(
            &admin,
            "member",
            &[json!({"resource": "users", "actions": ["read"]})],
        )
        .await;
    b.get("/api/v1/users", &member.token)
        .await
        .expect(200, None);
    let grants = a
        .get(
            &format!("/api/v1/permissions/grants?user_id={}", member.id),
            &admin,
        )
        .await;
    let grant_id = grants.json["items"][0]["id"].as_str().unwrap().to_owned();
    a.delete(&format!("/api/v1/permissions/grants/{grant_id}"), &admin)
        .await
        .expect(204, None);
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || async {
            b.get("/api/v1/users", &member.token).await.status == 403
        })
        .await,
        "instance B sees the revocation within a second"
    );
    eprintln!(
        "revocation seen by instance B after {:?}",
        started.elapsed()
    );
    // And a new role grant made on B is honoured on A.
    let sales = a.persona(&admin, "sales", &[]).await;
    a.get("/api/v1/users", &sales.token)
        .await
        .expect(403, Some("forbidden"));
    let admin_b = b.admin_token().await;
    b.grant(
        &admin_b,
        json!({"role": "sales", "resource": "users", "actions": ["read"]}),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            a.get("/api/v1/users", &sales.token).await.status == 200
        })
        .await
    );
}

/// Grants made before the `grant_clients` table existed (the release before it) are copied into
/// it by its migration, so their members keep exactly their clients after the upgrade.
#[tokio::test]
async fn grants_older_than_their_client_rows_are_copied_by_the_migration() {
    use sea_orm::ConnectionTrait;
    use sea_orm_migration::MigratorTrait;
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = app
            .post(
                "/api/v1/clients",
                &admin,
                json!({"name": format!("Kept {i}")}),
            )
            .await;
        r.expect(201, None);
        ids.push(r.json["id"].as_str().unwrap().to_owned());
    }
    let member = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "clients", "actions": ["read"], "client_ids": [ids[0], ids[2]]})],
        )
        .await;
    let listed = |r: &agentdesk_tests::Reply| -> Vec<String> {
        r.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = app.get("/api/v1/clients", &member.token).await;
    assert_eq!(listed(&before), [ids[2].clone(), ids[0].clone()]);

    // Back to the schema before the table, then forward again: the copy fills it.
    let db = app.core.db.writer();
    agentdesk_core::migration::Migrator::down(db, Some(1))
        .await
        .unwrap();
    agentdesk_core::migration::Migrator::up(db, None)
        .await
        .unwrap();
    let rows = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*) AS n FROM grant_clients",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows.try_get::<i64>("", "n").unwrap(), 2);
    let after = app.get("/api/v1/clients", &member.token).await;
    assert_eq!(listed(&after), listed(&before));
}
