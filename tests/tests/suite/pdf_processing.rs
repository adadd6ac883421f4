//! The pdf_processing agent end to end: upload (415/413/422), processing in the isolated child,
//! text, metadata and fields, download, search with scope isolation, delete, merge, hostile
//! files, and the whole corpus (`../shared/corpus/pdf`) behind AGENTDESK_SLOW_TESTS=1.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use agentdesk_tests::{TestApp, tiny_pdf};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

fn corpus() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/pdf");
    if dir.join("good").is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP: the PDF corpus is not at {}", dir.display());
        None
    }
}

async fn new_client(app: &TestApp, admin: &str, name: &str) -> String {
    let r = app
        .post("/api/v1/clients", admin, json!({"name": name}))
        .await;
    r.expect(201, None);
    r.json["id"].as_str().unwrap().to_owned()
}

async fn upload_ready(app: &TestApp, token: &str, client: &str, pages: &[&str]) -> Value {
    let r = app
        .upload_document(token, client, "doc.pdf", tiny_pdf(pages))
        .await;
    r.expect(202, None);
    let doc = app
        .processed_document(token, r.json["id"].as_str().unwrap(), WAIT)
        .await;
    assert_eq!(doc["status"], "ready", "{doc}");
    doc
}

fn hit_documents(reply: &Value) -> Vec<String> {
    reply["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["document_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn upload_process_read_search_download_delete() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let client = new_client(&app, &admin, "Acme").await;
    let page1 = "Invoice zebracorn for jane.doe@example.org, call +44 20 7946 0958";
    let page2 = "Pay EUR 1.234,56 to DE89 3704 0044 0532 0130 00 by 2024-04-15, see https://example.org/pay";
    let bytes = tiny_pdf(&[page1, page2]);
    let r = app
        .upload_document(&admin, &client, "Invoice (March).txt", bytes.clone())
        .await;
    r.expect(202, None);
    assert_eq!(r.json["status"], "processing");
    assert_eq!(r.json["filename"], "Invoice (March).txt");
    assert_eq!(r.json["size_bytes"], bytes.len());
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v1/documents/{id}").as_str())
    );
    // The job was created with the document, for the same client.
    let job = app
        .get(
            &format!("/api/v1/jobs/{}", r.json["job_id"].as_str().unwrap()),
            &admin,
        )
        .await;
    job.expect(200, None);
    assert_eq!(job.json["agent"], "pdf_processing");
    assert_eq!(job.json["client_id"], client.as_str());

    let doc = app.processed_document(&admin, &id, WAIT).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(doc["page_count"], 2);
    assert_eq!(doc["metadata"]["pdf_version"], "1.4");
    assert_eq!(doc["metadata"]["encrypted"], false);
    assert!(doc["processed_at"].is_string());
    let fields = &doc["fields"];
    assert_eq!(fields["emails"][0]["value"], "jane.doe@example.org");
    assert_eq!(fields["emails"][0]["page"], 1);
    assert_eq!(fields["phones"][0]["value"], "+442079460958");
    assert_eq!(fields["ibans"][0]["value"], "DE89370400440532013000");
    assert_eq!(fields["ibans"][0]["page"], 2);
    assert_eq!(fields["amounts"][0]["currency"], "EUR");
    assert_eq!(fields["amounts"][0]["value"], "1234.56");
    assert_eq!(fields["dates"][0]["value"], "2024-04-15");
    assert_eq!(fields["urls"][0]["value"], "https://example.org/pay");
    assert_eq!(fields["urls"][0]["page"], 2);

    let text = app
        .get(&format!("/api/v1/documents/{id}/text"), &admin)
        .await;
    text.expect(200, None);
    assert_eq!(text.json["pages"][0]["number"], 1);
    assert!(
        text.json["pages"][0]["text"]
            .as_str()
            .unwrap()
            .contains("zebracorn")
    );
    assert!(
        text.json["pages"][1]["text"]
            .as_str()
            .unwrap()
            .contains("DE89")
    );
    let one = app
        .get(&format!("/api/v1/documents/{id}/text?page=2"), &admin)
        .await;
    one.expect(200, None);
    assert_eq!(one.json["pages"].as_array().unwrap().len(), 1);
    assert_eq!(one.json["pages"][0]["number"], 2);
    app.get(&format!("/api/v1/documents/{id}/text?page=3"), &admin)
        .await
        .expect(422, Some("validation_failed"));
    app.get(&format!("/api/v1/documents/{id}/text?page=x"), &admin)
        .await
        .expect(400, None);

    let file = app
        .get(&format!("/api/v1/documents/{id}/file"), &admin)
        .await;
    file.expect(200, None);
    assert_eq!(file.header("content-type"), Some("application/pdf"));
    assert_eq!(file.text.as_bytes(), bytes.as_slice());

    let list = app
        .get(&format!("/api/v1/clients/{client}/documents"), &admin)
        .await;
    list.expect(200, None);
    assert_eq!(list.json["items"][0]["id"], id.as_str());

    let found = app
        .get("/api/v1/documents/search?q=ZEBRACORN", &admin)
        .await;
    found.expect(200, None);
    let hit = &found.json["items"][0];
    assert_eq!(hit["document_id"], id.as_str());
    assert_eq!(hit["client_id"], client.as_str());
    assert_eq!(hit["page"], 1);
    assert!(
        hit["snippet"]
            .as_str()
            .unwrap()
            .contains("<mark>zebracorn</mark>"),
        "{hit}"
    );
    assert!(hit["score"].as_f64().unwrap() > 0.0);
    // Every word must occur: one that does not exist empties the answer.
    let none = app
        .get(
            "/api/v1/documents/search?q=zebracorn+nonexistentword",
            &admin,
        )
        .await;
    assert!(none.json["items"].as_array().unwrap().is_empty());
    app.get("/api/v1/documents/search?q=%20%2C", &admin)
        .await
        .expect(422, Some("validation_failed"));
    app.get("/api/v1/documents/search?q=x&cursor=%21%21", &admin)
        .await
        .expect(400, None);

    let events = app
        .get(&format!("/api/v1/audit/events?resource_id={id}"), &admin)
        .await;
    let actions: Vec<&str> = events.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"document.upload"), "{actions:?}");
    assert!(actions.contains(&"document.process"), "{actions:?}");
    assert!(actions.contains(&"document.download"), "{actions:?}");

    app.delete(&format!("/api/v1/documents/{id}"), &admin)
        .await
        .expect(204, None);
    for path in ["", "/text", "/file"] {
        app.get(&format!("/api/v1/documents/{id}{path}"), &admin)
            .await
            .expect(404, Some("not_found"));
    }
    let gone = app
        .get("/api/v1/documents/search?q=zebracorn", &admin)
        .await;
    assert!(
        gone.json["items"].as_array().unwrap().is_empty(),
        "{}",
        gone.text
    );
    let pages = {
        use sea_orm::{ConnectionTrait, Statement};
        let backend = app.core.db.backend();
        app.core
            .db
            .reader()
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                "SELECT number FROM document_pages WHERE document_id = $1",
                [uuid::Uuid::parse_str(&id).unwrap().into()],
            ))
            .await
            .unwrap()
    };
    assert!(pages.is_empty(), "pages are deleted with the document");
    let deleted = app
        .get(
            &format!("/api/v1/audit/events?resource_id={id}&action=document.delete"),
            &admin,
        )
        .await;
    assert_eq!(deleted.json["items"].as_array().unwrap().len(), 1);
    app.delete(&format!("/api/v1/documents/{id}"), &admin)
        .await
        .expect(404, Some("not_found"));
}

#[tokio::test]
async fn bad_uploads_get_clear_errors() {
    let app = TestApp::spawn_with(&[("max_upload_mb", json!(1))]).await;
    let admin = app.admin_token().await;
    let client = new_client(&app, &admin, "Uploads").await;
    for bytes in [
        b"just some text, named .pdf".to_vec(),
        Vec::new(),
        b"\x89PNG\r\n\x1a\n0000".to_vec(),
    ] {
        app.upload_document(&admin, &client, "x.pdf", bytes)
            .await
            .expect(415, Some("unsupported_media_type"));
    }
    // Over the limit while streaming, even though it starts like a PDF.
    let mut big = b"%PDF-1.4\n".to_vec();
    big.resize(1024 * 1024 + 10, b' ');
    app.upload_document(&admin, &client, "big.pdf", big)
        .await
        .expect(413, Some("payload_too_large"));
    // No `file` field.
    let response = app
        .client
        .post(format!("{}/api/v1/clients/{client}/documents", app.base))
        .bearer_auth(&admin)
        .multipart(reqwest::multipart::Form::new().text("other", "x"))
        .send()
        .await
        .unwrap();
    TestApp::read(response)
        .await
        .expect(422, Some("validation_failed"));
    // Not multipart at all.
    let response = app
        .client
        .post(format!("{}/api/v1/clients/{client}/documents", app.base))
        .bearer_auth(&admin)
        .header("content-type", "application/pdf")
        .body(tiny_pdf(&["x"]))
        .send()
        .await
        .unwrap();
    let reply = TestApp::read(response).await;
    assert!(reply.status.is_client_error(), "{}", reply.text);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    // An unknown client.
    app.upload_document(
        &admin,
        &uuid::Uuid::now_v7().to_string(),
        "x.pdf",
        tiny_pdf(&["x"]),
    )
    .await
    .expect(404, Some("not_found"));
    // Nothing was kept of the refused uploads.
    let list = app
        .get(&format!("/api/v1/clients/{client}/documents"), &admin)
        .await;
    assert!(list.json["items"].as_array().unwrap().is_empty());
    // A PDF header followed by garbage is accepted, then fails as corrupt.
    let r = app
        .upload_document(
            &admin,
            &client,
            "junk.pdf",
            b"%PDF-1.7\n\x00\x01garbage\n%%EOF".to_vec(),
        )
        .await;
    r.expect(202, None);
    let doc = app
        .processed_document(&admin, r.json["id"].as_str().unwrap(), WAIT)
        .await;
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["error"]["code"], "pdf_corrupt");
    // A truncated file whose cross-reference table and page tree are gone: corrupt, and no
    // page is invented from what is left of the first page's dictionary.
    let mut truncated = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n".to_vec();
    truncated.extend_from_slice(b"4 0 obj\n<< /Type /Page /MediaBox [0 0 612 792] /Conte");
    let r = app
        .upload_document(&admin, &client, "truncated.pdf", truncated)
        .await;
    r.expect(202, None);
    let doc = app
        .processed_document(&admin, r.json["id"].as_str().unwrap(), WAIT)
        .await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["error"]["code"], "pdf_corrupt", "{doc}");
    assert!(
        doc["page_count"].is_null(),
        "no page count without pages: {doc}"
    );
    app.get("/healthz", &admin).await.expect(200, None);
}

#[tokio::test]
async fn search_and_reads_stay_within_the_callers_clients() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let a = new_client(&app, &admin, "Client A").await;
    let b = new_client(&app, &admin, "Client B").await;
    let doc_a = upload_ready(&app, &admin, &a, &["shared quokka alpha"]).await;
    let doc_b = upload_ready(&app, &admin, &b, &["shared quokka beta"]).await;
    let member = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "agent:pdf_processing", "actions": ["read", "upload", "delete"], "client_ids": [a]})],
        )
        .await;
    let t = member.token.as_str();
    let both = app.get("/api/v1/documents/search?q=quokka", &admin).await;
    assert_eq!(hit_documents(&both.json).len(), 2);
    let mine = app.get("/api/v1/documents/search?q=quokka", t).await;
    mine.expect(200, None);
    assert_eq!(hit_documents(&mine.json), [doc_a["id"].as_str().unwrap()]);
    app.get(
        &format!("/api/v1/documents/search?q=quokka&client_id={b}"),
        t,
    )
    .await
    .expect(404, Some("not_found"));
    let b_id = doc_b["id"].as_str().unwrap();
    for path in ["", "/text", "/file"] {
        app.get(&format!("/api/v1/documents/{b_id}{path}"), t)
            .await
            .expect(404, Some("not_found"));
    }
    app.delete(&format!("/api/v1/documents/{b_id}"), t)
        .await
        .expect(404, Some("not_found"));
    app.get(&format!("/api/v1/clients/{b}/documents"), t)
        .await
        .expect(404, Some("not_found"));
    app.upload_document(t, &b, "x.pdf", tiny_pdf(&["x"]))
        .await
        .expect(404, Some("not_found"));
    app.get(
        &format!("/api/v1/documents/{}", doc_a["id"].as_str().unwrap()),
        t,
    )
    .await
    .expect(200, None);
    // Denied reads are audited.
    let denied = app
        .get(
            &format!("/api/v1/audit/events?resource_id={b_id}&outcome=denied"),
            &admin,
        )
        .await;
    assert!(!denied.json["items"].as_array().unwrap().is_empty());

    // Pages of hits are full and the cursor goes on where the page ended.
    for i in 0..5 {
        upload_ready(&app, &admin, &a, &[&format!("paging wombat number{i}")]).await;
    }
    let first = app
        .get("/api/v1/documents/search?q=wombat&limit=3", t)
        .await;
    first.expect(200, None);
    assert_eq!(hit_documents(&first.json).len(), 3);
    let cursor = first.json["next_cursor"].as_str().unwrap();
    let second = app
        .get(
            &format!("/api/v1/documents/search?q=wombat&limit=3&cursor={cursor}"),
            t,
        )
        .await;
    assert_eq!(hit_documents(&second.json).len(), 2);
    assert!(second.json["next_cursor"].is_null());
}

#[tokio::test]
async fn merged_clients_take_their_documents_along() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let target = new_client(&app, &admin, "Target").await;
    let source = new_client(&app, &admin, "Source").await;
    let doc = upload_ready(&app, &admin, &source, &["platypus contract"]).await;
    app.post(
        "/api/v1/clients/merge",
        &admin,
        json!({"target_id": target, "source_ids": [source]}),
    )
    .await
    .expect(200, None);
    let moved = app
        .get(
            &format!("/api/v1/documents/{}", doc["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert_eq!(moved.json["client_id"], target.as_str());
    let found = app
        .get(
            &format!("/api/v1/documents/search?q=platypus&client_id={target}"),
            &admin,
        )
        .await;
    assert_eq!(hit_documents(&found.json), [doc["id"].as_str().unwrap()]);
}

async fn upload_file(
    app: &TestApp,
    token: &str,
    client: &str,
    path: &std::path::Path,
) -> agentdesk_tests::Reply {
    let bytes = std::fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    app.upload_document(token, client, &name, bytes).await
}

/// Limits end hostile files in `pdf_limit_exceeded` while the server keeps answering.
#[tokio::test]
async fn limits_stop_decompression_bombs() {
    let Some(corpus) = corpus() else { return };
    let bomb = corpus.join("bad/bomb__SYNTHETIC-flate-1GiB-content-stream.pdf");
    for (overrides, what) in [
        (vec![("pdf_timeout_secs", json!(1))], "s"),
        // Below what the bomb's inflated stream needs (the child answers normally with 128 MiB:
        // the parser stops inflating when its buffer cannot grow, and keeps the page's text).
        (vec![("pdf_max_memory_mb", json!(64))], "MiB"),
    ] {
        let app = TestApp::spawn_with(&overrides).await;
        let admin = app.admin_token().await;
        let client = new_client(&app, &admin, "Bombs").await;
        let r = upload_file(&app, &admin, &client, &bomb).await;
        r.expect(202, None);
        let doc = app
            .processed_document(&admin, r.json["id"].as_str().unwrap(), WAIT)
            .await;
        assert_eq!(doc["status"], "failed", "{doc}");
        assert_eq!(doc["error"]["code"], "pdf_limit_exceeded", "{doc}");
        assert!(
            doc["error"]["message"].as_str().unwrap().contains(what),
            "{doc}"
        );
        app.get("/healthz", &admin).await.expect(200, None);
    }
}

/// What each file of `bad/` must become: an upload refusal, or a settled document.
enum Expect {
    Refused,
    Ready { pages: u64 },
    Failed { code: &'static str },
}

fn bad_expectation(name: &str) -> Expect {
    match name {
        // Not PDFs whatever their name (the junk pushes the header past the first KiB).
        n if n.starts_with("wrongext__") && n != "wrongext__real_pdf_no_extension" => {
            Expect::Refused
        }
        "zero_bytes.pdf" | "corrupt__simple1_2KB_junk_before_header.pdf" => Expect::Refused,
        "wrongext__real_pdf_no_extension" => Expect::Ready { pages: 1 },
        // Owner-only encryption opens with the empty user password.
        n if n.starts_with("enc-owner__") => Expect::Ready { pages: 1 },
        // Its owner password is empty: poppler opens it without a password, and so do we.
        "enc-user__pypdf-r6-user-password_asdfzxcv.pdf" => Expect::Ready { pages: 1 },
        n if n.starts_with("enc-user__") => Expect::Failed {
            code: "pdf_encrypted",
        },
        // Repaired by rebuilding the cross-reference table, as poppler does.
        "corrupt__naacl06_bad_startxref.pdf" => Expect::Ready { pages: 8 },
        "trunc__crazyones_objstm_missing_tail.pdf" => Expect::Ready { pages: 1 },
        "corrupt__ocrmypdf-overlay_cs_errors.pdf" => Expect::Ready { pages: 1 },
        // Its page tree is a loop; the one page found has no text.
        "corrupt__pikepdf-cyclic-toc.pdf" => Expect::Ready { pages: 1 },
        // Its catalog's `/Pages` (object 22) is not in the file; pdftotext finds no page either.
        // No page is invented for it.
        "corrupt__pdfparse-03-invalid.pdf" => Expect::Failed {
            code: "pdf_corrupt",
        },
        // The parser stops inflating at 256 MiB; the page keeps no text.
        "bomb__SYNTHETIC-flate-1GiB-content-stream.pdf" => Expect::Ready { pages: 1 },
        "bomb__ocrmypdf-enormous_9000x9000_rgb.pdf" => Expect::Ready { pages: 1 },
        _ => Expect::Failed {
            code: "pdf_corrupt",
        },
    }
}

fn index(corpus: &std::path::Path) -> HashMap<String, HashMap<String, String>> {
    let text = std::fs::read_to_string(corpus.join("../pdf_index.tsv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    lines
        .map(|line| {
            let row: HashMap<String, String> = header
                .iter()
                .zip(line.split('\t'))
                .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
                .collect();
            (row["file"].clone(), row)
        })
        .collect()
}

/// Documents whose distinctive word our extraction (pdf_oxide 0.3.78) does not give back as
/// pdftotext does, so search cannot find it. Listed so that the gap stays visible:
/// - simple3: the Japanese line of page 1 is in a CID font pdf_oxide does not map to Unicode;
/// - arabi-samplebook: Latin transliteration inside right-to-left lines comes out reversed
///   (`nhAC` for `CAhn`).
const KNOWN_SEARCH_MISSES: &[&str] = &[
    "good/pdfminer__simple3.pdf",
    "good/tl-arabic__arabi-samplebook.pdf",
];

#[tokio::test]
async fn whole_corpus() {
    if std::env::var("AGENTDESK_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("SKIP: set AGENTDESK_SLOW_TESTS=1 for the whole PDF corpus");
        return;
    }
    let Some(corpus) = corpus() else { return };
    let index = index(&corpus);
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let client = new_client(&app, &admin, "Corpus").await;
    let mut uploads: Vec<(String, String)> = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for set in ["good", "bad"] {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(corpus.join(set))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        files.extend(entries);
    }
    let mut refused = Vec::new();
    for path in &files {
        let set = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let key = format!("{set}/{name}");
        let r = upload_file(&app, &admin, &client, path).await;
        let expect_refusal = set == "bad" && matches!(bad_expectation(&name), Expect::Refused);
        if expect_refusal {
            assert_eq!(r.status.as_u16(), 415, "{key}: {}", r.text);
            refused.push(key);
            continue;
        }
        assert_eq!(r.status.as_u16(), 202, "{key}: {}", r.text);
        uploads.push((key, r.json["id"].as_str().unwrap().to_owned()));
    }
    let mut failures = Vec::new();
    for (key, id) in &uploads {
        let doc = app
            .processed_document(&admin, id, Duration::from_secs(600))
            .await;
        let row = &index[key];
        let name = key.split('/').nth(1).unwrap();
        let expected = if key.starts_with("good/") {
            Expect::Ready {
                pages: row["pages"].parse().unwrap(),
            }
        } else {
            bad_expectation(name)
        };
        match expected {
            Expect::Ready { pages } => {
                if doc["status"] != "ready" || doc["page_count"] != pages {
                    failures.push(format!(
                        "{key}: expected ready with {pages} pages, got {doc}"
                    ));
                }
            }
            Expect::Failed { code } => {
                if doc["status"] != "failed" || doc["error"]["code"] != code {
                    failures.push(format!(
                        "{key}: expected failed {code}, got {}",
                        doc["error"]
                    ));
                }
            }
            Expect::Refused => unreachable!(),
        }
        // The server still answers after every file.
        app.get("/healthz", &admin).await.expect(200, None);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Search finds the distinctive word of page 1 (or of the page named) of each document.
    let mut misses = Vec::new();
    for (key, id) in uploads.iter().filter(|(k, _)| k.starts_with("good/")) {
        let raw = index[key]["page1_word"].clone();
        let word = raw.split(" (p.").next().unwrap().trim().to_owned();
        if word.is_empty() {
            continue;
        }
        let q = url_encode(&word);
        let found = app
            .get(
                &format!("/api/v1/documents/search?q={q}&client_id={client}&limit=200"),
                &admin,
            )
            .await;
        found.expect(200, None);
        if !hit_documents(&found.json).contains(id) && !KNOWN_SEARCH_MISSES.contains(&key.as_str())
        {
            misses.push(format!("{key}: `{word}`"));
        }
    }
    assert!(
        misses.is_empty(),
        "search did not find:\n{}",
        misses.join("\n")
    );
    eprintln!(
        "corpus: {} processed, {} refused",
        uploads.len(),
        refused.len()
    );
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A scanned page: OCR gives it text when the build has the `ocr` feature and Tesseract's
/// English data is installed (CI builds and runs it so); otherwise the page is marked as
/// having no text layer.
#[tokio::test]
async fn scanned_pages_are_ocred_or_marked() {
    let Some(corpus) = corpus() else { return };
    let ocr = agentdesk_agent_pdf_processing::ocr::available("eng");
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(
            ocr,
            "CI must build with --features agentdesk/ocr and have tesseract-ocr-eng"
        );
    }
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let client = new_client(&app, &admin, "Scans").await;
    let r = upload_file(
        &app,
        &admin,
        &client,
        &corpus.join("good/ocrmypdf__c03-29.pdf"),
    )
    .await;
    r.expect(202, None);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let doc = app.processed_document(&admin, &id, WAIT).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(doc["pages"]["without_text_layer"], json!([1]));
    let text = app
        .get(&format!("/api/v1/documents/{id}/text?page=1"), &admin)
        .await;
    let page = text.json["pages"][0]["text"].as_str().unwrap().to_owned();
    if ocr {
        assert_eq!(doc["pages"]["ocr"], json!([1]), "{doc}");
        assert!(page.contains("Watson"), "OCR text: {page}");
        let found = app.get("/api/v1/documents/search?q=watson", &admin).await;
        assert_eq!(hit_documents(&found.json), [id.as_str()]);
    } else {
        eprintln!("OCR not built in: the scanned page is only marked");
        assert_eq!(doc["pages"]["ocr"], json!([]));
        assert!(page.trim().is_empty());
    }
}

/// Generated hostile files: deep nesting, a page tree that loops, a million tiny objects. Each
/// settles with a clear outcome in the isolated child, and the server keeps answering.
#[tokio::test]
async fn hostile_structures_settle_and_the_server_keeps_answering() {
    let app = TestApp::spawn_with(&[("pdf_timeout_secs", json!(60))]).await;
    let admin = app.admin_token().await;
    let client = new_client(&app, &admin, "Hostile").await;
    // Nesting inside the page dictionary the parser must read (offsets after it shift, so
    // the cross-reference table must be rebuilt too).
    let deep_nest = format!(
        "/Junk {}{} /MediaBox",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let deep = String::from_utf8(tiny_pdf(&["deep"]))
        .unwrap()
        .replacen("/MediaBox", &deep_nest, 1)
        .into_bytes();
    let looping = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n\
2 0 obj << /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >> endobj\n\
3 0 obj << /Type /Pages /Kids [2 0 R] /Parent 2 0 R /Count 1 >> endobj\n\
trailer << /Root 1 0 R >>\n%%EOF\n"
        .to_vec();
    let mut tiny_objects = b"%PDF-1.4\n".to_vec();
    for i in 1..=1_000_000u32 {
        tiny_objects.extend_from_slice(format!("{i} 0 obj 0 endobj\n").as_bytes());
    }
    tiny_objects.extend_from_slice(b"trailer << /Root 1 0 R /Size 1000001 >>\n%%EOF\n");
    for (name, bytes) in [
        ("deep.pdf", deep),
        ("loop.pdf", looping),
        ("objects.pdf", tiny_objects),
    ] {
        let r = app.upload_document(&admin, &client, name, bytes).await;
        r.expect(202, None);
        let doc = app
            .processed_document(&admin, r.json["id"].as_str().unwrap(), WAIT)
            .await;
        match doc["status"].as_str() {
            Some("ready") => {}
            Some("failed") => assert!(
                ["pdf_corrupt", "pdf_limit_exceeded"]
                    .contains(&doc["error"]["code"].as_str().unwrap()),
                "{name}: {doc}"
            ),
            other => panic!("{name}: unexpected status {other:?}: {doc}"),
        }
        eprintln!("{name}: {} {}", doc["status"], doc["error"]);
        app.get("/healthz", &admin).await.expect(200, None);
    }
}

/// A job that fails for good (here: its stored file is gone) settles its document as
/// `failed` with `processing_failed`; no document stays `processing`.
#[tokio::test]
async fn a_job_that_gives_up_fails_its_document() {
    let env = agentdesk_tests::TestEnv::new().await;
    // The first instance runs no workers, so the file can go before the job runs.
    let api = env.spawn(&[("agents", json!("none"))]).await;
    let admin = api.admin_token().await;
    let client = new_client(&api, &admin, "Lost file").await;
    let r = api
        .upload_document(&admin, &client, "lost.pdf", tiny_pdf(&["lost"]))
        .await;
    r.expect(202, None);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let row = agentdesk_agent_pdf_processing::documents::find(
        api.core.db.reader(),
        uuid::Uuid::parse_str(&id).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    api.core.storage.delete(&row.storage_key).await.unwrap();
    let _worker = env.spawn(&[]).await;
    let doc = api.processed_document(&admin, &id, WAIT).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["error"]["code"], "processing_failed", "{doc}");
}
