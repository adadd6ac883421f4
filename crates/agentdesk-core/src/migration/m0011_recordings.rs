use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// Recordings of the audio_recording agent and their transcript segments. A segment is the unit
// of search (its time span is what a hit points to); `search_text` is its text normalised for
// the full-text index, as for document pages.
const UP: &str = r#"
CREATE TABLE recordings (
    id {uuid} PRIMARY KEY,
    client_id {uuid} NOT NULL REFERENCES clients (id),
    filename TEXT NOT NULL,
    source TEXT NOT NULL,
    size_bytes {bigint} NOT NULL,
    sha256 TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    content_type TEXT NOT NULL,
    duration_s DOUBLE PRECISION NULL,
    sample_rate INTEGER NULL,
    channels INTEGER NULL,
    status TEXT NOT NULL,
    error_code TEXT NULL,
    error_message TEXT NULL,
    language TEXT NULL,
    model TEXT NULL,
    job_id {uuid} NULL,
    created_by {uuid} NULL,
    created_at {ts} NOT NULL,
    transcribed_at {ts} NULL
);
CREATE INDEX ix_recordings_client ON recordings (client_id, created_at, id);
CREATE TABLE recording_segments (
    id {bigserial} PRIMARY KEY,
    recording_id {uuid} NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    client_id {uuid} NOT NULL,
    number INTEGER NOT NULL,
    start_s DOUBLE PRECISION NOT NULL,
    end_s DOUBLE PRECISION NOT NULL,
    text TEXT NOT NULL,
    search_text TEXT NOT NULL
);
CREATE UNIQUE INDEX ux_recording_segments ON recording_segments (recording_id, number);
CREATE INDEX ix_recording_segments_client ON recording_segments (client_id)
"#;

const PG_SEARCH: [&str; 2] = [
    "ALTER TABLE recording_segments ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED",
    "CREATE INDEX ix_recording_segments_tsv ON recording_segments USING gin (tsv)",
];
const SQLITE_SEARCH: [&str; 3] = [
    "CREATE VIRTUAL TABLE recording_segments_fts USING fts5(search_text, content='recording_segments', content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER recording_segments_fts_insert AFTER INSERT ON recording_segments BEGIN INSERT INTO recording_segments_fts (rowid, search_text) VALUES (new.id, new.search_text); END",
    "CREATE TRIGGER recording_segments_fts_delete AFTER DELETE ON recording_segments BEGIN INSERT INTO recording_segments_fts (recording_segments_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == DatabaseBackend::Postgres;
        let (serial, double) = if postgres {
            ("BIGINT GENERATED ALWAYS AS IDENTITY", "DOUBLE PRECISION")
        } else {
            ("INTEGER", "REAL")
        };
        let script = UP
            .replace("{bigserial}", serial)
            .replace("DOUBLE PRECISION", double);
        super::ddl(manager, &script).await?;
        let statements: &[&str] = if postgres { &PG_SEARCH } else { &SQLITE_SEARCH };
        super::run_statements(manager, statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP TABLE recording_segments_fts")
                .await?;
        }
        super::ddl(
            manager,
            "DROP TABLE recording_segments;\nDROP TABLE recordings",
        )
        .await
    }
}
