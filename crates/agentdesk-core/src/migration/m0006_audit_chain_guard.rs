use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

use crate::services::audit::{AUDIT_LOCK_KEY, GENESIS_HASH, HEAD_MOVED};

#[derive(DeriveMigrationName)]
pub struct Migration;

// The database keeps the audit chain in order itself: an event whose `seq` and `prev_hash` do
// not continue the chain's last event is not inserted. SQLite refuses the statement with
// "audit chain head moved" (ABORT undoes only that statement; the transaction goes on);
// PostgreSQL skips the row (the statement reports none), since an error there would end the
// transaction. The application can then append from a cached chain head in one statement and
// re-read the head only when the insert was refused (another process appended, or a
// transaction that appended rolled back). On PostgreSQL the trigger also takes the chain's advisory lock (held to commit),
// so concurrent appenders queue there, and its head query sees every append committed before
// the lock was granted (a VOLATILE function takes a fresh snapshot for each query).
// Since m0007 only the sequencer appends on PostgreSQL; the trigger still refuses forged rows.
fn sqlite() -> Vec<String> {
    vec![format!(
        "CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events \
         WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_events) \
           OR NEW.prev_hash IS NOT COALESCE((SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1), '{GENESIS_HASH}') \
         BEGIN SELECT RAISE(ABORT, '{HEAD_MOVED}'); END"
    )]
}

fn postgres() -> Vec<String> {
    vec![
        format!(
            "CREATE FUNCTION agentdesk_audit_chain() RETURNS trigger LANGUAGE plpgsql VOLATILE AS $$
             DECLARE
                 last_seq BIGINT;
                 last_hash TEXT;
             BEGIN
                 PERFORM pg_advisory_xact_lock({AUDIT_LOCK_KEY});
                 SELECT seq, hash INTO last_seq, last_hash FROM audit_events ORDER BY seq DESC LIMIT 1;
                 IF NEW.seq IS DISTINCT FROM COALESCE(last_seq, 0) + 1
                    OR NEW.prev_hash IS DISTINCT FROM COALESCE(last_hash, '{GENESIS_HASH}') THEN
                     RETURN NULL;
                 END IF;
                 RETURN NEW;
             END $$"
        ),
        "CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION agentdesk_audit_chain()".to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = match manager.get_database_backend() {
            DatabaseBackend::Postgres => postgres(),
            _ => sqlite(),
        };
        super::run_statements(manager, &statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements: &[&str] = match manager.get_database_backend() {
            DatabaseBackend::Postgres => &[
                "DROP TRIGGER audit_events_chain ON audit_events",
                "DROP FUNCTION agentdesk_audit_chain()",
            ],
            _ => &["DROP TRIGGER audit_events_chain"],
        };
        super::run_statements(manager, statements).await
    }
}
