use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// PostgreSQL only. A transaction that chained its own event had to hold the chain's lock through
// its COMMIT, so on PostgreSQL every audited write waited for the one before it to flush the WAL
// (no group commit). Instead a write now queues its event here, in its own transaction, and the
// sequencer (services::audit) moves queued events into `audit_events`, chained, in batches under
// the chain's lock. SQLite has one writer at a time anyway and keeps chaining in the transaction.
//
// The queue takes inserts (the writes) and deletes (the sequencer moving events); nothing updates
// it. TRUNCATE skips row triggers, so both tables refuse it with a statement trigger of its own.
// The log's time index becomes a BRIN index (below).
const POSTGRES: [&str; 6] = [
    "CREATE TABLE audit_queue (
        queued BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id UUID NOT NULL,
        at TIMESTAMPTZ NOT NULL,
        actor_id UUID NULL,
        actor_email TEXT NULL,
        action TEXT NOT NULL,
        resource_type TEXT NULL,
        resource_id TEXT NULL,
        client_id UUID NULL,
        outcome TEXT NOT NULL,
        ip TEXT NULL,
        user_agent TEXT NULL,
        request_id TEXT NULL,
        changes JSONB NULL
    )",
    "CREATE TRIGGER audit_queue_no_update BEFORE UPDATE ON audit_queue FOR EACH STATEMENT EXECUTE FUNCTION agentdesk_audit_immutable()",
    "CREATE TRIGGER audit_queue_no_truncate BEFORE TRUNCATE ON audit_queue FOR EACH STATEMENT EXECUTE FUNCTION agentdesk_audit_immutable()",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events FOR EACH STATEMENT EXECUTE FUNCTION agentdesk_audit_immutable()",
    // `at` grows with `seq` (events are chained in the order they commit), so a BRIN index
    // answers time ranges at a fraction of a B-tree's cost per insert.
    "DROP INDEX ix_audit_events_at",
    "CREATE INDEX ix_audit_events_at ON audit_events USING brin (at)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        super::run_statements(manager, &POSTGRES).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        super::run_statements(
            manager,
            &[
                "DROP TRIGGER audit_events_no_truncate ON audit_events",
                "DROP INDEX ix_audit_events_at",
                "CREATE INDEX ix_audit_events_at ON audit_events (at)",
                "DROP TABLE audit_queue",
            ],
        )
        .await
    }
}
