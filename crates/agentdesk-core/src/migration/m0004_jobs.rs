use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
CREATE TABLE jobs (
    id {uuid} PRIMARY KEY,
    agent TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    args {json} NOT NULL,
    result {json} NULL,
    error TEXT NULL,
    errors {json} NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    backoff_base_ms {bigint} NOT NULL,
    run_at {ts} NOT NULL,
    unique_key TEXT NULL,
    client_id {uuid} NULL,
    created_by {uuid} NULL,
    created_at {ts} NOT NULL,
    started_at {ts} NULL,
    finished_at {ts} NULL,
    lease_until {ts} NULL,
    worker_id TEXT NULL,
    cancel_requested {bool} NOT NULL DEFAULT {false}
);
CREATE INDEX ix_jobs_claim ON jobs (status, agent, priority, run_at);
CREATE INDEX ix_jobs_lease ON jobs (status, lease_until);
CREATE INDEX ix_jobs_created_by ON jobs (created_by, id);
CREATE INDEX ix_jobs_client ON jobs (client_id, id);
CREATE UNIQUE INDEX ux_jobs_unique_key ON jobs (unique_key) WHERE unique_key IS NOT NULL AND status IN ('queued', 'running');
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    agents {json} NOT NULL,
    mode TEXT NOT NULL,
    hostname TEXT NOT NULL,
    pid {bigint} NOT NULL,
    started_at {ts} NOT NULL,
    last_seen {ts} NOT NULL
);
CREATE TABLE cron_ticks (
    name TEXT NOT NULL,
    tick {ts} NOT NULL,
    job_id {uuid} NULL,
    PRIMARY KEY (name, tick)
)
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(
            manager,
            "DROP TABLE cron_ticks;\nDROP TABLE workers;\nDROP TABLE jobs",
        )
        .await
    }
}
