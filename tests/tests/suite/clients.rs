//! Clients: CRUD, validation, merge patch with ETag/If-Match, search, filters, sort, paging,
//! client scope and audit.

use agentdesk_tests::{TestApp, unique_email};
use serde_json::{Value, json};

async fn create(app: &TestApp, token: &str, body: Value) -> Value {
    let r = app.post("/api/v1/clients", token, body).await;
    r.expect(201, None);
    r.json
}

#[tokio::test]
async fn create_read_delete() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/clients",
            &admin,
            json!({"name": " Acme GmbH ", "email": "Info@Acme.example", "phone": "+49 30 1234567", "company": "Acme",
                   "tags": ["vip", "eu", "vip"], "notes": "n", "metadata": {"crm": {"id": 7}}}),
        )
        .await;
    r.expect(201, None);
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v1/clients/{id}").as_str())
    );
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(r.json["name"], "Acme GmbH");
    assert_eq!(r.json["status"], "active");
    assert_eq!(r.json["tags"], json!(["vip", "eu"]));
    assert_eq!(r.json["version"], 1);
    for key in [
        "id",
        "name",
        "email",
        "phone",
        "company",
        "status",
        "tags",
        "notes",
        "metadata",
        "version",
        "created_at",
        "updated_at",
        "created_by",
    ] {
        assert!(r.json.get(key).is_some(), "Client has {key}");
    }
    let got = app.get(&format!("/api/v1/clients/{id}"), &admin).await;
    got.expect(200, None);
    assert_eq!(got.json, r.json);
    assert_eq!(got.header("etag"), Some("\"1\""));
    // The email is unique among live clients, case-insensitively; a refused create leaves none
    // of its tags behind (on SQLite they are written in the row's own statement).
    app.post(
        "/api/v1/clients",
        &admin,
        json!({"name": "Other", "email": "info@acme.EXAMPLE", "tags": ["eu", "refused"]}),
    )
    .await
    .expect(409, Some("conflict"));
    let tagged = |tag: &'static str| {
        let (app, admin) = (&app, &admin);
        async move {
            let page = app.get(&format!("/api/v1/clients?tag={tag}"), admin).await;
            page.expect(200, None);
            page.json["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(tagged("eu").await, vec![id.clone()]);
    assert!(tagged("refused").await.is_empty());
    app.delete(&format!("/api/v1/clients/{id}"), &admin)
        .await
        .expect(204, None);
    app.get(&format!("/api/v1/clients/{id}"), &admin)
        .await
        .expect(404, Some("not_found"));
    app.delete(&format!("/api/v1/clients/{id}"), &admin)
        .await
        .expect(404, Some("not_found"));
    let list = app.get("/api/v1/clients", &admin).await;
    assert!(
        list.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"] != id.as_str())
    );
    // After deletion the email is free again.
    create(
        &app,
        &admin,
        json!({"name": "Acme again", "email": "info@acme.example"}),
    )
    .await;
}

#[tokio::test]
async fn invalid_clients_are_422() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/clients",
            &admin,
            json!({"name": "", "email": "nope", "status": "gone", "tags": ["", 5], "metadata": "x", "phone": "call me", "version": 9}),
        )
        .await;
    r.expect(422, Some("validation_failed"));
    let fields: Vec<&str> = r.json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in [
        "name", "email", "status", "tags", "metadata", "phone", "version",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
    app.post("/api/v1/clients", &admin, json!({"name": "x".repeat(201)}))
        .await
        .expect(422, Some("validation_failed"));
    app.post(
        "/api/v1/clients",
        &admin,
        json!({"name": "Big", "metadata": {"blob": "x".repeat(17 * 1024)}}),
    )
    .await
    .expect(422, Some("validation_failed"));
    app.post("/api/v1/clients", &admin, json!(["not", "an", "object"]))
        .await
        .expect(422, Some("validation_failed"));
}

#[tokio::test]
async fn merge_patch_with_etags() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = create(&app, &admin, json!({"name": "Beta", "email": "beta@example.com", "metadata": {"a": 1, "b": {"c": 2, "d": 3}}})).await;
    let url = format!("{}/api/v1/clients/{}", app.base, c["id"].as_str().unwrap());
    let patch = |body: Value, etag: Option<&str>, ct: &str| {
        let mut req = app
            .client
            .patch(&url)
            .bearer_auth(&admin)
            .header("content-type", ct)
            .body(body.to_string());
        if let Some(e) = etag {
            req = req.header("if-match", e);
        }
        async move { TestApp::read(req.send().await.unwrap()).await }
    };
    let r = patch(
        json!({"email": null, "metadata": {"b": {"c": null}, "e": true}, "tags": ["x"]}),
        Some("\"1\""),
        "application/merge-patch+json",
    )
    .await;
    r.expect(200, None);
    assert_eq!(r.json["email"], Value::Null);
    assert_eq!(
        r.json["metadata"],
        json!({"a": 1, "b": {"d": 3}, "e": true})
    );
    assert_eq!(r.json["version"], 2);
    assert_eq!(r.header("etag"), Some("\"2\""));
    // A stale version: 412, and nothing changes.
    patch(
        json!({"name": "Stale"}),
        Some("\"1\""),
        "application/merge-patch+json",
    )
    .await
    .expect(412, Some("precondition_failed"));
    let r = patch(json!({"name": "Fresh"}), Some("\"2\""), "application/json").await;
    r.expect(200, None);
    assert_eq!(r.json["name"], "Fresh");
    patch(json!({"name": "Any"}), Some("*"), "application/json")
        .await
        .expect(200, None);
    patch(json!({"name": null}), None, "application/json")
        .await
        .expect(422, Some("validation_failed"));
    patch(json!({"id": "x"}), None, "application/json")
        .await
        .expect(422, Some("validation_failed"));
    patch(json!(["x"]), None, "application/json")
        .await
        .expect(422, Some("validation_failed"));
    patch(json!({"name": "X"}), None, "text/plain")
        .await
        .expect(415, Some("unsupported_media_type"));
    let r = TestApp::read(
        app.client
            .patch(&url)
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body("{oops")
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(400, Some("malformed_json"));
    // A delete with a stale ETag is refused too.
    let r = TestApp::read(
        app.client
            .delete(&url)
            .bearer_auth(&admin)
            .header("if-match", "\"1\"")
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(412, Some("precondition_failed"));
    // The update is audited with the fields that changed.
    let events = app
        .get(
            &format!(
                "/api/v1/audit/events?action=client.update&resource_id={}",
                c["id"].as_str().unwrap()
            ),
            &admin,
        )
        .await;
    let first = events.json["items"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(first["changes"]["before"]["email"], "beta@example.com");
    assert_eq!(first["changes"]["after"]["email"], Value::Null);
    assert_eq!(first["client_id"], c["id"]);
}

#[tokio::test]
async fn search_filter_sort_and_page() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let seed = [
        (
            "Zeta Analytics",
            "ops@zeta.example",
            "Zeta Holdings",
            "lead",
            vec!["eu"],
        ),
        (
            "alpha partners",
            "hello@alpha.example",
            "Alpha Group",
            "active",
            vec!["vip", "eu"],
        ),
        (
            "Müller & Söhne",
            "kontakt@mueller.example",
            "Müller KG",
            "inactive",
            vec![],
        ),
        (
            "100% Natural",
            "shop@natural.example",
            "Natural Ltd",
            "active",
            vec!["vip"],
        ),
        (
            "Omega",
            "omega@omega.example",
            "Alpha Group",
            "archived",
            vec![],
        ),
    ];
    for (name, email, company, status, tags) in seed {
        create(&app, &admin, json!({"name": name, "email": email, "company": company, "status": status, "tags": tags})).await;
    }
    let names = |r: &agentdesk_tests::Reply| -> Vec<String> {
        r.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = app.get("/api/v1/clients?q=ALPHA&sort=name", &admin).await;
    r.expect(200, None);
    assert_eq!(
        names(&r),
        ["alpha partners", "Omega"],
        "q matches name and company, any case"
    );
    assert_eq!(
        names(&app.get("/api/v1/clients?q=zeta.exa", &admin).await),
        ["Zeta Analytics"],
        "and email"
    );
    assert_eq!(
        names(&app.get("/api/v1/clients?q=mü", &admin).await),
        ["Müller & Söhne"],
        "short queries too"
    );
    assert_eq!(
        names(&app.get("/api/v1/clients?q=M%C3%BCLLER", &admin).await),
        ["Müller & Söhne"]
    );
    assert_eq!(
        names(&app.get("/api/v1/clients?q=100%25", &admin).await),
        ["100% Natural"],
        "wildcards are literal"
    );
    assert_eq!(
        names(&app.get("/api/v1/clients?q=%25", &admin).await),
        ["100% Natural"]
    );
    assert_eq!(
        names(&app.get("/api/v1/clients?status=lead", &admin).await),
        ["Zeta Analytics"]
    );
    assert_eq!(
        names(&app.get("/api/v1/clients?tag=vip&sort=name", &admin).await),
        ["100% Natural", "alpha partners"]
    );
    assert_eq!(
        names(
            &app.get("/api/v1/clients?tag=eu&status=active", &admin)
                .await
        ),
        ["alpha partners"]
    );
    assert_eq!(
        names(&app.get("/api/v1/clients?sort=name", &admin).await),
        [
            "100% Natural",
            "alpha partners",
            "Müller & Söhne",
            "Omega",
            "Zeta Analytics"
        ]
    );
    assert_eq!(
        names(&app.get("/api/v1/clients?sort=-name&limit=2", &admin).await),
        ["Zeta Analytics", "Omega"]
    );
    assert_eq!(
        names(&app.get("/api/v1/clients", &admin).await)[0],
        "Omega",
        "newest first by default"
    );
    assert_eq!(
        names(&app.get("/api/v1/clients?sort=created_at", &admin).await)[0],
        "Zeta Analytics"
    );
    app.get("/api/v1/clients?sort=email", &admin)
        .await
        .expect(400, Some("bad_request"));
    app.get("/api/v1/clients?status=gone", &admin)
        .await
        .expect(400, Some("bad_request"));
    app.get("/api/v1/clients?cursor=zzz", &admin)
        .await
        .expect(400, Some("bad_request"));
    app.get("/api/v1/clients?limit=0", &admin)
        .await
        .expect(400, Some("bad_request"));

    // Paging by every order visits each row once, even while rows are inserted.
    for sort in [
        "-created_at",
        "created_at",
        "name",
        "-name",
        "updated_at",
        "-updated_at",
    ] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut inserted = false;
        loop {
            let r = app
                .get(
                    &format!("/api/v1/clients?sort={sort}&limit=2&cursor={cursor}"),
                    &admin,
                )
                .await;
            r.expect(200, None);
            seen.extend(
                r.json["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["id"].as_str().unwrap().to_owned()),
            );
            if !inserted {
                create(&app, &admin, json!({"name": format!("Late {sort}")})).await;
                inserted = true;
            }
            match r.json["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        let unique: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{sort}: no row twice");
        assert!(
            seen.len() >= 5,
            "{sort}: every row that existed is seen ({})",
            seen.len()
        );
    }
}

#[tokio::test]
async fn client_scope_is_applied_in_the_query() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = create(&app, &admin, json!({"name": "Client A"})).await;
    let b = create(&app, &admin, json!({"name": "Client B"})).await;
    for i in 0..3 {
        create(&app, &admin, json!({"name": format!("Other {i}")})).await;
    }
    let member = app
        .persona(&admin, "member", &[json!({"resource": "clients", "actions": ["read", "write", "delete"], "client_ids": [a["id"]]})])
        .await;
    let r = app.get("/api/v1/clients?limit=1", &member.token).await;
    r.expect(200, None);
    assert_eq!(
        r.json["items"].as_array().unwrap().len(),
        1,
        "the page is full"
    );
    assert_eq!(r.json["items"][0]["id"], a["id"]);
    assert!(r.json["next_cursor"].is_null(), "nothing else is in scope");
    let b_url = format!("/api/v1/clients/{}", b["id"].as_str().unwrap());
    app.get(&b_url, &member.token)
        .await
        .expect(404, Some("not_found"));
    app.patch(&b_url, &member.token, json!({"name": "Hijack"}))
        .await
        .expect(404, Some("not_found"));
    app.delete(&b_url, &member.token)
        .await
        .expect(404, Some("not_found"));
    app.patch(
        &format!("/api/v1/clients/{}", a["id"].as_str().unwrap()),
        &member.token,
        json!({"notes": "mine"}),
    )
    .await
    .expect(200, None);
    app.post("/api/v1/clients", &member.token, json!({"name": "New"}))
        .await
        .expect(403, Some("forbidden"));
    let denied = app
        .get(
            &format!("/api/v1/audit/events?outcome=denied&actor_id={}", member.id),
            &admin,
        )
        .await;
    assert!(
        denied.json["items"].as_array().unwrap().len() >= 4,
        "{}",
        denied.text
    );
    assert_eq!(
        app.get(&b_url, &admin).await.json["name"],
        "Client B",
        "untouched"
    );
    let _ = unique_email("x");
}

#[tokio::test]
async fn concurrent_patches_without_if_match_all_apply() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let c = create(&app, &admin, json!({"name": "Busy", "metadata": {}})).await;
    let url = format!("/api/v1/clients/{}", c["id"].as_str().unwrap());
    let patches: Vec<_> = (0..12)
        .map(|i| app.patch(&url, &admin, json!({"metadata": {format!("k{i}"): i}})))
        .collect();
    for r in futures::future::join_all(patches).await {
        r.expect(200, None);
    }
    let done = app.get(&url, &admin).await;
    assert_eq!(done.json["version"], 13, "every patch applied, none lost");
    assert_eq!(done.json["metadata"].as_object().unwrap().len(), 12);
    // A patch whose first try lost the race to another (its version was gone) wrote no event
    // for that try: one event per patch, each from the state the one before it left.
    let events = app
        .get(
            &format!(
                "/api/v1/audit/events?limit=100&action=client.update&resource_id={}",
                c["id"].as_str().unwrap()
            ),
            &admin,
        )
        .await;
    events.expect(200, None);
    let keys = |e: &Value, side: &str| e["changes"][side]["metadata"].as_object().unwrap().len();
    let mut sizes: Vec<(usize, usize)> = events.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (keys(e, "before"), keys(e, "after")))
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, (0..12).map(|n| (n, n + 1)).collect::<Vec<_>>());
}

/// A search that SQLite answers through its trigram index (a rare term) finds what was just
/// written, before the index is brought up to date (a batch off the writes) and after it.
#[tokio::test]
async fn searches_through_the_index_see_every_write_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    for i in 0..40 {
        create(
            &app,
            &admin,
            json!({"name": format!("Filler {i}"), "company": "Globex"}),
        )
        .await;
    }
    let found = |q: &'static str| {
        let app = &app;
        let admin = &admin;
        async move { all_pages(app, admin, &format!("/api/v1/clients?q={q}&limit=5")).await }
    };
    let c = create(
        &app,
        &admin,
        json!({"name": "Qwzrtplk One", "company": "Solo"}),
    )
    .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let url = format!("/api/v1/clients/{id}");
    assert_eq!(found("qwzrtplk").await, std::slice::from_ref(&id));
    app.patch(&url, &admin, json!({"name": "Vbnmxycd One"}))
        .await
        .expect(200, None);
    assert!(found("qwzrtplk").await.is_empty(), "the old name is gone");
    assert_eq!(found("VBNMXYCD").await, std::slice::from_ref(&id));
    // Once the indexer has run (it looks at least twice a second), the same answers.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(found("qwzrtplk").await.is_empty());
    assert_eq!(found("vbnmxycd").await, std::slice::from_ref(&id));
    app.patch(&url, &admin, json!({"company": "Qwzrtplk Holdings"}))
        .await
        .expect(200, None);
    assert_eq!(found("qwzrtplk").await, std::slice::from_ref(&id));
    app.delete(&url, &admin).await.expect(204, None);
    assert!(
        found("qwzrtplk").await.is_empty(),
        "a deleted client is not found"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(found("vbnmxycd").await.is_empty());
}

/// Every page of `path` (a list URL with `limit`), following cursors: the ids in order.
async fn all_pages(app: &TestApp, token: &str, path: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = app.get(&format!("{path}&cursor={cursor}"), token).await;
        r.expect(200, None);
        let items = r.json["items"].as_array().unwrap();
        ids.extend(items.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        match r.json["next_cursor"].as_str() {
            Some(c) => {
                assert!(!items.is_empty(), "a page with a cursor is not empty");
                cursor = c.to_owned();
            }
            None => break,
        }
    }
    ids
}

/// A member's scope reaches SQL through the grants' rows (`grant_clients`), and a search is
/// planned either by walking the page's order or through the trigram index: every plan gives
/// the same exact, full pages. Two overlapping grants; a rare term (only in an old client, so
/// SQLite's sample finds none and takes the index) and a common one (taken by the walk).
#[tokio::test]
async fn scoped_and_searched_pages_are_exact_whatever_the_plan() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let rare = create(
        &app,
        &admin,
        json!({"name": "Zyxwv Rare", "company": "Solo"}),
    )
    .await;
    let rare = rare["id"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for i in 0..300 {
        let company = if i % 3 == 0 { "Acme Corp" } else { "Globex" };
        let c = create(
            &app,
            &admin,
            json!({"name": format!("Client {i:03}"), "company": company}),
        )
        .await;
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    let acme: Vec<usize> = (0..300).filter(|i| i % 3 == 0).collect();
    let newest_first = |set: &[usize]| -> Vec<String> {
        let mut out: Vec<String> = set.iter().map(|&i| ids[i].clone()).collect();
        out.reverse();
        out
    };

    // The admin: the common term walks, the rare one uses the index; both page exactly.
    assert_eq!(
        all_pages(&app, &admin, "/api/v1/clients?q=acme&limit=7").await,
        newest_first(&acme)
    );
    assert_eq!(
        all_pages(&app, &admin, "/api/v1/clients?q=ZYXWV&limit=7").await,
        vec![rare]
    );
    assert_eq!(
        all_pages(&app, &admin, "/api/v1/clients?q=nomatchanywhere&limit=7").await,
        Vec::<String>::new()
    );
    let by_name = all_pages(&app, &admin, "/api/v1/clients?q=acme&sort=-name&limit=9").await;
    assert_eq!(
        by_name,
        newest_first(&acme),
        "names sort as they were created"
    );

    // A member with two overlapping grants sees their union, once each.
    let first: Vec<usize> = (0..100).step_by(2).collect();
    let second: Vec<usize> = (50..150).step_by(2).collect();
    let member = app
        .persona(
            &admin,
            "member",
            &[
                json!({"resource": "clients", "actions": ["read"], "client_ids": first.iter().map(|&i| &ids[i]).collect::<Vec<_>>()}),
                json!({"resource": "clients", "actions": ["read"], "client_ids": second.iter().map(|&i| &ids[i]).collect::<Vec<_>>()}),
            ],
        )
        .await;
    let union: Vec<usize> = (0..150).step_by(2).collect();
    assert_eq!(
        all_pages(&app, &member.token, "/api/v1/clients?limit=7").await,
        newest_first(&union)
    );
    let union_acme: Vec<usize> = union.iter().copied().filter(|i| i % 3 == 0).collect();
    assert_eq!(
        all_pages(&app, &member.token, "/api/v1/clients?q=acme&limit=4").await,
        newest_first(&union_acme)
    );
    assert_eq!(
        all_pages(&app, &member.token, "/api/v1/clients?q=zyxwv&limit=4").await,
        Vec::<String>::new(),
        "a match outside the scope is not found"
    );
    let out_of_scope = format!("/api/v1/clients/{}", ids[1]);
    app.get(&out_of_scope, &member.token)
        .await
        .expect(404, Some("not_found"));
    app.get(&format!("/api/v1/clients/{}", ids[148]), &member.token)
        .await
        .expect(200, None);

    // Revoking the second grant takes its clients out of the query at once.
    let grants = app
        .get(
            &format!("/api/v1/permissions/grants?user_id={}", member.id),
            &admin,
        )
        .await;
    let second_grant = grants.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| {
            g["client_ids"]
                .as_array()
                .unwrap()
                .contains(&json!(ids[148]))
        })
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.delete(
        &format!("/api/v1/permissions/grants/{second_grant}"),
        &admin,
    )
    .await
    .expect(204, None);
    assert_eq!(
        all_pages(&app, &member.token, "/api/v1/clients?limit=50").await,
        newest_first(&first)
    );
    app.get(&format!("/api/v1/clients/{}", ids[148]), &member.token)
        .await
        .expect(404, Some("not_found"));

    // One grant: its rows are walked in the page's order (on PostgreSQL each client looked up
    // from them), across pages, both ways, with a search, a status and a tag.
    assert_eq!(
        all_pages(&app, &member.token, "/api/v1/clients?limit=7").await,
        newest_first(&first)
    );
    let mut oldest_first = newest_first(&first);
    oldest_first.reverse();
    assert_eq!(
        all_pages(
            &app,
            &member.token,
            "/api/v1/clients?sort=created_at&limit=7"
        )
        .await,
        oldest_first
    );
    let first_acme: Vec<usize> = first.iter().copied().filter(|i| i % 3 == 0).collect();
    assert_eq!(
        all_pages(&app, &member.token, "/api/v1/clients?q=acme&limit=4").await,
        newest_first(&first_acme)
    );
    for &i in &first_acme[..3] {
        app.patch(
            &format!("/api/v1/clients/{}", ids[i]),
            &admin,
            json!({"status": "archived", "tags": ["kept"]}),
        )
        .await
        .expect(200, None);
    }
    let archived = newest_first(&first_acme[..3]);
    assert_eq!(
        all_pages(
            &app,
            &member.token,
            "/api/v1/clients?status=archived&limit=2"
        )
        .await,
        archived
    );
    assert_eq!(
        all_pages(
            &app,
            &member.token,
            "/api/v1/clients?tag=kept&q=acme&limit=2"
        )
        .await,
        archived
    );
}

/// On SQLite the hot reads of clients run on the calling thread (`inline_reads`): they give
/// exactly the rows sea-orm gives for the same statements, and what they cannot carry falls
/// back. On PostgreSQL there is no such path.
#[tokio::test]
async fn sqlite_inline_reads_give_the_rows_sea_orm_gives() {
    use agentdesk_core::models::client;
    use sea_orm::{
        ColumnTrait, DatabaseBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    };

    let app = TestApp::spawn().await;
    let Some(inline) = app.core.db.inline_reader() else {
        assert_eq!(
            agentdesk_tests::backend(),
            agentdesk_tests::Backend::Postgres
        );
        return;
    };
    let admin = app.admin_token().await;
    let mut ids = Vec::new();
    for (i, body) in [
        json!({"name": "Ærø Ünïcode 日本 🎉", "email": unique_email("inline"), "phone": "+49 30 1234567",
               "company": "Acme", "tags": ["vip", "eu"], "notes": "line one\nline two",
               "metadata": {"crm": {"id": 7, "tags": [1.5, null, true]}, "s": "\"quoted\""}}),
        json!({"name": "Only a name"}),
        json!({"name": "Archived one", "status": "archived", "tags": [], "metadata": {}}),
        json!({"name": "Deleted later", "company": "Gone Ltd"}),
    ]
    .into_iter()
    .enumerate()
    {
        let created = create(&app, &admin, body).await;
        ids.push(created["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
        if i == 0 {
            let r = app
                .patch(
                    &format!("/api/v1/clients/{}", ids[0]),
                    &admin,
                    json!({"notes": null, "metadata": {"added": "later"}}),
                )
                .await;
            r.expect(200, None);
        }
    }
    app.delete(&format!("/api/v1/clients/{}", ids[3]), &admin)
        .await
        .expect(204, None);

    let reader = app.core.db.reader();
    let queries = [
        client::Entity::find(),
        client::Entity::find_by_id(ids[0]),
        client::Entity::find_by_id(ids[3]).filter(client::Column::DeletedAt.is_null()),
        client::Entity::find()
            .filter(client::Column::DeletedAt.is_not_null())
            .order_by_desc(client::Column::UpdatedAt),
        client::Entity::find()
            .filter(client::Column::SearchText.like("%acme%"))
            .filter(client::Column::UpdatedAt.lte(chrono::Utc::now()))
            .filter(client::Column::Id.is_in(ids.clone()))
            .order_by_asc(client::Column::NameKey)
            .limit(2),
    ];
    for query in queries {
        let statement = query.clone().build(DatabaseBackend::Sqlite);
        let inline_rows = inline
            .rows::<client::Model>(&statement)
            .unwrap_or_else(|| panic!("the inline path carries {}", statement.sql));
        let orm_rows = query.all(reader).await.unwrap();
        assert_eq!(inline_rows, orm_rows, "{}", statement.sql);
    }
    // Every field of a full row came back, deleted_at included.
    let deleted = inline
        .rows::<client::Model>(&client::Entity::find_by_id(ids[3]).build(DatabaseBackend::Sqlite))
        .unwrap();
    assert!(deleted[0].deleted_at.is_some());

    // Columns other than a whole client's, and statements SQLite refuses, fall back.
    let some_columns = client::Entity::find()
        .select_only()
        .column(client::Column::Id)
        .build(DatabaseBackend::Sqlite);
    assert!(inline.rows::<client::Model>(&some_columns).is_none());
    let refused = sea_orm::Statement::from_string(DatabaseBackend::Sqlite, "SELECT * FROM nowhere");
    assert!(inline.rows::<client::Model>(&refused).is_none());
    // A client's columns whose values do not decode (an id that is no UUID, a time that is no
    // time) fall back too, rather than give a wrong row.
    let columns = <client::Model as agentdesk_core::inline_reads::InlineRow>::COLUMNS;
    for (column, bad) in [
        ("id", "'not a uuid'"),
        ("created_at", "'yesterday'"),
        ("tags", "'['"),
    ] {
        let select: Vec<String> = columns
            .iter()
            .map(|c| {
                if *c == column {
                    format!("{bad} AS {c}")
                } else {
                    (*c).to_owned()
                }
            })
            .collect();
        let statement = sea_orm::Statement::from_string(
            DatabaseBackend::Sqlite,
            format!("SELECT {} FROM clients", select.join(", ")),
        );
        assert!(
            inline.rows::<client::Model>(&statement).is_none(),
            "{column} = {bad} falls back"
        );
    }
    let count = sea_orm::Statement::from_sql_and_values(
        DatabaseBackend::Sqlite,
        "SELECT count(*) FROM clients WHERE deleted_at IS NULL AND name_key LIKE ?",
        ["%e%".into()],
    );
    // Three live names hold an "e"; the deleted one is not counted.
    assert_eq!(inline.integer(&count), Some(Some(3)));
}
