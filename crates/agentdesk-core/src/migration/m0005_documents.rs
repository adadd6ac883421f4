use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// Documents of the pdf_processing agent and the text of their pages. `search_text` is the page
// text normalised for the full-text index (CJK characters separated, so that a word inside a
// run of ideographs can be found); `text` is what the API returns.
const UP: &str = r#"
CREATE TABLE documents (
    id {uuid} PRIMARY KEY,
    client_id {uuid} NOT NULL REFERENCES clients (id),
    filename TEXT NOT NULL,
    size_bytes {bigint} NOT NULL,
    sha256 TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    status TEXT NOT NULL,
    error_code TEXT NULL,
    error_message TEXT NULL,
    page_count INTEGER NULL,
    metadata {json} NOT NULL,
    fields {json} NOT NULL,
    pages_info {json} NOT NULL,
    job_id {uuid} NULL,
    created_by {uuid} NULL,
    created_at {ts} NOT NULL,
    processed_at {ts} NULL
);
CREATE INDEX ix_documents_client ON documents (client_id, created_at, id);
CREATE INDEX ix_documents_status ON documents (status);
CREATE TABLE document_pages (
    id {bigserial} PRIMARY KEY,
    document_id {uuid} NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    client_id {uuid} NOT NULL,
    number INTEGER NOT NULL,
    text TEXT NOT NULL,
    search_text TEXT NOT NULL
);
CREATE UNIQUE INDEX ux_document_pages ON document_pages (document_id, number);
CREATE INDEX ix_document_pages_client ON document_pages (client_id)
"#;

const PG_SEARCH: [&str; 2] = [
    "ALTER TABLE document_pages ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED",
    "CREATE INDEX ix_document_pages_tsv ON document_pages USING gin (tsv)",
];
const SQLITE_SEARCH: [&str; 3] = [
    "CREATE VIRTUAL TABLE document_pages_fts USING fts5(search_text, content='document_pages', content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER document_pages_fts_insert AFTER INSERT ON document_pages BEGIN INSERT INTO document_pages_fts (rowid, search_text) VALUES (new.id, new.search_text); END",
    "CREATE TRIGGER document_pages_fts_delete AFTER DELETE ON document_pages BEGIN INSERT INTO document_pages_fts (document_pages_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == DatabaseBackend::Postgres;
        let serial = if postgres {
            "BIGINT GENERATED ALWAYS AS IDENTITY"
        } else {
            "INTEGER"
        };
        super::ddl(manager, &UP.replace("{bigserial}", serial)).await?;
        let statements: &[&str] = if postgres { &PG_SEARCH } else { &SQLITE_SEARCH };
        super::run_statements(manager, statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP TABLE document_pages_fts")
                .await?;
        }
        super::ddl(manager, "DROP TABLE document_pages;\nDROP TABLE documents").await
    }
}
