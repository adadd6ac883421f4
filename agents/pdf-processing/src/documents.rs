//! Documents and their pages in the database: rows, the API shape, scoped reads, storing an
//! extraction, deletion and full-text search. Client scope is part of every query.

use agentdesk_agent_sdk::core::pagination::{Page, PageRequest};
use agentdesk_agent_sdk::core::services::permissions::{ClientScope, Permit};
use agentdesk_agent_sdk::core::{Core, Error};
use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{
    ConnectionTrait, DatabaseBackend, QueryOrder, QuerySelect, Statement, Value as SqlValue,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::extract::{ExtractError, Extraction, Metadata};
use crate::fields::Fields;
use agentdesk_agent_sdk::search::{TextIndex, index_text};

/// A row of `documents`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "documents")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub client_id: Uuid,
    pub filename: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub storage_key: String,
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub page_count: Option<i32>,
    pub metadata: Json,
    pub fields: Json,
    pub pages_info: Json,
    pub job_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

/// Relations the ORM does not need.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Document statuses.
pub mod status {
    /// Uploaded, extraction queued or running.
    pub const PROCESSING: &str = "processing";
    /// Text, metadata and fields are available.
    pub const READY: &str = "ready";
    /// Could not be processed; `error` says why (pages that could be read are kept).
    pub const FAILED: &str = "failed";
}

/// Per-page facts kept with the document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PagesInfo {
    /// Pages without a text layer (scans, images); their text, if any, came from OCR.
    pub without_text_layer: Vec<u32>,
    /// Pages whose text came from OCR.
    pub ocr: Vec<u32>,
    /// Pages that could not be read.
    pub unreadable: Vec<u32>,
}

/// A document as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Document {
    /// UUID v7.
    pub id: Uuid,
    /// The client it belongs to.
    pub client_id: Uuid,
    /// The uploaded file's name.
    pub filename: String,
    /// Size of the original.
    pub size_bytes: i64,
    /// SHA-256 of the original, hex.
    pub sha256: String,
    /// `processing`, `ready` or `failed`.
    pub status: String,
    /// Why it failed: `pdf_corrupt`, `pdf_encrypted`, `pdf_limit_exceeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ExtractError>,
    /// Pages, once known.
    pub page_count: Option<i32>,
    /// Document information and file facts.
    pub metadata: Metadata,
    /// Fields found in the text, each with its page.
    pub fields: Fields,
    /// Which pages had no text layer, were OCRed or could not be read.
    pub pages: PagesInfo,
    /// The processing job.
    pub job_id: Option<Uuid>,
    /// Who uploaded it.
    pub created_by: Option<Uuid>,
    /// Upload time.
    pub created_at: DateTime<Utc>,
    /// When processing finished.
    pub processed_at: Option<DateTime<Utc>>,
}

impl From<Model> for Document {
    fn from(m: Model) -> Self {
        let error = m.error_code.map(|code| ExtractError {
            code,
            message: m.error_message.unwrap_or_default(),
        });
        Self {
            id: m.id,
            client_id: m.client_id,
            filename: m.filename,
            size_bytes: m.size_bytes,
            sha256: m.sha256,
            status: m.status,
            error,
            page_count: m.page_count,
            metadata: serde_json::from_value(m.metadata).unwrap_or_default(),
            fields: serde_json::from_value(m.fields).unwrap_or_default(),
            pages: serde_json::from_value(m.pages_info).unwrap_or_default(),
            job_id: m.job_id,
            created_by: m.created_by,
            created_at: m.created_at,
            processed_at: m.processed_at,
        }
    }
}

/// The text of one page, as `GET /documents/{id}/text` answers.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PageTextOut {
    /// 1-based.
    pub number: i32,
    /// The text in reading order.
    pub text: String,
}

/// `{"pages": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DocumentText {
    /// The pages asked for.
    pub pages: Vec<PageTextOut>,
}

/// One search hit: a page of a document.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    /// The document.
    pub document_id: Uuid,
    /// Its client.
    pub client_id: Uuid,
    /// The page (1-based).
    pub page: i32,
    /// An HTML-escaped excerpt with hits in `<mark>`.
    pub snippet: String,
    /// Relevance; higher is better (BM25 on SQLite, `ts_rank_cd` over page length on PostgreSQL).
    pub score: f64,
}

/// Finds a document by id, if it exists, without scope checks.
pub async fn find(conn: &impl ConnectionTrait, id: Uuid) -> Result<Option<Model>, Error> {
    Ok(Entity::find_by_id(id).one(conn).await?)
}

/// A document the permit's scope covers; 404 otherwise (with a denied event when it exists).
pub async fn scoped(core: &Core, permit: &Permit, id: Uuid) -> Result<Model, Error> {
    let found = find(core.db.reader(), id).await?;
    agentdesk_agent_sdk::scoped_row(core, permit, "document", id, found, |m| m.client_id).await
}

/// A client's documents, newest first.
pub async fn list(
    core: &Core,
    client_id: Uuid,
    request: PageRequest,
) -> Result<Page<Document>, Error> {
    let mut query = Entity::find()
        .filter(Column::ClientId.eq(client_id))
        .order_by_desc(Column::Id)
        .limit(request.limit + 1);
    if let Some(after) = request.after {
        query = query.filter(Column::Id.lt(after));
    }
    let rows = query.all(core.db.reader()).await?;
    Ok(Page::from_rows(rows, request, |m| m.id).map(Document::from))
}

/// The text of every page, or of one.
pub async fn text(core: &Core, id: Uuid, page: Option<i32>) -> Result<DocumentText, Error> {
    let backend = core.db.backend();
    let (sql, values): (&str, Vec<SqlValue>) = match page {
        Some(n) => (
            "SELECT number, text FROM document_pages WHERE document_id = $1 AND number = $2 ORDER BY number",
            vec![id.into(), n.into()],
        ),
        None => (
            "SELECT number, text FROM document_pages WHERE document_id = $1 ORDER BY number",
            vec![id.into()],
        ),
    };
    let rows = core
        .db
        .reader()
        .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    let pages = rows
        .iter()
        .map(|r| {
            Ok(PageTextOut {
                number: r.try_get("", "number")?,
                text: r.try_get("", "text")?,
            })
        })
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
    Ok(DocumentText { pages })
}

/// Pages written per INSERT statement.
const PAGE_BATCH: usize = 50;

/// Stores an extraction: the pages (replacing any from an earlier attempt), the document's
/// status, metadata and fields. Returns `false` when the document is gone (deleted meanwhile).
pub async fn store_extraction(
    conn: &impl ConnectionTrait,
    document: &Model,
    extraction: &Extraction,
) -> Result<bool, Error> {
    let backend = conn.get_database_backend();
    let lock = if backend == DatabaseBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let exists = conn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            format!("SELECT id FROM documents WHERE id = $1{lock}"),
            [document.id.into()],
        ))
        .await?
        .is_some();
    if !exists {
        return Ok(false);
    }
    conn.execute_raw(Statement::from_sql_and_values(
        backend,
        "DELETE FROM document_pages WHERE document_id = $1",
        [document.id.into()],
    ))
    .await?;
    for batch in extraction.pages.chunks(PAGE_BATCH) {
        let mut sql = String::from(
            "INSERT INTO document_pages (document_id, client_id, number, text, search_text) VALUES ",
        );
        let mut values: Vec<SqlValue> = Vec::with_capacity(batch.len() * 5);
        for (i, page) in batch.iter().enumerate() {
            let base = i * 5;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                base + 1,
                base + 2,
                base + 3,
                base + 4,
                base + 5
            ));
            values.push(document.id.into());
            values.push(document.client_id.into());
            values.push(i32::try_from(page.number).unwrap_or(i32::MAX).into());
            values.push(page.text.clone().into());
            values.push(index_text(&page.text).into());
        }
        conn.execute_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
    }
    let info = PagesInfo {
        without_text_layer: extraction
            .pages
            .iter()
            .filter(|p| !p.text_layer)
            .map(|p| p.number)
            .collect(),
        ocr: extraction
            .pages
            .iter()
            .filter(|p| p.ocr)
            .map(|p| p.number)
            .collect(),
        unreadable: extraction
            .pages
            .iter()
            .filter(|p| p.error.is_some())
            .map(|p| p.number)
            .collect(),
    };
    let (status, code, message) = match &extraction.error {
        None => (status::READY, None, None),
        Some(e) => (
            status::FAILED,
            Some(e.code.clone()),
            Some(e.message.clone()),
        ),
    };
    let page_count = (extraction.page_count > 0 || extraction.error.is_none())
        .then(|| i32::try_from(extraction.page_count).unwrap_or(i32::MAX));
    Entity::update_many()
        .col_expr(Column::Status, Expr::value(status))
        .col_expr(Column::ErrorCode, Expr::value(code))
        .col_expr(Column::ErrorMessage, Expr::value(message))
        .col_expr(Column::PageCount, Expr::value(page_count))
        .col_expr(
            Column::Metadata,
            Expr::value(serde_json::to_value(&extraction.metadata).unwrap_or(json!({}))),
        )
        .col_expr(
            Column::Fields,
            Expr::value(serde_json::to_value(&extraction.fields).unwrap_or(json!({}))),
        )
        .col_expr(
            Column::PagesInfo,
            Expr::value(serde_json::to_value(&info).unwrap_or(json!({}))),
        )
        .col_expr(Column::ProcessedAt, Expr::value(Some(Utc::now())))
        .filter(Column::Id.eq(document.id))
        .exec(conn)
        .await?;
    Ok(true)
}

/// Marks a document that is still `processing` as failed with `processing_failed` (its job
/// gave up); a document that was settled meanwhile keeps its state.
pub async fn mark_processing_failed(
    conn: &impl ConnectionTrait,
    id: Uuid,
    message: &str,
) -> Result<(), Error> {
    Entity::update_many()
        .col_expr(Column::Status, Expr::value(status::FAILED))
        .col_expr(Column::ErrorCode, Expr::value(Some("processing_failed")))
        .col_expr(
            Column::ErrorMessage,
            Expr::value(Some(format!("processing failed: {message}"))),
        )
        .col_expr(Column::ProcessedAt, Expr::value(Some(Utc::now())))
        .filter(Column::Id.eq(id))
        .filter(Column::Status.eq(status::PROCESSING))
        .exec(conn)
        .await?;
    Ok(())
}

/// Deletes the document's rows (pages and their index entries first).
pub async fn delete_rows(conn: &impl ConnectionTrait, id: Uuid) -> Result<(), Error> {
    let backend = conn.get_database_backend();
    conn.execute_raw(Statement::from_sql_and_values(
        backend,
        "DELETE FROM document_pages WHERE document_id = $1",
        [id.into()],
    ))
    .await?;
    Entity::delete_by_id(id).exec(conn).await?;
    Ok(())
}

/// The index over page text.
const PAGES: TextIndex = TextIndex {
    table: "document_pages",
    fts_table: "document_pages_fts",
    columns: &["document_id", "number"],
};

/// Ranked full-text search over the pages of documents in `scope` (and of `client_id`, when
/// given). The scope is a condition of the SQL query, so pages are full and never leak.
pub async fn search(
    core: &Core,
    scope: &ClientScope,
    client_id: Option<Uuid>,
    query: &str,
    limit: u64,
    cursor: Option<&str>,
) -> Result<Page<SearchHit>, Error> {
    let page =
        agentdesk_agent_sdk::search::search(core, &PAGES, scope, client_id, query, limit, cursor)
            .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for hit in page.items {
        items.push(SearchHit {
            document_id: hit.row.try_get("", "document_id")?,
            client_id: hit.client_id,
            page: hit.row.try_get("", "number")?,
            snippet: hit.snippet,
            score: hit.score,
        });
    }
    Ok(Page {
        items,
        next_cursor: page.next_cursor,
    })
}

/// A new document row, as uploaded.
pub fn new_row(
    id: Uuid,
    client_id: Uuid,
    filename: &str,
    stored: &agentdesk_agent_sdk::core::storage::StoredFile,
    created_by: Uuid,
    job_id: Uuid,
) -> ActiveModel {
    use sea_orm::Set;
    ActiveModel {
        id: Set(id),
        client_id: Set(client_id),
        filename: Set(filename.to_owned()),
        size_bytes: Set(i64::try_from(stored.size).unwrap_or(i64::MAX)),
        sha256: Set(stored.sha256.clone()),
        storage_key: Set(stored.key.clone()),
        status: Set(status::PROCESSING.to_owned()),
        error_code: Set(None),
        error_message: Set(None),
        page_count: Set(None),
        metadata: Set(json!({})),
        fields: Set(json!({})),
        pages_info: Set(json!({})),
        job_id: Set(Some(job_id)),
        created_by: Set(Some(created_by)),
        created_at: Set(Utc::now()),
        processed_at: Set(None),
    }
}

/// The JSON the audit log keeps of a document (no text).
pub fn audit_view(d: &Model) -> Value {
    json!({
        "filename": d.filename,
        "size_bytes": d.size_bytes,
        "sha256": d.sha256,
        "status": d.status,
        "client_id": d.client_id,
    })
}
