//! Contract steps: removals and replacements that a previous release, started on the schema,
//! would not survive. Applied by `agentdesk migrate --contract`, and at once to a database that
//! this build creates (no older release has served it: [`crate::database::Database::migrate`]).

use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

/// SQLite: the clients' FTS5 trigram index brought up to date in batches, off the writes.
///
/// Each write used to update `clients_fts` in its own transaction, and FTS5 writes a new
/// segment per transaction: a third of a client create's time under the one write lock
/// (BENCHMARKS.md, "SQLite's writes"). The index's triggers are replaced by ones that only note
/// which rows changed, and what the index still holds for each (`indexed_text`, NULL for
/// nothing), in `clients_fts_pending` (m0019); `search_index.rs` moves them into the index. The
/// first note of a row wins until it is indexed: it is what the index holds. Searches through
/// the index also test the noted rows, so they stay exact (`client_search`).
///
/// Deletes (rare: clients are mostly marked deleted, which leaves the text alone) still take the
/// row out of the index at once: FTS5 reads a candidate's text from `clients` to test a LIKE,
/// and a row gone from there fails the whole query ("missing row").
pub struct ClientsSearchDeferred;

impl MigrationName for ClientsSearchDeferred {
    fn name(&self) -> &str {
        "c0001_clients_search_deferred"
    }
}

const SEARCH_DEFERRED_UP: [&str; 6] = [
    "DROP TRIGGER IF EXISTS clients_fts_insert",
    "DROP TRIGGER IF EXISTS clients_fts_delete",
    "DROP TRIGGER IF EXISTS clients_fts_update",
    "CREATE TRIGGER IF NOT EXISTS clients_fts_note_insert AFTER INSERT ON clients \
     WHEN NOT EXISTS (SELECT 1 FROM clients_fts_pending WHERE client_rowid = new.rowid) \
     BEGIN INSERT INTO clients_fts_pending (client_rowid, indexed_text) VALUES (new.rowid, NULL); END",
    "CREATE TRIGGER IF NOT EXISTS clients_fts_delete_now AFTER DELETE ON clients BEGIN \
     INSERT INTO clients_fts (clients_fts, rowid, search_text) SELECT 'delete', old.rowid, old.search_text \
      WHERE NOT EXISTS (SELECT 1 FROM clients_fts_pending WHERE client_rowid = old.rowid); \
     INSERT INTO clients_fts (clients_fts, rowid, search_text) SELECT 'delete', client_rowid, indexed_text \
      FROM clients_fts_pending WHERE client_rowid = old.rowid AND indexed_text IS NOT NULL; \
     DELETE FROM clients_fts_pending WHERE client_rowid = old.rowid; END",
    "CREATE TRIGGER IF NOT EXISTS clients_fts_note_update AFTER UPDATE OF search_text ON clients \
     WHEN old.search_text IS NOT new.search_text \
      AND NOT EXISTS (SELECT 1 FROM clients_fts_pending WHERE client_rowid = old.rowid) \
     BEGIN INSERT INTO clients_fts_pending (client_rowid, indexed_text) VALUES (old.rowid, old.search_text); END",
];

/// Back to updating the index in each write (also run by m0019's `down`): what was noted is
/// indexed first. Safe to run when the step was never taken.
pub(crate) const SEARCH_DEFERRED_DOWN: [&str; 9] = [
    "DROP TRIGGER IF EXISTS clients_fts_note_insert",
    "DROP TRIGGER IF EXISTS clients_fts_note_update",
    "INSERT INTO clients_fts (clients_fts, rowid, search_text) SELECT 'delete', client_rowid, indexed_text FROM clients_fts_pending WHERE indexed_text IS NOT NULL",
    "INSERT INTO clients_fts (rowid, search_text) SELECT c.rowid, c.search_text FROM clients_fts_pending p JOIN clients c ON c.rowid = p.client_rowid",
    "DELETE FROM clients_fts_pending",
    "DROP TRIGGER IF EXISTS clients_fts_delete_now",
    "CREATE TRIGGER IF NOT EXISTS clients_fts_insert AFTER INSERT ON clients BEGIN INSERT INTO clients_fts (rowid, search_text) VALUES (new.rowid, new.search_text); END",
    "CREATE TRIGGER IF NOT EXISTS clients_fts_delete AFTER DELETE ON clients BEGIN INSERT INTO clients_fts (clients_fts, rowid, search_text) VALUES ('delete', old.rowid, old.search_text); END",
    "CREATE TRIGGER IF NOT EXISTS clients_fts_update AFTER UPDATE OF search_text ON clients BEGIN INSERT INTO clients_fts (clients_fts, rowid, search_text) VALUES ('delete', old.rowid, old.search_text); INSERT INTO clients_fts (rowid, search_text) VALUES (new.rowid, new.search_text); END",
];

#[async_trait::async_trait]
impl MigrationTrait for ClientsSearchDeferred {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            return Ok(());
        }
        super::run_statements(manager, &SEARCH_DEFERRED_UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            return Ok(());
        }
        super::run_statements(manager, &SEARCH_DEFERRED_DOWN).await
    }
}
