//! The TOTP second factor: enrolment, confirmation, login with a code or a recovery code,
//! replays refused, wrong codes rate-limited, removal by the user or an admin.

use agentdesk_tests::{Persona, TestApp};
use reqwest::Method;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use totp_rs::{Algorithm, Secret, TOTP};

/// The code an authenticator app with `secret` (base32) shows `offset` steps from now.
fn code(secret: &str, offset: i64) -> String {
    let bytes = Secret::Encoded(secret.to_owned()).to_bytes().unwrap();
    let totp = TOTP::new(Algorithm::SHA1, 6, 1, 30, bytes, None, "test".into()).unwrap();
    let now = chrono::Utc::now().timestamp() + offset * 30;
    totp.generate(now as u64)
}

async fn login(app: &TestApp, who: &Persona, code: Option<&str>) -> agentdesk_tests::Reply {
    let mut body = json!({"email": who.email, "password": who.password});
    if let Some(code) = code {
        body["code"] = json!(code);
    }
    app.request(Method::POST, "/api/v1/auth/login", None, Some(body))
        .await
}

/// Enrols and confirms `who`; returns the secret and the recovery codes.
async fn enrol(app: &TestApp, who: &Persona) -> (String, Vec<String>) {
    let started = app
        .request(
            Method::POST,
            "/api/v1/auth/mfa/totp",
            Some(&who.token),
            None,
        )
        .await;
    started.expect(200, None);
    let secret = started.json["secret"].as_str().unwrap().to_owned();
    let confirmed = app
        .post(
            "/api/v1/auth/mfa/totp/confirm",
            &who.token,
            json!({"code": code(&secret, 0)}),
        )
        .await;
    confirmed.expect(200, None);
    let codes = confirmed.json["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (secret, codes)
}

#[tokio::test]
async fn totp_is_enrolled_confirmed_required_and_removed() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = app.persona(&admin, "member", &[]).await;

    // Enrolment: the secret three ways, not yet required.
    let started = app
        .request(Method::POST, "/api/v1/auth/mfa/totp", Some(&a.token), None)
        .await;
    started.expect(200, None);
    let secret = started.json["secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 32, "160 bits in base32: {secret}");
    let uri = started.json["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/agentdesk:") && uri.contains(&format!("secret={secret}")),
        "{uri}"
    );
    assert!(uri.contains("issuer=agentdesk"), "{uri}");
    let svg = started.json["qr_svg"].as_str().unwrap();
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");
    login(&app, &a, None).await.expect(200, None);

    // Stored encrypted, never as the secret itself.
    let row = agentdesk_core::models::mfa::Entity::find_by_id(a.id.parse::<uuid::Uuid>().unwrap())
        .one(app.core.db.reader())
        .await
        .unwrap()
        .unwrap();
    assert!(row.secret.starts_with("v1."), "{}", row.secret);
    assert!(
        !row.secret.contains(&secret)
            && !row.secret.to_lowercase().contains(&secret.to_lowercase())
    );

    // A wrong or malformed code does not confirm.
    for bad in [
        json!({"code": "12345"}),
        json!({"code": "abcdef"}),
        json!({"code": ""}),
    ] {
        app.post("/api/v1/auth/mfa/totp/confirm", &a.token, bad)
            .await
            .expect(422, Some("validation_failed"));
    }
    app.post("/api/v1/auth/mfa/totp/confirm", &a.token, json!({}))
        .await
        .expect(422, Some("validation_failed"));
    let confirmed = app
        .post(
            "/api/v1/auth/mfa/totp/confirm",
            &a.token,
            json!({"code": code(&secret, 0)}),
        )
        .await;
    confirmed.expect(200, None);
    let recovery: Vec<String> = confirmed.json["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    let mut unique = recovery.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10);
    // Active: no second enrolment, no second confirmation.
    app.request(Method::POST, "/api/v1/auth/mfa/totp", Some(&a.token), None)
        .await
        .expect(409, Some("conflict"));
    app.post(
        "/api/v1/auth/mfa/totp/confirm",
        &a.token,
        json!({"code": code(&secret, 1)}),
    )
    .await
    .expect(409, Some("conflict"));

    // Login now needs a code: without one, no tokens.
    let refused = login(&app, &a, None).await;
    refused.expect(401, Some("mfa_required"));
    assert!(refused.json.get("access_token").is_none());
    // The confirmation's code was used: replaying it is refused.
    login(&app, &a, Some(&code(&secret, 0)))
        .await
        .expect(401, Some("invalid_mfa_code"));
    // The next step's code (clock drift allows it) logs in, once.
    let next = code(&secret, 1);
    let ok = login(&app, &a, Some(&next)).await;
    ok.expect(200, None);
    assert!(ok.json["access_token"].is_string());
    login(&app, &a, Some(&next))
        .await
        .expect(401, Some("invalid_mfa_code"));
    // A wrong password with a right code is still a wrong password.
    app.request(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"email": a.email, "password": "not-the-password", "code": code(&secret, 1)})),
    )
    .await
    .expect(401, Some("invalid_credentials"));

    // A recovery code works once, however it is typed.
    login(&app, &a, Some(&recovery[0])).await.expect(200, None);
    login(&app, &a, Some(&recovery[0]))
        .await
        .expect(401, Some("invalid_mfa_code"));
    let typed = recovery[1].to_uppercase().replace('-', " ");
    login(&app, &a, Some(&typed)).await.expect(200, None);
    // The OAuth2 password flow takes the code too.
    let token = TestApp::read(
        app.client
            .post(format!("{}/api/v1/auth/token", app.base))
            .form(&[
                ("username", a.email.as_str()),
                ("password", a.password.as_str()),
                ("code", recovery[2].as_str()),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    token.expect(200, None);
    let token_without = TestApp::read(
        app.client
            .post(format!("{}/api/v1/auth/token", app.base))
            .form(&[
                ("username", a.email.as_str()),
                ("password", a.password.as_str()),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    token_without.expect(401, Some("mfa_required"));

    // An API key cannot touch the factor.
    let key = app
        .post("/api/v1/api-keys", &a.token, json!({"name": "k"}))
        .await;
    let key = key.json["key"].as_str().unwrap().to_owned();
    app.request(
        Method::DELETE,
        "/api/v1/auth/mfa/totp",
        Some(&key),
        Some(json!({"password": a.password})),
    )
    .await
    .expect(403, Some("session_required"));

    // Removal needs the password.
    app.request(
        Method::DELETE,
        "/api/v1/auth/mfa/totp",
        Some(&a.token),
        Some(json!({"password": "not-the-password"})),
    )
    .await
    .expect(422, Some("validation_failed"));
    login(&app, &a, None)
        .await
        .expect(401, Some("mfa_required"));
    app.request(
        Method::DELETE,
        "/api/v1/auth/mfa/totp",
        Some(&a.token),
        Some(json!({"password": a.password})),
    )
    .await
    .expect(204, None);
    login(&app, &a, None).await.expect(200, None);
    // The recovery codes went with it.
    let left = agentdesk_core::models::mfa::recovery_code::Entity::find()
        .all(app.core.db.reader())
        .await
        .unwrap();
    assert!(
        left.iter().all(|c| c.user_id.to_string() != a.id),
        "{left:?}"
    );

    let events = app
        .get("/api/v1/audit/events?action=auth.login", &admin)
        .await;
    assert!(
        events.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["changes"]["second_factor"] == "recovery_code"),
        "{}",
        events.json
    );
    app.assert_audited(
        &admin,
        &["auth.mfa_enrol", "auth.mfa_enable", "auth.mfa_disable"],
    )
    .await;
}

/// An admin removes a user's factor (a lost phone); a member without `users:write` cannot.
#[tokio::test]
async fn an_admin_removes_a_users_factor() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let b = app.persona(&admin, "member", &[]).await;
    let c = app.persona(&admin, "member", &[]).await;
    enrol(&app, &b).await;
    login(&app, &b, None)
        .await
        .expect(401, Some("mfa_required"));
    app.delete(&format!("/api/v1/users/{}/mfa", b.id), &c.token)
        .await
        .expect(403, Some("forbidden"));
    app.delete("/api/v1/users/not-a-uuid/mfa", &admin)
        .await
        .expect(404, Some("not_found"));
    app.delete(
        &format!("/api/v1/users/{}/mfa", uuid::Uuid::now_v7()),
        &admin,
    )
    .await
    .expect(404, Some("not_found"));
    app.delete(&format!("/api/v1/users/{}/mfa", b.id), &admin)
        .await
        .expect(204, None);
    login(&app, &b, None).await.expect(200, None);
    // Idempotent.
    app.delete(&format!("/api/v1/users/{}/mfa", b.id), &admin)
        .await
        .expect(204, None);
    let events = app
        .get("/api/v1/audit/events?action=user.mfa_remove", &admin)
        .await;
    let removed: Vec<&Value> = events.json["items"].as_array().unwrap().iter().collect();
    assert_eq!(removed.len(), 2, "{}", events.json);
    assert!(removed.iter().any(|e| e["changes"]["removed"] == true));
    assert!(removed.iter().all(|e| e["resource_id"] == json!(b.id)));
}

/// Wrong codes count toward the login rate limit, as wrong passwords do.
#[tokio::test]
async fn wrong_codes_count_toward_the_login_rate_limit() {
    let app = TestApp::spawn_with(&[("login_max_failures_per_email", json!(3))]).await;
    let admin = app.admin_token().await;
    let d = app.persona(&admin, "member", &[]).await;
    let (_, recovery) = enrol(&app, &d).await;
    for wrong in ["000000", "not-a-recovery-code", "999999"] {
        let reply = login(&app, &d, Some(wrong)).await;
        // A guessed 6-digit code could be right once in a million; the next line would say so.
        reply.expect(401, Some("invalid_mfa_code"));
    }
    let limited = login(&app, &d, Some(&recovery[0])).await;
    limited.expect(429, Some("rate_limited"));
    assert!(limited.header("retry-after").is_some());
}

/// Rotating the instance's secret keeps every factor: with the old secret named as the
/// previous one, the start encrypts each factor again under the new one, after which the old
/// one is no longer needed.
#[tokio::test]
async fn factors_survive_a_rotation_of_the_instance_secret() {
    let env = agentdesk_tests::TestEnv::new().await;
    let (old, new) = ("o".repeat(40), "n".repeat(40));
    let first = env.spawn(&[("jwt_secret", json!(old))]).await;
    let admin = first.admin_token().await;
    let e = first.persona(&admin, "member", &[]).await;
    let (secret, _) = enrol(&first, &e).await;
    let user_id: uuid::Uuid = e.id.parse().unwrap();
    let sealed = |app: &TestApp| {
        let db = app.core.db.reader().clone();
        async move {
            agentdesk_core::models::mfa::Entity::find_by_id(user_id)
                .one(&db)
                .await
                .unwrap()
                .unwrap()
                .secret
        }
    };
    let before = sealed(&first).await;
    first.stop().await;

    let rotating = env
        .spawn(&[
            ("jwt_secret", json!(new)),
            ("previous_jwt_secret", json!(old)),
        ])
        .await;
    let after = sealed(&rotating).await;
    assert_ne!(
        before.split('.').nth(1),
        after.split('.').nth(1),
        "a new key: {after}"
    );
    login(&rotating, &e, Some(&code(&secret, 1)))
        .await
        .expect(200, None);
    rotating.stop().await;

    // The previous secret is gone and the factor still reads: a replayed code is refused as a
    // replay, which is decided after the secret was decrypted (an unreadable one is a 500).
    let rotated = env.spawn(&[("jwt_secret", json!(new))]).await;
    login(&rotated, &e, Some(&code(&secret, 1)))
        .await
        .expect(401, Some("invalid_mfa_code"));
    login(&rotated, &e, None)
        .await
        .expect(401, Some("mfa_required"));
}
