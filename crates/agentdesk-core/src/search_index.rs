//! SQLite: the clients' FTS5 trigram index, brought up to date off the writes.
//!
//! Writes only note the rows they change in `clients_fts_pending` (triggers of migration
//! m0019; an FTS5 update in every write transaction was a third of a create's time under the
//! one write lock). The indexer here moves the noted rows into `clients_fts` a batch per
//! transaction. It writes through the writer like any request, so it queues with them instead
//! of waiting in SQLite's busy handler. Searches stay exact in between: those that use the
//! index also test the noted rows directly ([`PENDING_ROWIDS`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

use crate::database::Database;
use crate::error::Result;

/// The rowids of clients whose text the index may not hold yet (a subquery for searches).
pub const PENDING_ROWIDS: &str = "SELECT client_rowid FROM clients_fts_pending";

/// Noted rows moved per transaction: a few milliseconds of holding the write lock.
const BATCH: u32 = 500;
/// How soon the indexer looks again after it found rows to move.
const BUSY_EVERY: Duration = Duration::from_millis(50);
/// The longest it waits between looks when nothing was noted (it doubles up to this).
const IDLE_EVERY: Duration = Duration::from_millis(500);

/// Keeps this process's indexer running: the indexer stops once every clone is dropped.
#[derive(Clone, Debug, Default)]
pub struct SearchIndexer(Arc<()>);

impl SearchIndexer {
    /// Starts the indexer on a SQLite database (nothing to do on PostgreSQL, whose trigram
    /// index is updated by each write).
    pub(crate) fn start(db: &Database) -> Self {
        let this = Self::default();
        if db.backend() == DatabaseBackend::Sqlite {
            tokio::spawn(run(db.clone(), Arc::downgrade(&this.0)));
        }
        this
    }
}

async fn run(db: Database, alive: Weak<()>) {
    let mut every = BUSY_EVERY;
    loop {
        tokio::time::sleep(every).await;
        if alive.upgrade().is_none() {
            return;
        }
        match index_all_pending(&db).await {
            Ok(0) => every = (every * 2).min(IDLE_EVERY),
            Ok(_) => every = BUSY_EVERY,
            Err(e) => {
                tracing::warn!(error = %e, "updating the clients' search index failed; retrying");
                every = IDLE_EVERY;
            }
        }
    }
}

/// Moves every noted row into the index, a batch per transaction; returns how many. Looks
/// first on a reader, so that an idle database costs no write transaction.
pub async fn index_all_pending(db: &Database) -> Result<u64> {
    let look = Statement::from_string(
        DatabaseBackend::Sqlite,
        "SELECT EXISTS (SELECT 1 FROM clients_fts_pending)",
    );
    if db.read_integer(look).await? == 0 {
        return Ok(0);
    }
    let mut moved = 0;
    loop {
        let batch = index_pending_batch(db).await?;
        moved += batch;
        if batch < u64::from(BATCH) {
            return Ok(moved);
        }
        // Between batches, requests waiting for the writer go first.
        tokio::task::yield_now().await;
    }
}

/// Moves up to [`BATCH`] noted rows (the oldest rowids) into the index in one transaction:
/// the text the index holds for each is deleted from it, the row's current text (if the row
/// still exists) added. Returns how many were moved.
async fn index_pending_batch(db: &Database) -> Result<u64> {
    let batch = format!(
        "SELECT client_rowid, indexed_text FROM clients_fts_pending ORDER BY client_rowid LIMIT {BATCH}"
    );
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!(
        "INSERT INTO clients_fts (clients_fts, rowid, search_text) \
         SELECT 'delete', client_rowid, indexed_text FROM ({batch}) WHERE indexed_text IS NOT NULL"
    ))
    .await?;
    txn.execute_unprepared(&format!(
        "INSERT INTO clients_fts (rowid, search_text) \
         SELECT c.rowid, c.search_text FROM ({batch}) AS p JOIN clients AS c ON c.rowid = p.client_rowid"
    ))
    .await?;
    let moved = txn
        .execute_unprepared(&format!(
            "DELETE FROM clients_fts_pending WHERE client_rowid IN (SELECT client_rowid FROM ({batch}))"
        ))
        .await?
        .rows_affected();
    txn.commit().await?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite(dir: &std::path::Path) -> Database {
        let settings = crate::config::Settings {
            data_dir: dir.to_owned(),
            ..Default::default()
        };
        let db = Database::connect(&settings).await.unwrap();
        db.migrate().await.unwrap();
        db
    }

    async fn exec(db: &Database, sql: &str) {
        db.writer().execute_unprepared(sql).await.unwrap();
    }

    async fn count(db: &Database, sql: &str) -> i64 {
        db.writer()
            .query_one_raw(Statement::from_string(DatabaseBackend::Sqlite, sql))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap()
    }

    /// The clients whose indexed text matches `pattern`, by name.
    async fn indexed(db: &Database, pattern: &str) -> Vec<String> {
        let rows = db
            .writer()
            .query_all_raw(Statement::from_sql_and_values(
                DatabaseBackend::Sqlite,
                "SELECT name FROM clients WHERE rowid IN \
                 (SELECT rowid FROM clients_fts WHERE search_text LIKE ?) ORDER BY name",
                [pattern.into()],
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.try_get_by_index::<String>(0).unwrap())
            .collect()
    }

    /// Inserts a client named `name` whose search text is `search_text`.
    async fn insert_row(conn: &impl ConnectionTrait, name: &str, search_text: &str) {
        conn.execute_unprepared(&format!(
            "INSERT INTO clients (id, name, name_key, status, tags, metadata, search_text, \
             version, created_at, updated_at) VALUES (randomblob(16), '{name}', '{name}', \
             'lead', '[]', '{{}}', '{search_text}', 1, '2026-12-07T00:00:00Z', \
             '2026-12-07T00:00:00Z')"
        ))
        .await
        .unwrap();
    }

    async fn insert(db: &Database, n: usize, name: &str) {
        let text = format!("{} n{n}", name.to_lowercase());
        insert_row(db.writer(), name, &text).await;
    }

    /// FTS5's own check of the index against the clients' rows (rank 1: with the content).
    async fn index_is_consistent(db: &Database) -> bool {
        db.writer()
            .execute_unprepared(
                "INSERT INTO clients_fts (clients_fts, rank) VALUES ('integrity-check', 1)",
            )
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn noted_inserts_updates_and_deletes_reach_the_index_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(dir.path()).await;
        insert(&db, 1, "Alpha Acme").await;
        insert(&db, 2, "Beta Acme").await;
        insert(&db, 3, "Gamma Initech").await;
        // Written, noted, not yet in the index.
        assert_eq!(
            count(&db, "SELECT count(*) FROM clients_fts_pending").await,
            3
        );
        assert!(indexed(&db, "%acme%").await.is_empty());
        assert_eq!(index_all_pending(&db).await.unwrap(), 3);
        assert_eq!(indexed(&db, "%acme%").await, ["Alpha Acme", "Beta Acme"]);
        assert!(index_is_consistent(&db).await);

        // A rename, a delete, an insert and a change that leaves the text alone.
        exec(&db, "UPDATE clients SET name = 'Alpha Umbrella', search_text = 'alpha umbrella n1' WHERE name = 'Alpha Acme'").await;
        exec(
            &db,
            "UPDATE clients SET search_text = 'alpha umbrella n1 x' WHERE name = 'Alpha Umbrella'",
        )
        .await;
        exec(&db, "DELETE FROM clients WHERE name = 'Beta Acme'").await;
        exec(
            &db,
            "UPDATE clients SET status = 'active' WHERE name = 'Gamma Initech'",
        )
        .await;
        insert(&db, 4, "Delta Acme").await;
        // The first note of a row is kept (the text the index still holds); the delete left
        // the index at once, the status change noted nothing.
        assert_eq!(
            count(&db, "SELECT count(*) FROM clients_fts_pending").await,
            2
        );
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM clients_fts_pending WHERE indexed_text = 'alpha acme n1'"
            )
            .await,
            1
        );
        // Until it is brought up to date the index lacks the new texts (FTS5 tests a LIKE's
        // candidates against the rows as they are)...
        assert!(indexed(&db, "%acme%").await.is_empty());
        assert!(indexed(&db, "%umbrella%").await.is_empty());
        assert!(!index_is_consistent(&db).await);
        // ... and afterwards it holds exactly the rows as they are.
        assert_eq!(index_all_pending(&db).await.unwrap(), 2);
        assert_eq!(indexed(&db, "%acme%").await, ["Delta Acme"]);
        assert_eq!(indexed(&db, "%umbrella n1 x%").await, ["Alpha Umbrella"]);
        assert_eq!(
            count(&db, "SELECT count(*) FROM clients_fts_pending").await,
            0
        );
        assert!(index_is_consistent(&db).await);
        // A delete of a row still noted: the index keeps nothing of it either.
        insert(&db, 5, "Epsilon Acme").await;
        exec(
            &db,
            "UPDATE clients SET search_text = 'delta renamed n4' WHERE name = 'Delta Acme'",
        )
        .await;
        exec(
            &db,
            "DELETE FROM clients WHERE name IN ('Epsilon Acme', 'Delta Acme')",
        )
        .await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM clients_fts_pending").await,
            0
        );
        assert!(indexed(&db, "%acme%").await.is_empty());
        assert!(index_is_consistent(&db).await);
        // Nothing noted: nothing written.
        assert_eq!(index_all_pending(&db).await.unwrap(), 0);
        db.close().await;
    }

    /// A database upgraded from an earlier release keeps updating the index in each write
    /// until `migrate --contract` (an older release may still serve it); a new one notes.
    #[tokio::test]
    async fn the_index_is_deferred_by_the_contract_step_only() {
        use sea_orm_migration::MigratorTrait;
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(dir.path()).await;
        insert(&db, 1, "Noted Acme").await;
        // As an upgraded database is before the contract step: the step undone (what was noted
        // is indexed on the way), then each write updates the index itself.
        crate::migration::ContractMigrator::down(db.writer(), None)
            .await
            .unwrap();
        assert_eq!(
            count(&db, "SELECT count(*) FROM clients_fts_pending").await,
            0
        );
        insert(&db, 2, "Direct Acme").await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM clients_fts_pending").await,
            0
        );
        assert_eq!(indexed(&db, "%acme%").await, ["Direct Acme", "Noted Acme"]);
        assert!(index_is_consistent(&db).await);
        // Migrating again without the contract step changes nothing; with it, writes note.
        db.migrate().await.unwrap();
        insert(&db, 3, "Third Acme").await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM clients_fts_pending").await,
            0
        );
        db.migrate_contract().await.unwrap();
        insert(&db, 4, "Fourth Acme").await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM clients_fts_pending").await,
            1
        );
        assert_eq!(index_all_pending(&db).await.unwrap(), 1);
        assert_eq!(indexed(&db, "%acme%").await.len(), 4);
        assert!(index_is_consistent(&db).await);
        db.close().await;
    }

    #[tokio::test]
    async fn many_noted_rows_move_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(dir.path()).await;
        let rows = BATCH as usize * 2 + 7;
        let txn = db.begin().await.unwrap();
        for n in 0..rows {
            insert_row(&txn, &format!("c{n}"), &format!("client number {n} acme")).await;
        }
        txn.commit().await.unwrap();
        assert_eq!(index_all_pending(&db).await.unwrap(), rows as u64);
        assert_eq!(indexed(&db, "%acme%").await.len(), rows);
        assert!(index_is_consistent(&db).await);
        db.close().await;
    }

    #[tokio::test]
    async fn the_indexer_runs_while_its_handle_lives() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(dir.path()).await;
        let indexer = SearchIndexer::start(&db);
        insert(&db, 1, "Omega Acme").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while indexed(&db, "%acme%").await.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the indexer never ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(indexer);
        // Once the handle is gone the task ends at its next look: nothing more is indexed.
        tokio::time::sleep(IDLE_EVERY * 2).await;
        insert(&db, 2, "Sigma Acme").await;
        tokio::time::sleep(IDLE_EVERY * 2).await;
        assert_eq!(indexed(&db, "%acme%").await, ["Omega Acme"]);
        db.close().await;
    }
}
