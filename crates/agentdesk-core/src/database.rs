//! The database: SQLite by default, PostgreSQL from a `postgres://` URL, chosen at run time.
//!
//! On SQLite there is one writer connection and a pool of read-only readers, in WAL mode with a
//! busy timeout and foreign keys on; write transactions begin `IMMEDIATE`, so two writers queue
//! instead of failing with `database is locked`. WAL checkpoints run on a thread of their own
//! (`checkpoint.rs`), not inside the writer's commits. On PostgreSQL both handles are the same
//! pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::checkpoint::{Checkpointer, WRITER_AUTOCHECKPOINT_PAGES};
use crate::config::{DatabaseKind, Settings};
use crate::error::{Error, Result};
use crate::inline_reads::InlineReader;
use crate::migration::Migrator;

/// The application's database handles.
#[derive(Clone, Debug)]
pub struct Database {
    kind: DatabaseKind,
    writer: DatabaseConnection,
    reader: DatabaseConnection,
    /// SQLite's hot reads on the calling thread (a file database only).
    inline: Option<Arc<InlineReader>>,
    /// SQLite's WAL checkpoints, off the writer (a file database only).
    checkpointer: Option<Arc<Checkpointer>>,
    health: Arc<Health>,
}

/// Whether the database is known to be out of reach: set when a request found it so, cleared by
/// a probe that pings it until it answers. While it is set the API answers 503 at once instead
/// of letting every request wait out the pool's timeout.
#[derive(Debug, Default)]
struct Health {
    down: AtomicBool,
    probing: AtomicBool,
}

/// How often the probe pings a database that is down, and how long each ping may take.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Database {
    /// Connects according to the settings; creates the SQLite file and its folder if missing.
    pub async fn connect(settings: &Settings) -> Result<Self> {
        let url = settings.database_url();
        match settings.database_kind() {
            DatabaseKind::Sqlite => {
                if let Some(parent) = sqlite_path(&url)
                    .and_then(|p| std::path::Path::new(&p).parent().map(|p| p.to_owned()))
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(&parent).map_err(|e| Error::Config {
                        key: "database_url".into(),
                        message: format!("cannot create {}: {e}", parent.display()),
                    })?;
                }
                let writer = connect_sqlite_writer(&url).await?;
                // The writer creates the file and switches it to WAL before readers open it.
                let readers = sqlite_readers(settings.database_max_connections);
                let reader = sea_orm::Database::connect(sqlite_options(&url, readers, true))
                    .await
                    .map_err(connect_error)?;
                let path = inline_path(&url);
                let inline = path
                    .clone()
                    .map(|path| Arc::new(InlineReader::new(path, readers as usize)));
                let checkpointer = path
                    .and_then(|path| Checkpointer::start(&path))
                    .map(Arc::new);
                Ok(Self {
                    kind: DatabaseKind::Sqlite,
                    writer,
                    reader,
                    inline,
                    checkpointer,
                    health: Arc::default(),
                })
            }
            DatabaseKind::Postgres => {
                let mut options = ConnectOptions::new(url);
                options
                    .max_connections(settings.database_max_connections)
                    .min_connections(1)
                    .connect_timeout(Duration::from_secs(5))
                    .acquire_timeout(Duration::from_secs(10))
                    .sqlx_logging(false);
                let pool = sea_orm::Database::connect(options)
                    .await
                    .map_err(connect_error)?;
                Ok(Self {
                    kind: DatabaseKind::Postgres,
                    writer: pool.clone(),
                    reader: pool,
                    inline: None,
                    checkpointer: None,
                    health: Arc::default(),
                })
            }
        }
    }

    /// Which database this is.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// SeaORM's name for the backend (for building statements).
    pub fn backend(&self) -> DatabaseBackend {
        self.writer.get_database_backend()
    }

    /// The handle for writes (and reads that must see the latest write).
    pub fn writer(&self) -> &DatabaseConnection {
        &self.writer
    }

    /// The handle for reads.
    pub fn reader(&self) -> &DatabaseConnection {
        &self.reader
    }

    /// Reads on the calling thread, for the hot paths (SQLite files only; see
    /// [`crate::inline_reads`]).
    pub fn inline_reader(&self) -> Option<&InlineReader> {
        self.inline.as_deref()
    }

    /// The first column of the first row of `statement` as an integer (0 without a row), read
    /// on the calling thread where SQLite's inline reads carry it, on the reader otherwise. For
    /// small counts and existence checks.
    pub async fn read_integer(&self, statement: Statement) -> Result<i64> {
        if let Some(found) = self.inline_reader().and_then(|r| r.integer(&statement)) {
            return Ok(found.unwrap_or(0));
        }
        Ok(match self.reader.query_one_raw(statement).await? {
            Some(row) => row.try_get_by_index::<i64>(0)?,
            None => 0,
        })
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub async fn begin(&self) -> Result<DatabaseTransaction> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        Ok(self.writer.begin_with_options(options).await?)
    }

    /// Applies pending migrations. Safe to run twice, and from two instances at once: on
    /// PostgreSQL the migrations run under an advisory lock, on SQLite under the write lock.
    ///
    /// Migrations only expand the schema (see [`crate::migration::ContractMigrator`]), so an
    /// older build may serve a database that a newer one has migrated (blue/green upgrades):
    /// when the database has every migration of this build plus newer ones, nothing is applied
    /// and the newer schema is served as it is. A new database also takes the contract steps.
    pub async fn migrate(&self) -> Result<()> {
        let txn = self.begin_migration().await?;
        let applied = applied_migrations(&txn, self.kind).await?;
        let known = crate::migration::known_migrations();
        let newer: Vec<&String> = applied.iter().filter(|v| !known.contains(v)).collect();
        if !newer.is_empty() {
            let missing: Vec<&String> = known.iter().filter(|k| !applied.contains(k)).collect();
            if !missing.is_empty() {
                return Err(Error::Config {
                    key: "database_url".into(),
                    message: format!(
                        "the database has migrations of another release ({}) but lacks this build's ({}); run the newest release's `agentdesk migrate`",
                        join(&newer),
                        join(&missing)
                    ),
                });
            }
            tracing::info!(
                database_schema = applied.last().map(String::as_str).unwrap_or_default(),
                build_schema = crate::migration::schema_version(),
                "the database's schema is newer than this build's; its migrations only add, so this build serves it as it is"
            );
            txn.commit().await?;
            return Ok(());
        }
        Migrator::up(&txn, None).await?;
        // A database this build creates takes the contract steps too: no older release has
        // served it, so none can need what they remove.
        if applied.is_empty() {
            crate::migration::ContractMigrator::up(&txn, None).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Applies the expand migrations, then the contract ones (removals that no running older
    /// build may depend on any more): `agentdesk migrate --contract`.
    pub async fn migrate_contract(&self) -> Result<()> {
        self.migrate().await?;
        let txn = self.begin_migration().await?;
        crate::migration::ContractMigrator::up(&txn, None).await?;
        txn.commit().await?;
        Ok(())
    }

    /// A write transaction that holds the migration lock (PostgreSQL: an advisory lock; SQLite:
    /// the write lock that `BEGIN IMMEDIATE` takes).
    async fn begin_migration(&self) -> Result<DatabaseTransaction> {
        let txn = self.begin().await?;
        if self.kind == DatabaseKind::Postgres {
            txn.execute_raw(Statement::from_string(
                DatabaseBackend::Postgres,
                "SELECT pg_advisory_xact_lock(7263501)",
            ))
            .await?;
        }
        Ok(txn)
    }

    /// The migrations applied to the database, in order (empty for a new database); the last
    /// is the database's schema version.
    pub async fn applied_migrations(&self) -> Result<Vec<String>> {
        applied_migrations(&self.reader, self.kind).await
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        self.reader.ping().await?;
        if self.kind == DatabaseKind::Sqlite {
            self.writer.ping().await?;
        }
        Ok(())
    }

    /// Whether the database is known to be out of reach (see [`Database::report_unreachable`]).
    pub fn is_down(&self) -> bool {
        self.health.down.load(Ordering::Acquire)
    }

    /// Notes that a request found the database out of reach: from now on [`Database::is_down`]
    /// holds until a ping succeeds, tried every 250 ms by one background task.
    pub fn report_unreachable(&self) {
        if !self.health.down.swap(true, Ordering::AcqRel) {
            tracing::error!("the database is out of reach; answering 503 until it is back");
        }
        if self.health.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let db = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, db.ping()).await {
                    break;
                }
            }
            // In this order, a report that comes in between always finds a probe or starts one.
            db.health.probing.store(false, Ordering::Release);
            db.health.down.store(false, Ordering::Release);
            tracing::warn!("the database answers again");
        });
    }

    /// Pool use for the metrics gauges: (connections open, connections idle) of the main pool.
    pub fn pool_stats(&self) -> (u32, u32) {
        match self.kind {
            DatabaseKind::Sqlite => {
                let pool = self.reader.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle() as u32)
            }
            DatabaseKind::Postgres => {
                let pool = self.writer.get_postgres_connection_pool();
                (pool.size(), pool.num_idle() as u32)
            }
        }
    }

    /// Closes every connection (at shutdown, so SQLite checkpoints its WAL).
    pub async fn close(self) {
        if let Some(checkpointer) = self.checkpointer.clone() {
            let _ = tokio::task::spawn_blocking(move || checkpointer.stop()).await;
        }
        let _ = self.reader.close().await;
        if self.kind == DatabaseKind::Sqlite {
            let _ = self.writer.close().await;
        }
    }
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn applied_migrations(
    conn: &impl ConnectionTrait,
    kind: DatabaseKind,
) -> Result<Vec<String>> {
    let exists = match kind {
        DatabaseKind::Sqlite => {
            "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'"
        }
        DatabaseKind::Postgres => {
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'seaql_migrations'"
        }
    };
    let backend = conn.get_database_backend();
    let found = conn
        .query_one_raw(Statement::from_string(backend, exists))
        .await?
        .map(|row| row.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0);
    if found == 0 {
        return Ok(Vec::new());
    }
    conn.query_all_raw(Statement::from_string(
        backend,
        "SELECT version FROM seaql_migrations ORDER BY version",
    ))
    .await?
    .into_iter()
    .map(|row| row.try_get::<String>("", "version").map_err(Error::from))
    .collect()
}

fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| path.to_owned())
}

/// The file that inline reads open: a plain path only. An in-memory database, or a `file:` URI
/// whose options this path would not see, is read through sqlx alone.
fn inline_path(url: &str) -> Option<String> {
    let memory = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|kv| kv == "mode=memory"));
    sqlite_path(url).filter(|path| !memory && !path.starts_with("file:"))
}

/// Readers for SQLite: the setting, but at most two per core and at least two. A read runs on
/// its connection's own thread, so readers beyond the cores add threads and page caches (about
/// 6 MiB each under load), not throughput.
fn sqlite_readers(max_connections: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    max_connections.min(2 * cores).max(2)
}

fn sqlite_options(url: &str, max_connections: u32, read_only: bool) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |opts| {
            opts.create_if_missing(!read_only)
                .read_only(read_only)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                .pragma("temp_store", "memory")
                // Checkpoints run on a thread of their own (`checkpoint.rs`); this is the net.
                .pragma(
                    "wal_autocheckpoint",
                    WRITER_AUTOCHECKPOINT_PAGES.to_string(),
                )
        });
    options
}

/// Opens the writer. Two processes opening a new file at once (two `migrate`s, a server and a
/// worker) can collide while one switches it to WAL: SQLite then answers "database is locked"
/// without waiting for the busy timeout, so that case is retried for up to ten seconds.
async fn connect_sqlite_writer(url: &str) -> Result<DatabaseConnection> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match sea_orm::Database::connect(sqlite_options(url, 1, false)).await {
            Ok(writer) => return Ok(writer),
            Err(e)
                if e.to_string().contains("database is locked")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(connect_error(e)),
        }
    }
}

fn connect_error(err: sea_orm::DbErr) -> Error {
    Error::Unavailable(format!("cannot connect to the database: {err}"))
}

#[cfg(test)]
mod tests {
    use super::inline_path;

    #[test]
    fn inline_reads_open_plain_files_only() {
        assert_eq!(
            inline_path("sqlite:///var/lib/agentdesk/agentdesk.db?mode=rwc").as_deref(),
            Some("/var/lib/agentdesk/agentdesk.db")
        );
        assert_eq!(
            inline_path("sqlite://data/agentdesk.db").as_deref(),
            Some("data/agentdesk.db")
        );
        assert_eq!(inline_path("sqlite::memory:"), None);
        assert_eq!(
            inline_path("sqlite://shared?mode=memory&cache=shared"),
            None
        );
        assert_eq!(inline_path("sqlite:file:agentdesk.db?mode=ro"), None);
        assert_eq!(inline_path("postgres://postgres@127.0.0.1/agentdesk"), None);
    }
}
