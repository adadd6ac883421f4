//! agentdesk's HTTP API: axum routes, extractors, problem+json, OpenAPI, and the bootable
//! [`Application`] (build from settings, bind any listener, run until a shutdown signal).
//!
//! Handlers are thin: they parse with the extractors in [`extractors`], call one service of
//! the core, and map the result; every error becomes problem+json in [`problem`].

/// How a converted speech model is stored.
pub use agentdesk_agent_audio_recording::convert::Quantisation;
/// Speech models on disk (`agentdesk models`).
pub use agentdesk_agent_audio_recording::models as speech_models;
/// Transcribes one file (`agentdesk models transcribe`).
pub use agentdesk_agent_audio_recording::transcribe_file;
/// The entry point of `agentdesk pdf-extract`, the PDF agent's isolated extraction process.
pub use agentdesk_agent_pdf_processing::allocator::ProcessAllocator;
pub use agentdesk_agent_pdf_processing::child_main as pdf_extract_main;
pub use agentdesk_agent_sdk::http::{extractors, problem};
pub mod middleware;
pub mod openapi;
pub mod system;
pub mod v1;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use agentdesk_agent_sdk::{Agent, Runner, RunnerConfig};
use agentdesk_core::config::Settings;
use agentdesk_core::services::permissions::{ActionInfo, Catalog, ResourceInfo};
use agentdesk_core::{Core, Result};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The core services.
    pub core: Core,
    /// The Prometheus registry's handle.
    pub metrics: PrometheusHandle,
    /// The agents whose workers run in this process.
    pub in_process_agents: Arc<Vec<String>>,
    /// Set on SIGTERM: `/readyz` answers 503 `draining` from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl axum::extract::FromRef<AppState> for Core {
    fn from_ref(state: &AppState) -> Core {
        state.core.clone()
    }
}

/// The agents that have job handlers, ready for a runner.
pub fn agents() -> Vec<Arc<dyn Agent>> {
    vec![
        agentdesk_agent_client_management::agent(),
        agentdesk_agent_pdf_processing::agent(),
        agentdesk_agent_reports_analysis::agent(metrics_providers()),
        agentdesk_agent_audio_recording::agent(),
    ]
}

/// The metrics providers of the agents that own items the reports agent counts.
pub fn metrics_providers() -> agentdesk_agent_sdk::metrics::MetricsProviders {
    Arc::new(vec![
        agentdesk_agent_pdf_processing::metrics(),
        agentdesk_agent_audio_recording::metrics(),
    ])
}

/// The runner configuration from the settings.
pub fn runner_config(settings: &Settings, mode: &'static str) -> Result<RunnerConfig> {
    Ok(RunnerConfig {
        mode,
        poll_interval: std::time::Duration::from_millis(settings.job_poll_ms),
        lease: std::time::Duration::from_secs(settings.job_lease_secs),
        concurrency: settings.agent_concurrency().map_err(|message| {
            agentdesk_core::Error::Config {
                key: "agent_concurrency".into(),
                message,
            }
        })?,
        shutdown_timeout: settings.shutdown_timeout(),
    })
}

/// The agents named by `names` that have job handlers.
pub fn agents_named(names: &[String]) -> Vec<Arc<dyn Agent>> {
    agents()
        .into_iter()
        .filter(|a| names.iter().any(|n| n == a.manifest().name))
        .collect()
}

fn known_agents() -> Vec<&'static str> {
    agent_manifests().iter().map(|m| m.name).collect()
}

/// How often the recorder folds histogram samples into its buckets.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed once, even when tests build many apps).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            const BUCKETS: [f64; 12] = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ];
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets(&BUCKETS) {
                Ok(b) => b,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed, in which case ours just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            // A recorder built this way keeps every histogram sample until the next render or
            // upkeep: with `/metrics` never scraped, RSS grew by ~20 bytes per request (the soak
            // in BENCHMARKS.md). Folding the samples into the buckets every few seconds keeps it
            // flat; a thread, not a task, because tests build many runtimes and this outlives them.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the metrics upkeep thread");
            }
            handle
        })
        .clone()
}

/// The manifests of every agent this binary carries.
pub fn agent_manifests() -> Vec<agentdesk_agent_sdk::Manifest> {
    vec![
        agentdesk_agent_client_management::manifest(),
        agentdesk_agent_pdf_processing::manifest(),
        agentdesk_agent_reports_analysis::manifest(),
        agentdesk_agent_audio_recording::manifest(),
    ]
}

/// The permission catalog: the core's resources plus one `agent:<name>` per agent manifest.
pub fn catalog() -> Catalog {
    Catalog::new(
        agent_manifests()
            .into_iter()
            .map(|m| ResourceInfo {
                resource: m.resource(),
                description: m.description.to_owned(),
                actions: m
                    .actions
                    .iter()
                    .map(|a| ActionInfo {
                        name: a.name.to_owned(),
                        description: a.description.to_owned(),
                    })
                    .collect(),
            })
            .collect(),
    )
}

/// The OpenAPI document with every route, as JSON (as `/openapi.json` serves it).
pub fn openapi() -> serde_json::Value {
    let (_, doc) = api_router().split_for_parts();
    finish_document(doc)
}

/// What the annotations leave to the whole document: operation ids unique across it. utoipa
/// names an operation after its handler (`list`, `get`), which repeats across modules and breaks
/// client generators; the id becomes `{tag}_{handler}` (`clients_list`, `users_get`).
fn finish_document(mut doc: utoipa::openapi::OpenApi) -> serde_json::Value {
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let tag = operation
                .tags
                .as_ref()
                .and_then(|tags| tags.first())
                .cloned();
            if let (Some(tag), Some(id)) = (tag, operation.operation_id.as_mut())
                && !id.starts_with(&format!("{tag}_"))
            {
                *id = format!("{tag}_{id}");
            }
            if path.starts_with("/api/") {
                add_common_answers(path, operation);
            }
        }
    }
    let mut value = write_shared_constraints(doc);
    add_links(&mut value);
    value
}

/// OpenAPI links from each create to the operations on what it made, so that a client generator
/// or a stateful fuzzer can chain create → get → patch → delete: a `POST` on a collection links
/// its 201/202 answer's `id` to the `{id}` operations of that collection (`/clients` →
/// `/clients/{id}`), or of the top-level collection of its last segment
/// (`/clients/{client_id}/documents` → `/documents/{id}`).
fn add_links(doc: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return;
    };
    let mut links: Vec<(String, String, Value)> = Vec::new();
    for (path, item) in paths {
        if item.get("post").is_none() || path.ends_with('}') {
            continue;
        }
        let last = path.rsplit('/').next().unwrap_or_default();
        let Some(target) = [format!("{path}/{{id}}"), format!("/api/v1/{last}/{{id}}")]
            .into_iter()
            .find(|p| paths.contains_key(p))
        else {
            continue;
        };
        let mut to = serde_json::Map::new();
        for (method, op) in paths[&target].as_object().into_iter().flatten() {
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                to.insert(
                    id.to_owned(),
                    json!({
                        "operationId": id,
                        "parameters": { "id": "$response.body#/id" },
                        "description": format!("{} what this made", method.to_uppercase()),
                    }),
                );
            }
        }
        for status in ["201", "202"] {
            if item["post"]["responses"].get(status).is_some() {
                links.push((path.clone(), status.to_owned(), Value::Object(to.clone())));
            }
        }
    }
    for (path, status, to) in links {
        if let Some(response) = doc
            .pointer_mut(&format!(
                "/paths/{}/post/responses/{status}",
                path.replace('~', "~0").replace('/', "~1")
            ))
            .and_then(Value::as_object_mut)
        {
            response.insert("links".into(), to);
        }
    }
}

/// The pattern every free-text string gets: the one rule that the JSON and query-string
/// extractors apply to every string (`nul_free`), so that generated clients and fuzzers know it.
const NO_NUL_PATTERN: &str = "^[^\\x00]*$";

/// Writes into the document the constraints that shared code enforces for every route, rather
/// than each route's own schema: no string (nor object key) may hold U+0000 (the extractors
/// refuse it with 422), and every `limit` is 1..=[`agentdesk_core::pagination::MAX_LIMIT`] (the
/// pagination code).
///
/// The document is finished as JSON, not read back into utoipa's types, which have no place for
/// some of these keywords (`propertyNames`).
fn write_shared_constraints(doc: utoipa::openapi::OpenApi) -> serde_json::Value {
    use serde_json::Value;
    fn is_type(schema: &serde_json::Map<String, Value>, name: &str) -> bool {
        match schema.get("type") {
            Some(Value::String(t)) => t == name,
            Some(Value::Array(types)) => types.iter().any(|t| t == name),
            _ => false,
        }
    }
    fn walk(value: &mut Value, in_parameter: Option<&str>) {
        match value {
            Value::Object(map) => {
                // A parameter: its name decides its schema's constraints.
                let name = map
                    .get("in")
                    .and(map.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if is_type(map, "string")
                    && !map.contains_key("format")
                    && !map.contains_key("enum")
                    && !map.contains_key("pattern")
                {
                    map.insert("pattern".into(), Value::String(NO_NUL_PATTERN.into()));
                }
                // Keys too, and whatever an object holds beyond its named fields: the extractors
                // refuse a NUL anywhere in a body.
                if is_type(map, "object") {
                    if !map.contains_key("propertyNames") {
                        map.insert(
                            "propertyNames".into(),
                            serde_json::json!({ "pattern": NO_NUL_PATTERN }),
                        );
                    }
                    if !map.contains_key("additionalProperties") {
                        map.insert(
                            "additionalProperties".into(),
                            serde_json::json!({ "$ref": "#/components/schemas/NulFreeValue" }),
                        );
                    }
                }
                // An optional time as `oneOf` a time or null rather than a type list with a
                // format, which some generators read as "any string or null".
                if is_type(map, "null")
                    && is_type(map, "string")
                    && map.get("format").and_then(Value::as_str) == Some("date-time")
                {
                    map.remove("type");
                    map.remove("format");
                    map.insert(
                        "oneOf".into(),
                        serde_json::json!([{ "type": "string", "format": "date-time" }, { "type": "null" }]),
                    );
                }
                if in_parameter == Some("limit") && is_type(map, "integer") {
                    map.insert("minimum".into(), 1.into());
                    map.insert(
                        "maximum".into(),
                        agentdesk_core::pagination::MAX_LIMIT.into(),
                    );
                }
                for (key, child) in map.iter_mut() {
                    let scope = if key == "schema" {
                        name.as_deref()
                    } else {
                        None
                    };
                    walk(child, scope);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| walk(item, None)),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(&doc).unwrap_or_default();
    walk(&mut value, None);
    if let Some(schemas) = value
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert(
            "NulFreeValue".into(),
            serde_json::json!({
                "description": "Any JSON value without the NUL character in its strings and keys",
                "anyOf": [
                    { "type": ["null", "boolean", "number"] },
                    { "type": "string", "pattern": NO_NUL_PATTERN },
                    { "type": "array", "items": { "$ref": "#/components/schemas/NulFreeValue" } },
                    { "type": "object", "propertyNames": { "pattern": NO_NUL_PATTERN },
                      "additionalProperties": { "$ref": "#/components/schemas/NulFreeValue" } },
                ],
            }),
        );
    }
    value
}

/// Documents the answers every route of a kind can give, from the extractors and layers they
/// share rather than from each handler: the token check (401 with its challenge), a refused
/// grant or an API key on an account route (403), a body the extractor refuses (400, 413, 415,
/// 422), a query string it refuses (400), a path id that names nothing (404) and an
/// unavailable dependency or a timeout (503). What a handler documents itself is kept.
fn add_common_answers(path: &str, operation: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

    let problem = |description: &str| {
        ResponseBuilder::new().description(description).content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
    };
    let mut answers: Vec<(&str, utoipa::openapi::Response)> = Vec::new();
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    // A WebSocket upgrade answers its errors on the socket (API.md), not as HTTP statuses.
    let websocket = operation.responses.responses.contains_key("101");
    if secured && !websocket {
        answers.push((
            "401",
            problem(
                "No valid credential: no token, or a malformed, expired or revoked access token \
                 or API key (`unauthenticated`, `invalid_token`)",
            )
            .header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(Some(
                        utoipa::openapi::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::Type::String),
                    ))
                    .description(Some("`Bearer`"))
                    .build(),
            )
            .build(),
        ));
        answers.push((
            "403",
            problem(
                "Not permitted: no live grant allows it, or an API key's narrowing does not \
                 (`forbidden`); an API key on an account route (`session_required`)",
            )
            .build(),
        ));
    }
    let body_types: Vec<String> = match &operation.request_body {
        Some(RefOr::T(body)) => body.content.keys().cloned().collect(),
        _ => Vec::new(),
    };
    if !body_types.is_empty() {
        answers.push((
            "400",
            problem("The body is malformed (`malformed_json`, `bad_request`)").build(),
        ));
        answers.push((
            "413",
            problem("The body is over the size limit (`payload_too_large`)").build(),
        ));
        answers.push((
            "415",
            problem("The body is not of the media type documented (`unsupported_media_type`)")
                .build(),
        ));
        if body_types
            .iter()
            .any(|t| t.contains("json") || t.contains("form"))
        {
            answers.push((
                "422",
                problem("A field is missing, of the wrong type or invalid (`validation_failed`)")
                    .build(),
            ));
        }
    }
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let in_query = parameters
        .iter()
        .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
    if in_query {
        answers.push((
            "400",
            problem("A query parameter is malformed (`invalid_parameter`)").build(),
        ));
        answers.push((
            "422",
            problem(
                "A query parameter is invalid, e.g. holds the NUL character (`validation_failed`)",
            )
            .build(),
        ));
    }
    if path.contains('{') {
        answers.push((
            "400",
            problem("A path parameter is malformed (`bad_request`)").build(),
        ));
        answers.push((
            "404",
            problem(
                "Nothing with that id (a malformed id included) the caller may see (`not_found`)",
            )
            .build(),
        ));
    }
    answers.push((
        "503",
        problem(
            "The database is out of reach (`database_unavailable`, with `Retry-After`), another \
             dependency (Redis, storage) is unavailable, or the request timed out \
             (`service_unavailable`); try again shortly",
        )
        .build(),
    ));
    for (status, response) in answers {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert(RefOr::T(response));
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(system::routes())
        .merge(v1::routes())
}

/// The complete router with its middleware.
pub fn router(state: AppState) -> Router {
    let settings = state.core.settings.clone();
    let (routes, doc) = api_router().split_for_parts();
    let doc = finish_document(doc);
    let cors = cors_layer(&settings.cors_origins());
    routes
        .merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", doc))
        .route_layer(axum::middleware::from_fn(middleware::note_route))
        .layer(DefaultBodyLimit::max(
            (settings.max_json_kb * 1024) as usize,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.request_timeout(),
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::database_breaker,
        ))
        .layer(tower::util::option_layer(cors))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::PUT,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                axum::http::header::IF_MATCH,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                axum::http::header::ETAG,
                axum::http::header::LOCATION,
                axum::http::header::RETRY_AFTER,
            ]),
    )
}

/// A bootable server: connected, migrated and bound, ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Set when this start created `admin@localhost`: its email and one-time password.
    pub generated_admin: Option<(String, String)>,
    /// How long start-up took, to the moment the listener was bound.
    pub startup: std::time::Duration,
    runner: Option<Runner>,
}

impl Application {
    /// Connects, migrates, creates the first admin if needed, and binds `settings.bind`.
    pub async fn build(settings: Settings) -> Result<Self> {
        let started = Instant::now();
        let bind = settings.bind;
        let selected = settings.selected_agents(&known_agents())?;
        let config = runner_config(&settings, "in_process")?;
        let core = Core::start(settings).await?.with_catalog(catalog());
        core.spawn_job_listener();
        let generated_admin = core.bootstrap_admin().await?;
        let listener =
            TcpListener::bind(bind)
                .await
                .map_err(|e| agentdesk_core::Error::Config {
                    key: "bind".into(),
                    message: format!("cannot listen on {bind}: {e}"),
                })?;
        let runnable = agents_named(&selected);
        let in_process_agents = Arc::new(
            runnable
                .iter()
                .map(|a| a.manifest().name.to_owned())
                .collect(),
        );
        let runner = Runner::new(core.clone(), runnable, config);
        Ok(Self {
            listener,
            state: AppState {
                core,
                metrics: metrics_handle(),
                in_process_agents,
                draining: Arc::default(),
            },
            generated_admin,
            startup: started.elapsed(),
            runner: Some(runner),
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The core services (tests use it to reach the database).
    pub fn core(&self) -> &Core {
        &self.state.core
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` answers 503 `draining` at once,
    /// the listener stays open for the drain grace period (so that a proxy's health check
    /// notices and stops sending), then stops accepting; in-flight requests finish within the
    /// shutdown deadline, and running jobs finish or go back to the queue.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let deadline = self.state.core.settings.shutdown_timeout();
        let grace = std::time::Duration::from_secs(self.state.core.settings.drain_grace_secs);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let app = router(self.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let mut graceful_rx = stop_rx.clone();
        let server = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            let _ = graceful_rx.wait_for(|stopped| *stopped).await;
        });
        let server = tokio::spawn(server.into_future());
        let stop_runner = CancellationToken::new();
        let runner = self
            .runner
            .map(|runner| tokio::spawn(runner.run(stop_runner.clone())));
        let backups = backup_schedule(&self.state.core, stop_runner.clone());
        shutdown.await;
        self.state
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(
            grace_secs = grace.as_secs(),
            "draining: /readyz answers 503 while the proxy notices"
        );
        stop_runner.cancel();
        tokio::time::sleep(grace).await;
        tracing::info!(
            deadline_secs = deadline.as_secs(),
            "shutting down: no new connections, finishing in-flight requests"
        );
        let _ = stop_tx.send(true);
        match tokio::time::timeout(deadline, server).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => tracing::error!(error = %join, "server task failed"),
            Err(_) => {
                tracing::warn!("shutdown deadline passed; dropping the remaining connections")
            }
        }
        if let Some(runner) = runner {
            // The runner has its own deadline and hands unfinished jobs back.
            let _ = runner.await;
        }
        if let Some(backups) = backups {
            let _ = backups.await;
        }
        flush_audit_before_exit(&self.state.core).await;
        self.state.core.db.clone().close().await;
        Ok(())
    }
}

/// The in-process backup schedule (`backup_cron`): at each tick one instance (the one whose
/// claim of the tick wins) backs up into `backup_dest` and keeps the newest `backup_keep`. A
/// backup under way when the server stops is finished first.
fn backup_schedule(core: &Core, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let settings = core.settings.clone();
    let cron = agentdesk_core::config::parse_backup_cron(settings.backup_cron.as_deref()?).ok()?;
    let dest = settings.backup_dest.clone()?;
    let core = core.clone();
    Some(tokio::spawn(async move {
        loop {
            let now = chrono::Utc::now();
            let Ok(tick) = cron.find_next_occurrence(&now, false) else {
                tracing::warn!("the backup schedule has no next run");
                return;
            };
            let wait = (tick - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match core.claim_cron_tick("agentdesk.backup", tick).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim the backup tick");
                    continue;
                }
            }
            let started = std::time::Instant::now();
            match agentdesk_core::backup::backup_to(&settings, &dest, settings.backup_keep as usize)
                .await
            {
                Ok(stored) => {
                    metrics::gauge!("backup_last_success_timestamp_seconds")
                        .set(chrono::Utc::now().timestamp() as f64);
                    metrics::gauge!("backup_last_size_bytes").set(stored.size as f64);
                    tracing::info!(
                        location = %stored.location,
                        bytes = stored.size,
                        files = stored.manifest.files.count,
                        removed = stored.removed.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "scheduled backup written"
                    );
                }
                Err(e) => {
                    metrics::counter!("backup_failures_total").increment(1);
                    tracing::error!(error = %e, "scheduled backup failed");
                }
            }
        }
    }))
}

/// `agentdesk worker`: the workers of `names` alone, with `/healthz`, `/readyz` and `/metrics`
/// on `worker_bind`, until `shutdown` resolves.
pub async fn run_worker(
    settings: Settings,
    names: &[String],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let known = known_agents();
    let selected =
        agentdesk_core::config::parse_agent_list(&names.join(","), &known).map_err(|message| {
            agentdesk_core::Error::Config {
                key: "agents".into(),
                message,
            }
        })?;
    let runnable = agents_named(&selected);
    if runnable.is_empty() {
        return Err(agentdesk_core::Error::Config {
            key: "agents".into(),
            message: format!("none of {selected:?} has a job handler in this build"),
        });
    }
    let config = runner_config(&settings, "worker")?;
    let bind = settings.worker_bind;
    let core = Core::start(settings).await?.with_catalog(catalog());
    core.spawn_job_listener();
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| agentdesk_core::Error::Config {
            key: "worker_bind".into(),
            message: format!("cannot listen on {bind}: {e}"),
        })?;
    tracing::info!(addr = %bind, agents = ?selected, "agentdesk worker is running");
    let state = AppState {
        core: core.clone(),
        metrics: metrics_handle(),
        in_process_agents: Arc::new(selected),
        draining: Arc::default(),
    };
    let (health, _) = OpenApiRouter::new()
        .merge(system::routes())
        .split_for_parts();
    let app = health
        .route_layer(axum::middleware::from_fn(middleware::note_route))
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(state)
        .into_make_service_with_connect_info::<SocketAddr>();
    let stop = CancellationToken::new();
    let stop_http = stop.clone();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop_http.cancelled().await })
            .into_future(),
    );
    let runner = tokio::spawn(Runner::new(core.clone(), runnable, config).run(stop.clone()));
    shutdown.await;
    stop.cancel();
    let _ = runner.await;
    let _ = server.await;
    flush_audit_before_exit(&core).await;
    core.db.clone().close().await;
    Ok(())
}

/// Chains the events this process queued last (PostgreSQL), so that none waits for another
/// instance or the next start; a failure only leaves them queued for those.
async fn flush_audit_before_exit(core: &Core) {
    if let Err(e) = core.flush_audit().await {
        tracing::warn!(error = %e, "queued audit events stay queued for the next instance");
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called (not when the
/// future is first polled), so call it before binding: a SIGTERM that arrives during start-up
/// then still stops the server gracefully instead of killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        let terminate = async {
            match terminate.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = terminate => {},
        }
    }
}

#[cfg(test)]
mod tests {
    /// The shared constraints are in the document as served.
    #[test]
    fn the_document_has_the_shared_constraints() {
        let doc = super::openapi();
        let users = &doc["paths"]["/api/v1/users"]["get"]["parameters"];
        assert!(
            users.to_string().contains("\"maximum\":200"),
            "no limit range: {users}"
        );
        assert_eq!(
            doc["components"]["schemas"]["RefreshRequest"]["propertyNames"]["pattern"],
            super::NO_NUL_PATTERN
        );
        // The client schemas are written as JSON and read into utoipa's types; one that did not
        // read would be an empty schema.
        let new_client = &doc["components"]["schemas"]["NewClient"];
        assert_eq!(
            new_client["required"],
            serde_json::json!(["name"]),
            "{new_client}"
        );
        assert_eq!(new_client["additionalProperties"], false, "{new_client}");
        assert_eq!(
            new_client["properties"]["notes"]["pattern"],
            super::NO_NUL_PATTERN
        );
        assert!(new_client["properties"]["email"]["anyOf"].is_array());
        let links = &doc["paths"]["/api/v1/clients"]["post"]["responses"]["201"]["links"];
        assert_eq!(
            links["clients_update"]["parameters"]["id"],
            "$response.body#/id"
        );
        assert!(links.get("clients_get").is_some() && links.get("clients_delete").is_some());
        let documents =
            &doc["paths"]["/api/v1/clients/{client_id}/documents"]["post"]["responses"]["202"];
        assert!(
            documents["links"]
                .get("pdf_processing_get_document")
                .is_some(),
            "{documents}"
        );
    }
}
