use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// SQLite: the table where writes note the clients that the FTS5 trigram index does not hold
// as they are yet (`search_index.rs`). Only the table: the triggers that fill it replace the
// index's own ones in a contract step (`contract::c0001_clients_search_deferred`), because a
// previous release started on this schema (a rollback) neither indexes noted rows nor searches
// them. While the old triggers stay, nothing is noted and searches find the table empty.
const SQLITE_UP: &str =
    "CREATE TABLE clients_fts_pending (client_rowid INTEGER PRIMARY KEY, indexed_text TEXT)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            return Ok(());
        }
        super::run_statements(manager, &[SQLITE_UP]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            return Ok(());
        }
        // The contract step depends on the table: undone first, if it was taken.
        super::run_statements(manager, &super::contract::SEARCH_DEFERRED_DOWN).await?;
        super::run_statements(manager, &["DROP TABLE clients_fts_pending"]).await
    }
}
