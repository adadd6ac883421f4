//! System routes, middleware and the problem+json net.

use agentdesk_tests::{TestApp, eventually};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn health_ready_version() {
    let app = TestApp::spawn().await;
    let r = app.request(Method::GET, "/healthz", None, None).await;
    r.expect(200, None);
    assert_eq!(r.json, json!({"status": "ok"}));
    app.request(Method::GET, "/readyz", None, None)
        .await
        .expect(200, None);
    let r = app.request(Method::GET, "/version", None, None).await;
    r.expect(200, None);
    assert_eq!(r.json["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    app.get("/api/v1/users/00000000-0000-0000-0000-000000000000", &token)
        .await
        .expect(404, Some("not_found"));
    let r = app.request(Method::GET, "/metrics", None, None).await;
    r.expect(200, None);
    assert!(r.text.contains("http_requests_total"), "{}", r.text);
    assert!(
        r.text.contains(r#"route="/api/v1/users/{id}""#),
        "metrics are labelled by route template: {}",
        r.text
    );
    assert!(r.text.contains(r#"status="404""#));
    assert!(r.text.contains("http_request_duration_seconds_bucket"));
    assert!(r.text.contains("db_pool_connections"));
}

#[tokio::test]
async fn openapi_covers_every_route_and_docs_are_served_offline() {
    let app = TestApp::spawn().await;
    let r = app.request(Method::GET, "/openapi.json", None, None).await;
    r.expect(200, None);
    assert!(
        r.json["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    let paths = r.json["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/version", "get"),
        ("/metrics", "get"),
        ("/api/v1/auth/login", "post"),
        ("/api/v1/auth/token", "post"),
        ("/api/v1/auth/refresh", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/auth/me", "get"),
        ("/api/v1/auth/password", "post"),
        ("/api/v1/users", "get"),
        ("/api/v1/users", "post"),
        ("/api/v1/users/{id}", "get"),
        ("/api/v1/users/{id}", "patch"),
        ("/api/v1/users/{id}", "delete"),
        ("/api/v1/users/{id}/grants", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is missing from the OpenAPI document"
        );
    }
    let schemes = &r.json["components"]["securitySchemes"];
    assert_eq!(
        schemes["oauth2"]["flows"]["password"]["tokenUrl"],
        "/api/v1/auth/token"
    );
    assert!(r.json["components"]["schemas"]["Problem"].is_object());

    let docs = app
        .client
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger"), "the docs page is Swagger UI");
    assert!(
        !html.contains("cdn.") && !html.contains("unpkg"),
        "no CDN: the docs work offline"
    );
    let bundle = app
        .client
        .get(format!("{}/docs/swagger-ui-bundle.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bundle.status(),
        200,
        "the UI's assets are served from the binary"
    );
}

#[tokio::test]
async fn request_ids_are_echoed_when_safe_and_generated_otherwise() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "abc-123_XYZ.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123_XYZ.9");
    for bad in [
        "a".repeat(129),
        "has space".into(),
        "quote\"".into(),
        "<script>".into(),
    ] {
        let r = app
            .client
            .get(format!("{}/healthz", app.base))
            .header("x-request-id", bad.as_str())
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, bad);
        assert!(
            uuid::Uuid::parse_str(&id).is_ok(),
            "a generated id is a UUID: {id}"
        );
    }
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn axum_rejections_and_unknown_routes_are_problem_json() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    app.request(Method::GET, "/nope", None, None)
        .await
        .expect(404, Some("not_found"));
    app.request(Method::GET, "/api/v1/nope", Some(&token), None)
        .await
        .expect(404, Some("not_found"));
    let r = app.request(Method::DELETE, "/healthz", None, None).await;
    r.expect(405, Some("method_not_allowed"));
    assert!(r.header("allow").is_some());
    app.request(Method::PUT, "/api/v1/auth/login", None, Some(json!({})))
        .await
        .expect(405, Some("method_not_allowed"));

    let url = format!("{}/api/v1/auth/login", app.base);
    // Malformed JSON: 400.
    let r = TestApp::read(
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .body("{\"email\":")
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(400, Some("malformed_json"));
    // Wrong media type: 415.
    let r = TestApp::read(
        app.client
            .post(&url)
            .header("content-type", "text/plain")
            .body("hi")
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(415, Some("unsupported_media_type"));
    let r = TestApp::read(app.client.post(&url).body("{}").send().await.unwrap()).await;
    r.expect(415, Some("unsupported_media_type"));
    // Missing field and wrong type: 422 naming the field.
    let r = app
        .request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "a@b.c"})),
        )
        .await;
    r.expect(422, Some("validation_failed"));
    assert_eq!(r.json["errors"][0]["field"], "password");
    let r = app
        .request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": 5, "password": "x"})),
        )
        .await;
    r.expect(422, Some("validation_failed"));
    assert_eq!(r.json["errors"][0]["field"], "email");
    // A JSON body that is not an object.
    app.request(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!([1, 2])),
    )
    .await
    .expect(422, Some("validation_failed"));
    // Too large: 413.
    let big = format!(
        "{{\"email\":\"{}\",\"password\":\"x\"}}",
        "a".repeat(2 * 1024 * 1024)
    );
    let r = TestApp::read(
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(413, Some("payload_too_large"));
    // Bad query parameters: 400.
    app.get("/api/v1/users?limit=abc", &token)
        .await
        .expect(400, Some("invalid_parameter"));
    app.get("/api/v1/users?limit=0", &token)
        .await
        .expect(400, Some("bad_request"));
    app.get("/api/v1/users?limit=201", &token)
        .await
        .expect(400, Some("bad_request"));
    app.get("/api/v1/users?cursor=%%%", &token)
        .await
        .expect(400, Some("bad_request"));
    app.get("/api/v1/users?is_active=maybe", &token)
        .await
        .expect(400, Some("invalid_parameter"));
}

#[tokio::test]
async fn security_headers_and_no_store_on_api_responses() {
    let app = TestApp::spawn().await;
    let r = app
        .login("admin@test.local", agentdesk_tests::ADMIN_PASSWORD)
        .await;
    r.expect(200, None);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "tokens must not be cached"
    );
    assert!(r.header("content-security-policy").is_some());
}

#[tokio::test]
async fn cors_is_off_by_default_and_configurable() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .request(Method::OPTIONS, format!("{}/api/v1/auth/me", app.base))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let app = TestApp::spawn_with(&[("cors_origins", json!("https://app.example.com"))]).await;
    let r = app
        .client
        .request(Method::OPTIONS, format!("{}/api/v1/auth/me", app.base))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let r = app
        .client
        .request(Method::OPTIONS, format!("{}/api/v1/auth/me", app.base))
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn graceful_shutdown_stops_accepting() {
    let app = TestApp::spawn().await;
    let base = app.base.clone();
    let client = app.client.clone();
    app.request(Method::GET, "/healthz", None, None)
        .await
        .expect(200, None);
    app.stop().await;
    assert!(
        eventually(Duration::from_secs(5), || {
            let client = client.clone();
            let base = base.clone();
            async move { client.get(format!("{base}/healthz")).send().await.is_err() }
        })
        .await,
        "the server no longer accepts connections after shutdown"
    );
}

/// Every operation of the OpenAPI document answers only statuses it lists: without a token
/// (401 with the `Bearer` challenge on every secured route), with a malformed body, with a
/// body of the wrong media type, and as an admin on ids that name nothing. None answers a 5xx.
#[tokio::test]
async fn every_operation_answers_only_what_the_document_lists() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let doc = app.request(Method::GET, "/openapi.json", None, None).await;
    doc.expect(200, None);
    let public = [
        "/api/v1/auth/login",
        "/api/v1/auth/token",
        "/api/v1/auth/refresh",
    ];
    let mut checks = 0;
    for (path, item) in doc.json["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let documented: Vec<u16> = op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .filter_map(|k| k.parse().ok())
                .collect();
            let what = format!("{} {path}", method.to_uppercase());
            let concrete = path
                .split('/')
                .map(|part| {
                    if part.starts_with('{') {
                        uuid::Uuid::now_v7().to_string()
                    } else {
                        part.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            let verb = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let websocket = documented.contains(&101);
            let mut answered = |status: u16, how: &str| {
                assert!(
                    documented.contains(&status),
                    "{what} {how} answered {status}, which its document does not list: {documented:?}"
                );
                assert!(status < 500, "{what} {how} answered {status}");
                checks += 1;
            };
            if path.starts_with("/api/v1") && !public.contains(&path.as_str()) {
                assert!(secured, "{what} declares no security");
            }
            if secured && !websocket {
                let r = app.request(verb.clone(), &concrete, None, None).await;
                assert_eq!(r.status, 401, "{what} without a token: {}", r.text);
                assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
                answered(401, "without a token");
            }
            let token = (!public.contains(&path.as_str())).then_some(admin.as_str());
            let send = |content_type: &'static str, body: &'static str| {
                let mut req = app
                    .client
                    .request(verb.clone(), format!("{}{concrete}", app.base))
                    .header("content-type", content_type)
                    .body(body);
                if let Some(token) = token {
                    req = req.bearer_auth(token);
                }
                async move { TestApp::read(req.send().await.expect("sent")).await }
            };
            let content = op["requestBody"]["content"].as_object();
            if let Some(content) = content {
                if let Some(json_type) = content.keys().find(|t| t.contains("json")) {
                    let json_type: &'static str = if json_type.contains("merge-patch") {
                        "application/merge-patch+json"
                    } else {
                        "application/json"
                    };
                    let r = send(json_type, "{").await;
                    answered(r.status.as_u16(), "with malformed JSON");
                    assert!(
                        [400, 404].contains(&r.status.as_u16()),
                        "{what} with malformed JSON: {}",
                        r.text
                    );
                }
                let r = send("text/plain", "plain words").await;
                answered(r.status.as_u16(), "with text/plain");
                assert!(
                    [404, 415].contains(&r.status.as_u16()),
                    "{what} with text/plain: {}",
                    r.text
                );
            }
            // As the admin, on ids that name nothing: only reads and deletes (nothing to change).
            if (verb == Method::GET || verb == Method::DELETE)
                && token.is_some()
                && content.is_none()
            {
                let r = app.request(verb.clone(), &concrete, token, None).await;
                answered(r.status.as_u16(), "as the admin");
            }
        }
    }
    assert!(checks > 100, "only {checks} checks");
}

/// The constraints shared code enforces are in the document, on every route: `limit` is 1..=200
/// (and 0 or 201 is refused), free-text strings exclude U+0000 (and one is refused with 422),
/// and a route with a path id lists 400 for a malformed one.
#[tokio::test]
async fn the_document_states_the_shared_limits_and_the_server_keeps_them() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let doc = app
        .request(Method::GET, "/openapi.json", None, None)
        .await
        .json;
    let mut limits = 0;
    let mut strings = 0;
    let mut cursors = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for param in op["parameters"].as_array().into_iter().flatten() {
                let schema = &param["schema"];
                if param["name"] == "limit" {
                    limits += 1;
                    assert_eq!(schema["minimum"], 1, "{method} {path}");
                    assert_eq!(schema["maximum"], 200, "{method} {path}");
                }
                if param["name"] == "cursor" {
                    cursors += 1;
                    let pattern = schema["pattern"].as_str().unwrap_or_default();
                    assert!(pattern.contains("[A-Za-z0-9_-]"), "{method} {path} {param}");
                } else if schema["type"] == "string"
                    && schema.get("format").is_none()
                    && schema.get("enum").is_none()
                {
                    strings += 1;
                    assert_eq!(schema["pattern"], "^[^\\x00]*$", "{method} {path} {param}");
                }
            }
            if path.starts_with("/api/") && path.contains('{') && method != "parameters" {
                let responses = &op["responses"];
                assert!(
                    responses.get("400").is_some() || responses.get("101").is_some(),
                    "{method} {path} lists no 400 for a malformed id"
                );
            }
        }
    }
    assert!(
        limits >= 10 && strings >= 10 && cursors >= 10,
        "{limits} limits, {strings} strings, {cursors} cursors"
    );
    for limit in [0, 201] {
        app.get(&format!("/api/v1/clients?limit={limit}"), &admin)
            .await
            .expect(400, None);
    }
    app.get("/api/v1/clients?limit=200", &admin)
        .await
        .expect(200, None);
    app.get("/api/v1/clients?q=a%00b", &admin)
        .await
        .expect(422, Some("validation_failed"));
}

/// What the fuzzing of the document found, each now answered as the document says: an empty
/// cursor is the first page, any text of a cursor's pattern is a position (a search past its
/// deepest page is its end), enumerated parameters refuse what they do not list, and a JSON
/// body (or a struct inside one) must be an object, not an array of its fields.
#[tokio::test]
async fn cursors_choices_and_bodies_are_what_the_document_says() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    for path in [
        "/api/v1/clients?cursor=",
        "/api/v1/users?cursor=",
        "/api/v1/audit/events?cursor=",
        // A keyed cursor of any bytes, under every order.
        "/api/v1/clients?cursor=AAAAAAAAAAAAAAAAAAAAAA_-x_&sort=updated_at",
        "/api/v1/clients?cursor=AAAAAAAAAAAAAAAAAAAAAA_-x_-&sort=-name",
        // An id cursor whose last character has bits to spare.
        "/api/v1/jobs?cursor=AAAAAAAAAAAAAAAAAAAAA_",
        "/api/v1/audit/events?cursor=__________8",
    ] {
        app.get(path, &admin).await.expect(200, None);
    }
    // Before, a search cursor past the deepest page was a 400; it is the end of the hits.
    let past_the_end = app
        .get(
            "/api/v1/documents/search?q=contract&cursor=__________8",
            &admin,
        )
        .await;
    past_the_end.expect(200, None);
    assert_eq!(past_the_end.json["items"], json!([]));
    assert_eq!(past_the_end.json["next_cursor"], json!(null));
    for path in [
        "/api/v1/clients?cursor=zzz",
        "/api/v1/clients?sort=size",
        "/api/v1/jobs?status=done",
        "/api/v1/audit/events?format=xml",
        "/api/v1/audit/export?cursor=%C2%84",
    ] {
        let r = app.get(path, &admin).await;
        assert_eq!(r.status, 400, "{path}: {}", r.json);
    }
    app.post(
        "/api/v1/users",
        &admin,
        json!(["a@example.com", "a long enough password", "A", null]),
    )
    .await
    .expect(422, Some("validation_failed"));
    app.post(
        "/api/v1/reports",
        &admin,
        json!({"kind": "activity", "params": [null, null]}),
    )
    .await
    .expect(422, Some("validation_failed"));
    app.post(
        "/api/v1/reports/schedules",
        &admin,
        json!({"kind": "activity", "cron": "0 8 * * MON", "deliver": []}),
    )
    .await
    .expect(422, Some("validation_failed"));
}
