//! The routes this agent contributes: upload (a job), list, read, text, download, search and
//! delete, each behind `agent:pdf_processing` and the caller's client scope, audited.

use agentdesk_agent_sdk::core::Core;
use agentdesk_agent_sdk::core::pagination::{Page, PageRequest};
use agentdesk_agent_sdk::core::services::audit::Outcome;
use agentdesk_agent_sdk::core::services::jobs::NewJob;
use agentdesk_agent_sdk::http::extractors::{AppJson, AppMultipart, AppQuery, Authorized};
use agentdesk_agent_sdk::http::problem::{ApiError, ApiResult, Problem};
use agentdesk_agent_sdk::http::{
    attachment_response, bad_multipart, clean_filename, read_head, store_upload,
    unsupported_media_type, with_head,
};
use axum::extract::{DefaultBodyLimit, FromRef, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use sea_orm::ActiveModelTrait;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::documents::{self, Document, DocumentText, SearchHit, audit_view};
use crate::extract::looks_like_pdf;
use crate::process::ProcessArgs;
use crate::{NAME, PROCESS};

agentdesk_agent_sdk::requirements! {
    /// `agent:pdf_processing` `read`, within the caller's client scope.
    PdfRead = "agent:pdf_processing", "read", SomeClients;
    /// `agent:pdf_processing` `upload`, within the caller's client scope.
    PdfUpload = "agent:pdf_processing", "upload", SomeClients;
    /// `agent:pdf_processing` `delete`, within the caller's client scope.
    PdfDelete = "agent:pdf_processing", "delete", SomeClients;
}

/// The routes this agent contributes, over any state that holds the core.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Core: FromRef<S>,
{
    let upload = OpenApiRouter::new()
        .routes(routes!(upload, list))
        .layer(DefaultBodyLimit::disable());
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(get_document, delete_document))
        .routes(routes!(text))
        .routes(routes!(file))
        .merge(upload)
}

/// Bytes looked at to decide whether an upload is a PDF (the header may follow up to 1 KiB of junk).
const SNIFF_BYTES: usize = 1029;

/// Upload a PDF for a client: multipart field `file`. Whatever its name, the bytes must start
/// like a PDF. The document and its processing job are created in one transaction.
#[utoipa::path(post, path = "/api/v1/clients/{client_id}/documents", tag = "pdf_processing",
    params(("client_id" = Uuid, Path, description = "The client")),
    request_body(content = agentdesk_agent_sdk::http::FileUpload, content_type = "multipart/form-data", description = "field `file`: the PDF"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The document, processing", body = Document),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client in scope", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the upload limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not a PDF", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn upload(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<PdfUpload>,
    Path(client_id): Path<Uuid>,
    AppMultipart(mut multipart): AppMultipart,
) -> ApiResult<Response> {
    core.scoped_client(&permit, client_id).await?;
    let limit = core.settings.max_upload_mb * 1024 * 1024;
    let mut stored = None;
    while let Some(field) = multipart.next_field().await.map_err(bad_multipart)? {
        if field.name() != Some("file") {
            continue;
        }
        let filename = clean_filename(field.file_name(), "document.pdf");
        let mut body = field.map_err(std::io::Error::other);
        let head = read_head(&mut body, SNIFF_BYTES).await?;
        if !looks_like_pdf(&head) {
            return Err(unsupported_media_type(
                "the file is not a PDF (its bytes do not start with a %PDF- header)",
            ));
        }
        stored = Some((
            filename,
            store_upload(&core, "documents", with_head(head, body), limit).await?,
        ));
        break;
    }
    let (filename, stored) = stored.ok_or_else(|| {
        agentdesk_agent_sdk::core::Error::invalid(
            "file",
            "a multipart field named `file` is required",
        )
    })?;
    let id = Uuid::now_v7();
    let mut new = NewJob::new(
        NAME,
        PROCESS,
        serde_json::to_value(ProcessArgs { document_id: id })
            .map_err(agentdesk_agent_sdk::core::Error::internal)?,
    );
    new.act_for(permit.actor());
    new.client_id = Some(client_id);
    new.max_attempts = 3;
    let result = async {
        let txn = core.db.begin().await?;
        let job = core.enqueue(&txn, new).await?;
        let row = documents::new_row(id, client_id, &filename, &stored, permit.user().id, job.id)
            .insert(&txn)
            .await?;
        let record = permit
            .audit("document.upload", Outcome::Success)
            .resource("document", id)
            .client(Some(client_id))
            .changes(serde_json::json!({"before": null, "after": audit_view(&row)}));
        core.append(&txn, record).await?;
        txn.commit().await?;
        Ok::<_, agentdesk_agent_sdk::core::Error>(row)
    }
    .await;
    let row = match result {
        Ok(row) => row,
        Err(e) => {
            // Nothing refers to the stored file; do not leave it behind.
            let _ = core.storage.delete(&stored.key).await;
            return Err(e.into());
        }
    };
    core.wake_workers().await;
    let mut response = (StatusCode::ACCEPTED, AppJson(Document::from(row))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/documents/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Page options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Rows per page, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    #[param(schema_with = agentdesk_agent_sdk::core::pagination::id_cursor_schema)]
    pub cursor: Option<String>,
}

/// A client's documents, newest first.
#[utoipa::path(get, path = "/api/v1/clients/{client_id}/documents", tag = "pdf_processing",
    params(("client_id" = Uuid, Path, description = "The client"), ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of documents", body = Page<Document>),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client in scope", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<PdfRead>,
    Path(client_id): Path<Uuid>,
    AppQuery(query): AppQuery<ListQuery>,
) -> ApiResult<AppJson<Page<Document>>> {
    let request = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    core.scoped_client(&permit, client_id).await?;
    Ok(AppJson(documents::list(&core, client_id, request).await?))
}

/// A document: status, metadata, fields.
#[utoipa::path(get, path = "/api/v1/documents/{id}", tag = "pdf_processing",
    params(("id" = Uuid, Path, description = "The document")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The document", body = Document),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document in scope", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn get_document(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<PdfRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<AppJson<Document>> {
    Ok(AppJson(documents::scoped(&core, &permit, id).await?.into()))
}

/// Which page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TextQuery {
    /// One page (1-based); all pages when absent.
    pub page: Option<i32>,
}

/// The text of a document's pages, in reading order.
#[utoipa::path(get, path = "/api/v1/documents/{id}/text", tag = "pdf_processing",
    params(("id" = Uuid, Path, description = "The document"), TextQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "The pages' text", body = DocumentText),
        (status = 404, description = "No such document in scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No such page", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn text(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<PdfRead>,
    Path(id): Path<Uuid>,
    AppQuery(query): AppQuery<TextQuery>,
) -> ApiResult<AppJson<DocumentText>> {
    let document = documents::scoped(&core, &permit, id).await?;
    if let Some(page) = query.page {
        let count = document.page_count.unwrap_or(0);
        if page < 1 || page > count {
            return Err(agentdesk_agent_sdk::core::Error::invalid(
                "page",
                format!("the document has {count} pages"),
            )
            .into());
        }
    }
    Ok(AppJson(documents::text(&core, id, query.page).await?))
}

/// The original file (the download is audited).
#[utoipa::path(get, path = "/api/v1/documents/{id}/file", tag = "pdf_processing",
    params(("id" = Uuid, Path, description = "The document")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The PDF", body = Vec<u8>, content_type = "application/pdf"),
        (status = 404, description = "No such document in scope", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn file(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<PdfRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let document = documents::scoped(&core, &permit, id).await?;
    let stream = core.storage.get_stream(&document.storage_key).await?;
    // Originals leave the system here: who took which file is worth a record.
    let record = permit
        .audit("document.download", Outcome::Success)
        .resource("document", id)
        .client(Some(document.client_id))
        .changes(serde_json::json!({"sha256": document.sha256, "size_bytes": document.size_bytes}));
    core.audit_alone(record).await?;
    Ok(attachment_response(
        stream,
        "application/pdf",
        document.size_bytes,
        &document.filename,
    ))
}

/// Search options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to find (all of them); a run of CJK characters is found as a phrase.
    #[param(required = true, min_length = 1)]
    pub q: Option<String>,
    /// Only this client's documents.
    pub client_id: Option<Uuid>,
    /// Hits per page, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    #[param(schema_with = agentdesk_agent_sdk::core::pagination::number_cursor_schema)]
    pub cursor: Option<String>,
}

/// Ranked full-text search over the pages of the documents in the caller's scope.
#[utoipa::path(get, path = "/api/v1/documents/search", tag = "pdf_processing", params(SearchQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of hits, best first", body = Page<SearchHit>),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client in scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No query", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn search(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<PdfRead>,
    AppQuery(query): AppQuery<SearchQuery>,
) -> ApiResult<AppJson<Page<SearchHit>>> {
    let request = PageRequest::parse(query.limit, None)?;
    let q = query.q.unwrap_or_default();
    if let Some(client) = query.client_id {
        core.scoped_client(&permit, client).await?;
    }
    Ok(AppJson(
        documents::search(
            &core,
            permit.scope(),
            query.client_id,
            &q,
            request.limit,
            query.cursor.as_deref(),
        )
        .await?,
    ))
}

/// Delete a document: its file, its pages and their index entries.
#[utoipa::path(delete, path = "/api/v1/documents/{id}", tag = "pdf_processing",
    params(("id" = Uuid, Path, description = "The document")), security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document in scope", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn delete_document(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<PdfDelete>,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let document = documents::scoped(&core, &permit, id).await?;
    let txn = core.db.begin().await?;
    documents::delete_rows(&txn, id).await?;
    let record = permit
        .audit("document.delete", Outcome::Success)
        .resource("document", id)
        .client(Some(document.client_id))
        .changes(serde_json::json!({"before": audit_view(&document), "after": null}));
    core.append(&txn, record).await?;
    txn.commit()
        .await
        .map_err(|e| ApiError::from(agentdesk_agent_sdk::core::Error::from(e)))?;
    if let Err(e) = core.storage.delete(&document.storage_key).await {
        tracing::warn!(error = %e, key = %document.storage_key, "could not delete a document's file");
    }
    Ok(StatusCode::NO_CONTENT)
}
