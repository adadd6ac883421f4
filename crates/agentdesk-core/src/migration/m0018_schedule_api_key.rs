use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// A report schedule made with an API key keeps the key's id, so that each tick's job acts
// within the key as it is then (narrowed; stopped once the key is revoked), as a job started
// with the key does (`jobs.api_key_id`, m0016).
const UP: &str = "ALTER TABLE report_schedules ADD COLUMN api_key_id {uuid} NULL";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(
            manager,
            "ALTER TABLE report_schedules DROP COLUMN api_key_id",
        )
        .await
    }
}
