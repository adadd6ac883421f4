use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// Reports of the reports_analysis agent. A report is a snapshot made for its creator; `params`
// keeps the filters as asked (relative dates included) and `period_from`/`period_to` the period
// they resolved to when it was made. The overview counts live clients by status from an index
// of their status alone, without reading the rows.
const UP: &str = r#"
CREATE TABLE reports (
    id {uuid} PRIMARY KEY,
    kind TEXT NOT NULL,
    format TEXT NOT NULL,
    params {json} NOT NULL,
    period_from {ts} NOT NULL,
    period_to {ts} NOT NULL,
    client_id {uuid} NULL,
    status TEXT NOT NULL,
    error_code TEXT NULL,
    error_message TEXT NULL,
    schedule_id {uuid} NULL,
    storage_key TEXT NULL,
    content_type TEXT NULL,
    size_bytes {bigint} NULL,
    sha256 TEXT NULL,
    row_count {bigint} NULL,
    job_id {uuid} NULL,
    created_by {uuid} NULL,
    created_at {ts} NOT NULL,
    finished_at {ts} NULL
);
CREATE INDEX ix_reports_creator ON reports (created_by, id);
CREATE INDEX ix_reports_kind ON reports (kind, id);
CREATE INDEX ix_clients_created ON clients (created_at, id);
CREATE INDEX ix_clients_live_status ON clients (status) WHERE deleted_at IS NULL
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(
            manager,
            "DROP INDEX ix_clients_live_status;\nDROP INDEX ix_clients_created;\nDROP TABLE reports",
        )
        .await
    }
}
