//! Hot reads on SQLite, run on the calling thread.
//!
//! sqlx drives each SQLite connection from a thread of its own: every query is sent to that
//! thread and its rows sent back. Under the reference load that hand-off (channels, futex
//! wake-ups, task switches) was most of a member's `GET /clients/{id}`, SQLite's own work under
//! 1 % (BENCHMARKS.md, "Member reads"). The hot reads of `clients` therefore run here, through
//! rusqlite on read-only connections to the same file, straight on the caller's thread: in WAL
//! mode a reader never waits for the writer, and these are index walks of a few pages.
//!
//! Whatever this path does not carry gives `None`, and the caller runs the same statement
//! through sqlx, which stays the one path for errors: a read that would wait (busy timeout 0),
//! a parameter or column type it does not know, a statement SQLite refuses, a value it cannot
//! decode. So a result from here is always the one sqlx would have given.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags};
use sea_orm::{Statement, Value};
use uuid::Uuid;

/// Read-only connections to one SQLite file, used one at a time by whoever takes them.
#[derive(Debug)]
pub struct InlineReader {
    path: String,
    idle: Mutex<Vec<Connection>>,
    /// Connections kept between reads; more are opened under a burst and closed after it.
    keep: usize,
}

/// A row type that inline reads decode: the columns a statement must select, in order, and
/// how one row reads (`None`: a value this path cannot decode).
pub trait InlineRow: Sized {
    /// The selected columns' names, in order.
    const COLUMNS: &'static [&'static str];
    /// Reads one row whose columns are [`Self::COLUMNS`].
    fn decode(row: &rusqlite::Row<'_>) -> Option<Self>;
}

impl InlineReader {
    /// Reads of the SQLite file at `path`, keeping up to `keep` connections open.
    pub fn new(path: String, keep: usize) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            keep: keep.max(1),
        }
    }

    /// The rows of `statement` (a SELECT whose columns are `T::COLUMNS`), or `None` when this
    /// path cannot give them (see the module's documentation).
    pub fn rows<T: InlineRow>(&self, statement: &Statement) -> Option<Vec<T>> {
        self.with_statement(statement, |prepared, params| {
            let names = prepared.column_names();
            if names.len() != T::COLUMNS.len() || names.iter().zip(T::COLUMNS).any(|(a, b)| a != b)
            {
                return None;
            }
            let mut rows = prepared.query(rusqlite::params_from_iter(params)).ok()?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().ok()? {
                out.push(T::decode(row)?);
            }
            Some(out)
        })
    }

    /// The first column of the first row of `statement` as an integer (`Some(None)`: no row).
    pub fn integer(&self, statement: &Statement) -> Option<Option<i64>> {
        self.with_statement(statement, |prepared, params| {
            let mut rows = prepared.query(rusqlite::params_from_iter(params)).ok()?;
            match rows.next().ok()? {
                None => Some(None),
                Some(row) => integer(row, 0).map(Some),
            }
        })
    }

    fn with_statement<R>(
        &self,
        statement: &Statement,
        read: impl FnOnce(&mut rusqlite::CachedStatement<'_>, &[SqlValue]) -> Option<R>,
    ) -> Option<R> {
        let params = match &statement.values {
            Some(values) => values.0.iter().map(parameter).collect::<Option<Vec<_>>>()?,
            None => Vec::new(),
        };
        let conn = self.take()?;
        let result = conn
            .prepare_cached(&statement.sql)
            .ok()
            .and_then(|mut prepared| read(&mut prepared, &params));
        self.put(conn);
        result
    }

    fn take(&self) -> Option<Connection> {
        if let Some(conn) = self.idle.lock().ok()?.pop() {
            return Some(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        // Never wait on this thread: a read that would wait goes to sqlx, which waits off it.
        conn.busy_timeout(Duration::ZERO).ok()?;
        conn.pragma_update(None, "temp_store", "memory").ok()?;
        conn.set_prepared_statement_cache_capacity(32);
        Some(conn)
    }

    fn put(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.keep
        {
            idle.push(conn);
        }
    }
}

/// A statement's parameter as sqlx binds it on SQLite (sea-query-sqlx, sqlx-sqlite's encoders):
/// UUIDs as 16-byte blobs, times as RFC 3339 text, JSON as text, booleans as integers.
fn parameter(value: &Value) -> Option<SqlValue> {
    fn or_null<T>(value: &Option<T>, f: impl FnOnce(&T) -> SqlValue) -> SqlValue {
        value.as_ref().map_or(SqlValue::Null, f)
    }
    Some(match value {
        Value::Bool(v) => or_null(v, |b| SqlValue::Integer(i64::from(*b))),
        Value::TinyInt(v) => or_null(v, |n| SqlValue::Integer(i64::from(*n))),
        Value::SmallInt(v) => or_null(v, |n| SqlValue::Integer(i64::from(*n))),
        Value::Int(v) => or_null(v, |n| SqlValue::Integer(i64::from(*n))),
        Value::BigInt(v) => or_null(v, |n| SqlValue::Integer(*n)),
        Value::TinyUnsigned(v) => or_null(v, |n| SqlValue::Integer(i64::from(*n))),
        Value::SmallUnsigned(v) => or_null(v, |n| SqlValue::Integer(i64::from(*n))),
        Value::Unsigned(v) => or_null(v, |n| SqlValue::Integer(i64::from(*n))),
        Value::BigUnsigned(v) => match v {
            Some(n) => SqlValue::Integer(i64::try_from(*n).ok()?),
            None => SqlValue::Null,
        },
        Value::Float(v) => or_null(v, |f| SqlValue::Real(f64::from(*f))),
        Value::Double(v) => or_null(v, |f| SqlValue::Real(*f)),
        Value::String(v) => or_null(v, |s| SqlValue::Text(s.clone())),
        Value::Char(v) => or_null(v, |c| SqlValue::Text(c.to_string())),
        Value::Bytes(v) => or_null(v, |b| SqlValue::Blob(b.clone())),
        Value::Uuid(v) => or_null(v, |u| SqlValue::Blob(u.as_bytes().to_vec())),
        Value::ChronoDateTimeUtc(v) => or_null(v, |t| {
            SqlValue::Text(t.to_rfc3339_opts(SecondsFormat::AutoSi, false))
        }),
        Value::Json(v) => or_null(v, |j| SqlValue::Text(j.to_string())),
        _ => return None,
    })
}

/// A UUID column (sqlx writes 16-byte blobs; text is read too).
pub fn uuid(row: &rusqlite::Row<'_>, index: usize) -> Option<Uuid> {
    match row.get_ref(index).ok()? {
        ValueRef::Blob(bytes) => Uuid::from_slice(bytes).ok(),
        ValueRef::Text(text) => Uuid::parse_str(std::str::from_utf8(text).ok()?).ok(),
        _ => None,
    }
}

/// A nullable column read by `read` (one of this module's readers): `Some(None)` for NULL.
pub fn optional<T>(
    row: &rusqlite::Row<'_>,
    index: usize,
    read: fn(&rusqlite::Row<'_>, usize) -> Option<T>,
) -> Option<Option<T>> {
    match row.get_ref(index).ok()? {
        ValueRef::Null => Some(None),
        _ => read(row, index).map(Some),
    }
}

/// A text column.
pub fn text(row: &rusqlite::Row<'_>, index: usize) -> Option<String> {
    match row.get_ref(index).ok()? {
        ValueRef::Text(text) => String::from_utf8(text.to_vec()).ok(),
        _ => None,
    }
}

/// An integer column.
pub fn integer(row: &rusqlite::Row<'_>, index: usize) -> Option<i64> {
    match row.get_ref(index).ok()? {
        ValueRef::Integer(n) => Some(n),
        _ => None,
    }
}

/// A JSON column (stored as text).
pub fn json(row: &rusqlite::Row<'_>, index: usize) -> Option<serde_json::Value> {
    match row.get_ref(index).ok()? {
        ValueRef::Text(text) => serde_json::from_slice(text).ok(),
        _ => None,
    }
}

/// A time column: RFC 3339 text as sqlx writes it, or SQLite's own `YYYY-MM-DD HH:MM:SS[.fff]`
/// (UTC).
pub fn time(row: &rusqlite::Row<'_>, index: usize) -> Option<DateTime<Utc>> {
    let ValueRef::Text(text) = row.get_ref(index).ok()? else {
        return None;
    };
    let text = std::str::from_utf8(text).ok()?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}
