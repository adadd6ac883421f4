use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

use crate::services::audit::{AUDIT_LOCK_KEY, GENESIS_HASH, HEAD_MOVED};

#[derive(DeriveMigrationName)]
pub struct Migration;

// PostgreSQL only. Since m0007 only the sequencer appends to `audit_events`, a batch at a time,
// yet m0006's chain trigger ran a PL/pgSQL function per row (the lock, then a look-up of the
// last event): a fixed cost on every audited write. The check now runs once per statement, over
// the statement's rows together (a transition table): they must continue the event before them
// and each other, and the last of them must be the log's last. Every look-up into the log is an
// `ORDER BY seq DESC LIMIT 1` on the `seq` index: a range condition such as `seq > $1` is
// planned for a third of the table and reads it whole, on every batch. A statement that breaks
// the chain fails whole with "audit chain head moved", as on SQLite (only the sequencer appends,
// so an error is the right answer now: it rolls its batch back, and the events stay queued).
//
// The lock is taken before the statement's rows are inserted, so concurrent appenders still
// queue there; the check's queries (a VOLATILE function takes a fresh snapshot for each) then see
// every append committed before it was granted.
fn statements() -> Vec<String> {
    vec![
        "DROP TRIGGER audit_events_chain ON audit_events".to_owned(),
        "DROP FUNCTION agentdesk_audit_chain()".to_owned(),
        format!(
            "CREATE FUNCTION agentdesk_audit_chain_lock() RETURNS trigger LANGUAGE plpgsql VOLATILE AS $$
             BEGIN
                 PERFORM pg_advisory_xact_lock({AUDIT_LOCK_KEY});
                 RETURN NULL;
             END $$"
        ),
        "CREATE TRIGGER audit_events_chain_lock BEFORE INSERT ON audit_events \
         FOR EACH STATEMENT EXECUTE FUNCTION agentdesk_audit_chain_lock()"
            .to_owned(),
        format!(
            "CREATE FUNCTION agentdesk_audit_chain_check() RETURNS trigger LANGUAGE plpgsql VOLATILE AS $$
             BEGIN
                 IF EXISTS (
                     WITH batch AS (
                         SELECT seq, prev_hash, lead(seq) OVER w AS after_seq,
                                lag(seq) OVER w AS before_seq, lag(hash) OVER w AS before_hash
                         FROM appended WINDOW w AS (ORDER BY seq)),
                     head AS (
                         SELECT seq, hash FROM audit_events
                         WHERE seq < (SELECT MIN(seq) FROM appended) ORDER BY seq DESC LIMIT 1),
                     last AS (SELECT seq FROM audit_events ORDER BY seq DESC LIMIT 1)
                     SELECT 1 FROM batch
                     WHERE seq IS DISTINCT FROM COALESCE(before_seq, (SELECT seq FROM head), 0) + 1
                        OR prev_hash IS DISTINCT FROM
                           COALESCE(before_hash, (SELECT hash FROM head), '{GENESIS_HASH}')
                        OR (after_seq IS NULL AND seq IS DISTINCT FROM (SELECT seq FROM last))
                 ) THEN
                     RAISE EXCEPTION '{HEAD_MOVED}';
                 END IF;
                 RETURN NULL;
             END $$"
        ),
        "CREATE TRIGGER audit_events_chain_check AFTER INSERT ON audit_events \
         REFERENCING NEW TABLE AS appended \
         FOR EACH STATEMENT EXECUTE FUNCTION agentdesk_audit_chain_check()"
            .to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        super::run_statements(manager, &statements()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        // m0006's per-row trigger comes back through its own migration's statements.
        super::run_statements(
            manager,
            &[
                "DROP TRIGGER audit_events_chain_check ON audit_events",
                "DROP FUNCTION agentdesk_audit_chain_check()",
                "DROP TRIGGER audit_events_chain_lock ON audit_events",
                "DROP FUNCTION agentdesk_audit_chain_lock()",
            ],
        )
        .await?;
        super::m0006_audit_chain_guard::Migration.up(manager).await
    }
}
