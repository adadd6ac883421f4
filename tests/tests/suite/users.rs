//! Users: create, list, read, change, deactivate; validation and conflicts.

use agentdesk_tests::{TestApp, unique_email};
use reqwest::Method;
use serde_json::json;

const PASSWORD: &str = "correct-horse-battery";

#[tokio::test]
async fn create_and_read_a_user() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let email = unique_email("Ann");
    let r = app
        .post(
            "/api/v1/users",
            &admin,
            json!({"email": email, "password": PASSWORD, "full_name": " Ann Lee "}),
        )
        .await;
    r.expect(201, None);
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v1/users/{id}").as_str())
    );
    assert_eq!(r.json["role"], "member");
    assert_eq!(r.json["full_name"], "Ann Lee");
    assert_eq!(r.json["is_active"], true);
    assert!(r.json["last_login_at"].is_null());
    for key in [
        "id",
        "email",
        "full_name",
        "role",
        "is_active",
        "created_at",
        "updated_at",
        "last_login_at",
    ] {
        assert!(r.json.get(key).is_some(), "User has {key}");
    }
    assert!(!r.text.contains("password") && !r.text.contains("argon2"));
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    let got = app.get(&format!("/api/v1/users/{id}"), &admin).await;
    got.expect(200, None);
    assert_eq!(got.json, r.json);
    app.login(&email, PASSWORD).await.expect(200, None);
}

#[tokio::test]
async fn emails_are_unique_case_insensitively() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.post(
        "/api/v1/users",
        &admin,
        json!({"email": "dup@example.com", "password": PASSWORD, "full_name": "A"}),
    )
    .await
    .expect(201, None);
    app.post(
        "/api/v1/users",
        &admin,
        json!({"email": "DUP@Example.com", "password": PASSWORD, "full_name": "B"}),
    )
    .await
    .expect(409, Some("conflict"));
}

#[tokio::test]
async fn invalid_fields_are_listed() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let r = app.post("/api/v1/users", &admin, json!({"email": "not-an-email", "password": "short", "full_name": "", "role": "Bad Role"})).await;
    r.expect(422, Some("validation_failed"));
    let mut fields: Vec<_> = r.json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    fields.sort();
    assert_eq!(fields, ["email", "full_name", "password", "role"]);
    for common in ["password1234", "Qwerty123456", "aaaaaaaaaaaaaaaa"] {
        let r = app
            .post(
                "/api/v1/users",
                &admin,
                json!({"email": unique_email("c"), "password": common, "full_name": "C"}),
            )
            .await;
        r.expect(422, Some("validation_failed"));
        assert_eq!(r.json["errors"][0]["field"], "password", "{common}");
    }
    let r = app
        .post(
            "/api/v1/users",
            &admin,
            json!({"email": unique_email("c"), "password": PASSWORD}),
        )
        .await;
    r.expect(422, Some("validation_failed"));
    assert_eq!(r.json["errors"][0]["field"], "full_name");
}

#[tokio::test]
async fn members_cannot_manage_users() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let email = unique_email("m");
    let user = app.create_user(&admin, &email, PASSWORD, "member").await;
    let id = user["id"].as_str().unwrap();
    let (member, _) = app.tokens(&email, PASSWORD).await;
    app.get("/api/v1/users", &member)
        .await
        .expect(403, Some("forbidden"));
    app.get(&format!("/api/v1/users/{id}"), &member)
        .await
        .expect(403, Some("forbidden"));
    app.post(
        "/api/v1/users",
        &member,
        json!({"email": unique_email("x"), "password": PASSWORD, "full_name": "X"}),
    )
    .await
    .expect(403, Some("forbidden"));
    app.patch(
        &format!("/api/v1/users/{id}"),
        &member,
        json!({"role": "admin"}),
    )
    .await
    .expect(403, Some("forbidden"));
    app.delete(&format!("/api/v1/users/{id}"), &member)
        .await
        .expect(403, Some("forbidden"));
    app.get(&format!("/api/v1/users/{id}/grants"), &member)
        .await
        .expect(403, Some("forbidden"));
    app.request(Method::GET, "/api/v1/users", None, None)
        .await
        .expect(401, Some("unauthenticated"));
}

#[tokio::test]
async fn list_filters_and_pages_without_repeats() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mut created = Vec::new();
    for i in 0..7 {
        let role = if i % 2 == 0 { "sales" } else { "member" };
        let r = app
            .post("/api/v1/users", &admin, json!({"email": format!("p{i}@paging.test"), "password": PASSWORD, "full_name": format!("Pager {i}"), "role": role}))
            .await;
        r.expect(201, None);
        created.push(r.json["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/users?q=paging&limit=3&cursor={c}"),
            None => "/api/v1/users?q=paging&limit=3".to_owned(),
        };
        let r = app.get(&path, &admin).await;
        r.expect(200, None);
        let items = r.json["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|u| u["id"].as_str().unwrap().to_owned()));
        // A row inserted while paging does not disturb the pages.
        if cursor.is_none() {
            app.post(
                "/api/v1/users",
                &admin,
                json!({"email": "late@paging.test", "password": PASSWORD, "full_name": "Late"}),
            )
            .await
            .expect(201, None);
        }
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "newest first, every row once");

    let r = app.get("/api/v1/users?role=sales", &admin).await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 4);
    let r = app.get("/api/v1/users?q=PAGER%203", &admin).await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    // LIKE wildcards in q are literal.
    let r = app.get("/api/v1/users?q=%25", &admin).await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 0);
    app.delete(&format!("/api/v1/users/{}", created[0]), &admin)
        .await
        .expect(204, None);
    let r = app.get("/api/v1/users?is_active=false", &admin).await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn update_and_deactivate() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let email = unique_email("u");
    let user = app.create_user(&admin, &email, PASSWORD, "member").await;
    let id = user["id"].as_str().unwrap();
    let (token, _) = app.tokens(&email, PASSWORD).await;
    let r = app
        .patch(
            &format!("/api/v1/users/{id}"),
            &admin,
            json!({"full_name": "New Name", "role": "sales"}),
        )
        .await;
    r.expect(200, None);
    assert_eq!(r.json["full_name"], "New Name");
    assert_eq!(r.json["role"], "sales");
    app.patch(
        &format!("/api/v1/users/{id}"),
        &admin,
        json!({"full_name": ""}),
    )
    .await
    .expect(422, Some("validation_failed"));
    app.patch(
        &format!("/api/v1/users/{id}"),
        &admin,
        json!({"password": "short"}),
    )
    .await
    .expect(422, Some("validation_failed"));
    app.patch(
        &format!("/api/v1/users/{id}"),
        &admin,
        json!({"email": "x@y.z"}),
    )
    .await
    .expect(422, Some("validation_failed"));
    // An admin-set password ends the user's sessions.
    app.patch(
        &format!("/api/v1/users/{id}"),
        &admin,
        json!({"password": "reset-by-the-admin"}),
    )
    .await
    .expect(200, None);
    app.get("/api/v1/auth/me", &token)
        .await
        .expect(401, Some("invalid_token"));
    app.login(&email, "reset-by-the-admin")
        .await
        .expect(200, None);
    app.delete(&format!("/api/v1/users/{id}"), &admin)
        .await
        .expect(204, None);
    let r = app.get(&format!("/api/v1/users/{id}"), &admin).await;
    r.expect(200, None);
    assert_eq!(r.json["is_active"], false, "the user's record stays");
    app.login(&email, "reset-by-the-admin")
        .await
        .expect(403, Some("account_disabled"));
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    for id in ["00000000-0000-7000-8000-000000000000", "not-a-uuid"] {
        app.get(&format!("/api/v1/users/{id}"), &admin)
            .await
            .expect(404, Some("not_found"));
        app.patch(
            &format!("/api/v1/users/{id}"),
            &admin,
            json!({"full_name": "X"}),
        )
        .await
        .expect(404, Some("not_found"));
        app.delete(&format!("/api/v1/users/{id}"), &admin)
            .await
            .expect(404, Some("not_found"));
        app.get(&format!("/api/v1/users/{id}/grants"), &admin)
            .await
            .expect(404, Some("not_found"));
    }
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_removed() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let me = app.get("/api/v1/auth/me", &admin).await;
    let my_id = me.json["user"]["id"].as_str().unwrap().to_owned();
    app.delete(&format!("/api/v1/users/{my_id}"), &admin)
        .await
        .expect(409, Some("conflict"));
    app.patch(
        &format!("/api/v1/users/{my_id}"),
        &admin,
        json!({"role": "member"}),
    )
    .await
    .expect(409, Some("conflict"));
    app.create_user(&admin, &unique_email("second"), PASSWORD, "admin")
        .await;
    app.patch(
        &format!("/api/v1/users/{my_id}"),
        &admin,
        json!({"role": "member"}),
    )
    .await
    .expect(200, None);
}

#[tokio::test]
async fn grants_of_a_user_is_an_array() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let user = app
        .create_user(&admin, &unique_email("g"), PASSWORD, "member")
        .await;
    let r = app
        .get(
            &format!("/api/v1/users/{}/grants", user["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    r.expect(200, None);
    assert!(r.json.is_array());
}
