//! The routes this agent contributes (the API mounts them): import (a job), export, duplicates,
//! merge. Each needs `agent:client_management` `run` and the `clients` actions it performs,
//! within client scope.

use agentdesk_agent_sdk::core::Core;
use agentdesk_agent_sdk::core::models::client::Client;
use agentdesk_agent_sdk::core::services::audit::Outcome;
use agentdesk_agent_sdk::core::services::clients::{ClientFilter, ClientSort};
use agentdesk_agent_sdk::core::services::jobs::NewJob;
use agentdesk_agent_sdk::core::services::permissions::{Need, Permit};
use agentdesk_agent_sdk::http::extractors::{AppJson, AppMultipart, AppQuery, Authorized};
use agentdesk_agent_sdk::http::problem::{ApiError, ApiResult, Problem};
use agentdesk_agent_sdk::http::{ExportFormat, csv_cell, store_upload, unsupported_media_type};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::{DuplicateGroup, IMPORT, ImportArgs, NAME, find_duplicates, merge_clients};

agentdesk_agent_sdk::requirements! {
    /// `agent:client_management` `run`, within the caller's client scope.
    ClientManagementRun = "agent:client_management", "run", SomeClients;
}

/// The routes this agent contributes, over any state that holds the core.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Core: FromRef<S>,
{
    let upload = OpenApiRouter::new()
        .routes(routes!(import))
        .layer(DefaultBodyLimit::disable());
    OpenApiRouter::new()
        .routes(routes!(export))
        .routes(routes!(duplicates))
        .routes(routes!(merge))
        .merge(upload)
}

async fn also(
    core: &Core,
    permit: &Permit,
    resource: &str,
    action: &str,
    need: Need,
) -> ApiResult<Permit> {
    Ok(core
        .authorize(permit.actor().clone(), resource, action, need)
        .await?)
}

/// Import options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Validate and count, change nothing.
    pub dry_run: Option<bool>,
}

/// Refuses bytes that are not text (a NUL byte in the first chunk), whatever the file is called.
fn looks_like_text(first: &[u8]) -> bool {
    !first.iter().take(8192).any(|&b| b == 0)
}

/// Import clients from CSV (`name,email,phone,company,status,tags,notes`; tags separated by `;`),
/// as a multipart `file` or a `text/csv` body. Upserts by email. Returns the job.
#[utoipa::path(post, path = "/api/v1/clients/import", tag = "client_management", params(ImportQuery),
    request_body(description = "The CSV: the body itself, or the part `file` of a form",
        content((String = "text/csv"), (agentdesk_agent_sdk::http::FileUpload = "multipart/form-data"))),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The import job; its result is {created, updated, skipped, errors}", body = agentdesk_agent_sdk::core::models::job::Job),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the upload limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not CSV", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn import(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ClientManagementRun>,
    AppQuery(query): AppQuery<ImportQuery>,
    request: Request,
) -> ApiResult<Response> {
    also(&core, &permit, "clients", "write", Need::AllClients).await?;
    let limit = core.settings.max_upload_mb * 1024 * 1024;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let stored = if content_type.starts_with("multipart/form-data") {
        let AppMultipart(mut multipart) = AppMultipart::from_request(request, &core).await?;
        let mut stored = None;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::http(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?
        {
            if field.name() == Some("file") {
                stored = Some(store(&core, field.map_err(std::io::Error::other), limit).await?);
                break;
            }
        }
        stored.ok_or_else(|| {
            agentdesk_agent_sdk::core::Error::invalid(
                "file",
                "a multipart field named `file` is required",
            )
        })?
    } else if content_type.starts_with("text/csv") || content_type.starts_with("application/csv") {
        store(
            &core,
            request
                .into_body()
                .into_data_stream()
                .map_err(std::io::Error::other),
            limit,
        )
        .await?
    } else {
        return Err(unsupported_media_type(
            "send the CSV as multipart/form-data (field `file`) or as text/csv",
        ));
    };
    let args = ImportArgs {
        file_key: stored.key,
        size: stored.size,
        dry_run: query.dry_run.unwrap_or(false),
    };
    let mut new = NewJob::new(
        NAME,
        IMPORT,
        serde_json::to_value(&args).map_err(agentdesk_agent_sdk::core::Error::internal)?,
    );
    new.act_for(permit.actor());
    new.max_attempts = 3;
    let txn = core.db.begin().await.map_err(ApiError::from)?;
    let job = core.enqueue(&txn, new).await?;
    let record = permit
        .audit("client.import", Outcome::Success)
        .resource("job", job.id)
        .changes(serde_json::json!({"size": stored.size, "sha256": stored.sha256, "dry_run": args.dry_run}));
    core.append(&txn, record).await?;
    txn.commit()
        .await
        .map_err(|e| ApiError::from(agentdesk_agent_sdk::core::Error::from(e)))?;
    core.wake_workers().await;
    let mut response = (StatusCode::ACCEPTED, AppJson(job.clone())).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn store<B>(
    core: &Core,
    body: B,
    limit: u64,
) -> ApiResult<agentdesk_agent_sdk::core::storage::StoredFile>
where
    B: Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin,
{
    let mut body = body.peekable();
    if let Some(Ok(first)) = std::pin::Pin::new(&mut body).peek().await
        && !looks_like_text(first)
    {
        return Err(unsupported_media_type(
            "the upload is not text, so it is not CSV",
        ));
    }
    store_upload(core, "imports", body, limit).await
}

/// Export format.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (default) or `jsonl`.
    #[param(schema_with = ExportFormat::schema)]
    pub format: Option<String>,
}

const CSV_HEADER: &str =
    "id,name,email,phone,company,status,tags,notes,metadata,version,created_at,updated_at\n";

fn csv_row(c: &Client) -> String {
    let opt = |v: &Option<String>| v.as_deref().map(csv_cell).unwrap_or_default();
    let cells = [
        c.id.to_string(),
        csv_cell(&c.name),
        opt(&c.email),
        opt(&c.phone),
        opt(&c.company),
        c.status.clone(),
        csv_cell(&c.tags.join(";")),
        opt(&c.notes),
        csv_cell(&c.metadata.to_string()),
        c.version.to_string(),
        c.created_at.to_rfc3339(),
        c.updated_at.to_rfc3339(),
    ];
    let mut line = cells.join(",");
    line.push('\n');
    line
}

/// The clients in the caller's scope as CSV (importable again) or JSON Lines, streamed.
#[utoipa::path(get, path = "/api/v1/clients/export", tag = "client_management", params(ExportQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "The clients: CSV (the default), or JSON Lines for format=jsonl",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "Bad format", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn export(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ClientManagementRun>,
    AppQuery(query): AppQuery<ExportQuery>,
) -> ApiResult<Response> {
    let format = ExportFormat::parse(query.format.as_deref(), ExportFormat::Csv)?;
    let csv = format == ExportFormat::Csv;
    let read = also(&core, &permit, "clients", "read", Need::SomeClients).await?;
    let core = core.clone();
    // Page through the scope by id; only one page is in memory at a time.
    let pages = futures::stream::unfold(
        (Some(String::new()), core, read),
        move |(cursor, core, read)| async move {
            let cursor = cursor?;
            let page = core
                .list_clients(
                    &read,
                    &ClientFilter::default(),
                    ClientSort::CreatedAsc,
                    Some(200),
                    Some(cursor.as_str()).filter(|c| !c.is_empty()),
                )
                .await;
            match page {
                Err(e) => {
                    tracing::error!(error = %e, "client export failed midway");
                    Some((
                        Err(std::io::Error::other("export failed")),
                        (None, core, read),
                    ))
                }
                Ok(page) => {
                    let text: String = page
                        .items
                        .iter()
                        .map(|c| {
                            if csv {
                                csv_row(c)
                            } else {
                                format!("{}\n", serde_json::to_string(c).unwrap_or_default())
                            }
                        })
                        .collect();
                    Some((Ok(Bytes::from(text)), (page.next_cursor, core, read)))
                }
            }
        },
    );
    let body = if csv {
        Body::from_stream(
            futures::stream::once(async { Ok(Bytes::from_static(CSV_HEADER.as_bytes())) })
                .chain(pages),
        )
    } else {
        Body::from_stream(pages)
    };
    Ok(format.attachment(body, "clients"))
}

/// Likely duplicates among the clients in the caller's scope.
#[utoipa::path(get, path = "/api/v1/clients/duplicates", tag = "client_management", security(("bearer" = [])),
    responses(
        (status = 200, description = "Groups of likely duplicates", body = Vec<DuplicateGroup>),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn duplicates(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ClientManagementRun>,
) -> ApiResult<AppJson<Vec<DuplicateGroup>>> {
    let read = also(&core, &permit, "clients", "read", Need::SomeClients).await?;
    Ok(AppJson(find_duplicates(&core, &read).await?))
}

/// A merge.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// The client that stays.
    pub target_id: Uuid,
    /// The clients merged into it and then deleted.
    pub source_ids: Vec<Uuid>,
}

/// Merge clients: sources' tags, documents and recordings move to the target; sources are deleted.
#[utoipa::path(post, path = "/api/v1/clients/merge", tag = "client_management", request_body = MergeRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "The merged target", body = Client),
        (status = 404, description = "A client is not in the caller's scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad request body", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn merge(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ClientManagementRun>,
    AppJson(body): AppJson<MergeRequest>,
) -> ApiResult<AppJson<Client>> {
    let write = also(&core, &permit, "clients", "write", Need::SomeClients).await?;
    let delete = also(&core, &permit, "clients", "delete", Need::SomeClients).await?;
    Ok(AppJson(
        merge_clients(&core, &write, &delete, body.target_id, &body.source_ids).await?,
    ))
}
