//! Auth: login, rate limits, refresh rotation and theft detection, logout, password change,
//! the OAuth2 form flow, and the effect of deactivation and role changes on the next request.

use std::time::Duration;

use agentdesk_tests::{
    ADMIN_PASSWORD, Backend, TestApp, TestEnv, backend, eventually, unique_email,
};
use reqwest::Method;
use serde_json::json;

const PASSWORD: &str = "correct-horse-battery";

#[tokio::test]
async fn login_returns_a_token_pair_without_secrets() {
    let app = TestApp::spawn().await;
    let r = app.login("ADMIN@test.local", ADMIN_PASSWORD).await;
    r.expect(200, None);
    assert_eq!(r.json["token_type"], "bearer");
    assert_eq!(r.json["expires_in"], 900);
    assert_eq!(r.json["user"]["email"], "admin@test.local");
    assert_eq!(r.json["user"]["role"], "admin");
    assert!(r.json["user"]["last_login_at"].is_string());
    assert!(
        !r.text.contains("argon2") && !r.text.contains("password"),
        "{}",
        r.text
    );
    let me = app
        .get("/api/v1/auth/me", r.json["access_token"].as_str().unwrap())
        .await;
    me.expect(200, None);
    assert_eq!(me.json["user"]["id"], r.json["user"]["id"]);
    assert!(me.json["grants"].is_array());
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_the_same() {
    let app = TestApp::spawn().await;
    let wrong = app.login("admin@test.local", "wrong-password-123").await;
    wrong.expect(401, Some("invalid_credentials"));
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    let unknown = app.login("nobody@test.local", "wrong-password-123").await;
    unknown.expect(401, Some("invalid_credentials"));
    let strip = |mut v: serde_json::Value| {
        v.as_object_mut().unwrap().remove("request_id");
        v
    };
    assert_eq!(strip(wrong.json), strip(unknown.json), "same body for both");
    // Not even an email: still the same answer.
    app.login("not an email", "x")
        .await
        .expect(401, Some("invalid_credentials"));
}

#[tokio::test]
async fn disabled_account_is_revealed_only_after_a_correct_password() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let email = unique_email("dis");
    let user = app.create_user(&admin, &email, PASSWORD, "member").await;
    app.delete(
        &format!("/api/v1/users/{}", user["id"].as_str().unwrap()),
        &admin,
    )
    .await
    .expect(204, None);
    app.login(&email, "wrong-password-123")
        .await
        .expect(401, Some("invalid_credentials"));
    app.login(&email, PASSWORD)
        .await
        .expect(403, Some("account_disabled"));
}

#[tokio::test]
async fn repeated_failures_are_rate_limited_per_email() {
    let app = TestApp::spawn_with(&[("login_max_failures_per_email", json!(3))]).await;
    for _ in 0..3 {
        app.login("admin@test.local", "wrong-password-123")
            .await
            .expect(401, Some("invalid_credentials"));
    }
    let r = app.login("admin@test.local", ADMIN_PASSWORD).await;
    r.expect(429, Some("rate_limited"));
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    // The same email in another case is the same account.
    app.login("Admin@Test.Local", ADMIN_PASSWORD)
        .await
        .expect(429, Some("rate_limited"));
    // Another account is not affected.
    let admin_env = app.core.clone();
    let _ = admin_env;
}

#[tokio::test]
async fn repeated_failures_are_rate_limited_per_ip() {
    let app = TestApp::spawn_with(&[
        ("login_max_failures_per_ip", json!(4)),
        ("trust_forwarded_for", json!(true)),
    ])
    .await;
    let send = |email: String, ip: &'static str| {
        let app = &app;
        async move {
            TestApp::read(
                app.client
                    .post(format!("{}/api/v1/auth/login", app.base))
                    .header("x-forwarded-for", ip)
                    .json(&json!({"email": email, "password": "wrong-password-123"}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    for i in 0..4 {
        send(format!("user{i}@test.local"), "203.0.113.7")
            .await
            .expect(401, Some("invalid_credentials"));
    }
    send("fresh@test.local".into(), "203.0.113.7")
        .await
        .expect(429, Some("rate_limited"));
    // Another IP still gets through to the password check.
    send("fresh@test.local".into(), "198.51.100.1")
        .await
        .expect(401, Some("invalid_credentials"));
}

#[tokio::test]
async fn a_successful_login_resets_the_email_counter() {
    let app = TestApp::spawn_with(&[("login_max_failures_per_email", json!(3))]).await;
    for _ in 0..2 {
        app.login("admin@test.local", "wrong-password-123")
            .await
            .expect(401, None);
    }
    app.login("admin@test.local", ADMIN_PASSWORD)
        .await
        .expect(200, None);
    for _ in 0..2 {
        app.login("admin@test.local", "wrong-password-123")
            .await
            .expect(401, None);
    }
    app.login("admin@test.local", ADMIN_PASSWORD)
        .await
        .expect(200, None);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_session() {
    let app = TestApp::spawn().await;
    let (access1, refresh1) = app.tokens("admin@test.local", ADMIN_PASSWORD).await;
    let r = app
        .request(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh1})),
        )
        .await;
    r.expect(200, None);
    let access2 = r.json["access_token"].as_str().unwrap().to_owned();
    let refresh2 = r.json["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh1, refresh2);
    app.get("/api/v1/auth/me", &access2).await.expect(200, None);
    app.get("/api/v1/auth/me", &access1).await.expect(200, None);

    // The old refresh token again: theft. 401, and the whole session ends.
    app.request(
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh1})),
    )
    .await
    .expect(401, Some("invalid_token"));
    app.request(
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh2})),
    )
    .await
    .expect(401, Some("invalid_token"));
    app.get("/api/v1/auth/me", &access2)
        .await
        .expect(401, Some("invalid_token"));
    app.get("/api/v1/auth/me", &access1)
        .await
        .expect(401, Some("invalid_token"));
    // Other sessions are untouched.
    let (other, _) = app.tokens("admin@test.local", ADMIN_PASSWORD).await;
    app.get("/api/v1/auth/me", &other).await.expect(200, None);
}

#[tokio::test]
async fn bad_refresh_tokens_are_refused() {
    let app = TestApp::spawn().await;
    for token in ["", "garbage", &"a".repeat(5000)] {
        app.request(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": token})),
        )
        .await
        .expect(401, Some("invalid_token"));
    }
    app.request(Method::POST, "/api/v1/auth/refresh", None, Some(json!({})))
        .await
        .expect(422, Some("validation_failed"));
}

#[tokio::test]
async fn logout_refuses_the_sessions_tokens_at_once() {
    let app = TestApp::spawn().await;
    let (access, refresh) = app.tokens("admin@test.local", ADMIN_PASSWORD).await;
    let (other, _) = app.tokens("admin@test.local", ADMIN_PASSWORD).await;
    app.get("/api/v1/auth/me", &access).await.expect(200, None);
    app.post(
        "/api/v1/auth/logout",
        &access,
        json!({"refresh_token": refresh}),
    )
    .await
    .expect(204, None);
    app.get("/api/v1/auth/me", &access)
        .await
        .expect(401, Some("invalid_token"));
    app.request(
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh})),
    )
    .await
    .expect(401, Some("invalid_token"));
    app.get("/api/v1/auth/me", &other).await.expect(200, None);
    // Logout needs authentication.
    app.request(
        Method::POST,
        "/api/v1/auth/logout",
        None,
        Some(json!({"refresh_token": "x"})),
    )
    .await
    .expect(401, Some("unauthenticated"));
}

#[tokio::test]
async fn password_change_revokes_every_other_session() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let email = unique_email("pw");
    app.create_user(&admin, &email, PASSWORD, "member").await;
    let (current, _) = app.tokens(&email, PASSWORD).await;
    let (other, other_refresh) = app.tokens(&email, PASSWORD).await;

    let r = app.post("/api/v1/auth/password", &current, json!({"current_password": "wrong-password-123", "new_password": "another-fine-password"})).await;
    r.expect(422, Some("validation_failed"));
    assert_eq!(r.json["errors"][0]["field"], "current_password");
    let r = app
        .post(
            "/api/v1/auth/password",
            &current,
            json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    r.expect(422, Some("validation_failed"));
    assert_eq!(r.json["errors"][0]["field"], "new_password");
    app.post(
        "/api/v1/auth/password",
        &current,
        json!({"current_password": PASSWORD, "new_password": "password1234"}),
    )
    .await
    .expect(422, Some("validation_failed"));

    app.post(
        "/api/v1/auth/password",
        &current,
        json!({"current_password": PASSWORD, "new_password": "another-fine-password"}),
    )
    .await
    .expect(204, None);
    app.get("/api/v1/auth/me", &current).await.expect(200, None);
    app.get("/api/v1/auth/me", &other)
        .await
        .expect(401, Some("invalid_token"));
    app.request(
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": other_refresh})),
    )
    .await
    .expect(401, Some("invalid_token"));
    app.login(&email, PASSWORD)
        .await
        .expect(401, Some("invalid_credentials"));
    app.login(&email, "another-fine-password")
        .await
        .expect(200, None);
}

#[tokio::test]
async fn oauth2_password_form_flow() {
    let app = TestApp::spawn().await;
    let url = format!("{}/api/v1/auth/token", app.base);
    let r = TestApp::read(
        app.client
            .post(&url)
            .form(&[
                ("username", "admin@test.local"),
                ("password", ADMIN_PASSWORD),
                ("grant_type", "password"),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(200, None);
    assert_eq!(r.json["token_type"], "bearer");
    app.get("/api/v1/auth/me", r.json["access_token"].as_str().unwrap())
        .await
        .expect(200, None);
    let r = TestApp::read(
        app.client
            .post(&url)
            .form(&[
                ("username", "admin@test.local"),
                ("password", "nope-nope-nope"),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(401, Some("invalid_credentials"));
    let r = TestApp::read(
        app.client
            .post(&url)
            .form(&[("username", "admin@test.local")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(422, Some("validation_failed"));
    let r = TestApp::read(
        app.client
            .post(&url)
            .json(&json!({"username": "a", "password": "b"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(415, Some("unsupported_media_type"));
    let r = TestApp::read(
        app.client
            .post(&url)
            .form(&[
                ("username", "admin@test.local"),
                ("password", ADMIN_PASSWORD),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(422, Some("validation_failed"));
}

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_get_401() {
    let app = TestApp::spawn().await;
    let r = app
        .request(Method::GET, "/api/v1/auth/me", None, None)
        .await;
    r.expect(401, Some("unauthenticated"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    for header in [
        "Bearer",
        "Bearer ",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer not.a.jwt",
        "Bearer a.b.c",
    ] {
        let r = TestApp::read(
            app.client
                .get(format!("{}/api/v1/auth/me", app.base))
                .header("authorization", header)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 401, "{header}: {}", r.text);
    }
    // Signed with another key.
    let forged =
        agentdesk_core::security::TokenSigner::new(b"some-other-secret-some-other-secret!", 900)
            .issue(
                uuid::Uuid::now_v7(),
                uuid::Uuid::now_v7(),
                chrono::Utc::now(),
            )
            .unwrap();
    app.get("/api/v1/auth/me", &forged)
        .await
        .expect(401, Some("invalid_token"));
    // Right key, expired.
    let me = app.login("admin@test.local", ADMIN_PASSWORD).await;
    let expired = app
        .core
        .signer
        .issue(
            me.json["user"]["id"].as_str().unwrap().parse().unwrap(),
            uuid::Uuid::now_v7(),
            chrono::Utc::now() - chrono::Duration::hours(2),
        )
        .unwrap();
    let r = app.get("/api/v1/auth/me", &expired).await;
    r.expect(401, Some("invalid_token"));
    assert!(r.json["detail"].as_str().unwrap().contains("expired"));
    // Right key, valid, but for a session that does not exist.
    let ghost = app
        .core
        .signer
        .issue(
            me.json["user"]["id"].as_str().unwrap().parse().unwrap(),
            uuid::Uuid::now_v7(),
            chrono::Utc::now(),
        )
        .unwrap();
    app.get("/api/v1/auth/me", &ghost)
        .await
        .expect(401, Some("invalid_token"));
}

#[tokio::test]
async fn deactivation_and_role_change_take_effect_on_the_next_request() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let email = unique_email("role");
    let user = app.create_user(&admin, &email, PASSWORD, "admin").await;
    let id = user["id"].as_str().unwrap();
    let (token, _) = app.tokens(&email, PASSWORD).await;
    app.get("/api/v1/users", &token).await.expect(200, None);
    app.patch(
        &format!("/api/v1/users/{id}"),
        &admin,
        json!({"role": "member"}),
    )
    .await
    .expect(200, None);
    app.get("/api/v1/users", &token)
        .await
        .expect(403, Some("forbidden"));
    app.get("/api/v1/auth/me", &token).await.expect(200, None);
    app.patch(
        &format!("/api/v1/users/{id}"),
        &admin,
        json!({"is_active": false}),
    )
    .await
    .expect(200, None);
    app.get("/api/v1/auth/me", &token)
        .await
        .expect(401, Some("invalid_token"));
}

/// Two instances on one database: a change made through one is seen by the other (through
/// Redis pub/sub, or PostgreSQL LISTEN/NOTIFY without Redis). SQLite is a single-instance
/// deployment, so this runs on PostgreSQL only.
#[tokio::test]
async fn revocations_reach_every_instance() {
    if backend() != Backend::Postgres {
        eprintln!("skipped: multi-instance revocation needs AGENTDESK_TEST_DATABASE=postgres");
        return;
    }
    let env = TestEnv::new().await;
    let a = env.spawn(&[]).await;
    let b = env.spawn(&[]).await;
    let admin = a.admin_token().await;
    let email = unique_email("multi");
    let user = a.create_user(&admin, &email, PASSWORD, "admin").await;
    let id = user["id"].as_str().unwrap().to_owned();
    let (token, refresh) = a.tokens(&email, PASSWORD).await;
    // Warm B's cache with the session.
    b.get("/api/v1/users", &token).await.expect(200, None);

    a.patch(
        &format!("/api/v1/users/{id}"),
        &admin,
        json!({"role": "member"}),
    )
    .await
    .expect(200, None);
    assert!(
        eventually(Duration::from_secs(1), || async {
            b.get("/api/v1/users", &token).await.status == 403
        })
        .await,
        "the role change reaches instance B within a second"
    );

    a.post(
        "/api/v1/auth/logout",
        &token,
        json!({"refresh_token": refresh}),
    )
    .await
    .expect(204, None);
    assert!(
        eventually(Duration::from_secs(1), || async {
            b.get("/api/v1/auth/me", &token).await.status == 401
        })
        .await,
        "the logout reaches instance B within a second"
    );

    // A session its user ends from another one (`DELETE /auth/sessions/{id}`) likewise.
    let (doomed, _) = a.tokens(&email, PASSWORD).await;
    let (keeper, _) = a.tokens(&email, PASSWORD).await;
    b.get("/api/v1/auth/me", &doomed).await.expect(200, None);
    let sessions = a.get("/api/v1/auth/sessions", &doomed).await;
    let doomed_id = sessions.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.delete(&format!("/api/v1/auth/sessions/{doomed_id}"), &keeper)
        .await
        .expect(204, None);
    assert!(
        eventually(Duration::from_secs(1), || async {
            b.get("/api/v1/auth/me", &doomed).await.status == 401
        })
        .await,
        "the end of a session reaches instance B within a second"
    );
    b.get("/api/v1/auth/me", &keeper).await.expect(200, None);

    // An API key revoked on A is refused by B (which had it cached) within a second.
    let made = a
        .post("/api/v1/api-keys", &keeper, json!({"name": "multi"}))
        .await;
    made.expect(201, None);
    let key = made.json["key"].as_str().unwrap().to_owned();
    b.get("/api/v1/auth/me", &key).await.expect(200, None);
    a.delete(
        &format!("/api/v1/api-keys/{}", made.json["id"].as_str().unwrap()),
        &keeper,
    )
    .await
    .expect(204, None);
    assert!(
        eventually(Duration::from_secs(1), || async {
            b.get("/api/v1/auth/me", &key).await.status == 401
        })
        .await,
        "the revocation of an API key reaches instance B within a second"
    );
}
