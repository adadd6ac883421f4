use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The claim reads the first queued jobs of an agent in the queue's order (priority, run_at,
// id). `ix_jobs_claim` lacks `id` and holds every job ever run, so each claim sorted all the
// queued rows (4 ms with 5,000 waiting, against 0.06 ms through this index). Only queued rows
// are in it, so it stays as small as the queue whatever the history.
const UP: &str = r#"
CREATE INDEX ix_jobs_queued ON jobs (agent, priority, run_at, id) WHERE status = 'queued'
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, "DROP INDEX ix_jobs_queued").await
    }
}
