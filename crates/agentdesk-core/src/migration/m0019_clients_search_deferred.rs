use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// SQLite: the clients' FTS5 trigram index is brought up to date in batches, off the writes.
//
// Each write used to update `clients_fts` in its own transaction: FTS5 writes a new segment
// per transaction, which was a third of a client create's time holding the one write lock
// (BENCHMARKS.md, "SQLite's writes"). The triggers now only note which rows changed, and what
// the index still holds for each (`indexed_text`, NULL for nothing), in
// `clients_fts_pending`; `search_index.rs` moves them into the index a batch at a time. The
// first note of a row wins until it is indexed: it is what the index holds. Searches through
// the index also test the rows still noted, so they stay exact (`client_search`).
//
// Deletes (rare: clients are mostly marked deleted, which leaves the text alone) still take
// the row out of the index at once: FTS5 reads a candidate's text from `clients` to test a
// LIKE, and a row gone from there fails the whole query ("missing row").
//
// During a blue/green switch an older build's searches through the index may miss rows
// written in the last moment, until this build's indexer has moved them (a fraction of a
// second); walks of the page's order, and PostgreSQL, are unaffected.
const SQLITE_UP: [&str; 7] = [
    "CREATE TABLE clients_fts_pending (client_rowid INTEGER PRIMARY KEY, indexed_text TEXT)",
    "DROP TRIGGER clients_fts_insert",
    "DROP TRIGGER clients_fts_delete",
    "DROP TRIGGER clients_fts_update",
    "CREATE TRIGGER clients_fts_note_insert AFTER INSERT ON clients \
     WHEN NOT EXISTS (SELECT 1 FROM clients_fts_pending WHERE client_rowid = new.rowid) \
     BEGIN INSERT INTO clients_fts_pending (client_rowid, indexed_text) VALUES (new.rowid, NULL); END",
    "CREATE TRIGGER clients_fts_delete_now AFTER DELETE ON clients BEGIN \
     INSERT INTO clients_fts (clients_fts, rowid, search_text) SELECT 'delete', old.rowid, old.search_text \
      WHERE NOT EXISTS (SELECT 1 FROM clients_fts_pending WHERE client_rowid = old.rowid); \
     INSERT INTO clients_fts (clients_fts, rowid, search_text) SELECT 'delete', client_rowid, indexed_text \
      FROM clients_fts_pending WHERE client_rowid = old.rowid AND indexed_text IS NOT NULL; \
     DELETE FROM clients_fts_pending WHERE client_rowid = old.rowid; END",
    "CREATE TRIGGER clients_fts_note_update AFTER UPDATE OF search_text ON clients \
     WHEN old.search_text IS NOT new.search_text \
      AND NOT EXISTS (SELECT 1 FROM clients_fts_pending WHERE client_rowid = old.rowid) \
     BEGIN INSERT INTO clients_fts_pending (client_rowid, indexed_text) VALUES (old.rowid, old.search_text); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            return Ok(());
        }
        super::run_statements(manager, &SQLITE_UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            return Ok(());
        }
        super::run_statements(manager, &SQLITE_DOWN).await
    }
}

// Back to updating the index in each write: first everything noted is indexed.
const SQLITE_DOWN: [&str; 9] = [
    "INSERT INTO clients_fts (clients_fts, rowid, search_text) SELECT 'delete', client_rowid, indexed_text FROM clients_fts_pending WHERE indexed_text IS NOT NULL",
    "INSERT INTO clients_fts (rowid, search_text) SELECT c.rowid, c.search_text FROM clients_fts_pending p JOIN clients c ON c.rowid = p.client_rowid",
    "DROP TRIGGER clients_fts_note_insert",
    "DROP TRIGGER clients_fts_delete_now",
    "DROP TRIGGER clients_fts_note_update",
    "DROP TABLE clients_fts_pending",
    "CREATE TRIGGER clients_fts_insert AFTER INSERT ON clients BEGIN INSERT INTO clients_fts (rowid, search_text) VALUES (new.rowid, new.search_text); END",
    "CREATE TRIGGER clients_fts_delete AFTER DELETE ON clients BEGIN INSERT INTO clients_fts (clients_fts, rowid, search_text) VALUES ('delete', old.rowid, old.search_text); END",
    "CREATE TRIGGER clients_fts_update AFTER UPDATE OF search_text ON clients BEGIN INSERT INTO clients_fts (clients_fts, rowid, search_text) VALUES ('delete', old.rowid, old.search_text); INSERT INTO clients_fts (rowid, search_text) VALUES (new.rowid, new.search_text); END",
];
