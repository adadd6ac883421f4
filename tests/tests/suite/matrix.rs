//! The authorization matrix: every route of the OpenAPI document, called as an admin, as a
//! member with no grant, as a member with the route's grant, and as a member whose grant is
//! limited to another client. The expected status of each cell is written here as a table; a
//! route without a row (or a row without a route) fails the test.

use std::collections::BTreeSet;

use agentdesk_tests::{Persona, TestApp, unique_email};
use reqwest::Method;
use serde_json::{Value, json};

/// Not applicable: the resource is not about clients, so a grant cannot be limited to some.
const NA: u16 = 0;

/// The current code of an authenticator holding `secret` (base32); a bad secret gives a code
/// that fails (the route's status then says so).
fn totp_now(secret: &str) -> String {
    use totp_rs::{Algorithm, Secret, TOTP};
    Secret::Encoded(secret.to_owned())
        .to_bytes()
        .ok()
        .and_then(|bytes| TOTP::new(Algorithm::SHA1, 6, 1, 30, bytes, None, "m".into()).ok())
        .map(|totp| totp.generate(chrono::Utc::now().timestamp() as u64))
        .unwrap_or_default()
}

struct Row {
    method: &'static str,
    path: &'static str,
    /// The grants the "right" persona gets (and, limited to another client, the fourth persona).
    grant: Option<&'static [(&'static str, &'static [&'static str])]>,
    /// admin, no grant, right grant, grant for another client.
    expect: [u16; 4],
}

const fn row(
    method: &'static str,
    path: &'static str,
    grant: Option<&'static [(&'static str, &'static [&'static str])]>,
    expect: [u16; 4],
) -> Row {
    Row {
        method,
        path,
        grant,
        expect,
    }
}

#[rustfmt::skip]
const TABLE: &[Row] = &[
    //   method    path                                      grant of the "right" persona           admin none right other-client
    row("get",    "/healthz",                                None,                                  [200, 200, 200, 200]),
    row("get",    "/livez",                                  None,                                  [200, 200, 200, 200]),
    row("get",    "/readyz",                                 None,                                  [200, 200, 200, 200]),
    row("get",    "/version",                                None,                                  [200, 200, 200, 200]),
    row("get",    "/metrics",                                None,                                  [200, 200, 200, 200]),
    row("post",   "/api/v1/auth/login",                      None,                                  [200, 200, 200, 200]),
    row("post",   "/api/v1/auth/token",                      None,                                  [200, 200, 200, 200]),
    row("post",   "/api/v1/auth/refresh",                    None,                                  [200, 200, 200, 200]),
    row("post",   "/api/v1/auth/logout",                     None,                                  [204, 204, 204, 204]),
    row("get",    "/api/v1/auth/me",                         None,                                  [200, 200, 200, 200]),
    row("post",   "/api/v1/auth/password",                   None,                                  [204, 204, 204, 204]),
    row("get",    "/api/v1/auth/sessions",                   None,                                  [200, 200, 200, 200]),
    // Each persona ends a session of its own (a second login); another's is a 404 (account.rs).
    row("delete", "/api/v1/auth/sessions/{id}",              None,                                  [204, 204, 204, 204]),
    // Every persona manages keys of its own; another's is a 404 and a key itself is refused
    // (account.rs).
    // Every persona enrols, confirms and removes a second factor of its own (mfa.rs).
    row("post",   "/api/v1/auth/mfa/totp",                   None,                                  [200, 200, 200, 200]),
    row("post",   "/api/v1/auth/mfa/totp/confirm",           None,                                  [200, 200, 200, 200]),
    row("delete", "/api/v1/auth/mfa/totp",                   None,                                  [204, 204, 204, 204]),
    row("post",   "/api/v1/api-keys",                        None,                                  [201, 201, 201, 201]),
    row("get",    "/api/v1/api-keys",                        None,                                  [200, 200, 200, 200]),
    row("delete", "/api/v1/api-keys/{id}",                   None,                                  [204, 204, 204, 204]),
    row("get",    "/api/v1/users",                           Some(&[("users", &["read"])]),            [200, 403, 200, NA]),
    row("post",   "/api/v1/users",                           Some(&[("users", &["write"])]),           [201, 403, 201, NA]),
    row("get",    "/api/v1/users/{id}",                      Some(&[("users", &["read"])]),            [200, 403, 200, NA]),
    row("patch",  "/api/v1/users/{id}",                      Some(&[("users", &["write"])]),           [200, 403, 200, NA]),
    row("delete", "/api/v1/users/{id}",                      Some(&[("users", &["write"])]),           [204, 403, 204, NA]),
    row("get",    "/api/v1/users/{id}/grants",               Some(&[("users", &["read"])]),            [200, 403, 200, NA]),
    row("delete", "/api/v1/users/{id}/mfa",                  Some(&[("users", &["write"])]),           [204, 403, 204, NA]),
    row("get",    "/api/v1/clients",                         Some(&[("clients", &["read"])]),          [200, 403, 200, 200]),
    row("post",   "/api/v1/clients",                         Some(&[("clients", &["write"])]),         [201, 403, 201, 403]),
    row("get",    "/api/v1/clients/{id}",                    Some(&[("clients", &["read"])]),          [200, 403, 200, 404]),
    row("patch",  "/api/v1/clients/{id}",                    Some(&[("clients", &["write"])]),         [200, 403, 200, 404]),
    row("delete", "/api/v1/clients/{id}",                    Some(&[("clients", &["delete"])]),        [204, 403, 204, 404]),
    row("post",   "/api/v1/clients/import",                  Some(&[("agent:client_management", &["run"]), ("clients", &["write"])]), [202, 403, 202, 403]),
    row("get",    "/api/v1/clients/export",                  Some(&[("agent:client_management", &["run"]), ("clients", &["read"])]), [200, 403, 200, 200]),
    row("get",    "/api/v1/clients/duplicates",              Some(&[("agent:client_management", &["run"]), ("clients", &["read"])]), [200, 403, 200, 200]),
    row("post",   "/api/v1/clients/merge",                   Some(&[("agent:client_management", &["run"]), ("clients", &["write", "delete"])]), [200, 403, 200, 404]),
    row("post",   "/api/v1/clients/{client_id}/documents",   Some(&[("agent:pdf_processing", &["upload"])]), [202, 403, 202, 404]),
    row("get",    "/api/v1/clients/{client_id}/documents",   Some(&[("agent:pdf_processing", &["read"])]),   [200, 403, 200, 404]),
    row("get",    "/api/v1/documents/{id}",                  Some(&[("agent:pdf_processing", &["read"])]),   [200, 403, 200, 404]),
    row("get",    "/api/v1/documents/{id}/text",             Some(&[("agent:pdf_processing", &["read"])]),   [200, 403, 200, 404]),
    row("get",    "/api/v1/documents/{id}/file",             Some(&[("agent:pdf_processing", &["read"])]),   [200, 403, 200, 404]),
    row("get",    "/api/v1/documents/search",                Some(&[("agent:pdf_processing", &["read"])]),   [200, 403, 200, 200]),
    row("delete", "/api/v1/documents/{id}",                  Some(&[("agent:pdf_processing", &["delete"])]), [204, 403, 204, 404]),
    row("post",   "/api/v1/clients/{client_id}/recordings",  Some(&[("agent:audio_recording", &["record"])]), [202, 403, 202, 404]),
    row("get",    "/api/v1/clients/{client_id}/recordings",  Some(&[("agent:audio_recording", &["read"])]),   [200, 403, 200, 404]),
    // A plain GET is no WebSocket upgrade; auth and scope are checked on the socket (close 1008).
    row("get",    "/api/v1/clients/{client_id}/recordings/live", Some(&[("agent:audio_recording", &["record"])]), [426, 426, 426, 426]),
    row("get",    "/api/v1/recordings/{id}",                 Some(&[("agent:audio_recording", &["read"])]),   [200, 403, 200, 404]),
    // The fixture's recording cannot be transcribed, so its transcript is a 409 for who may read it.
    row("get",    "/api/v1/recordings/{id}/transcript",      Some(&[("agent:audio_recording", &["read"])]),   [409, 403, 409, 404]),
    row("get",    "/api/v1/recordings/{id}/audio",           Some(&[("agent:audio_recording", &["read"])]),   [200, 403, 200, 404]),
    row("get",    "/api/v1/recordings/search",               Some(&[("agent:audio_recording", &["read"])]),   [200, 403, 200, 200]),
    row("delete", "/api/v1/recordings/{id}",                 Some(&[("agent:audio_recording", &["delete"])]), [204, 403, 204, 404]),
    row("get",    "/api/v1/reports/overview",                Some(&[("agent:reports_analysis", &["read"])]),     [200, 403, 200, 200]),
    row("post",   "/api/v1/reports",                         Some(&[("agent:reports_analysis", &["generate"])]), [202, 403, 202, 202]),
    row("get",    "/api/v1/reports",                         Some(&[("agent:reports_analysis", &["read"])]),     [200, 403, 200, 200]),
    row("get",    "/api/v1/reports/{id}",                    Some(&[("agent:reports_analysis", &["read"])]),     [200, 403, 200, 404]),
    row("get",    "/api/v1/reports/{id}/download",           Some(&[("agent:reports_analysis", &["read"])]),     [200, 403, 200, 404]),
    // Only its creator or an admin deletes a report; a reader over every client sees it.
    row("delete", "/api/v1/reports/{id}",                    Some(&[("agent:reports_analysis", &["read"])]),     [204, 403, 403, 404]),
    row("post",   "/api/v1/reports/schedules",               Some(&[("agent:reports_analysis", &["generate"])]), [201, 403, 201, 201]),
    row("get",    "/api/v1/reports/schedules",               Some(&[("agent:reports_analysis", &["read"])]),     [200, 403, 200, 200]),
    // A schedule is seen by its owner and by readers over every client, deleted by its owner or an admin.
    row("get",    "/api/v1/reports/schedules/{id}",          Some(&[("agent:reports_analysis", &["read"])]),     [200, 403, 200, 404]),
    row("delete", "/api/v1/reports/schedules/{id}",          Some(&[("agent:reports_analysis", &["read"])]),     [204, 403, 403, 404]),
    row("get",    "/api/v1/agents",                          None,                                  [200, 200, 200, 200]),
    row("get",    "/api/v1/jobs",                            None,                                  [200, 200, 200, 200]),
    row("get",    "/api/v1/jobs/{id}",                       None,                                  [200, 404, 404, 404]),
    row("post",   "/api/v1/jobs/{id}/cancel",                None,                                  [202, 404, 404, 404]),
    row("post",   "/api/v1/jobs/{id}/retry",                 None,                                  [202, 404, 404, 404]),
    row("get",    "/api/v1/permissions/catalog",             None,                                  [200, 200, 200, 200]),
    row("get",    "/api/v1/permissions/grants",              Some(&[("permissions", &["read"])]),      [200, 403, 200, NA]),
    row("post",   "/api/v1/permissions/grants",              Some(&[("permissions", &["write"])]),     [201, 403, 201, NA]),
    row("delete", "/api/v1/permissions/grants/{id}",         Some(&[("permissions", &["write"])]),     [204, 403, 204, NA]),
    row("post",   "/api/v1/permissions/check",               Some(&[("permissions", &["read"])]),      [200, 403, 200, NA]),
    row("get",    "/api/v1/audit/events",                    Some(&[("audit", &["read"])]),            [200, 403, 200, 200]),
    row("get",    "/api/v1/audit/events/{id}",               Some(&[("audit", &["read"])]),            [200, 403, 200, 404]),
    row("get",    "/api/v1/audit/verify",                    Some(&[("audit", &["read"])]),            [200, 403, 200, 403]),
    row("get",    "/api/v1/audit/export",                    Some(&[("audit", &["export"])]),          [200, 403, 200, 200]),
];

struct Ctx<'a> {
    app: &'a TestApp,
    admin: String,
}

impl Ctx<'_> {
    /// A fresh member to act on.
    async fn target(&self) -> String {
        self.app
            .create_user(
                &self.admin,
                &unique_email("target"),
                "target-password-42",
                "member",
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A job started by the admin, for an agent no runner serves, in `status`.
    async fn job(&self, status: &str) -> String {
        use sea_orm::ConnectionTrait;
        let core = &self.app.core;
        let me = self.app.get("/api/v1/auth/me", &self.admin).await;
        let mut new =
            agentdesk_core::services::jobs::NewJob::new("matrix_agent", "noop", json!({}));
        new.created_by = Some(me.json["user"]["id"].as_str().unwrap().parse().unwrap());
        let txn = core.db.begin().await.unwrap();
        let job = core.enqueue(&txn, new).await.unwrap();
        txn.commit().await.unwrap();
        let sql = format!(
            "UPDATE jobs SET status = '{status}' WHERE agent = 'matrix_agent' AND status = 'queued'"
        );
        core.db.writer().execute_unprepared(&sql).await.unwrap();
        job.id.to_string()
    }

    /// A fresh document (of a fresh client) to act on.
    async fn document(&self) -> String {
        let client = self.client().await;
        let r = self
            .app
            .upload_document(
                &self.admin,
                &client,
                "matrix.pdf",
                agentdesk_tests::tiny_pdf(&["Matrix"]),
            )
            .await;
        r.expect(202, None);
        r.json["id"].as_str().unwrap().to_owned()
    }

    /// A fresh recording (of a fresh client) to act on: a WAV cut inside its header, which is
    /// taken (it looks like audio) and then fails, so it is never transcribed.
    async fn recording(&self) -> String {
        let client = self.client().await;
        let r = self.upload_recording(&self.admin, &client).await;
        r.expect(202, None);
        r.json["id"].as_str().unwrap().to_owned()
    }

    async fn upload_recording(&self, token: &str, client: &str) -> agentdesk_tests::Reply {
        let part = reqwest::multipart::Part::bytes(
            b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00".to_vec(),
        )
        .file_name("matrix.wav");
        TestApp::read(
            self.app
                .client
                .post(format!(
                    "{}/api/v1/clients/{client}/recordings",
                    self.app.base
                ))
                .bearer_auth(token)
                .multipart(reqwest::multipart::Form::new().part("file", part))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// A fresh report, made by the admin and ready.
    async fn report(&self) -> String {
        let r = self
            .app
            .post(
                "/api/v1/reports",
                &self.admin,
                json!({"kind": "client_summary", "format": "csv"}),
            )
            .await;
        r.expect(202, None);
        let id = r.json["id"].as_str().unwrap().to_owned();
        while self
            .app
            .get(&format!("/api/v1/reports/{id}"), &self.admin)
            .await
            .json["status"]
            != "ready"
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        id
    }

    /// A fresh report schedule, the admin's.
    async fn schedule(&self) -> String {
        let r = self
            .app
            .post(
                "/api/v1/reports/schedules",
                &self.admin,
                json!({"kind": "activity", "cron": "0 6 * * *"}),
            )
            .await;
        r.expect(201, None);
        r.json["id"].as_str().unwrap().to_owned()
    }

    /// A fresh client to act on.
    async fn client(&self) -> String {
        let r = self
            .app
            .post(
                "/api/v1/clients",
                &self.admin,
                json!({"name": "Target client"}),
            )
            .await;
        r.expect(201, None);
        r.json["id"].as_str().unwrap().to_owned()
    }

    async fn call(&self, row: &Row, p: &Persona) -> u16 {
        let app = self.app;
        let t = p.token.as_str();
        let reply = match (row.method, row.path) {
            ("get", path) if !path.starts_with("/api/") => app.request(Method::GET, path, None, None).await,
            ("post", "/api/v1/auth/login") => app.login(&p.email, &p.password).await,
            ("post", "/api/v1/auth/token") => {
                let form = [("username", p.email.as_str()), ("password", p.password.as_str())];
                TestApp::read(app.client.post(format!("{}/api/v1/auth/token", app.base)).form(&form).send().await.unwrap()).await
            }
            ("post", "/api/v1/auth/refresh") => {
                app.request(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": p.refresh}))).await
            }
            ("post", "/api/v1/auth/logout") => app.post("/api/v1/auth/logout", t, json!({"refresh_token": p.refresh})).await,
            ("get", "/api/v1/auth/me") => app.get("/api/v1/auth/me", t).await,
            ("get", "/api/v1/auth/sessions") => app.get("/api/v1/auth/sessions", t).await,
            ("delete", "/api/v1/auth/sessions/{id}") => {
                let (other, _) = app.tokens(&p.email, &p.password).await;
                let list = app.get("/api/v1/auth/sessions", &other).await;
                let id = list.json["items"].as_array().unwrap().iter().find(|s| s["current"] == true).unwrap()["id"].as_str().unwrap().to_owned();
                app.delete(&format!("/api/v1/auth/sessions/{id}"), t).await
            }
            ("post", "/api/v1/auth/mfa/totp") => app.request(Method::POST, "/api/v1/auth/mfa/totp", Some(t), None).await,
            ("post", "/api/v1/auth/mfa/totp/confirm") => {
                let started = app.request(Method::POST, "/api/v1/auth/mfa/totp", Some(t), None).await;
                let secret = started.json["secret"].as_str().unwrap_or("missing").to_owned();
                app.post("/api/v1/auth/mfa/totp/confirm", t, json!({"code": totp_now(&secret)})).await
            }
            ("delete", "/api/v1/auth/mfa/totp") => {
                app.request(Method::DELETE, "/api/v1/auth/mfa/totp", Some(t), Some(json!({"password": p.password}))).await
            }
            ("delete", "/api/v1/users/{id}/mfa") => app.delete(&format!("/api/v1/users/{}/mfa", self.target().await), t).await,
            ("post", "/api/v1/api-keys") => app.post("/api/v1/api-keys", t, json!({"name": "matrix"})).await,
            ("get", "/api/v1/api-keys") => app.get("/api/v1/api-keys", t).await,
            ("delete", "/api/v1/api-keys/{id}") => {
                let made = app.post("/api/v1/api-keys", t, json!({"name": "doomed"})).await;
                let id = made.json["id"].as_str().unwrap_or("missing").to_owned();
                app.delete(&format!("/api/v1/api-keys/{id}"), t).await
            }
            ("post", "/api/v1/auth/password") => {
                app.post("/api/v1/auth/password", t, json!({"current_password": p.password, "new_password": "a-brand-new-password"})).await
            }
            ("get", "/api/v1/users") => app.get("/api/v1/users", t).await,
            ("post", "/api/v1/users") => {
                app.post("/api/v1/users", t, json!({"email": unique_email("new"), "password": "new-user-password", "full_name": "N"})).await
            }
            ("get", "/api/v1/users/{id}") => app.get(&format!("/api/v1/users/{}", self.target().await), t).await,
            ("patch", "/api/v1/users/{id}") => app.patch(&format!("/api/v1/users/{}", self.target().await), t, json!({"full_name": "M"})).await,
            ("delete", "/api/v1/users/{id}") => app.delete(&format!("/api/v1/users/{}", self.target().await), t).await,
            ("get", "/api/v1/users/{id}/grants") => app.get(&format!("/api/v1/users/{}/grants", self.target().await), t).await,
            ("get", "/api/v1/clients") => app.get("/api/v1/clients", t).await,
            ("post", "/api/v1/clients") => app.post("/api/v1/clients", t, json!({"name": "Matrix client"})).await,
            ("get", "/api/v1/clients/{id}") => app.get(&format!("/api/v1/clients/{}", self.client().await), t).await,
            ("patch", "/api/v1/clients/{id}") => {
                app.patch(&format!("/api/v1/clients/{}", self.client().await), t, json!({"notes": "patched"})).await
            }
            ("delete", "/api/v1/clients/{id}") => app.delete(&format!("/api/v1/clients/{}", self.client().await), t).await,
            ("post", "/api/v1/clients/import") => TestApp::read(
                app.client
                    .post(format!("{}/api/v1/clients/import?dry_run=true", app.base))
                    .bearer_auth(t)
                    .header("content-type", "text/csv")
                    .body("name,email\nMatrix Import,matrix@example.com\n")
                    .send()
                    .await
                    .unwrap(),
            )
            .await,
            ("get", "/api/v1/clients/export") => app.get("/api/v1/clients/export?format=jsonl", t).await,
            ("get", "/api/v1/clients/duplicates") => app.get("/api/v1/clients/duplicates", t).await,
            ("post", "/api/v1/clients/merge") => {
                let (target, source) = (self.client().await, self.client().await);
                app.post("/api/v1/clients/merge", t, json!({"target_id": target, "source_ids": [source]})).await
            }
            ("post", "/api/v1/clients/{client_id}/documents") => {
                app.upload_document(t, &self.client().await, "matrix.pdf", agentdesk_tests::tiny_pdf(&["Matrix"])).await
            }
            ("get", "/api/v1/clients/{client_id}/documents") => app.get(&format!("/api/v1/clients/{}/documents", self.client().await), t).await,
            ("get", "/api/v1/documents/{id}") => app.get(&format!("/api/v1/documents/{}", self.document().await), t).await,
            ("get", "/api/v1/documents/{id}/text") => app.get(&format!("/api/v1/documents/{}/text", self.document().await), t).await,
            ("get", "/api/v1/documents/{id}/file") => app.get(&format!("/api/v1/documents/{}/file", self.document().await), t).await,
            ("get", "/api/v1/documents/search") => app.get("/api/v1/documents/search?q=matrix", t).await,
            ("delete", "/api/v1/documents/{id}") => app.delete(&format!("/api/v1/documents/{}", self.document().await), t).await,
            ("post", "/api/v1/clients/{client_id}/recordings") => self.upload_recording(t, &self.client().await).await,
            ("get", "/api/v1/clients/{client_id}/recordings") => app.get(&format!("/api/v1/clients/{}/recordings", self.client().await), t).await,
            ("get", "/api/v1/clients/{client_id}/recordings/live") => {
                app.get(&format!("/api/v1/clients/{}/recordings/live", self.client().await), t).await
            }
            ("get", "/api/v1/recordings/{id}") => app.get(&format!("/api/v1/recordings/{}", self.recording().await), t).await,
            ("get", "/api/v1/recordings/{id}/transcript") => {
                let id = self.recording().await;
                // Settled first, so the answer does not depend on the job's timing.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while app.get(&format!("/api/v1/recordings/{id}"), &self.admin).await.json["status"] != "failed" {
                    assert!(std::time::Instant::now() < deadline, "the matrix recording fails");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                app.get(&format!("/api/v1/recordings/{id}/transcript"), t).await
            }
            ("get", "/api/v1/recordings/{id}/audio") => app.get(&format!("/api/v1/recordings/{}/audio", self.recording().await), t).await,
            ("get", "/api/v1/recordings/search") => app.get("/api/v1/recordings/search?q=matrix", t).await,
            ("get", "/api/v1/reports/overview") => app.get("/api/v1/reports/overview", t).await,
            ("post", "/api/v1/reports") => app.post("/api/v1/reports", t, json!({"kind": "activity"})).await,
            ("get", "/api/v1/reports") => app.get("/api/v1/reports", t).await,
            ("get", "/api/v1/reports/{id}") => app.get(&format!("/api/v1/reports/{}", self.report().await), t).await,
            ("get", "/api/v1/reports/{id}/download") => app.get(&format!("/api/v1/reports/{}/download", self.report().await), t).await,
            ("post", "/api/v1/reports/schedules") => app.post("/api/v1/reports/schedules", t, json!({"kind": "activity", "cron": "0 6 * * *"})).await,
            ("get", "/api/v1/reports/schedules") => app.get("/api/v1/reports/schedules", t).await,
            ("get", "/api/v1/reports/schedules/{id}") => app.get(&format!("/api/v1/reports/schedules/{}", self.schedule().await), t).await,
            ("delete", "/api/v1/reports/schedules/{id}") => app.delete(&format!("/api/v1/reports/schedules/{}", self.schedule().await), t).await,
            ("delete", "/api/v1/reports/{id}") => app.delete(&format!("/api/v1/reports/{}", self.report().await), t).await,
            ("delete", "/api/v1/recordings/{id}") => app.delete(&format!("/api/v1/recordings/{}", self.recording().await), t).await,
            ("get", "/api/v1/agents") => app.get("/api/v1/agents", t).await,
            ("get", "/api/v1/jobs") => app.get("/api/v1/jobs", t).await,
            ("get", "/api/v1/jobs/{id}") => app.get(&format!("/api/v1/jobs/{}", self.job("queued").await), t).await,
            ("post", "/api/v1/jobs/{id}/cancel") => app.post(&format!("/api/v1/jobs/{}/cancel", self.job("queued").await), t, json!({})).await,
            ("post", "/api/v1/jobs/{id}/retry") => app.post(&format!("/api/v1/jobs/{}/retry", self.job("failed").await), t, json!({})).await,
            ("get", "/api/v1/permissions/catalog") => app.get("/api/v1/permissions/catalog", t).await,
            ("get", "/api/v1/permissions/grants") => app.get("/api/v1/permissions/grants", t).await,
            ("post", "/api/v1/permissions/grants") => {
                app.post("/api/v1/permissions/grants", t, json!({"role": "matrix", "resource": "permissions", "actions": ["write"]})).await
            }
            ("delete", "/api/v1/permissions/grants/{id}") => {
                let grant = app.grant(&self.admin, json!({"role": "matrix", "resource": "users", "actions": ["read"]})).await;
                app.delete(&format!("/api/v1/permissions/grants/{}", grant["id"].as_str().unwrap()), t).await
            }
            ("post", "/api/v1/permissions/check") => {
                app.post("/api/v1/permissions/check", t, json!({"user_id": self.target().await, "resource": "users", "action": "read"})).await
            }
            ("get", "/api/v1/audit/events") => app.get("/api/v1/audit/events", t).await,
            ("get", "/api/v1/audit/events/{id}") => {
                let target = self.target().await;
                let events = app.get(&format!("/api/v1/audit/events?resource_id={target}"), &self.admin).await;
                let id = events.json["items"][0]["id"].as_str().unwrap().to_owned();
                app.get(&format!("/api/v1/audit/events/{id}"), t).await
            }
            ("get", "/api/v1/audit/verify") => app.get("/api/v1/audit/verify", t).await,
            ("get", "/api/v1/audit/export") => app.get("/api/v1/audit/export?format=jsonl", t).await,
            (method, path) => panic!("the matrix has a row for {method} {path} but no way to call it: add one to Ctx::call"),
        };
        if reply.status.is_client_error() {
            assert_eq!(
                reply.header("content-type"),
                Some("application/problem+json"),
                "{} {}: {}",
                row.method,
                row.path,
                reply.text
            );
        }
        reply.status.as_u16()
    }
}

#[tokio::test]
async fn every_route_has_a_row_and_every_row_its_route() {
    let app = TestApp::spawn().await;
    let doc = app
        .request(Method::GET, "/openapi.json", None, None)
        .await
        .json;
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                routes.insert((method.clone(), path.clone()));
            }
        }
    }
    let rows: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    let missing: Vec<_> = routes.difference(&rows).collect();
    let stale: Vec<_> = rows.difference(&routes).collect();
    assert!(
        missing.is_empty(),
        "routes without a row in the authorization matrix: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "rows for routes that do not exist: {stale:?}"
    );
}

#[tokio::test]
async fn authorization_matrix() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let ctx = Ctx {
        app: &app,
        admin: admin.clone(),
    };
    let other_client = uuid::Uuid::now_v7().to_string();
    let mut failures = Vec::new();
    for row in TABLE {
        for (who, expected) in ["admin", "no grant", "right grant", "other client"]
            .iter()
            .zip(row.expect)
        {
            if expected == NA {
                continue;
            }
            let grants: Vec<Value> = match (*who, row.grant) {
                ("right grant", Some(grants)) => grants
                    .iter()
                    .map(|(resource, actions)| json!({"resource": resource, "actions": actions}))
                    .collect(),
                ("other client", Some(grants)) => grants
                    .iter()
                    .map(|(resource, actions)| {
                        json!({"resource": resource, "actions": actions, "client_ids": [other_client]})
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let role = if *who == "admin" { "admin" } else { "member" };
            let persona = app.persona(&admin, role, &grants).await;
            let got = ctx.call(row, &persona).await;
            if got != expected {
                failures.push(format!(
                    "{} {} as {who}: expected {expected}, got {got}",
                    row.method.to_uppercase(),
                    row.path
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "authorization matrix mismatches:\n{}",
        failures.join("\n")
    );
}
