use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

use crate::services::audit::{GENESIS_HASH, HEAD_MOVED};

#[derive(DeriveMigrationName)]
pub struct Migration;

// SQLite only. SQLite writes every page a transaction changed to the WAL at its commit, and an
// event inserted straight into `audit_events` changes a page in each of its eight B-trees (the
// table, `id`, `seq` and five query indexes): ~10 more pages for every write, which all writers
// wait for in turn. So a write now chains its event into this tail, whose only B-tree is the
// table keyed by `seq`, and the tail is moved into `audit_events` in batches (services::audit),
// as PostgreSQL moves its queue; every read of the log moves the tail first.
//
// The tail's events are already chained: its trigger refuses an event that does not continue
// the last event of the tail or, while the tail is empty, of the log. Nothing updates the tail;
// the move deletes what it has copied.
fn statements() -> Vec<String> {
    vec![
        "CREATE TABLE audit_tail (
            seq INTEGER PRIMARY KEY,
            id BLOB NOT NULL,
            at TEXT NOT NULL,
            actor_id BLOB NULL,
            actor_email TEXT NULL,
            action TEXT NOT NULL,
            resource_type TEXT NULL,
            resource_id TEXT NULL,
            client_id BLOB NULL,
            outcome TEXT NOT NULL,
            ip TEXT NULL,
            user_agent TEXT NULL,
            request_id TEXT NULL,
            changes TEXT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )"
        .to_owned(),
        format!(
            "CREATE TRIGGER audit_tail_chain BEFORE INSERT ON audit_tail \
             WHEN NEW.seq IS NOT COALESCE((SELECT MAX(seq) FROM audit_tail), (SELECT MAX(seq) FROM audit_events), 0) + 1 \
               OR NEW.prev_hash IS NOT COALESCE((SELECT hash FROM audit_tail ORDER BY seq DESC LIMIT 1), \
                                                (SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1), '{GENESIS_HASH}') \
             BEGIN SELECT RAISE(ABORT, '{HEAD_MOVED}'); END"
        ),
        "CREATE TRIGGER audit_tail_no_update BEFORE UPDATE ON audit_tail BEGIN SELECT RAISE(ABORT, 'audit events are immutable'); END".to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            return Ok(());
        }
        super::run_statements(manager, &statements()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            return Ok(());
        }
        // Whatever is still in the tail goes into the log first.
        super::run_statements(
            manager,
            &[
                "INSERT INTO audit_events (id, seq, at, actor_id, actor_email, action, resource_type, resource_id, client_id, outcome, ip, user_agent, request_id, changes, prev_hash, hash) SELECT id, seq, at, actor_id, actor_email, action, resource_type, resource_id, client_id, outcome, ip, user_agent, request_id, changes, prev_hash, hash FROM audit_tail ORDER BY seq",
                "DROP TABLE audit_tail",
            ],
        )
        .await
    }
}
