//! A fuzzer for the parsers that take a user's bytes over HTTP: query strings (every list
//! route's), cursors, JSON merge patches and CSV imports. Each case is a random input from
//! proptest's generators, sent to the real server; every answer must be a success or a 4xx
//! problem+json with a `code`, never a 5xx or a dropped connection, and a CSV import's job must
//! end (succeeded, or failed with a reason), never stay stuck or crash the server.
//!
//! CI runs a fixed number of cases per parser (`AGENTDESK_FUZZ_CASES`, default 60) from a fixed
//! seed. A long run (random seed, 10 minutes per parser):
//! `AGENTDESK_FUZZ_CASES=10000000 AGENTDESK_FUZZ_SECS=600 AGENTDESK_FUZZ_RANDOM=1 cargo test -p agentdesk-tests --test suite -- fuzz_inputs:: --nocapture`

use std::time::{Duration, Instant};

use agentdesk_tests::{Reply, TestApp};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};

/// How often each status was answered (printed at the end of a test, for long runs' figures).
static SEEN: std::sync::Mutex<std::collections::BTreeMap<u16, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn report(test: &str) {
    if let Ok(seen) = SEEN.lock() {
        eprintln!("{test}: statuses so far in this process {seen:?}");
    }
}

fn cases() -> usize {
    std::env::var("AGENTDESK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

fn runner() -> TestRunner {
    let config = Config {
        cases: cases() as u32,
        ..Config::default()
    };
    if std::env::var_os("AGENTDESK_FUZZ_RANDOM").is_some() {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]))
    }
}

/// A server whose access tokens outlive a long run (a day, the most allowed): with the default
/// 15 minutes, every request after that would only test the token check.
async fn fuzz_app() -> TestApp {
    TestApp::spawn_with(&[("access_token_ttl_secs", serde_json::json!(86_400))]).await
}

/// `cases()` values drawn from `strategy` one at a time (no shrinking: a failure prints its
/// input whole), for at most `AGENTDESK_FUZZ_SECS` seconds when that is set (a long run).
fn draw<S: Strategy>(strategy: S) -> impl Iterator<Item = S::Value> {
    let mut runner = runner();
    let budget = std::env::var("AGENTDESK_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs);
    let started = std::time::Instant::now();
    (0..cases()).map_while(move |_| {
        if budget.is_some_and(|b| started.elapsed() > b) {
            return None;
        }
        Some(strategy.new_tree(&mut runner).expect("a value").current())
    })
}

/// A success, or a 4xx problem with a stable code; never a 5xx. Counts the status.
fn assert_handled(reply: &Reply, input: &str) {
    let status = reply.status.as_u16();
    if let Ok(mut seen) = SEEN.lock() {
        *seen.entry(status).or_default() += 1;
    }
    assert!(status < 500, "{status} for {input:?}: {}", reply.text);
    // The token is valid all run long: a 401 means the run stopped testing the parsers.
    assert_ne!(status, 401, "for {input:?}: {}", reply.text);
    if status >= 400 {
        assert!(
            reply.json["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{status} without a problem code for {input:?}: {}",
            reply.text
        );
    }
}

/// Text a user might type or a tool might mangle: any Unicode, URL syntax, escapes, long runs.
fn nasty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9%&=+;,/?#\\[\\]@!$'()*:. -]{0,40}",
        Just(String::new()),
        Just("%00".to_owned()),
        Just("%ZZ".to_owned()),
        Just("%".to_owned()),
        Just("é%C3%A9\u{202e}".to_owned()),
        "[0-9-]{0,30}",
        Just("9".repeat(400)),
        Just("-1".to_owned()),
    ]
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn query_strings_and_cursors_are_refused_clearly_or_answered() {
    let app = fuzz_app().await;
    let admin = app.admin_token().await;
    // Every list route with the parameters it documents, and some it does not.
    let routes: &[(&str, &[&str])] = &[
        (
            "/api/v1/clients",
            &["q", "status", "tag", "sort", "limit", "cursor"],
        ),
        (
            "/api/v1/users",
            &["q", "role", "is_active", "limit", "cursor"],
        ),
        (
            "/api/v1/jobs",
            &["agent", "status", "client_id", "limit", "cursor"],
        ),
        (
            "/api/v1/audit/events",
            &[
                "actor_id",
                "action",
                "resource_type",
                "client_id",
                "outcome",
                "from",
                "to",
                "limit",
                "cursor",
            ],
        ),
        (
            "/api/v1/permissions/grants",
            &["user_id", "role", "resource", "limit", "cursor"],
        ),
        (
            "/api/v1/documents/search",
            &["q", "client_id", "limit", "cursor"],
        ),
        (
            "/api/v1/recordings/search",
            &["q", "client_id", "limit", "cursor"],
        ),
        (
            "/api/v1/reports",
            &["kind", "schedule_id", "limit", "cursor"],
        ),
        ("/api/v1/reports/overview", &["from", "to"]),
        ("/api/v1/clients/export", &["format", "q", "status"]),
        ("/api/v1/audit/export", &["format", "action", "from"]),
    ];
    let inputs = draw((
        0..routes.len(),
        prop::collection::vec((0usize..12, nasty_text(), any::<bool>()), 0..4),
        any::<bool>(),
    ));
    let mut checked = 0;
    for (route, params, raw_tail) in inputs {
        let (path, names) = routes[route];
        let query: Vec<String> = params
            .iter()
            .map(|(name, value, encoded)| {
                let name = names.get(*name).copied().unwrap_or("unknown_param");
                if *encoded {
                    format!("{name}={}", encode(value))
                } else {
                    // Unencoded: whatever the URL parser makes of it.
                    format!("{name}={value}")
                }
            })
            .collect();
        let mut url = format!("{path}?{}", query.join("&"));
        if raw_tail {
            url.push_str("&&=&limit");
        }
        let Ok(parsed) = reqwest::Url::parse(&format!("{}{url}", app.base)) else {
            continue;
        };
        let reply = TestApp::read(
            app.client
                .get(parsed)
                .bearer_auth(&admin)
                .send()
                .await
                .expect("the server answers"),
        )
        .await;
        assert_handled(&reply, &url);
        checked += 1;
    }
    // Cursors: random text, base64 of random bytes, and a real cursor mangled.
    let first = app.get("/api/v1/clients?limit=1", &admin).await;
    first.expect(200, None);
    for cursor in draw(prop_oneof![
        nasty_text(),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| {
            use std::fmt::Write;
            b.iter().fold(String::new(), |mut s, x| {
                let _ = write!(s, "{x:02x}");
                s
            })
        }),
        "[A-Za-z0-9_-]{1,80}",
    ]) {
        for path in [
            "/api/v1/clients",
            "/api/v1/users",
            "/api/v1/audit/events",
            "/api/v1/jobs",
        ] {
            let url = format!("{path}?cursor={}", encode(&cursor));
            let reply = app.get(&url, &admin).await;
            assert_handled(&reply, &url);
            checked += 1;
        }
    }
    assert!(
        checked >= cases() || std::env::var_os("AGENTDESK_FUZZ_SECS").is_some(),
        "only {checked} requests"
    );
    eprintln!("query strings and cursors: {checked} requests");
    report("query strings and cursors");
}

/// Arbitrary JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        nasty_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("name".to_owned()),
                    Just("email".to_owned()),
                    Just("status".to_owned()),
                    Just("tags".to_owned()),
                    Just("metadata".to_owned()),
                    Just("phone".to_owned()),
                    Just("company".to_owned()),
                    Just("notes".to_owned()),
                    Just("version".to_owned()),
                    "[a-z]{1,8}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[tokio::test]
async fn merge_patches_are_applied_or_refused_clearly() {
    let app = fuzz_app().await;
    let admin = app.admin_token().await;
    let made = app
        .post(
            "/api/v1/clients",
            &admin,
            json!({"name": "Patched", "tags": ["a"]}),
        )
        .await;
    made.expect(201, None);
    let id = made.json["id"].as_str().unwrap().to_owned();
    for patch in draw(json_value()) {
        let reply = TestApp::read(
            app.client
                .patch(format!("{}/api/v1/clients/{id}", app.base))
                .bearer_auth(&admin)
                .header("content-type", "application/merge-patch+json")
                .body(patch.to_string())
                .send()
                .await
                .expect("the server answers"),
        )
        .await;
        assert_handled(&reply, &patch.to_string());
        // Whatever was accepted or refused, the client still reads back whole.
        let read = app.get(&format!("/api/v1/clients/{id}"), &admin).await;
        read.expect(200, None);
        assert!(
            read.json["name"].as_str().is_some_and(|n| !n.is_empty()),
            "{}",
            read.json
        );
        if reply.status == 200 {
            assert_eq!(reply.json["version"], read.json["version"]);
        }
    }
    report("merge patches");
}

/// CSV-ish bytes: real rows, random cells, quotes, separators, invalid UTF-8, ragged rows.
fn csv_body() -> impl Strategy<Value = Vec<u8>> {
    let cell = prop_oneof![
        nasty_text(),
        Just("\"".to_owned()),
        Just("\"a\"\"b\"".to_owned()),
        Just("x@example.com".to_owned()),
        Just(" padded@example.com\u{a0}".to_owned()),
        Just("active".to_owned()),
        Just("a;b;c".to_owned()),
    ];
    let row = prop::collection::vec(cell, 0..6).prop_map(|cells| cells.join(","));
    (
        prop_oneof![
            Just("name,email,tags,status".to_owned()),
            Just("email,name".to_owned()),
            Just("".to_owned()),
            nasty_text(),
        ],
        prop::collection::vec(row, 0..8),
        prop::collection::vec(any::<u8>(), 0..8),
        prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
    )
        .prop_map(|(header, rows, junk, newline)| {
            let mut body = header.into_bytes();
            for row in rows {
                body.extend_from_slice(newline.as_bytes());
                body.extend_from_slice(row.as_bytes());
            }
            body.extend_from_slice(&junk);
            body
        })
}

#[tokio::test]
async fn csv_imports_end_or_are_refused_clearly() {
    let app = fuzz_app().await;
    let admin = app.admin_token().await;
    let mut jobs = Vec::new();
    for body in draw(csv_body()) {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let reply = TestApp::read(
            app.client
                .post(format!("{}/api/v1/clients/import", app.base))
                .bearer_auth(&admin)
                .header("content-type", "text/csv")
                .body(body)
                .send()
                .await
                .expect("the server answers"),
        )
        .await;
        assert_handled(&reply, &shown);
        if reply.status == 202 {
            jobs.push((reply.json["id"].as_str().unwrap().to_owned(), shown));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut succeeded, mut failed) = (0, 0);
    for (id, shown) in jobs {
        loop {
            let job = app.get(&format!("/api/v1/jobs/{id}"), &admin).await;
            job.expect(200, None);
            match job.json["status"].as_str() {
                Some("succeeded") => {
                    let result = &job.json["result"];
                    assert!(
                        result["created"].is_u64() && result["errors"].is_array(),
                        "{result}"
                    );
                    succeeded += 1;
                    break;
                }
                Some("failed") => {
                    assert!(
                        job.json["error"].as_str().is_some_and(|e| !e.is_empty()),
                        "a failed import says why: {} for {shown:?}",
                        job.json
                    );
                    failed += 1;
                    break;
                }
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "the import of {shown:?} did not end: {}",
                job.json
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    report("CSV imports");
    eprintln!("CSV import jobs: {succeeded} succeeded, {failed} failed with a reason");
    // The server is still whole.
    app.request(Method::GET, "/readyz", None, None)
        .await
        .expect(200, None);
}
