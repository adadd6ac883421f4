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
