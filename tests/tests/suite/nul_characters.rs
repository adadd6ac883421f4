//! U+0000 in any text a request carries: PostgreSQL cannot store it, so it is refused where
//! bodies and query strings are parsed, with a 422 that names the field, the same on both
//! backends, and never a 5xx. CSV imports refuse such a row and keep the others.

use std::time::Duration;

use agentdesk_tests::{TestApp, unique_email};
use reqwest::Method;
use serde_json::{Value, json};

/// Asserts a 422 `validation_failed` whose errors name `field`.
#[track_caller]
fn names_field(reply: &agentdesk_tests::Reply, field: &str) {
    reply.expect(422, Some("validation_failed"));
    let fields: Vec<&str> = reply.json["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        fields.contains(&field),
        "{field} named in {fields:?}: {}",
        reply.text
    );
    assert!(
        !reply.text.contains('\0'),
        "the answer itself holds no NUL: {}",
        reply.text
    );
}

#[tokio::test]
async fn nul_in_json_bodies_is_a_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;

    // Login: the email and the password.
    let r = app
        .request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "admin\u{0}@localhost", "password": "x"})),
        )
        .await;
    names_field(&r, "email");
    let r = app
        .request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "nobody@example.com", "password": "pass\u{0}word"})),
        )
        .await;
    names_field(&r, "password");

    // Clients: every kind of text field, nested ones by their path.
    for (body, field) in [
        (json!({"name": "Ac\u{0}me"}), "name"),
        (json!({"name": "Acme", "notes": "a\u{0}"}), "notes"),
        (json!({"name": "Acme", "company": "\u{0}"}), "company"),
        (
            json!({"name": "Acme", "tags": ["ok", "b\u{0}d"]}),
            "tags[1]",
        ),
        (
            json!({"name": "Acme", "metadata": {"crm": {"id": "7\u{0}"}}}),
            "metadata.crm.id",
        ),
        (
            json!({"name": "Acme", "metadata": {"k\u{0}ey": 1}}),
            "metadata.key",
        ),
    ] {
        let r = app.post("/api/v1/clients", &admin, body.clone()).await;
        names_field(&r, field);
    }
    assert_eq!(
        app.get("/api/v1/clients", &admin).await.json["items"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "nothing was stored"
    );

    // A merge patch.
    let created = app
        .post("/api/v1/clients", &admin, json!({"name": "Acme"}))
        .await;
    created.expect(201, None);
    let id = created.json["id"].as_str().unwrap().to_owned();
    let r = app
        .client
        .patch(format!("{}/api/v1/clients/{id}", app.base))
        .bearer_auth(&admin)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"notes":"x\u0000y"}"#)
        .send()
        .await
        .unwrap();
    names_field(&TestApp::read(r).await, "notes");
    // An escaped backslash before `u0000` is plain text, not a NUL.
    let r = app
        .client
        .patch(format!("{}/api/v1/clients/{id}", app.base))
        .bearer_auth(&admin)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"notes":"C:\\u0000"}"#)
        .send()
        .await
        .unwrap();
    let r = TestApp::read(r).await;
    r.expect(200, None);
    assert_eq!(r.json["notes"], "C:\\u0000");

    // Users and grants.
    let r = app
        .post(
            "/api/v1/users",
            &admin,
            json!({"email": unique_email("nul"), "password": "tomato-bicycle-42", "full_name": "A\u{0}"}),
        )
        .await;
    names_field(&r, "full_name");
    let r = app
        .post(
            "/api/v1/permissions/grants",
            &admin,
            json!({"role": "member", "resource": "clients\u{0}", "actions": ["read"]}),
        )
        .await;
    names_field(&r, "resource");
}

#[tokio::test]
async fn nul_in_query_strings_and_forms_is_a_422_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    for (path, field) in [
        ("/api/v1/clients?q=ac%00me&limit=20", "q"),
        ("/api/v1/clients?tag=%00", "tag"),
        ("/api/v1/users?q=%00", "q"),
        ("/api/v1/audit/events?action=client.create%00", "action"),
        ("/api/v1/jobs?agent=%00", "agent"),
    ] {
        let r = app.get(path, &admin).await;
        names_field(&r, field);
    }
    // A percent sign spelt out is no NUL.
    app.get("/api/v1/clients?q=acme%2500", &admin)
        .await
        .expect(200, None);

    // The OAuth2 password form.
    let r = app
        .client
        .post(format!("{}/api/v1/auth/token", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=password&username=admin%00%40localhost&password=x")
        .send()
        .await
        .unwrap();
    names_field(&TestApp::read(r).await, "username");
}

#[tokio::test]
async fn a_csv_with_nul_is_refused_whole_or_by_row() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let send = |csv: String| {
        let request = app
            .client
            .post(format!("{}/api/v1/clients/import", app.base))
            .bearer_auth(&admin)
            .header("content-type", "text/csv")
            .body(csv);
        async move { TestApp::read(request.send().await.unwrap()).await }
    };
    // A NUL where the upload is sniffed: not text, so not CSV.
    send("name,email\nBad\u{0}Row,bad@example.com\n".to_owned())
        .await
        .expect(415, Some("unsupported_media_type"));

    // Past the sniffed start (1 MB of good rows first), the rows with a NUL are refused and the
    // others are kept.
    let filler = "x".repeat(5_000);
    let mut csv = String::from("name,email,notes\n");
    for i in 0..200 {
        csv.push_str(&format!("Good {i},good{i}@example.com,{filler}\n"));
    }
    csv.push_str("Bad\u{0}Row,bad@example.com,x\nBob Roe,bob@example.com,n\u{0}otes\nCara,cara@example.com,ok\n");
    let r = send(csv).await;
    r.expect(202, None);
    let job_url = format!("/api/v1/jobs/{}", r.json["id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let job: Value = loop {
        let job = app.get(&job_url, &admin).await.json;
        if ["succeeded", "failed"].contains(&job["status"].as_str().unwrap_or("")) {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["created"], 201, "{}", job["result"]);
    let rows: Vec<u64> = job["result"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [202, 203], "{}", job["result"]);
    for error in job["result"]["errors"].as_array().unwrap() {
        assert!(
            error["message"].as_str().unwrap().contains("NUL"),
            "{error}"
        );
    }
}
