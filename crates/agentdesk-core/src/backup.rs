//! Backups: the database and every stored file in one file, with a manifest; verification
//! without restoring; and a restore that checks everything before it writes anything.
//!
//! The file is a tar archive (readable with any `tar` when all else fails):
//!
//! - `database/agentdesk.sqlite`: SQLite's own consistent copy (`VACUUM INTO`), taken while the
//!   server writes; or `database/agentdesk.pgdump`: `pg_dump --format=custom` of an exported
//!   snapshot, the same snapshot the manifest's row counts were read in;
//! - `files/<key>`: every object of the storage (local or S3);
//! - `manifest.json` (versions, migrations, row counts, and each entry's size and SHA-256), then
//!   `manifest.json.sha256`, so that a flipped byte anywhere, the manifest included, is caught.
//!
//! A restore goes into an empty database and empty storage only. It reads the whole file once to
//! check every checksum, the database copy's integrity and its row counts, and only then writes:
//! the files first (local storage: into a sibling folder renamed into place), the database last
//! (SQLite: a rename; PostgreSQL: `pg_restore --single-transaction`). Any failure removes what
//! the restore wrote, so it never leaves half a restore.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseBackend, IsolationLevel, Statement, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{DatabaseKind, Settings};
use crate::database::Database;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The `format` of a backup's manifest.
pub const FORMAT: &str = "agentdesk-backup";
/// The version of the format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const MANIFEST_SUM: &str = "manifest.json.sha256";
const SQLITE_ENTRY: &str = "database/agentdesk.sqlite";
const POSTGRES_ENTRY: &str = "database/agentdesk.pgdump";
const FILES_PREFIX: &str = "files/";
/// Manifests are small; a larger one is not ours.
const MANIFEST_LIMIT: u64 = 512 * 1024 * 1024;

/// What a backup holds, written into it as `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the build that wrote it.
    pub format_version: u32,
    /// The agentdesk version that wrote it.
    pub agentdesk_version: String,
    /// When the database snapshot was taken.
    pub created_at: DateTime<Utc>,
    /// The instance's name (`AGENTDESK_INSTANCE_NAME`).
    pub instance_name: String,
    /// The database part.
    pub database: DatabasePart,
    /// The stored files.
    pub files: FilesPart,
    /// Every entry but the manifest, with its size and SHA-256.
    pub entries: Vec<Entry>,
}

/// The database in a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatabasePart {
    /// `sqlite` or `postgres`.
    pub kind: String,
    /// The archive entry that holds it.
    pub entry: String,
    /// The migrations applied, in order: the schema version is the last.
    pub migrations: Vec<String>,
    /// Rows per table, counted in the snapshot that was backed up.
    pub tables: BTreeMap<String, u64>,
    /// The tool that wrote the dump (`pg_dump (PostgreSQL) 15.19`), for PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
}

impl DatabasePart {
    /// The schema version: the last migration applied.
    pub fn schema_version(&self) -> Option<&str> {
        self.migrations.last().map(String::as_str)
    }
}

/// The stored files in a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FilesPart {
    /// How many.
    pub count: u64,
    /// Their bytes in all.
    pub bytes: u64,
}

/// One archive entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Its path in the archive.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

fn failed(message: impl Into<String>) -> Error {
    Error::Backup(message.into())
}

fn io_failed(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Backup(format!("{what}: {e}"))
}

/// Runs blocking archive work off the runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| failed(format!("the backup task stopped: {e}")))?
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }
    fn finish(self) -> (u64, String) {
        (self.size, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SQLite file a `sqlite://` URL names.
fn sqlite_file(settings: &Settings) -> Result<PathBuf> {
    let url = settings.database_url();
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(&url);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        return Err(failed("an in-memory SQLite database cannot be backed up"));
    }
    Ok(PathBuf::from(path))
}

fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

// ---------------------------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------------------------

/// The database copy taken for a backup, in a temporary folder.
struct DatabaseCopy {
    part: DatabasePart,
    file: PathBuf,
    created_at: DateTime<Utc>,
}

/// Writes a backup of the database and every stored file to `out`, while the server may go on
/// serving. The file appears under its name only when complete (it is written beside it first).
pub async fn backup(settings: &Settings, out: &Path) -> Result<Manifest> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io_failed(parent.display(), e))?;
    let work = tempfile::Builder::new()
        .prefix(".agentdesk-backup-")
        .tempdir_in(&parent)
        .map_err(|e| io_failed(parent.display(), e))?;
    let copy = match settings.database_kind() {
        DatabaseKind::Sqlite => sqlite_copy(settings, work.path()).await?,
        DatabaseKind::Postgres => postgres_copy(settings, work.path()).await?,
    };
    // Listed after the snapshot: every file a row of the snapshot names exists by now (files are
    // written before the rows that name them, and never changed).
    let storage = Storage::open(&settings.storage_url())?;
    let objects = storage.list().await?;
    let partial = work.path().join("backup.partial");
    let handle = tokio::runtime::Handle::current();
    let instance_name = settings.instance_name.clone();
    let manifest = {
        let partial = partial.clone();
        blocking(move || write_archive(&partial, copy, &storage, &objects, instance_name, &handle))
            .await?
    };
    std::fs::rename(&partial, out).map_err(|e| io_failed(out.display(), e))?;
    sync_dir(&parent);
    Ok(manifest)
}

/// Creates a file only its owner can read: a backup holds every secret hash and every document.
fn create_private(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| io_failed(path.display(), e))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

async fn sqlite_copy(settings: &Settings, work: &Path) -> Result<DatabaseCopy> {
    let source = sqlite_file(settings)?;
    if !source.exists() {
        return Err(failed(format!(
            "there is no database at {}",
            source.display()
        )));
    }
    let file = work.join("agentdesk.sqlite");
    let created_at = Utc::now();
    // VACUUM INTO reads one consistent snapshot (WAL lets writers go on) and writes a compact
    // copy; a plain file copy of a live database could be torn.
    let mut conn = open_sqlite(&source, true).await?;
    let vacuum = format!("VACUUM INTO {}", sql_string(&file.to_string_lossy()));
    sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(vacuum))
        .execute(&mut conn)
        .await
        .map_err(|e| failed(format!("VACUUM INTO failed: {e}")))?;
    let _ = sea_orm::sqlx::Connection::close(conn).await;
    let (migrations, tables) = sqlite_contents(&file).await?;
    Ok(DatabaseCopy {
        part: DatabasePart {
            kind: "sqlite".into(),
            entry: SQLITE_ENTRY.into(),
            migrations,
            tables,
            tool: None,
        },
        file,
        created_at,
    })
}

async fn open_sqlite(path: &Path, read_only: bool) -> Result<sea_orm::sqlx::SqliteConnection> {
    use sea_orm::sqlx::ConnectOptions;
    sea_orm::sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(read_only)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| failed(format!("cannot open {}: {e}", path.display())))
}

/// The migrations and row counts of a SQLite file (checked for integrity first).
async fn sqlite_contents(path: &Path) -> Result<(Vec<String>, BTreeMap<String, u64>)> {
    use sea_orm::sqlx::Row;
    let mut conn = open_sqlite(path, true).await?;
    let query = |e: sea_orm::sqlx::Error| failed(format!("reading {}: {e}", path.display()));
    let check: String = sea_orm::sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .map_err(query)?;
    if check != "ok" {
        return Err(failed(format!(
            "the SQLite copy fails its integrity check: {check}"
        )));
    }
    let names: Vec<String> = sea_orm::sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(query)?;
    let mut tables = BTreeMap::new();
    for name in names {
        let count_rows = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
        let row = sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(count_rows))
            .fetch_one(&mut conn)
            .await
            .map_err(query)?;
        let count: i64 = row.try_get(0).map_err(query)?;
        tables.insert(name, count as u64);
    }
    let migrations = if tables.contains_key("seaql_migrations") {
        sea_orm::sqlx::query_scalar("SELECT version FROM seaql_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .map_err(query)?
    } else {
        Vec::new()
    };
    let _ = sea_orm::sqlx::Connection::close(conn).await;
    Ok((migrations, tables))
}

/// The user tables of a PostgreSQL database (schema-qualified when not in `public`).
const POSTGRES_TABLES: &str = "SELECT CASE WHEN table_schema = 'public' THEN table_name \
     ELSE table_schema || '.' || table_name END AS name, \
     quote_ident(table_schema) || '.' || quote_ident(table_name) AS qualified \
     FROM information_schema.tables \
     WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') \
     ORDER BY 1";

async fn postgres_copy(settings: &Settings, work: &Path) -> Result<DatabaseCopy> {
    let tool = pg_tool_version("pg_dump").await?;
    let db = Database::connect(settings).await?;
    // One repeatable-read transaction exports its snapshot; pg_dump reads that same snapshot,
    // so the dump and the row counts below agree, whatever commits meanwhile.
    let txn = db
        .writer()
        .begin_with_config(
            Some(IsolationLevel::RepeatableRead),
            Some(AccessMode::ReadOnly),
        )
        .await?;
    let created_at = Utc::now();
    let snapshot = txn
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT pg_export_snapshot() AS snapshot",
        ))
        .await?
        .ok_or_else(|| failed("pg_export_snapshot returned nothing"))?
        .try_get::<String>("", "snapshot")?;
    let rows = txn
        .query_all_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            POSTGRES_TABLES,
        ))
        .await?;
    let mut tables = BTreeMap::new();
    for row in rows {
        let name: String = row.try_get("", "name")?;
        let qualified: String = row.try_get("", "qualified")?;
        let count = txn
            .query_one_raw(Statement::from_string(
                DatabaseBackend::Postgres,
                format!("SELECT count(*) AS n FROM {qualified}"),
            ))
            .await?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        tables.insert(name, count as u64);
    }
    let migrations = if tables.contains_key("seaql_migrations") {
        txn.query_all_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT version FROM seaql_migrations ORDER BY version",
        ))
        .await?
        .into_iter()
        .map(|r| r.try_get::<String>("", "version"))
        .collect::<std::result::Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let file = work.join("agentdesk.pgdump");
    let output = tokio::process::Command::new("pg_dump")
        .arg("--format=custom")
        .arg(format!("--snapshot={snapshot}"))
        .arg("--no-owner")
        .arg("--no-privileges")
        .arg("--file")
        .arg(&file)
        .arg("--dbname")
        .arg(settings.database_url())
        .output()
        .await
        .map_err(|e| io_failed("cannot run pg_dump", e))?;
    txn.commit().await?;
    db.close().await;
    if !output.status.success() {
        return Err(failed(format!(
            "pg_dump failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(DatabaseCopy {
        part: DatabasePart {
            kind: "postgres".into(),
            entry: POSTGRES_ENTRY.into(),
            migrations,
            tables,
            tool: Some(tool),
        },
        file,
        created_at,
    })
}

/// `pg_dump --version` (or pg_restore's), or a message saying how to install it.
async fn pg_tool_version(tool: &str) -> Result<String> {
    match tokio::process::Command::new(tool)
        .arg("--version")
        .output()
        .await
    {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        _ => Err(failed(format!(
            "{tool} is needed for PostgreSQL backups and restores and was not found on PATH \
             (Debian: apt install postgresql-client, of the server's major version or newer)"
        ))),
    }
}

fn append(
    builder: &mut tar::Builder<std::io::BufWriter<std::fs::File>>,
    path: &str,
    size: u64,
    mtime: u64,
    reader: impl Read,
) -> Result<Entry> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    let mut hashing = Hashing::new(reader);
    builder
        .append_data(&mut header, path, &mut hashing)
        .map_err(|e| io_failed(format!("writing {path}"), e))?;
    let (read, sha256) = hashing.finish();
    if read != size {
        return Err(failed(format!(
            "{path} changed while it was backed up ({size} bytes expected, {read} read)"
        )));
    }
    Ok(Entry {
        path: path.to_owned(),
        size,
        sha256,
    })
}

fn write_archive(
    partial: &Path,
    copy: DatabaseCopy,
    storage: &Storage,
    objects: &[(String, u64)],
    instance_name: String,
    handle: &tokio::runtime::Handle,
) -> Result<Manifest> {
    let file = create_private(partial)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let mtime = copy.created_at.timestamp().max(0) as u64;
    let mut entries = Vec::with_capacity(objects.len() + 1);
    let db_file = std::fs::File::open(&copy.file).map_err(|e| io_failed(copy.file.display(), e))?;
    let db_size = db_file
        .metadata()
        .map_err(|e| io_failed(copy.file.display(), e))?
        .len();
    entries.push(append(
        &mut builder,
        &copy.part.entry,
        db_size,
        mtime,
        db_file,
    )?);
    let mut bytes = 0u64;
    for (key, size) in objects {
        let path = format!("{FILES_PREFIX}{key}");
        // A local store's files are read directly; S3 objects are streamed.
        let entry = match storage.local_file(key) {
            Some(file) => {
                let reader =
                    std::fs::File::open(&file).map_err(|e| io_failed(file.display(), e))?;
                append(&mut builder, &path, *size, mtime, reader)?
            }
            None => {
                let stream = handle.block_on(storage.get_stream(key))?;
                let reader = tokio_util::io::SyncIoBridge::new_with_handle(
                    tokio_util::io::StreamReader::new(stream),
                    handle.clone(),
                );
                append(&mut builder, &path, *size, mtime, reader)?
            }
        };
        entries.push(entry);
        bytes += size;
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        agentdesk_version: env!("CARGO_PKG_VERSION").into(),
        created_at: copy.created_at,
        instance_name,
        database: copy.part,
        files: FilesPart {
            count: objects.len() as u64,
            bytes,
        },
        entries,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(Error::internal)?;
    let sum = format!("{}\n", sha256_hex(&text));
    append(
        &mut builder,
        MANIFEST,
        text.len() as u64,
        mtime,
        text.as_slice(),
    )?;
    append(
        &mut builder,
        MANIFEST_SUM,
        sum.len() as u64,
        mtime,
        sum.as_bytes(),
    )?;
    let mut writer = builder
        .into_inner()
        .map_err(|e| io_failed(partial.display(), e))?;
    writer
        .flush()
        .map_err(|e| io_failed(partial.display(), e))?;
    writer
        .get_ref()
        .sync_all()
        .map_err(|e| io_failed(partial.display(), e))?;
    Ok(manifest)
}

// ---------------------------------------------------------------------------------------------
// Verify
// ---------------------------------------------------------------------------------------------

/// A backup whose every checksum held, with its database copy extracted for a restore.
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// The extracted database copy (in `_work`).
    database_file: PathBuf,
    _work: tempfile::TempDir,
}

/// Checks a backup without restoring it: every entry against the manifest (size and SHA-256), the
/// manifest against its own checksum, no entry missing or extra, the format version, and the
/// database copy itself (SQLite: integrity check, migrations and row counts; PostgreSQL: the
/// archive's table of contents, read by `pg_restore --list`).
pub async fn verify(path: &Path) -> Result<Manifest> {
    let work = tempfile::Builder::new()
        .prefix("agentdesk-verify-")
        .tempdir()
        .map_err(|e| io_failed("a temporary folder", e))?;
    Ok(verify_in(path, work).await?.manifest)
}

async fn verify_in(path: &Path, work: tempfile::TempDir) -> Result<Verified> {
    let source = path.to_owned();
    let work_path = work.path().to_owned();
    let (manifest, database_file) = blocking(move || read_and_check(&source, &work_path)).await?;
    match manifest.database.kind.as_str() {
        "sqlite" => {
            let (migrations, tables) = sqlite_contents(&database_file).await?;
            if migrations != manifest.database.migrations {
                return Err(failed(
                    "the database copy's migrations differ from the manifest",
                ));
            }
            if tables != manifest.database.tables {
                return Err(failed(format!(
                    "the database copy's row counts differ from the manifest: {}",
                    count_differences(&manifest.database.tables, &tables)
                )));
            }
        }
        "postgres" => {
            pg_tool_version("pg_restore").await?;
            let out = tokio::process::Command::new("pg_restore")
                .arg("--list")
                .arg(&database_file)
                .output()
                .await
                .map_err(|e| io_failed("cannot run pg_restore", e))?;
            if !out.status.success() {
                return Err(failed(format!(
                    "pg_restore cannot read the database dump: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        other => return Err(failed(format!("unknown database kind {other:?}"))),
    }
    Ok(Verified {
        manifest,
        database_file,
        _work: work,
    })
}

fn count_differences(expected: &BTreeMap<String, u64>, found: &BTreeMap<String, u64>) -> String {
    let mut names: Vec<&String> = expected.keys().chain(found.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| expected.get(*n) != found.get(*n))
        .map(|n| {
            format!(
                "{n}: {} in the manifest, {} in the copy",
                expected.get(n).map_or("none".into(), u64::to_string),
                found.get(n).map_or("none".into(), u64::to_string)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn entry_path(entry: &tar::Entry<'_, impl Read>) -> Result<String> {
    let path = entry
        .path()
        .map_err(|e| failed(format!("an entry has an unreadable name: {e}")))?;
    let text = path
        .to_str()
        .ok_or_else(|| failed("an entry's name is not UTF-8"))?
        .to_owned();
    if text.starts_with('/') || text.split('/').any(|s| s == ".." || s.is_empty()) {
        return Err(failed(format!("an entry has an unsafe name: {text:?}")));
    }
    Ok(text)
}

/// One pass over the archive: hashes every entry, extracts the database copy into `work`, and
/// checks the result against the manifest.
fn read_and_check(path: &Path, work: &Path) -> Result<(Manifest, PathBuf)> {
    let file = std::fs::File::open(path).map_err(|e| io_failed(path.display(), e))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let corrupt = |e: std::io::Error| failed(format!("the backup is damaged or not a backup: {e}"));
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut manifest_text: Option<Vec<u8>> = None;
    let mut manifest_sum: Option<String> = None;
    let mut database_file: Option<PathBuf> = None;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry_path(&entry)?;
        if manifest_sum.is_some() {
            return Err(failed(format!("{name} follows the manifest's checksum")));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(failed(format!("{name} is not a regular file")));
        }
        match name.as_str() {
            MANIFEST => {
                if entry.size() > MANIFEST_LIMIT {
                    return Err(failed("the manifest is too large"));
                }
                let mut text = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut text).map_err(corrupt)?;
                manifest_text = Some(text);
            }
            MANIFEST_SUM => {
                let mut text = String::new();
                entry
                    .by_ref()
                    .take(1024)
                    .read_to_string(&mut text)
                    .map_err(corrupt)?;
                manifest_sum = Some(text.trim().to_owned());
            }
            SQLITE_ENTRY | POSTGRES_ENTRY => {
                let target = work.join(if name == SQLITE_ENTRY {
                    "agentdesk.sqlite"
                } else {
                    "agentdesk.pgdump"
                });
                let mut out = create_private(&target)?;
                let mut hashing = Hashing::new(&mut entry);
                std::io::copy(&mut hashing, &mut out).map_err(corrupt)?;
                out.sync_all().map_err(|e| io_failed(target.display(), e))?;
                let digest = hashing.finish();
                if seen.insert(name.clone(), digest).is_some() {
                    return Err(failed(format!("{name} appears twice")));
                }
                database_file = Some(target);
            }
            other if other.starts_with(FILES_PREFIX) => {
                let mut hashing = Hashing::new(&mut entry);
                std::io::copy(&mut hashing, &mut std::io::sink()).map_err(corrupt)?;
                if seen.insert(name.clone(), hashing.finish()).is_some() {
                    return Err(failed(format!("{name} appears twice")));
                }
            }
            other => return Err(failed(format!("unexpected entry {other:?}"))),
        }
    }
    let text =
        manifest_text.ok_or_else(|| failed("the backup has no manifest (it may be truncated)"))?;
    let sum = manifest_sum
        .ok_or_else(|| failed("the backup has no manifest checksum (it may be truncated)"))?;
    if sha256_hex(&text) != sum {
        return Err(failed("the manifest does not match its checksum"));
    }
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| failed(format!("the manifest cannot be read: {e}")))?;
    if manifest.format != FORMAT {
        return Err(failed(format!(
            "not an agentdesk backup (format {:?})",
            manifest.format
        )));
    }
    if manifest.format_version > FORMAT_VERSION {
        return Err(failed(format!(
            "the backup's format version {} is newer than this build reads ({FORMAT_VERSION}); use agentdesk {} or newer",
            manifest.format_version, manifest.agentdesk_version
        )));
    }
    let listed: BTreeMap<&str, &Entry> = manifest
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    if listed.len() != manifest.entries.len() {
        return Err(failed("the manifest lists an entry twice"));
    }
    for (name, (size, sha256)) in &seen {
        let entry = listed
            .get(name.as_str())
            .ok_or_else(|| failed(format!("{name} is in the archive but not in the manifest")))?;
        if entry.size != *size || &entry.sha256 != sha256 {
            return Err(failed(format!("{name} does not match its checksum")));
        }
    }
    if let Some(missing) = listed.keys().find(|name| !seen.contains_key(**name)) {
        return Err(failed(format!("{missing} is missing from the archive")));
    }
    let files: Vec<&Entry> = manifest
        .entries
        .iter()
        .filter(|e| e.path.starts_with(FILES_PREFIX))
        .collect();
    if files.len() as u64 != manifest.files.count
        || files.iter().map(|e| e.size).sum::<u64>() != manifest.files.bytes
    {
        return Err(failed("the manifest's file totals do not add up"));
    }
    let database_file = database_file.ok_or_else(|| failed("the backup holds no database"))?;
    let expected = if manifest.database.kind == "sqlite" {
        SQLITE_ENTRY
    } else {
        POSTGRES_ENTRY
    };
    if manifest.database.entry != expected || !seen.contains_key(expected) {
        return Err(failed(
            "the database entry does not match the database kind",
        ));
    }
    Ok((manifest, database_file))
}

// ---------------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------------

/// Restores `path` into the database and storage that `settings` name, which must be empty; see
/// the module documentation for the order and the guarantees. `known_migrations` are this
/// build's: a backup of a newer schema is refused.
pub async fn restore(
    settings: &Settings,
    path: &Path,
    known_migrations: &[String],
) -> Result<Manifest> {
    let kind = settings.database_kind();
    // The copy is extracted next to where it goes, so that SQLite's is moved in by a rename.
    let work_parent = match kind {
        DatabaseKind::Sqlite => {
            let file = sqlite_file(settings)?;
            let dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from("."));
            std::fs::create_dir_all(&dir).map_err(|e| io_failed(dir.display(), e))?;
            dir
        }
        DatabaseKind::Postgres => std::env::temp_dir(),
    };
    let work = tempfile::Builder::new()
        .prefix(".agentdesk-restore-")
        .tempdir_in(&work_parent)
        .map_err(|e| io_failed(work_parent.display(), e))?;
    let verified = verify_in(path, work).await?;
    let manifest = &verified.manifest;
    let expected_kind = match kind {
        DatabaseKind::Sqlite => "sqlite",
        DatabaseKind::Postgres => "postgres",
    };
    if manifest.database.kind != expected_kind {
        return Err(failed(format!(
            "this is a {} backup and the configured database is {expected_kind}; restore it into a {} database",
            manifest.database.kind, manifest.database.kind
        )));
    }
    if let Some(unknown) = manifest
        .database
        .migrations
        .iter()
        .find(|m| !known_migrations.contains(m))
    {
        return Err(failed(format!(
            "the backup's schema is newer than this build (migration {unknown}); restore it with agentdesk {} or newer",
            manifest.agentdesk_version
        )));
    }
    ensure_database_empty(settings).await?;
    let storage_url = settings.storage_url();
    let storage = Storage::open(&storage_url)?;
    if !storage.list().await?.is_empty() {
        return Err(failed(format!(
            "the storage at {storage_url} is not empty; restore goes into empty storage only"
        )));
    }
    let written = restore_files(path, &storage_url, manifest).await?;
    let database = match kind {
        DatabaseKind::Sqlite => install_sqlite(settings, &verified.database_file),
        DatabaseKind::Postgres => install_postgres(settings, &verified.database_file).await,
    };
    if let Err(e) = database {
        written.undo(&storage).await;
        return Err(e);
    }
    Ok(verified.manifest)
}

async fn ensure_database_empty(settings: &Settings) -> Result<()> {
    match settings.database_kind() {
        DatabaseKind::Sqlite => {
            let file = sqlite_file(settings)?;
            if file.exists() {
                return Err(failed(format!(
                    "{} exists; restore goes into an empty data directory only",
                    file.display()
                )));
            }
        }
        DatabaseKind::Postgres => {
            pg_tool_version("pg_restore").await?;
            let db = Database::connect(settings).await?;
            let rows = db
                .reader()
                .query_all_raw(Statement::from_string(
                    DatabaseBackend::Postgres,
                    POSTGRES_TABLES,
                ))
                .await;
            db.close().await;
            if !rows?.is_empty() {
                return Err(failed(
                    "the PostgreSQL database has tables; restore goes into an empty database only",
                ));
            }
        }
    }
    Ok(())
}

/// What a restore wrote to the storage, to be removed if the database part fails.
enum Written {
    /// Local storage moved into place from this folder's contents.
    Folder(PathBuf),
    /// Objects put into S3 under these keys.
    Objects(Vec<String>),
}

impl Written {
    async fn undo(self, storage: &Storage) {
        match self {
            Written::Folder(dir) => {
                if let Ok(mut entries) = std::fs::read_dir(&dir) {
                    while let Some(Ok(entry)) = entries.next() {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
            Written::Objects(keys) => {
                for key in keys {
                    let _ = storage.delete(&key).await;
                }
            }
        }
    }
}

/// Second pass: the stored files. Local storage gets them in a sibling folder that is renamed
/// into place when all are there; S3 gets them one by one, deleted again on failure.
async fn restore_files(path: &Path, storage_url: &str, manifest: &Manifest) -> Result<Written> {
    let expected: BTreeMap<String, Entry> = manifest
        .entries
        .iter()
        .filter(|e| e.path.starts_with(FILES_PREFIX))
        .map(|e| (e.path.clone(), e.clone()))
        .collect();
    if let Some(dir) = storage_url.strip_prefix("file://") {
        let dir = PathBuf::from(dir);
        let staging = dir.with_file_name(format!(
            ".{}.restore-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("files"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| io_failed(staging.display(), e))?;
        let result = {
            let staging = staging.clone();
            let source = path.to_owned();
            blocking(move || extract_files(&source, &staging, &expected)).await
        };
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        // The storage folder is empty (checked) but may exist: an empty folder is replaced.
        if dir.exists() {
            std::fs::remove_dir(&dir).map_err(|e| io_failed(dir.display(), e))?;
        }
        std::fs::rename(&staging, &dir).map_err(|e| io_failed(dir.display(), e))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent);
        }
        return Ok(Written::Folder(dir));
    }
    let storage = Storage::open(storage_url)?;
    let handle = tokio::runtime::Handle::current();
    let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let result = {
        let source = path.to_owned();
        let storage = storage.clone();
        let written = written.clone();
        blocking(move || put_objects(&source, &storage, &expected, &handle, &written)).await
    };
    let keys = written.lock().map(|k| k.clone()).unwrap_or_default();
    match result {
        Ok(()) => Ok(Written::Objects(keys)),
        Err(e) => {
            Written::Objects(keys).undo(&storage).await;
            Err(e)
        }
    }
}

/// Calls `each(key, entry, reader)` for every stored file of the archive, re-checking its
/// checksum on the way (the file could have changed since it was verified).
fn for_each_file(
    path: &Path,
    expected: &BTreeMap<String, Entry>,
    mut each: impl FnMut(&str, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| io_failed(path.display(), e))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let corrupt = |e: std::io::Error| failed(format!("the backup changed while restoring: {e}"));
    let mut count = 0usize;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry_path(&entry)?;
        let Some(listed) = expected.get(&name) else {
            continue;
        };
        let key = &name[FILES_PREFIX.len()..];
        let mut hashing = Hashing::new(&mut entry);
        each(key, &mut hashing)?;
        // Whatever `each` left unread still counts.
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(corrupt)?;
        let (size, sha256) = hashing.finish();
        if size != listed.size || sha256 != listed.sha256 {
            return Err(failed(format!("{name} changed since it was verified")));
        }
        count += 1;
    }
    if count != expected.len() {
        return Err(failed(
            "the backup changed while restoring: files are missing",
        ));
    }
    Ok(())
}

fn extract_files(path: &Path, staging: &Path, expected: &BTreeMap<String, Entry>) -> Result<()> {
    for_each_file(path, expected, |key, reader| {
        let target = staging.join(key);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_failed(parent.display(), e))?;
        }
        let mut out = std::fs::File::create(&target).map_err(|e| io_failed(target.display(), e))?;
        std::io::copy(reader, &mut out).map_err(|e| io_failed(target.display(), e))?;
        out.sync_all().map_err(|e| io_failed(target.display(), e))
    })
}

fn put_objects(
    path: &Path,
    storage: &Storage,
    expected: &BTreeMap<String, Entry>,
    handle: &tokio::runtime::Handle,
    written: &std::sync::Mutex<Vec<String>>,
) -> Result<()> {
    for_each_file(path, expected, |key, reader| {
        // Objects go up in 8 MiB parts read from the archive, never whole in memory.
        let (tx, rx) =
            tokio::sync::mpsc::channel::<std::result::Result<bytes::Bytes, std::io::Error>>(2);
        let upload = {
            let storage = storage.clone();
            let key = key.to_owned();
            handle.spawn(async move { storage.put_stream_at(&key, tokio_stream_from(rx)).await })
        };
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = read_full(reader, &mut buf).map_err(|e| io_failed(key, e))?;
            if n == 0 {
                break;
            }
            if tx
                .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                .is_err()
            {
                break;
            }
        }
        drop(tx);
        if let Ok(mut keys) = written.lock() {
            keys.push(key.to_owned());
        }
        handle
            .block_on(upload)
            .map_err(|e| failed(format!("the upload of {key} stopped: {e}")))??;
        Ok(())
    })
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn install_sqlite(settings: &Settings, copy: &Path) -> Result<()> {
    let target = sqlite_file(settings)?;
    // Nothing may have appeared since the check; hard_link fails if it has, unlike rename.
    std::fs::hard_link(copy, &target).map_err(|e| io_failed(target.display(), e))?;
    if let Some(parent) = target.parent() {
        sync_dir(parent);
    }
    Ok(())
}

async fn install_postgres(settings: &Settings, dump: &Path) -> Result<()> {
    let output = tokio::process::Command::new("pg_restore")
        .arg("--single-transaction")
        .arg("--exit-on-error")
        .arg("--no-owner")
        .arg("--no-privileges")
        .arg("--dbname")
        .arg(settings.database_url())
        .arg(dump)
        .output()
        .await
        .map_err(|e| io_failed("cannot run pg_restore", e))?;
    if !output.status.success() {
        return Err(failed(format!(
            "pg_restore failed, and left the database as it was: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Destinations and retention
// ---------------------------------------------------------------------------------------------

/// A backup written to a destination (a folder, or `s3://bucket/prefix`).
#[derive(Debug, Clone)]
pub struct Stored {
    /// Where it went: the file's path or the object's URL.
    pub location: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its manifest.
    pub manifest: Manifest,
    /// Older backups removed to keep `keep`.
    pub removed: Vec<String>,
}

/// The name of a backup taken at `at`: sorts by time.
pub fn backup_name(at: DateTime<Utc>) -> String {
    format!("agentdesk-{}.backup", at.format("%Y%m%dT%H%M%SZ"))
}

fn is_backup_name(name: &str) -> bool {
    name.strip_prefix("agentdesk-")
        .and_then(|rest| rest.strip_suffix(".backup"))
        .is_some_and(|stamp| {
            stamp.len() == 16
                && chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").is_ok()
        })
}

/// Takes a backup into `dest` (a folder path, `file://folder` or `s3://bucket/prefix`) under a
/// time-stamped name, then removes the oldest backups there beyond `keep` (0 keeps all).
pub async fn backup_to(settings: &Settings, dest: &str, keep: usize) -> Result<Stored> {
    let name = backup_name(Utc::now());
    let (location, manifest, store) = if let Some(rest) = dest.strip_prefix("s3://") {
        let store = Storage::open(dest)?;
        let work = tempfile::Builder::new()
            .prefix(".agentdesk-backup-")
            .tempdir_in(&settings.data_dir)
            .or_else(|_| {
                tempfile::Builder::new()
                    .prefix("agentdesk-backup-")
                    .tempdir()
            })
            .map_err(|e| io_failed("a temporary folder", e))?;
        let local = work.path().join(&name);
        let manifest = backup(settings, &local).await?;
        let file = tokio::fs::File::open(&local)
            .await
            .map_err(|e| io_failed(local.display(), e))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 8 << 20);
        store.put_stream_at(&name, stream).await?;
        (
            format!("s3://{}/{name}", rest.trim_end_matches('/')),
            manifest,
            store,
        )
    } else {
        let dir = PathBuf::from(dest.strip_prefix("file://").unwrap_or(dest));
        let out = dir.join(&name);
        let manifest = backup(settings, &out).await?;
        let store = Storage::open(&format!("file://{}", dir.display()))?;
        (out.display().to_string(), manifest, store)
    };
    let size = store
        .list()
        .await?
        .into_iter()
        .find(|(key, _)| key == &name)
        .map(|(_, size)| size)
        .unwrap_or(0);
    let mut removed = Vec::new();
    if keep > 0 {
        let mut names: Vec<String> = store
            .list()
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| is_backup_name(key))
            .collect();
        names.sort();
        let excess = names.len().saturating_sub(keep);
        for old in names.into_iter().take(excess) {
            store.delete(&old).await?;
            removed.push(old);
        }
    }
    Ok(Stored {
        location,
        size,
        manifest,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_sort_by_time_and_are_recognised() {
        let a = backup_name("2026-01-02T03:04:05Z".parse().unwrap());
        let b = backup_name("2026-11-02T03:04:05Z".parse().unwrap());
        assert_eq!(a, "agentdesk-20260102T030405Z.backup");
        assert!(a < b);
        assert!(is_backup_name(&a));
        assert!(!is_backup_name("agentdesk-latest.backup"));
        assert!(!is_backup_name("notes.txt"));
    }
}
