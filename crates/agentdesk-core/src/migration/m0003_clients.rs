use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
CREATE TABLE clients (
    id {uuid} PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    email TEXT NULL,
    email_key TEXT NULL,
    phone TEXT NULL,
    phone_key TEXT NULL,
    company TEXT NULL,
    status TEXT NOT NULL,
    tags {json} NOT NULL,
    notes TEXT NULL,
    metadata {json} NOT NULL,
    search_text TEXT NOT NULL,
    version {bigint} NOT NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    created_by {uuid} NULL,
    deleted_at {ts} NULL
);
CREATE UNIQUE INDEX ux_clients_email_key ON clients (email_key) WHERE deleted_at IS NULL AND email_key IS NOT NULL;
CREATE INDEX ix_clients_status ON clients (status, id);
CREATE INDEX ix_clients_name ON clients (name_key, id);
CREATE INDEX ix_clients_updated ON clients (updated_at, id);
CREATE INDEX ix_clients_phone_key ON clients (phone_key);
CREATE TABLE client_tags (
    client_id {uuid} NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (tag, client_id)
);
CREATE INDEX ix_client_tags_client ON client_tags (client_id)
"#;

// Substring search that an index answers: trigrams on PostgreSQL, an FTS5 trigram index
// kept in step by triggers on SQLite.
const PG_SEARCH: [&str; 2] = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX ix_clients_search ON clients USING gin (search_text gin_trgm_ops)",
];
const SQLITE_SEARCH: [&str; 4] = [
    "CREATE VIRTUAL TABLE clients_fts USING fts5(search_text, content='clients', content_rowid='rowid', tokenize='trigram')",
    "CREATE TRIGGER clients_fts_insert AFTER INSERT ON clients BEGIN INSERT INTO clients_fts (rowid, search_text) VALUES (new.rowid, new.search_text); END",
    "CREATE TRIGGER clients_fts_delete AFTER DELETE ON clients BEGIN INSERT INTO clients_fts (clients_fts, rowid, search_text) VALUES ('delete', old.rowid, old.search_text); END",
    "CREATE TRIGGER clients_fts_update AFTER UPDATE OF search_text ON clients BEGIN INSERT INTO clients_fts (clients_fts, rowid, search_text) VALUES ('delete', old.rowid, old.search_text); INSERT INTO clients_fts (rowid, search_text) VALUES (new.rowid, new.search_text); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await?;
        let statements: &[&str] = match manager.get_database_backend() {
            DatabaseBackend::Postgres => &PG_SEARCH,
            _ => &SQLITE_SEARCH,
        };
        super::run_statements(manager, statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP TABLE clients_fts")
                .await?;
        }
        super::ddl(manager, "DROP TABLE client_tags;\nDROP TABLE clients").await
    }
}
