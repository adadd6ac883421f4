use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// Every event records how its hash was computed (`hash_version`; the events before this
// migration are version 1, and SQLite goes on writing version 1).
//
// PostgreSQL writes version 2 from now on: the writing transaction hashes the event's body
// itself and queues that digest with it, so the sequencer chains `(seq, prev_hash, digest)`
// without reading any body back (services::audit). For the digest to be checkable later,
// `changes` must come back as the very text that was hashed: JSONB re-encodes numbers
// (`1e16` comes back as `10000000000000000`, `-0.0` as `0.0`), JSON keeps the text as written
// and is cheaper to take in. Nothing queries inside `changes`. Existing rows keep their
// meaning: version 1 hashes the value parsed back, and a JSONB value's text parses to the same
// value. Events still queued when this runs have no digest; the sequencer reads those bodies.
// `IF NOT EXISTS`: undoing this migration keeps the version (see `down`).
const POSTGRES: [&str; 4] = [
    "ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS hash_version SMALLINT NOT NULL DEFAULT 1",
    "ALTER TABLE audit_events ALTER COLUMN changes TYPE JSON",
    "ALTER TABLE audit_queue ALTER COLUMN changes TYPE JSON",
    "ALTER TABLE audit_queue ADD COLUMN digest TEXT NULL",
];

const SQLITE: [&str; 1] =
    ["ALTER TABLE audit_events ADD COLUMN hash_version INTEGER NOT NULL DEFAULT 1"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            super::run_statements(manager, &POSTGRES).await
        } else {
            super::run_statements(manager, &SQLITE).await
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            // Only the digest goes. Events of version 2 verify only with their version and the
            // text they were hashed over, and the code before this migration works with both as
            // they are: it queues and reads `changes` through JSON as it did through JSONB, and
            // the events it chains get version 1 by default.
            super::run_statements(manager, &["ALTER TABLE audit_queue DROP COLUMN digest"]).await
        } else {
            // SQLite's events are all of version 1.
            super::run_statements(
                manager,
                &["ALTER TABLE audit_events DROP COLUMN hash_version"],
            )
            .await
        }
    }
}
