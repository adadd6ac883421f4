//! The reports_analysis agent, black-box: the overview against seeded data (for an admin and
//! for a member's scope), every report kind in every format read back, scope at generation
//! time, listing, download, deletion rights, audit, and bad input.

use std::time::Duration;

use agentdesk_tests::{TestApp, tiny_pdf};
use chrono::Utc;
use serde_json::{Value, json};

async fn new_client(app: &TestApp, token: &str, name: &str, status: &str) -> String {
    let r = app
        .post(
            "/api/v1/clients",
            token,
            json!({"name": name, "status": status, "email": format!("{}@example.test", slug(name))}),
        )
        .await;
    r.expect(201, None);
    r.json["id"].as_str().unwrap().to_owned()
}

fn slug(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_lowercase()
}

async fn document(app: &TestApp, token: &str, client: &str, pages: &[&str]) -> Value {
    let r = app
        .upload_document(token, client, "facts.pdf", tiny_pdf(pages))
        .await;
    r.expect(202, None);
    app.processed_document(
        token,
        r.json["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await
}

/// A PDF read back with poppler: its text and its fonts.
struct PdfFacts {
    text: String,
    fonts: String,
    pages: usize,
}

async fn read_pdf(app: &TestApp, token: &str, id: &str, name: &str) -> PdfFacts {
    let file = app
        .get(&format!("/api/v1/reports/{id}/download"), token)
        .await;
    file.expect(200, None);
    let bytes = app
        .client
        .get(format!("{}/api/v1/reports/{id}/download", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(bytes.starts_with(b"%PDF-"), "{name}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.pdf"));
    std::fs::write(&path, &bytes).unwrap();
    if let Ok(keep) = std::env::var("AGENTDESK_KEEP_REPORTS") {
        let _ = std::fs::copy(&path, format!("{keep}/{name}.pdf"));
    }
    let run = |tool: &str, args: &[&str]| {
        let out = std::process::Command::new(tool)
            .args(args)
            .arg(&path)
            .args(if tool == "pdftotext" {
                &["-"][..]
            } else {
                &[][..]
            })
            .output()
            .unwrap_or_else(|e| panic!("{tool} (poppler-utils, .ci/run installs it): {e}"));
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run("pdftotext", &["-layout"]);
    let fonts = run("pdffonts", &[]);
    let info = run("pdfinfo", &[]);
    let pages = info
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    PdfFacts { text, fonts, pages }
}

/// Polls a report until it is ready or failed.
async fn settled(app: &TestApp, token: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = app.get(&format!("/api/v1/reports/{id}"), token).await;
        r.expect(200, None);
        if ["ready", "failed"].contains(&r.json["status"].as_str().unwrap_or("")) {
            return r.json;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled: {}",
            r.json
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn report(app: &TestApp, token: &str, body: Value) -> Value {
    let r = app.post("/api/v1/reports", token, body.clone()).await;
    r.expect(202, None);
    assert_eq!(r.json["status"], "queued", "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v1/reports/{id}").as_str())
    );
    let done = settled(app, token, &id).await;
    assert_eq!(done["status"], "ready", "{body}: {done}");
    done
}

fn count_of(list: &Value, key: &str, value: &str) -> i64 {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e[key] == value)
        .map(|e| e["count"].as_i64().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_overview_counts_what_is_there_within_the_callers_scope() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = new_client(&app, &admin, "Alder Ltd", "active").await;
    let b = new_client(&app, &admin, "Birch Co", "lead").await;
    new_client(&app, &admin, "Cedar Inc", "lead").await;
    let doc = document(&app, &admin, &a, &["one", "two", "three"]).await;
    assert_eq!(doc["status"], "ready");
    document(&app, &admin, &b, &["only"]).await;

    let r = app.get("/api/v1/reports/overview", &admin).await;
    r.expect(200, None);
    let o = &r.json;
    assert_eq!(o["clients"]["total"], 3, "{o}");
    assert_eq!(o["clients"]["by_status"], json!({"active": 1, "lead": 2}));
    assert_eq!(o["clients"]["new"], 3);
    let month = Utc::now().format("%Y-%m").to_string();
    assert_eq!(
        count_of(&o["clients"]["new_by_month"], "month", &month),
        3,
        "{o}"
    );
    assert_eq!(o["documents"]["total"], 2, "{o}");
    assert_eq!(o["documents"]["pages"], 4);
    assert_eq!(o["documents"]["by_status"], json!({"ready": 2}));
    assert_eq!(o["recordings"]["total"], 0);
    assert_eq!(o["recordings"]["minutes"], 0.0);
    let today = Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        count_of(&o["activity"]["events_by_day"], "day", &today) >= 5,
        "{o}"
    );
    assert_eq!(o["activity"]["events_by_day"].as_array().unwrap().len(), 31);
    assert_eq!(o["activity"]["top_actors"][0]["actor"], "admin@test.local");

    // A member scoped to one client sees that client's figures only.
    let member = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "agent:reports_analysis", "actions": ["read"], "client_ids": [a]})],
        )
        .await;
    let r = app.get("/api/v1/reports/overview", &member.token).await;
    r.expect(200, None);
    let o = &r.json;
    assert_eq!(o["clients"]["total"], 1, "{o}");
    assert_eq!(o["clients"]["by_status"], json!({"active": 1}));
    assert_eq!(o["documents"]["total"], 1);
    assert_eq!(o["documents"]["pages"], 3);
    let events: i64 = o["activity"]["events_by_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["count"].as_i64().unwrap())
        .sum();
    assert_eq!(o["activity"]["total"], events);
    // Creating the client and uploading and processing its document; nothing about B.
    assert!((2..=6).contains(&events), "{o}");

    // A period before anything existed.
    let r = app
        .get(
            "/api/v1/reports/overview?from=2020-01-01&to=2020-01-31",
            &admin,
        )
        .await;
    r.expect(200, None);
    assert_eq!(r.json["clients"]["new"], 0);
    assert_eq!(r.json["clients"]["total"], 3, "every client, whenever made");
    assert_eq!(r.json["documents"]["total"], 0);
    assert_eq!(r.json["activity"]["total"], 0);
    assert_eq!(
        r.json["clients"]["new_by_month"],
        json!([{"month": "2020-01", "count": 0}])
    );
    assert_eq!(
        r.json["activity"]["events_by_day"]
            .as_array()
            .unwrap()
            .len(),
        31
    );
    let r = app
        .get("/api/v1/reports/overview?from=-7d&to=now", &admin)
        .await;
    r.expect(200, None);
    assert_eq!(r.json["clients"]["new"], 3);

    // Bad input.
    for query in [
        "from=2026-02-01&to=2026-01-01",
        "from=yesterday",
        "to=2026-13-01",
        "from=-7x",
        "from=1900-01-01",
    ] {
        app.get(&format!("/api/v1/reports/overview?{query}"), &admin)
            .await
            .expect(422, Some("validation_failed"));
    }
    let outsider = app.persona(&admin, "member", &[]).await;
    app.get("/api/v1/reports/overview", &outsider.token)
        .await
        .expect(403, Some("forbidden"));
}

#[tokio::test]
async fn every_kind_in_every_format_holds_the_same_rows() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = new_client(&app, &admin, "Alder Ltd", "active").await;
    let b = new_client(&app, &admin, "=Birch, \"Co\"", "lead").await;
    document(&app, &admin, &a, &["one", "two"]).await;
    document(&app, &admin, &a, &["three"]).await;
    document(&app, &admin, &b, &["four"]).await;

    let expected_rows = |kind: &str| match kind {
        "client_summary" => 2,
        "documents" => 3,
        "recordings" => 0,
        _ => 0,
    };
    for kind in ["client_summary", "activity", "documents", "recordings"] {
        let json_report = report(
            &app,
            &admin,
            json!({"kind": kind, "params": {"from": "-1d", "to": "now"}, "format": "json"}),
        )
        .await;
        let csv_report = report(
            &app,
            &admin,
            json!({"kind": kind, "params": {"from": "-1d", "to": "now"}, "format": "csv"}),
        )
        .await;
        let file = app
            .get(
                &format!(
                    "/api/v1/reports/{}/download",
                    json_report["id"].as_str().unwrap()
                ),
                &admin,
            )
            .await;
        file.expect(200, None);
        assert!(
            file.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        assert!(
            file.header("content-disposition")
                .unwrap()
                .contains(&format!("{kind}-")),
            "{:?}",
            file.headers
        );
        let doc = &file.json;
        assert_eq!(doc["report"]["kind"], kind);
        assert_eq!(doc["report"]["generated_by"], "admin@test.local");
        let rows = doc["rows"].as_array().unwrap();
        assert_eq!(doc["row_count"], rows.len());
        assert_eq!(json_report["row_count"], rows.len());
        assert_eq!(json_report["size_bytes"], file.text.len());
        if kind != "activity" {
            assert_eq!(rows.len(), expected_rows(kind), "{kind}: {doc}");
        } else {
            assert!(rows.len() >= 8, "{doc}");
            let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
            assert!(actions.contains(&"client.create"), "{actions:?}");
            assert!(actions.contains(&"report.create"), "{actions:?}");
        }
        let keys: Vec<&str> = doc["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["key"].as_str().unwrap())
            .collect();

        let csv = app
            .get(
                &format!(
                    "/api/v1/reports/{}/download",
                    csv_report["id"].as_str().unwrap()
                ),
                &admin,
            )
            .await;
        csv.expect(200, None);
        assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
        let mut reader = csv::ReaderBuilder::new().from_reader(csv.text.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(header, keys, "{kind}");
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        if kind == "activity" {
            // The CSV was made after the JSON report, so it holds more events.
            assert!(records.len() > rows.len(), "{kind}");
        } else {
            assert_eq!(records.len(), rows.len(), "{kind}");
        }
        match kind {
            "client_summary" => {
                let birch = rows.iter().find(|r| r["id"] == b.as_str()).unwrap();
                assert_eq!(birch["documents"], 1);
                assert_eq!(birch["recordings"], 0);
                let alder = rows.iter().find(|r| r["id"] == a.as_str()).unwrap();
                assert_eq!(alder["documents"], 2);
                assert_eq!(doc["summary"]["clients"]["total"], 2);
                assert_eq!(doc["summary"]["documents"]["pages"], 4);
                // A spreadsheet does not run a name as a formula; the text survives quoting.
                let name_at = keys.iter().position(|k| *k == "name").unwrap();
                let names: Vec<&str> = records.iter().map(|r| &r[name_at]).collect();
                assert!(names.contains(&"'=Birch, \"Co\""), "{names:?}");
            }
            "documents" => {
                let client_at = keys.iter().position(|k| *k == "client").unwrap();
                let clients: Vec<&str> = records.iter().map(|r| &r[client_at]).collect();
                assert_eq!(clients.iter().filter(|c| **c == "Alder Ltd").count(), 2);
                assert_eq!(doc["summary"]["documents"]["total"], 3);
            }
            _ => {}
        }
    }

    // The PDF of each kind: its title page prints the filters, its charts' labels are text,
    // its fonts are embedded.
    for kind in ["client_summary", "activity", "documents", "recordings"] {
        let done = report(
            &app,
            &admin,
            json!({"kind": kind, "params": {"from": "2026-01-01", "to": "2030-12-31", "client_id": a}, "format": "pdf"}),
        )
        .await;
        let file = app
            .get(
                &format!("/api/v1/reports/{}/download", done["id"].as_str().unwrap()),
                &admin,
            )
            .await;
        file.expect(200, None);
        assert_eq!(file.header("content-type"), Some("application/pdf"));
        let pdf = read_pdf(&app, &admin, done["id"].as_str().unwrap(), kind).await;
        assert!(
            pdf.text.contains("1 Jan 2026 – 31 Dec 2030"),
            "{kind}: {}",
            pdf.text
        );
        assert!(
            pdf.text.contains("Alder Ltd"),
            "{kind}: the client is named"
        );
        assert!(pdf.text.contains("admin@test.local"), "{kind}: who asked");
        assert!(pdf.text.contains("agentdesk"), "{kind}: the instance");
        let labels: &[&str] = match kind {
            "client_summary" => &[
                "Clients by status",
                "New clients by month",
                "Jan 2026",
                "active",
            ],
            "activity" => &["Activity per month", "Most active people", "Dec 2026"],
            "documents" => &["Documents by status", "Pages by status", "ready"],
            _ => &["Recordings by status"],
        };
        for label in labels {
            assert!(
                pdf.text.contains(label),
                "{kind}: `{label}` in {}",
                pdf.text
            );
        }
        assert!(pdf.fonts.contains("Inter"), "{}", pdf.fonts);
        assert!(
            pdf.fonts
                .lines()
                .skip(2)
                .all(|l| l.split_whitespace().rev().nth(2) == Some("yes")),
            "every font embedded: {}",
            pdf.fonts
        );
    }

    // One client only.
    let one = report(
        &app,
        &admin,
        json!({"kind": "documents", "params": {"client_id": a}, "format": "json"}),
    )
    .await;
    assert_eq!(one["row_count"], 2);
    assert_eq!(one["params"]["client_id"], a.as_str());

    // Listing: newest first, by kind, paged.
    let list = app.get("/api/v1/reports?limit=3", &admin).await;
    list.expect(200, None);
    let items = list.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["id"], one["id"]);
    let cursor = list.json["next_cursor"].as_str().unwrap();
    let next = app
        .get(
            &format!("/api/v1/reports?limit=100&cursor={cursor}"),
            &admin,
        )
        .await;
    assert_eq!(next.json["items"].as_array().unwrap().len(), 10);
    let documents = app.get("/api/v1/reports?kind=documents", &admin).await;
    assert_eq!(documents.json["items"].as_array().unwrap().len(), 4);

    // Deleting removes the report and its file; everything was audited.
    let id = one["id"].as_str().unwrap();
    app.delete(&format!("/api/v1/reports/{id}"), &admin)
        .await
        .expect(204, None);
    app.get(&format!("/api/v1/reports/{id}"), &admin)
        .await
        .expect(404, Some("not_found"));
    app.get(&format!("/api/v1/reports/{id}/download"), &admin)
        .await
        .expect(404, Some("not_found"));
    app.assert_audited(
        &admin,
        &[
            "report.create",
            "report.generate",
            "report.download",
            "report.delete",
        ],
    )
    .await;
}

#[tokio::test]
async fn reports_hold_only_the_creators_clients_and_only_they_see_them() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mine = new_client(&app, &admin, "Mine", "active").await;
    let theirs = new_client(&app, &admin, "Theirs", "active").await;
    let member = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "agent:reports_analysis", "actions": ["read", "generate"], "client_ids": [mine]})],
        )
        .await;
    let reader = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "agent:reports_analysis", "actions": ["read"]})],
        )
        .await;
    let done = report(
        &app,
        &member.token,
        json!({"kind": "client_summary", "format": "json"}),
    )
    .await;
    let id = done["id"].as_str().unwrap();
    let file = app
        .get(&format!("/api/v1/reports/{id}/download"), &member.token)
        .await;
    let ids: Vec<&str> = file.json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine.as_str()]);
    // Not a foreign client, not without `generate`.
    app.post(
        "/api/v1/reports",
        &member.token,
        json!({"kind": "documents", "params": {"client_id": theirs}}),
    )
    .await
    .expect(404, Some("not_found"));
    app.post(
        "/api/v1/reports",
        &reader.token,
        json!({"kind": "activity"}),
    )
    .await
    .expect(403, Some("forbidden"));
    // The admin's report is not the member's to see; the member's is the reader's to see (they
    // read reports over every client) but not to delete.
    let admins = report(&app, &admin, json!({"kind": "activity"})).await;
    let admins = admins["id"].as_str().unwrap();
    app.get(&format!("/api/v1/reports/{admins}"), &member.token)
        .await
        .expect(404, Some("not_found"));
    let listed = app.get("/api/v1/reports", &member.token).await;
    assert_eq!(listed.json["items"].as_array().unwrap().len(), 1);
    app.get(&format!("/api/v1/reports/{id}"), &reader.token)
        .await
        .expect(200, None);
    app.delete(&format!("/api/v1/reports/{id}"), &reader.token)
        .await
        .expect(403, Some("forbidden"));
    app.delete(&format!("/api/v1/reports/{admins}"), &member.token)
        .await
        .expect(404, Some("not_found"));
    app.delete(&format!("/api/v1/reports/{id}"), &member.token)
        .await
        .expect(204, None);
}

#[tokio::test]
async fn bad_report_requests_get_clear_errors() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let client = new_client(&app, &admin, "Alder", "active").await;
    for (body, field) in [
        (json!({"kind": "sales"}), "kind"),
        (json!({"kind": "activity", "format": "docx"}), "format"),
        (
            json!({"kind": "activity", "params": {"from": "2026-02-01", "to": "2026-01-01"}}),
            "from",
        ),
        (
            json!({"kind": "activity", "params": {"from": "last week"}}),
            "from",
        ),
        (json!({"kind": "activity\u{0}"}), "kind"),
    ] {
        let r = app.post("/api/v1/reports", &admin, body.clone()).await;
        r.expect(422, Some("validation_failed"));
        assert!(r.text.contains(field), "{body}: {}", r.text);
    }
    for body in [
        json!({"kind": "activity", "colour": "red"}),
        json!({"kind": "activity", "params": {"client": client}}),
        json!({"kind": "activity", "params": {"client_id": "not-a-uuid"}}),
        json!({"params": {}}),
    ] {
        let r = app.post("/api/v1/reports", &admin, body.clone()).await;
        assert_eq!(r.status.as_u16(), 422, "{body}: {}", r.text);
    }
    app.post(
        "/api/v1/reports",
        &admin,
        json!({"kind": "activity", "params": {"client_id": uuid::Uuid::now_v7()}}),
    )
    .await
    .expect(404, Some("not_found"));
    app.get("/api/v1/reports?kind=sales", &admin)
        .await
        .expect(422, Some("validation_failed"));
    app.get("/api/v1/reports?cursor=zz", &admin)
        .await
        .expect(400, None);
    app.get(&format!("/api/v1/reports/{}", uuid::Uuid::now_v7()), &admin)
        .await
        .expect(404, Some("not_found"));
    app.get("/api/v1/reports/not-a-uuid", &admin)
        .await
        .expect(400, Some("bad_request"));
}

#[tokio::test]
async fn a_long_table_breaks_across_pages_and_repeats_its_header() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    for i in 0..150 {
        new_client(&app, &admin, &format!("Client {i:03}"), "active").await;
    }
    let done = report(
        &app,
        &admin,
        json!({"kind": "client_summary", "format": "pdf"}),
    )
    .await;
    assert_eq!(done["row_count"], 150);
    let pdf = read_pdf(&app, &admin, done["id"].as_str().unwrap(), "long").await;
    assert!(
        pdf.pages >= 4,
        "title, summary and a table over pages: {}",
        pdf.pages
    );
    let table_pages: Vec<&str> = pdf
        .text
        .split('\u{c}')
        .skip(2)
        .filter(|p| !p.trim().is_empty())
        .collect();
    assert!(table_pages.len() >= 2, "{}", pdf.text);
    for page in &table_pages {
        assert!(
            page.contains("E-mail") && page.contains("Status"),
            "a page without the header: {page}"
        );
    }
    for i in [0, 75, 149] {
        assert!(pdf.text.contains(&format!("Client {i:03}")), "row {i}");
    }
}

/// A report is made with its creator's grant as it is when the job runs: one revoked in
/// between fails the report with `forbidden` and puts nothing in storage.
#[tokio::test]
async fn a_report_whose_creator_lost_the_grant_fails_clearly() {
    use agentdesk_tests::TestEnv;
    let env = TestEnv::new().await;
    // This instance serves the API but runs no reports jobs; the second one runs them.
    let api = env.spawn(&[("agents", json!("client_management"))]).await;
    let admin = api.admin_token().await;
    let member = api.persona(&admin, "member", &[]).await;
    let grant = api
        .grant(
            &admin,
            json!({"user_id": member.id, "resource": "agent:reports_analysis", "actions": ["read", "generate"]}),
        )
        .await;
    let r = api
        .post(
            "/api/v1/reports",
            &member.token,
            json!({"kind": "client_summary"}),
        )
        .await;
    r.expect(202, None);
    let id = r.json["id"].as_str().unwrap().to_owned();
    api.delete(
        &format!(
            "/api/v1/permissions/grants/{}",
            grant["id"].as_str().unwrap()
        ),
        &admin,
    )
    .await
    .expect(204, None);
    let _worker = env.spawn(&[]).await;
    let done = settled(&api, &admin, &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "forbidden", "{done}");
    assert!(done["size_bytes"].is_null());
    api.get(&format!("/api/v1/reports/{id}/download"), &admin)
        .await
        .expect(409, Some("conflict"));
}
