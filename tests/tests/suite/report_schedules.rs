//! Report schedules, black-box: validation and visibility, one report per tick across two
//! instances, delivery by mail (a real SMTP sink, aiosmtpd, whose Maildir the test reads) and by
//! a signed webhook (a local receiver that checks the signature), a failing webhook retried with
//! backoff until the report shows it failed, and a schedule whose owner lost the grant stopping.
//!
//! The mail test needs `AGENTDESK_TEST_SMTP_URL` and `AGENTDESK_TEST_MAILDIR` (`.ci/run` starts
//! the sink and sets both); without them it says so and checks the webhook only.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentdesk_tests::{TestApp, TestEnv};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// One call the webhook receiver got: its headers and body.
type Call = (HeaderMap, Vec<u8>);

/// What the webhook receiver saw: one entry per call.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Call>>>);

impl Received {
    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }
}

/// A local HTTP receiver at `/hook` answering `status` to every call.
async fn receiver(status: StatusCode) -> (SocketAddr, Received) {
    let received = Received::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                store.0.lock().unwrap().push((headers, body.to_vec()));
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

/// Checks `Agentdesk-Signature: t=..,v1=..` against HMAC-SHA256(secret, "t.body").
fn signature_holds(headers: &HeaderMap, body: &[u8], secret: &str) -> bool {
    let Some(header) = headers
        .get("agentdesk-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_owned()),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let Ok(expected) = hex::decode(&v1) else {
        return false;
    };
    mac.verify_slice(&expected).is_ok()
}

/// The SMTP sink `.ci/run` starts, if this run has one: its URL and its Maildir.
fn smtp_sink() -> Option<(String, std::path::PathBuf)> {
    let url = std::env::var("AGENTDESK_TEST_SMTP_URL").ok()?;
    let dir = std::env::var("AGENTDESK_TEST_MAILDIR").ok()?;
    Some((url, dir.into()))
}

/// The messages in the sink's Maildir addressed to `to`.
fn mails_to(maildir: &std::path::Path, to: &str) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let Some(message) = mail_parser::MessageParser::default().parse(&bytes) else {
                continue;
            };
            let addressed = message
                .to()
                .map(|list| list.iter().any(|a| a.address() == Some(to)))
                .unwrap_or(false);
            if addressed {
                found.push(bytes);
            }
        }
    }
    found
}

/// Polls every quarter second, until `within` passes, for the first report of a schedule that
/// `done` accepts; returns the last one seen (or null) and whether it was accepted.
async fn first_report_until(
    app: &TestApp,
    token: &str,
    schedule: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> (Value, bool) {
    let deadline = std::time::Instant::now() + within;
    let mut last = Value::Null;
    while std::time::Instant::now() < deadline {
        if let Some(first) = reports_of(app, token, schedule).await.last() {
            last = first.clone();
            if done(&last) {
                return (last, true);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (last, false)
}

/// The reports a schedule made, as the admin sees them.
async fn reports_of(app: &TestApp, token: &str, schedule: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/api/v1/reports?schedule_id={schedule}"), token)
        .await;
    r.expect(200, None);
    r.json["items"].as_array().unwrap().clone()
}

fn pdf_text(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailed.pdf");
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils, .ci/run installs it)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn bad_schedules_get_clear_errors_and_only_their_owners_see_them() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let own = app
        .post(
            "/api/v1/clients",
            &admin,
            json!({"name": "Ana's", "status": "active"}),
        )
        .await;
    own.expect(201, None);
    let reports_grant = json!({"resource": "agent:reports_analysis", "actions": ["read", "generate"],
        "client_ids": [own.json["id"]]});
    let ana = app
        .persona(&admin, "member", std::slice::from_ref(&reports_grant))
        .await;
    let bob = app.persona(&admin, "member", &[reports_grant]).await;
    let reader = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "agent:reports_analysis", "actions": ["read"]})],
        )
        .await;
    let foreign = app
        .post(
            "/api/v1/clients",
            &admin,
            json!({"name": "Not Ana's", "status": "active"}),
        )
        .await;
    foreign.expect(201, None);
    let foreign = foreign.json["id"].as_str().unwrap().to_owned();

    let valid = json!({"kind": "client_summary", "format": "pdf", "cron": "0 8 * * MON",
        "timezone": "Europe/Madrid", "params": {"from": "-7d", "to": "now"}});
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"cron": "0 8 * *"}), 422, "cron"),
        (json!({"cron": "0 0 8 * * *"}), 422, "cron"),
        (json!({"cron": "61 * * * *"}), 422, "cron"),
        (json!({"cron": "every monday"}), 422, "cron"),
        (json!({"timezone": "Mars/Olympus"}), 422, "timezone"),
        (json!({"kind": "weather"}), 422, "kind"),
        (json!({"format": "docx"}), 422, "format"),
        (
            json!({"params": {"from": "2026-12-01", "to": "2026-11-01"}}),
            422,
            "from",
        ),
        (json!({"params": {"from": "-7x"}}), 422, "from"),
        (
            json!({"deliver": {"webhook": "http://example.com/hook"}}),
            422,
            "deliver.webhook",
        ),
        (
            json!({"deliver": {"webhook": "not a url"}}),
            422,
            "deliver.webhook",
        ),
        // This instance has no SMTP relay: mail cannot be promised.
        (
            json!({"deliver": {"email": ["ana@example.test"]}}),
            422,
            "deliver.email",
        ),
        (json!({"deliver": {"fax": "+34 600"}}), 422, ""),
        (json!({"surprise": true}), 422, ""),
    ];
    for (change, status, field) in cases {
        let mut body = valid.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = app
            .post("/api/v1/reports/schedules", &ana.token, body.clone())
            .await;
        r.expect(status, None);
        if !field.is_empty() {
            assert!(
                r.json["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["field"] == field)),
                "{body}: {}",
                r.json
            );
        }
    }
    let mut body = valid.clone();
    body["params"]["client_id"] = json!(foreign);
    app.post("/api/v1/reports/schedules", &ana.token, body)
        .await
        .expect(404, Some("not_found"));
    app.post("/api/v1/reports/schedules", &reader.token, valid.clone())
        .await
        .expect(403, Some("forbidden"));

    let mut body = valid.clone();
    body["deliver"] = json!({"webhook": "http://127.0.0.1:9/hook"});
    let r = app
        .post("/api/v1/reports/schedules", &ana.token, body)
        .await;
    r.expect(201, None);
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v1/reports/schedules/{id}").as_str())
    );
    assert!(
        r.json["webhook_secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_")),
        "{}",
        r.json
    );
    assert_eq!(r.json["status"], "active");
    assert_eq!(r.json["timezone"], "Europe/Madrid");
    // Next Monday, 8:00 in Madrid: 7:00 or 6:00 UTC.
    let next = chrono::DateTime::parse_from_rfc3339(r.json["next_run_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono_tz::Europe::Madrid);
    assert_eq!(next.format("%a %H:%M").to_string(), "Mon 08:00");

    let seen = app
        .get(&format!("/api/v1/reports/schedules/{id}"), &ana.token)
        .await;
    seen.expect(200, None);
    assert!(seen.json.get("webhook_secret").is_none(), "shown once only");
    assert_eq!(seen.json["deliver"]["webhook"], "http://127.0.0.1:9/hook");
    // Bob neither sees nor deletes Ana's schedule; the admin sees every schedule.
    app.get(&format!("/api/v1/reports/schedules/{id}"), &bob.token)
        .await
        .expect(404, Some("not_found"));
    app.delete(&format!("/api/v1/reports/schedules/{id}"), &bob.token)
        .await
        .expect(404, Some("not_found"));
    let listed = app.get("/api/v1/reports/schedules", &bob.token).await;
    listed.expect(200, None);
    assert_eq!(listed.json["items"].as_array().unwrap().len(), 0);
    let listed = app.get("/api/v1/reports/schedules", &admin).await;
    assert_eq!(listed.json["items"][0]["id"], id.as_str());
    app.delete(&format!("/api/v1/reports/schedules/{id}"), &ana.token)
        .await
        .expect(204, None);
    app.get(&format!("/api/v1/reports/schedules/{id}"), &ana.token)
        .await
        .expect(404, Some("not_found"));
    app.assert_audited(
        &admin,
        &["report_schedule.create", "report_schedule.delete"],
    )
    .await;
}

/// Two instances on one database both watch the schedule; each tick makes exactly one report,
/// which goes out by mail (PDF attached) and to a webhook whose signature checks.
#[tokio::test]
async fn a_tick_makes_one_report_across_two_instances_delivered_by_mail_and_webhook() {
    let env = TestEnv::new().await;
    let sink = smtp_sink();
    let mut overrides = vec![("instance_name", json!("Acme Advisers"))];
    match &sink {
        Some((url, _)) => {
            overrides.push(("smtp_url", json!(url)));
            overrides.push(("mail_from", json!("Acme Reports <reports@acme.test>")));
        }
        None => eprintln!(
            "mail delivery not checked: set AGENTDESK_TEST_SMTP_URL and AGENTDESK_TEST_MAILDIR (.ci/run starts aiosmtpd)"
        ),
    }
    let one = env.spawn(&overrides).await;
    let two = env.spawn(&overrides).await;
    let admin = one.admin_token().await;
    one.post(
        "/api/v1/clients",
        &admin,
        json!({"name": "Scheduled Client", "status": "active"}),
    )
    .await
    .expect(201, None);
    let (hook, received) = receiver(StatusCode::OK).await;
    let recipient = agentdesk_tests::unique_email("partner");
    let mut deliver = json!({"webhook": format!("http://{hook}/hook")});
    if sink.is_some() {
        deliver["email"] = json!([recipient]);
    }
    let r = one
        .post(
            "/api/v1/reports/schedules",
            &admin,
            json!({"kind": "client_summary", "format": "pdf", "cron": "* * * * *",
                "params": {"from": "-1m", "to": "now"}, "deliver": deliver}),
        )
        .await;
    r.expect(201, None);
    let schedule = r.json["id"].as_str().unwrap().to_owned();
    let secret = r.json["webhook_secret"].as_str().unwrap().to_owned();

    // The next minute's tick (at most a minute away), made into a ready, delivered report.
    let (report, delivered) =
        first_report_until(&one, &admin, &schedule, Duration::from_secs(150), |r| {
            let deliveries = r["deliveries"].as_array().cloned().unwrap_or_default();
            r["status"] == "ready"
                && !deliveries.is_empty()
                && deliveries.iter().all(|d| d["status"] == "sent")
        })
        .await;
    assert!(delivered, "no delivered report: {report}");
    // A second instance racing for the same tick must not have made another report of it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let made = reports_of(&two, &admin, &schedule).await;
    let tick = report["scheduled_for"].as_str().unwrap().to_owned();
    assert_eq!(
        made.iter()
            .filter(|r| r["scheduled_for"] == tick.as_str())
            .count(),
        1,
        "{made:?}"
    );
    let mut ticks: Vec<&str> = made
        .iter()
        .map(|r| r["scheduled_for"].as_str().unwrap())
        .collect();
    ticks.dedup();
    assert_eq!(ticks.len(), made.len(), "one report per tick: {made:?}");
    assert!(tick.ends_with(":00Z"), "a minute's tick: {tick}");
    // The period is relative to the tick.
    let tick_at = chrono::DateTime::parse_from_rfc3339(&tick).unwrap();
    let to =
        chrono::DateTime::parse_from_rfc3339(report["period"]["to"].as_str().unwrap()).unwrap();
    assert_eq!(to, tick_at, "{report}");

    let calls = received.calls();
    let report_id = report["id"].as_str().unwrap();
    let call = calls
        .iter()
        .find(|(_, body)| {
            serde_json::from_slice::<Value>(body).unwrap()["report"]["id"] == report_id
        })
        .expect("the webhook was called for the report");
    assert!(signature_holds(&call.0, &call.1, &secret), "signature");
    assert!(!signature_holds(&call.0, &call.1, "whsec_wrong"));
    let body: Value = serde_json::from_slice(&call.1).unwrap();
    assert_eq!(body["type"], "report.ready");
    assert_eq!(body["report"]["schedule_id"], schedule.as_str());
    assert_eq!(body["instance"], "Acme Advisers");
    assert_eq!(
        call.0.get("agentdesk-delivery").unwrap().to_str().unwrap(),
        body["id"].as_str().unwrap()
    );

    if let Some((_, maildir)) = &sink {
        let mails = mails_to(maildir, &recipient);
        assert_eq!(mails.len(), 1, "one mail for one tick");
        let message = mail_parser::MessageParser::default()
            .parse(&mails[0])
            .unwrap();
        assert!(
            message
                .subject()
                .unwrap()
                .starts_with("Acme Advisers: Client summary report"),
            "{:?}",
            message.subject()
        );
        assert_eq!(
            message.from().unwrap().first().unwrap().address(),
            Some("reports@acme.test")
        );
        let attachment = message.attachments().next().expect("the PDF is attached");
        assert!(
            mail_parser::MimeHeaders::is_content_type(attachment, "application", "pdf"),
            "a PDF attachment"
        );
        let bytes = attachment.contents();
        assert!(bytes.starts_with(b"%PDF-"));
        assert_eq!(
            hex::encode(<Sha256 as sha2::Digest>::digest(bytes)),
            report["sha256"].as_str().unwrap(),
            "the attachment is the report's file"
        );
        assert!(pdf_text(bytes).contains("Scheduled Client"));
    }
    // The schedule remembers its last run; deleting it keeps its reports.
    let seen = one
        .get(&format!("/api/v1/reports/schedules/{schedule}"), &admin)
        .await;
    assert!(seen.json["last_run_at"].is_string(), "{}", seen.json);
    one.delete(&format!("/api/v1/reports/schedules/{schedule}"), &admin)
        .await
        .expect(204, None);
    one.get(&format!("/api/v1/reports/{report_id}"), &admin)
        .await
        .expect(200, None);
}

/// A webhook that keeps failing is tried `delivery_max_attempts` times with backoff, then the
/// report shows the delivery failed, with the receiver's answer.
#[tokio::test]
async fn a_failing_webhook_is_retried_then_shown_failed_on_the_report() {
    let app = TestApp::spawn_with(&[
        ("delivery_max_attempts", json!(3)),
        ("delivery_backoff_ms", json!(100)),
    ])
    .await;
    let admin = app.admin_token().await;
    let (hook, received) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let r = app
        .post(
            "/api/v1/reports/schedules",
            &admin,
            json!({"kind": "activity", "format": "csv", "cron": "* * * * *",
                "deliver": {"webhook": format!("http://{hook}/hook")}}),
        )
        .await;
    r.expect(201, None);
    let schedule = r.json["id"].as_str().unwrap().to_owned();
    let (report, failed) =
        first_report_until(&app, &admin, &schedule, Duration::from_secs(150), |r| {
            r["deliveries"][0]["status"] == "failed"
        })
        .await;
    assert!(failed, "{report}");
    assert_eq!(report["status"], "ready", "the report itself is fine");
    let delivery = &report["deliveries"][0];
    assert_eq!(delivery["channel"], "webhook");
    assert_eq!(delivery["attempts"], 3, "{delivery}");
    assert_eq!(delivery["response_status"], 500, "{delivery}");
    assert!(
        delivery["error"].as_str().unwrap().contains("500"),
        "{delivery}"
    );
    assert!(delivery["delivered_at"].is_null());
    let first_report = report["id"].as_str().unwrap();
    let calls_for_report = received
        .calls()
        .iter()
        .filter(|(_, body)| {
            serde_json::from_slice::<Value>(body).unwrap()["report"]["id"] == first_report
        })
        .count();
    assert_eq!(calls_for_report, 3);
    app.delete(&format!("/api/v1/reports/schedules/{schedule}"), &admin)
        .await
        .expect(204, None);
}

/// A schedule acts as its owner: once the owner may no longer generate reports, its next tick
/// stops it and says why, and no report is made.
#[tokio::test]
async fn a_schedule_whose_owner_lost_the_grant_stops_and_says_why() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let owner = app.persona(&admin, "member", &[]).await;
    let grant = app
        .grant(
            &admin,
            json!({"user_id": owner.id, "resource": "agent:reports_analysis", "actions": ["read", "generate"]}),
        )
        .await;
    let r = app
        .post(
            "/api/v1/reports/schedules",
            &owner.token,
            json!({"kind": "client_summary", "format": "json", "cron": "* * * * *"}),
        )
        .await;
    r.expect(201, None);
    let schedule = r.json["id"].as_str().unwrap().to_owned();
    // A schedule made with an API key stops once the key is revoked, though its owner still
    // may generate reports: its ticks act within the key.
    let keyholder = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "agent:reports_analysis", "actions": ["read", "generate"]})],
        )
        .await;
    let made = app
        .post(
            "/api/v1/api-keys",
            &keyholder.token,
            json!({"name": "cron"}),
        )
        .await;
    made.expect(201, None);
    let r = app
        .post(
            "/api/v1/reports/schedules",
            made.json["key"].as_str().unwrap(),
            json!({"kind": "client_summary", "format": "json", "cron": "* * * * *"}),
        )
        .await;
    r.expect(201, None);
    let keyed = r.json["id"].as_str().unwrap().to_owned();
    app.delete(
        &format!("/api/v1/api-keys/{}", made.json["id"].as_str().unwrap()),
        &keyholder.token,
    )
    .await
    .expect(204, None);
    app.delete(
        &format!(
            "/api/v1/permissions/grants/{}",
            grant["id"].as_str().unwrap()
        ),
        &admin,
    )
    .await
    .expect(204, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let ((seen, stopped), (seen_keyed, stopped_keyed)) = loop {
        let r = app
            .get(&format!("/api/v1/reports/schedules/{schedule}"), &admin)
            .await;
        let k = app
            .get(&format!("/api/v1/reports/schedules/{keyed}"), &admin)
            .await;
        let done = r.json["status"] == "disabled" && k.json["status"] == "disabled";
        if done || std::time::Instant::now() > deadline {
            break (
                (r.json.clone(), r.json["status"] == "disabled"),
                (k.json.clone(), k.json["status"] == "disabled"),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(stopped_keyed, "{seen_keyed}");
    assert!(
        seen_keyed["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("API key"),
        "{seen_keyed}"
    );
    assert!(reports_of(&app, &admin, &keyed).await.is_empty());
    assert!(stopped, "{seen}");
    assert!(
        seen["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("agent:reports_analysis generate"),
        "{seen}"
    );
    assert!(seen["next_run_at"].is_null());
    assert!(reports_of(&app, &admin, &schedule).await.is_empty());
    app.assert_audited(&admin, &["report_schedule.disable"])
        .await;
}
