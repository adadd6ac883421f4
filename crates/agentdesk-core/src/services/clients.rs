//! Clients: the customer records. Every read and write is scoped by the caller's permit: a
//! list filters by the permit's clients inside the SQL query, and a record outside the scope is
//! a 404 that leaves a `denied` audit event. Updates are JSON merge patches (RFC 7396) checked
//! against the version the caller read (`If-Match`).

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, LikeExpr, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Select, Set, Statement, TryIntoModel,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Core;
use super::audit::{Outcome, diff};
use super::permissions::{ClientScope, Permit};
use super::users::like_pattern;
use crate::error::{Error, FieldError, Result, map_unique};
use crate::models::client::{self, Client, STATUSES};
use crate::validators::Email;

/// The fields a caller may set.
pub const EDITABLE: [&str; 8] = [
    "name", "email", "phone", "company", "status", "tags", "notes", "metadata",
];
const EMAIL_TAKEN: &str = "a client with this email already exists";
const EMAIL_UNIQUE: [&str; 2] = ["ux_clients_email_key", "clients.email_key"];
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Tables whose rows belong to a client and follow it when clients are merged.
const CLIENT_OWNED_TABLES: [&str; 5] = [
    "jobs",
    "documents",
    "document_pages",
    "recordings",
    "recording_segments",
];

/// A client's fields, validated and normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFields {
    /// Name.
    pub name: String,
    /// Email (valid).
    pub email: Option<String>,
    /// Phone as entered.
    pub phone: Option<String>,
    /// Company.
    pub company: Option<String>,
    /// Status.
    pub status: String,
    /// Tags, trimmed and deduplicated.
    pub tags: Vec<String>,
    /// Notes.
    pub notes: Option<String>,
    /// Metadata object.
    pub metadata: Value,
}

fn opt_text(doc: &Value, field: &str, max: usize, errors: &mut Vec<FieldError>) -> Option<String> {
    match doc.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            // The limit is on the text as sent (what the OpenAPI document's maxLength says).
            if s.chars().count() > max {
                errors.push(FieldError::new(
                    field,
                    format!("must be at most {max} characters"),
                ));
                None
            } else if s.trim().is_empty() {
                None
            } else {
                Some(s.trim().to_owned())
            }
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string or null"));
            None
        }
    }
}

impl ClientFields {
    /// Validates a JSON object of client fields; unknown or read-only fields are errors.
    pub fn from_json(doc: &Value) -> Result<Self> {
        let Some(obj) = doc.as_object() else {
            return Err(Error::invalid("", "the body must be a JSON object"));
        };
        // The HTTP layer refuses NUL already; this covers what arrives otherwise (CSV imports).
        if let Some(path) = crate::validators::nul_path(doc) {
            return Err(Error::invalid(path, crate::validators::NUL_MESSAGE));
        }
        let mut errors = Vec::new();
        for key in obj.keys() {
            if !EDITABLE.contains(&key.as_str()) {
                errors.push(FieldError::new(
                    key.clone(),
                    "is not a field of a client, or cannot be changed",
                ));
            }
        }
        let name = match doc.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 200 => {
                s.trim().to_owned()
            }
            Some(Value::String(s)) if !s.trim().is_empty() => {
                errors.push(FieldError::new("name", "must be at most 200 characters"));
                String::new()
            }
            _ => {
                errors.push(FieldError::new("name", "is required (1 to 200 characters)"));
                String::new()
            }
        };
        let email = opt_text(doc, "email", 254, &mut errors).and_then(|e| match Email::parse(&e) {
            Ok(e) => Some(e.as_str().to_owned()),
            Err(m) => {
                errors.push(FieldError::new("email", m));
                None
            }
        });
        let phone = opt_text(doc, "phone", 40, &mut errors);
        if let Some(p) = &phone {
            let digits = p.chars().filter(char::is_ascii_digit).count();
            if digits < 3
                || !p
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-().".contains(c))
            {
                errors.push(FieldError::new(
                    "phone",
                    "must be digits with optional + - ( ) . and spaces",
                ));
            }
        }
        let company = opt_text(doc, "company", 200, &mut errors);
        let notes = opt_text(doc, "notes", 10_000, &mut errors);
        let status = match doc.get("status") {
            None | Some(Value::Null) => "active".to_owned(),
            Some(Value::String(s)) if STATUSES.contains(&s.as_str()) => s.clone(),
            Some(_) => {
                errors.push(FieldError::new(
                    "status",
                    format!("must be one of {}", STATUSES.join(", ")),
                ));
                String::new()
            }
        };
        let mut tags = Vec::new();
        match doc.get("tags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if items.len() > 50 {
                    errors.push(FieldError::new("tags", "at most 50 tags"));
                }
                for item in items {
                    match item.as_str() {
                        Some(raw)
                            if !raw.trim().is_empty()
                                && raw.chars().count() <= 50
                                && !raw.chars().any(char::is_control) =>
                        {
                            let t = raw.trim();
                            if !tags.iter().any(|x: &String| x == t) {
                                tags.push(t.to_owned());
                            }
                        }
                        _ => errors.push(FieldError::new(
                            "tags",
                            "each tag is a string of 1 to 50 characters",
                        )),
                    }
                }
            }
            Some(_) => errors.push(FieldError::new("tags", "must be a list of strings")),
        }
        let metadata = match doc.get("metadata") {
            None | Some(Value::Null) => json!({}),
            Some(m @ Value::Object(_)) => {
                if m.to_string().len() > MAX_METADATA_BYTES {
                    errors.push(FieldError::new("metadata", "must be at most 16 KiB"));
                }
                m.clone()
            }
            Some(_) => {
                errors.push(FieldError::new("metadata", "must be a JSON object"));
                json!({})
            }
        };
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        Ok(Self {
            name,
            email,
            phone,
            company,
            status,
            tags,
            notes,
            metadata,
        })
    }

    /// The editable fields as a JSON object (the base a merge patch applies to).
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name, "email": self.email, "phone": self.phone, "company": self.company,
            "status": self.status, "tags": self.tags, "notes": self.notes, "metadata": self.metadata,
        })
    }

    /// A client's current fields.
    pub fn from_client(c: &Client) -> Self {
        Self {
            name: c.name.clone(),
            email: c.email.clone(),
            phone: c.phone.clone(),
            company: c.company.clone(),
            status: c.status.clone(),
            tags: c.tags.clone(),
            notes: c.notes.clone(),
            metadata: c.metadata.clone(),
        }
    }
}

/// RFC 7396 JSON merge patch: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(target) = target.as_object_mut() {
                for (key, value) in patch {
                    if value.is_null() {
                        target.remove(key);
                    } else {
                        merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Digits only, keeping a leading `+`: the key that finds the same phone written differently.
pub fn phone_key(phone: &str) -> String {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    if phone.trim_start().starts_with('+') {
        format!("+{digits}")
    } else {
        digits
    }
}

fn search_text(f: &ClientFields) -> String {
    [
        Some(f.name.as_str()),
        f.email.as_deref(),
        f.company.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("\n")
    .to_lowercase()
}

/// What duplicate detection compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKeys {
    /// The client.
    pub id: Uuid,
    /// Lowercased name.
    pub name_key: String,
    /// Lowercased email.
    pub email_key: Option<String>,
    /// Digits of the phone.
    pub phone_key: Option<String>,
    /// Company.
    pub company: Option<String>,
}

/// The columns that the editable fields determine (values and their normalised keys).
fn fields_model(f: &ClientFields) -> client::ActiveModel {
    client::ActiveModel {
        name: Set(f.name.clone()),
        name_key: Set(f.name.to_lowercase()),
        email: Set(f.email.clone()),
        email_key: Set(f.email.as_ref().map(|e| e.to_lowercase())),
        phone: Set(f.phone.clone()),
        phone_key: Set(f.phone.as_deref().map(phone_key)),
        company: Set(f.company.clone()),
        status: Set(f.status.clone()),
        tags: Set(json!(f.tags)),
        notes: Set(f.notes.clone()),
        metadata: Set(f.metadata.clone()),
        search_text: Set(search_text(f)),
        ..Default::default()
    }
}

/// A new client row for `f` (a fresh id, version 1, created now) and the client it becomes.
fn new_client_row(
    f: &ClientFields,
    created_by: Option<Uuid>,
) -> Result<(Client, client::ActiveModel)> {
    let now = Utc::now().trunc_subsecs(6);
    let model = client::ActiveModel {
        id: Set(Uuid::now_v7()),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
        created_by: Set(created_by),
        deleted_at: Set(None),
        ..fields_model(f)
    };
    let row = model
        .clone()
        .try_into_model()
        .map_err(|e| Error::Internal(format!("incomplete client row: {e}")))?;
    Ok((Client::from(row), model))
}

/// The UPDATE that writes `f` over `current` (bumping the version, `updated_at` now) and the
/// client it leaves. The current version in its WHERE clause makes the check and the write one
/// atomic step: it affects no row when someone else wrote first.
fn client_update(
    backend: DatabaseBackend,
    current: &Client,
    f: &ClientFields,
) -> Result<(Client, Statement)> {
    let now = Utc::now().trunc_subsecs(6);
    let model = client::ActiveModel {
        id: Set(current.id),
        version: Set(current.version + 1),
        updated_at: Set(now),
        ..fields_model(f)
    };
    // The row as it will be: what the UPDATE sets plus the columns it leaves alone.
    let row = client::ActiveModel {
        created_at: Set(current.created_at),
        created_by: Set(current.created_by),
        deleted_at: Set(None),
        ..model.clone()
    }
    .try_into_model()
    .map_err(|e| Error::Internal(format!("incomplete client row: {e}")))?;
    let update = client::Entity::update_many()
        .set(model)
        .filter(client::Column::Id.eq(current.id))
        .filter(client::Column::Version.eq(current.version))
        .filter(client::Column::DeletedAt.is_null())
        .build(backend);
    Ok((Client::from(row), update))
}

/// A merge patch applied to a client, ready to write ([`Core::update_client`]).
struct Patched {
    fields: ClientFields,
    updated: Client,
    update: Statement,
    record: super::audit::AuditRecord,
}

/// The UPDATE that marks a live client deleted (freeing its email for a new client).
fn client_removal(backend: DatabaseBackend, id: Uuid) -> Statement {
    client::Entity::update_many()
        .col_expr(client::Column::DeletedAt, Expr::value(Utc::now()))
        .col_expr(
            client::Column::EmailKey,
            Expr::value(Option::<String>::None),
        )
        .filter(client::Column::Id.eq(id))
        .filter(client::Column::DeletedAt.is_null())
        .build(backend)
}

/// A duplicate email as the API's conflict; other errors unchanged.
fn email_conflict(err: Error) -> Error {
    match err {
        Error::Database(db) => map_unique(db, &EMAIL_UNIQUE, EMAIL_TAKEN),
        other => other,
    }
}

/// Filters of the client list.
#[derive(Debug, Clone, Default)]
pub struct ClientFilter {
    /// Matches name, email and company, case-insensitively.
    pub q: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Only clients with this tag.
    pub tag: Option<String>,
}

/// Orders of the client list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSort {
    /// Newest first (the default).
    CreatedDesc,
    /// Oldest first.
    CreatedAsc,
    /// By name, A to Z.
    NameAsc,
    /// By name, Z to A.
    NameDesc,
    /// Least recently changed first.
    UpdatedAsc,
    /// Most recently changed first.
    UpdatedDesc,
}

impl ClientSort {
    /// Every `sort` value with its order; what the OpenAPI document lists and `parse` accepts.
    pub const CHOICES: [(&'static str, Self); 6] = [
        ("-created_at", Self::CreatedDesc),
        ("created_at", Self::CreatedAsc),
        ("name", Self::NameAsc),
        ("-name", Self::NameDesc),
        ("updated_at", Self::UpdatedAsc),
        ("-updated_at", Self::UpdatedDesc),
    ];

    /// The names of [`Self::CHOICES`].
    pub fn names() -> Vec<&'static str> {
        Self::CHOICES.iter().map(|(name, _)| *name).collect()
    }

    /// Parses `sort`: one of [`Self::CHOICES`], `-created_at` when absent.
    pub fn parse(raw: Option<&str>) -> Result<Self> {
        let raw = raw.unwrap_or("-created_at");
        Self::CHOICES
            .iter()
            .find(|(name, _)| *name == raw)
            .map(|(_, sort)| *sort)
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "sort `{raw}` is not one of {}",
                    Self::names().join(", ")
                ))
            })
    }

    fn descending(self) -> bool {
        matches!(self, Self::CreatedDesc | Self::NameDesc | Self::UpdatedDesc)
    }
}

/// One page of clients.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClientPage {
    /// The clients.
    pub items: Vec<Client>,
    /// The next page's cursor, or null.
    pub next_cursor: Option<String>,
}

/// The page of `rows` (up to `limit + 1` of them, the extra one telling that more follow).
fn client_page(rows: Vec<client::Model>, sort: ClientSort, limit: u64) -> ClientPage {
    let (rows, next_cursor) = crate::pagination::split_page(rows, limit, |last| {
        crate::pagination::encode_keyed_cursor(last.id, &cursor_key(sort, last))
    });
    ClientPage {
        items: rows.into_iter().map(Client::from).collect(),
        next_cursor,
    }
}

/// The sort key of `row` in a cursor: the bytes of its name key, or its `updated_at` as
/// nanoseconds (8 bytes, big-endian); nothing for the orders by creation, which the id keeps.
fn cursor_key(sort: ClientSort, row: &client::Model) -> Vec<u8> {
    match sort {
        ClientSort::NameAsc | ClientSort::NameDesc => row.name_key.as_bytes().to_vec(),
        ClientSort::UpdatedAsc | ClientSort::UpdatedDesc => row
            .updated_at
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .to_be_bytes()
            .to_vec(),
        ClientSort::CreatedAsc | ClientSort::CreatedDesc => Vec::new(),
    }
}

/// The `updated_at` of a cursor's key. Any bytes name a time (at most 8 are read, missing ones
/// are zeros), so that every cursor of the documented pattern is a position.
fn cursor_time(key: &[u8]) -> DateTime<Utc> {
    let mut nanos = [0u8; 8];
    for (slot, byte) in nanos.iter_mut().zip(key) {
        *slot = *byte;
    }
    DateTime::from_timestamp_nanos(i64::from_be_bytes(nanos))
}

/// Checks `If-Match` against the current version; `*` matches any.
fn check_if_match(if_match: Option<&str>, current: &Client) -> Result<()> {
    match if_match.map(str::trim) {
        None | Some("*") => Ok(()),
        Some(value) => {
            let ok = value
                .split(',')
                .map(|v| v.trim().trim_start_matches("W/"))
                .any(|v| v == current.etag());
            if ok {
                Ok(())
            } else {
                Err(Error::PreconditionFailed)
            }
        }
    }
}

/// Inserts `(client, tag)` rows by multi-row statements: one for a client's tags, a few for a
/// bulk import's batch (5,000 rows each, within both databases' bound-parameter limits).
async fn insert_tag_rows(conn: &impl ConnectionTrait, rows: &[(Uuid, &str)]) -> Result<()> {
    for chunk in rows.chunks(5000) {
        let (sql, values) = tag_rows_insert(chunk, 0);
        conn.execute_raw(Statement::from_sql_and_values(
            conn.get_database_backend(),
            sql,
            values,
        ))
        .await?;
    }
    Ok(())
}

/// The multi-row INSERT of `(client, tag)` rows, its parameters numbered from `after + 1`.
fn tag_rows_insert(rows: &[(Uuid, &str)], after: usize) -> (String, Vec<sea_orm::Value>) {
    let placeholders: Vec<String> = (0..rows.len())
        .map(|i| format!("(${}, ${})", after + 2 * i + 1, after + 2 * i + 2))
        .collect();
    let values = rows
        .iter()
        .flat_map(|(id, tag)| [(*id).into(), sea_orm::Value::from(*tag)])
        .collect();
    (
        format!(
            "INSERT INTO client_tags (client_id, tag) VALUES {}",
            placeholders.join(", ")
        ),
        values,
    )
}

/// Rows of the sample that estimates how common a search's matches are (SQLite).
const SEARCH_SAMPLE: u64 = 256;
/// Rows a search may expect to walk before the trigram index is the better plan (SQLite).
const SEARCH_WALK: u64 = 4096;

impl Core {
    /// The SQL condition for a substring search of name, email and company, for a page of
    /// `limit` in `scope`.
    ///
    /// PostgreSQL plans it from its statistics of the trigram GIN index. On SQLite, a `LIKE`
    /// tested on each row while the page's order is walked stops at the page's end: that wins
    /// when matches are common, or the scope is a grant's few hundred clients. When they are
    /// rare among all clients, the FTS5 trigram index wins: it finds every match (then sorted),
    /// where the walk would read most of the table; rows written since its last update are
    /// tested directly ([`crate::search_index`]). Which one, SQLite cannot tell, so we ask
    /// a sample of the newest rows how common matches are.
    async fn client_search(
        &self,
        q: &str,
        scope: &ClientScope,
        limit: u64,
    ) -> Result<sea_orm::sea_query::SimpleExpr> {
        let pattern = like_pattern(q);
        let walk = Expr::col((client::Entity, client::Column::SearchText))
            .like(LikeExpr::new(pattern.clone()).escape('\\'));
        if self.db.backend() == DatabaseBackend::Postgres || matches!(scope, ClientScope::Only(_)) {
            return Ok(walk);
        }
        // The FTS5 trigram index answers LIKE for three characters or more (without ESCAPE).
        if q.chars().count() < 3 || q.contains(['%', '_', '\\']) {
            return Ok(walk);
        }
        // The newest rows as a sample of how common matches are (a few dozen microseconds).
        let sample = sea_orm::Statement::from_sql_and_values(
            DatabaseBackend::Sqlite,
            format!(
                "SELECT count(*) FROM (SELECT search_text FROM clients ORDER BY rowid DESC \
                 LIMIT {SEARCH_SAMPLE}) WHERE search_text LIKE ? ESCAPE '\\'"
            ),
            [sea_orm::Value::from(pattern.as_str())],
        );
        let matches = self.db.read_integer(sample).await?;
        // The walk reads about (limit + 1) * SAMPLE / matches rows: at most SEARCH_WALK.
        let use_walk = matches > 0
            && (limit as i64 + 1) * SEARCH_SAMPLE as i64 <= matches * SEARCH_WALK as i64;
        Ok(if use_walk {
            walk
        } else {
            // The index holds every row but those noted since its last update, whose text
            // the LIKE tests here (`search_index.rs`): exact either way.
            Expr::cust_with_values(
                format!(
                    "clients.rowid IN (SELECT rowid FROM clients_fts WHERE search_text LIKE ? \
                     UNION ALL {})",
                    crate::search_index::PENDING_ROWIDS
                ),
                [pattern],
            )
            .and(walk)
        })
    }

    /// The SQL condition for clients that are not deleted and that `scope` covers.
    pub fn live_client(scope: &ClientScope) -> Condition {
        Condition::all()
            .add(client::Column::DeletedAt.is_null())
            .add(scope.condition((client::Entity, client::Column::Id)))
    }

    /// A page of clients in the caller's scope (`clients:read`).
    pub async fn list_clients(
        &self,
        permit: &Permit,
        filter: &ClientFilter,
        sort: ClientSort,
        limit: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<ClientPage> {
        permit.require("clients", "read")?;
        let limit = crate::pagination::parse_limit(limit)?;
        // One grant (the common case): join its rows of `grant_clients` and walk them in the
        // page's order, so the page ends after `limit` rows of the grant, not after a pass
        // over all of them. Several grants: their union, as a condition (`live_client`).
        let single_grant = match permit.scope() {
            ClientScope::Only(scoped) if scoped.grants().len() == 1 => Some(scoped.grants()[0]),
            _ => None,
        };
        let grant_clients = Alias::new("grant_clients");
        let id_column = match single_grant {
            Some(_) => Expr::col((grant_clients.clone(), Alias::new("client_id"))),
            None => Expr::col((client::Entity, client::Column::Id)),
        };
        let mut condition = match single_grant {
            Some(_) => Condition::all().add(client::Column::DeletedAt.is_null()),
            None => Self::live_client(permit.scope()),
        };
        // Whether the page's walk is short by construction, so that it may run on the calling
        // thread: without filters it stops after `limit + 1` rows; with them, a scope of a few
        // thousand clients bounds it. An admin's filtered page could walk the whole table.
        let short_walk = match permit.scope() {
            ClientScope::Only(scoped) => scoped.clients().len() as u64 <= SEARCH_WALK,
            ClientScope::All => {
                filter.status.is_none()
                    && filter.tag.is_none()
                    && filter.q.as_deref().is_none_or(|q| q.trim().is_empty())
            }
        };
        if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            condition = condition.add(self.client_search(q, permit.scope(), limit).await?);
        }
        if let Some(status) = &filter.status {
            if !STATUSES.contains(&status.as_str()) {
                return Err(Error::BadRequest(format!(
                    "status must be one of {}",
                    STATUSES.join(", ")
                )));
            }
            condition = condition.add(client::Column::Status.eq(status.clone()));
        }
        if let Some(tag) = &filter.tag {
            let tagged = Query::select()
                .column(Alias::new("client_id"))
                .from(Alias::new("client_tags"))
                .and_where(Expr::col(Alias::new("tag")).eq(tag.clone()))
                .to_owned();
            condition = condition.add(client::Column::Id.in_subquery(tagged));
        }
        let key_column = match sort {
            ClientSort::NameAsc | ClientSort::NameDesc => Some(client::Column::NameKey),
            ClientSort::UpdatedAsc | ClientSort::UpdatedDesc => Some(client::Column::UpdatedAt),
            _ => None,
        };
        let mut beyond_cursor = None;
        if let Some(raw) = cursor.filter(|c| !c.is_empty()) {
            let (after, key) = crate::pagination::decode_keyed_cursor(raw)?;
            let desc = sort.descending();
            let after_id = if desc {
                id_column.clone().lt(after)
            } else {
                id_column.clone().gt(after)
            };
            beyond_cursor = Some(match key_column {
                None => Condition::all().add(after_id),
                Some(col) => {
                    let key: sea_orm::Value = if matches!(col, client::Column::UpdatedAt) {
                        cursor_time(&key).into()
                    } else {
                        String::from_utf8_lossy(&key).into_owned().into()
                    };
                    let beyond = if desc {
                        Expr::col(col).lt(key.clone())
                    } else {
                        Expr::col(col).gt(key.clone())
                    };
                    Condition::any()
                        .add(beyond)
                        .add(Condition::all().add(Expr::col(col).eq(key)).add(after_id))
                }
            });
        }
        let order = if sort.descending() {
            sea_orm::Order::Desc
        } else {
            sea_orm::Order::Asc
        };
        if let Some(grant) = single_grant
            && key_column.is_none()
            && self.db.backend() == DatabaseBackend::Postgres
        {
            let rows = self
                .grant_page(grant, condition, beyond_cursor, order, limit)
                .await?;
            return Ok(client_page(rows, sort, limit));
        }
        if let Some(beyond) = beyond_cursor {
            condition = condition.add(beyond);
        }
        let mut query = client::Entity::find().filter(condition);
        if let Some(grant) = single_grant {
            QueryTrait::query(&mut query).inner_join(
                grant_clients.clone(),
                Expr::col((grant_clients.clone(), Alias::new("client_id")))
                    .equals((client::Entity, client::Column::Id))
                    .and(Expr::col((grant_clients, Alias::new("grant_id"))).eq(grant)),
            );
        }
        if let Some(col) = key_column {
            query = query.order_by(col, order.clone());
        }
        let query = query.order_by(id_column, order).limit(limit + 1);
        let rows = if short_walk {
            self.read_clients(query).await?
        } else {
            query.all(self.db.reader()).await?
        };
        Ok(client_page(rows, sort, limit))
    }

    /// PostgreSQL: a page of one grant's clients in the order of their ids. The grant's rows
    /// are walked in that order (its primary key) and each client looked up and tested, until
    /// the page is full. As a join, the planner would rather walk `clients` in id order and
    /// test every row for the grant (ten times the rows for a grant of a tenth of them); the
    /// clients are therefore a LATERAL subquery that its `OFFSET 0` keeps from being merged
    /// into the join. `condition` applies to `clients`, `beyond_cursor` to the grant's rows.
    async fn grant_page(
        &self,
        grant: Uuid,
        condition: Condition,
        beyond_cursor: Option<Condition>,
        order: sea_orm::Order,
        limit: u64,
    ) -> Result<Vec<client::Model>> {
        use sea_orm::FromQueryResult;
        use sea_orm::sea_query::{Asterisk, JoinType};
        let grant_clients = Alias::new("grant_clients");
        let granted = Alias::new("granted");
        let mut clients = client::Entity::find()
            .filter(condition)
            .filter(
                Expr::col((client::Entity, client::Column::Id))
                    .equals((grant_clients.clone(), Alias::new("client_id"))),
            )
            .into_query();
        clients.offset(0);
        let mut page = Query::select();
        page.column((granted.clone(), Asterisk))
            .from(grant_clients.clone())
            .join_lateral(JoinType::InnerJoin, clients, granted, Expr::cust("TRUE"))
            .and_where(Expr::col((grant_clients.clone(), Alias::new("grant_id"))).eq(grant));
        if let Some(beyond) = beyond_cursor {
            page.cond_where(beyond);
        }
        page.order_by((grant_clients, Alias::new("client_id")), order)
            .limit(limit + 1);
        let statement = DatabaseBackend::Postgres.build(&page);
        Ok(client::Model::find_by_statement(statement)
            .all(self.db.reader())
            .await?)
    }

    /// The rows of a SELECT of clients on the reader: on the calling thread where SQLite's
    /// inline reads carry it ([`crate::inline_reads`]), through sea-orm otherwise. Only for
    /// statements that read a bounded number of rows: the calling thread is a runtime worker.
    async fn read_clients(&self, query: Select<client::Entity>) -> Result<Vec<client::Model>> {
        if let Some(inline) = self.db.inline_reader()
            && let Some(rows) = inline.rows::<client::Model>(&query.build(DatabaseBackend::Sqlite))
        {
            return Ok(rows);
        }
        Ok(query.all(self.db.reader()).await?)
    }

    /// A live client by id, without any scope check (for the core and agents' checked paths).
    pub async fn find_client(
        &self,
        conn: &impl ConnectionTrait,
        id: Uuid,
    ) -> Result<Option<Client>> {
        Ok(Self::live_client_by_id(id)
            .one(conn)
            .await?
            .map(Client::from))
    }

    /// The SELECT of a live client by id.
    fn live_client_by_id(id: Uuid) -> Select<client::Entity> {
        client::Entity::find_by_id(id).filter(client::Column::DeletedAt.is_null())
    }

    /// A live client, locked for this transaction (`FOR UPDATE` on PostgreSQL; on SQLite the
    /// write transaction already excludes other writers).
    pub async fn lock_client(
        &self,
        conn: &impl ConnectionTrait,
        id: Uuid,
    ) -> Result<Option<Client>> {
        let mut query = client::Entity::find_by_id(id).filter(client::Column::DeletedAt.is_null());
        if conn.get_database_backend() == DatabaseBackend::Postgres {
            query = query.lock_exclusive();
        }
        Ok(query.one(conn).await?.map(Client::from))
    }

    /// The live clients with these emails (case-insensitively), keyed by lowercased email,
    /// without a scope check: one query for a whole import batch.
    pub async fn find_clients_by_emails(
        &self,
        conn: &impl ConnectionTrait,
        emails: &[String],
    ) -> Result<std::collections::HashMap<String, Client>> {
        if emails.is_empty() {
            return Ok(Default::default());
        }
        let keys: Vec<String> = emails.iter().map(|e| e.to_lowercase()).collect();
        let rows = client::Entity::find()
            .filter(client::Column::EmailKey.is_in(keys))
            .filter(client::Column::DeletedAt.is_null())
            .all(conn)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|m| m.email_key.clone().map(|k| (k, Client::from(m))))
            .collect())
    }

    /// The matching keys of every live client in the permit's scope, for duplicate detection.
    pub async fn client_keys(&self, permit: &Permit) -> Result<Vec<ClientKeys>> {
        permit.require("clients", "read")?;
        let rows = client::Entity::find()
            .select_only()
            .columns([
                client::Column::Id,
                client::Column::NameKey,
                client::Column::EmailKey,
                client::Column::PhoneKey,
                client::Column::Company,
            ])
            .filter(Self::live_client(permit.scope()))
            .order_by_asc(client::Column::Id)
            .into_tuple::<(Uuid, String, Option<String>, Option<String>, Option<String>)>()
            .all(self.db.reader())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name_key, email_key, phone_key, company)| ClientKeys {
                id,
                name_key,
                email_key,
                phone_key,
                company,
            })
            .collect())
    }

    /// One client in the caller's scope (`clients:read`); out of scope is a 404.
    pub async fn get_client(&self, permit: &Permit, id: Uuid) -> Result<Client> {
        permit.require("clients", "read")?;
        self.scoped_client(permit, id).await
    }

    /// A live client that the permit covers; otherwise 404 (with a denied event when it exists).
    pub async fn scoped_client(&self, permit: &Permit, id: Uuid) -> Result<Client> {
        let found = self
            .read_clients(Self::live_client_by_id(id))
            .await?
            .into_iter()
            .next()
            .map(Client::from)
            .ok_or(Error::NotFound("client"))?;
        if !permit.scope().covers(id) {
            return Err(self.deny_out_of_scope(permit, "client", id, Some(id)).await);
        }
        Ok(found)
    }

    /// Creates a client (`clients:write` for all clients).
    pub async fn create_client(&self, permit: &Permit, body: &Value) -> Result<Client> {
        permit.require("clients", "write")?;
        let fields = ClientFields::from_json(body)?;
        if !matches!(permit.scope(), ClientScope::All) {
            let reason = "creating clients needs a grant for all clients".to_owned();
            return Err(self
                .deny(permit.actor(), "clients", "write", None, reason)
                .await);
        }
        // Row and event are built before the transaction: on SQLite it holds the one writer.
        let (created, insert) = new_client_row(&fields, Some(permit.user().id))?;
        let record = permit
            .audit("client.create", Outcome::Success)
            .resource("client", created.id)
            .client(Some(created.id))
            .changes(json!({"before": null, "after": serde_json::to_value(&created).unwrap_or_default()}));
        let mut insert = client::Entity::insert(insert).build(self.db.backend());
        // On SQLite the tags ride in the row's audited statement: one statement less while the
        // transaction holds the one writer. (PostgreSQL's audited statement is a single command
        // with the event in a CTE, and its writes do not queue behind one another.)
        let tags_apart = self.db.backend() == DatabaseBackend::Postgres || fields.tags.is_empty();
        if !tags_apart {
            let rows: Vec<(Uuid, &str)> = fields
                .tags
                .iter()
                .map(|t| (created.id, t.as_str()))
                .collect();
            let mut values = insert.values.take().map(|v| v.0).unwrap_or_default();
            let (tags_sql, tag_values) = tag_rows_insert(&rows, values.len());
            values.extend(tag_values);
            insert.sql = format!("{}; {tags_sql}", insert.sql);
            insert.values = Some(sea_orm::Values(values));
        }
        let txn = self.db.begin().await?;
        self.execute_audited(&txn, insert, record)
            .await
            .map_err(email_conflict)?;
        if tags_apart {
            self.insert_tags(&txn, created.id, &fields.tags).await?;
        }
        txn.commit().await?;
        Ok(created)
    }

    /// Inserts a client row and its tags inside the caller's transaction.
    pub async fn insert_client(
        &self,
        conn: &impl ConnectionTrait,
        f: &ClientFields,
        created_by: Option<Uuid>,
    ) -> Result<Client> {
        let (created, model) = new_client_row(f, created_by)?;
        client::Entity::insert(model)
            .exec_without_returning(conn)
            .await
            .map_err(|e| map_unique(e, &EMAIL_UNIQUE, EMAIL_TAKEN))?;
        self.insert_tags(conn, created.id, &f.tags).await?;
        Ok(created)
    }

    /// Inserts many new clients (a bulk import's batch) by multi-row statements: their rows
    /// 500 at a time, then all their tags. No scope check; the caller audits. One email taken
    /// fails the whole call: run it in a savepoint to fall back to `insert_client` per row.
    pub async fn insert_clients(
        &self,
        conn: &impl ConnectionTrait,
        fields: &[ClientFields],
        created_by: Option<Uuid>,
    ) -> Result<Vec<Client>> {
        /// Rows per statement: 18 columns each, under both databases' bound-parameter limits.
        const PER_STATEMENT: usize = 500;
        let mut created = Vec::with_capacity(fields.len());
        let mut models = Vec::with_capacity(fields.len());
        for f in fields {
            let (client, model) = new_client_row(f, created_by)?;
            created.push(client);
            models.push(model);
        }
        let mut models = models.into_iter().peekable();
        while models.peek().is_some() {
            let chunk: Vec<client::ActiveModel> = models.by_ref().take(PER_STATEMENT).collect();
            client::Entity::insert_many(chunk)
                .exec_without_returning(conn)
                .await
                .map_err(|e| map_unique(e, &EMAIL_UNIQUE, EMAIL_TAKEN))?;
        }
        let tags: Vec<(Uuid, &str)> = created
            .iter()
            .zip(fields)
            .flat_map(|(c, f)| f.tags.iter().map(move |t| (c.id, t.as_str())))
            .collect();
        insert_tag_rows(conn, &tags).await?;
        Ok(created)
    }

    async fn write_tags(
        &self,
        conn: &impl ConnectionTrait,
        id: Uuid,
        tags: &[String],
    ) -> Result<()> {
        let backend = conn.get_database_backend();
        conn.execute_raw(Statement::from_sql_and_values(
            backend,
            "DELETE FROM client_tags WHERE client_id = $1",
            [id.into()],
        ))
        .await?;
        self.insert_tags(conn, id, tags).await
    }

    async fn insert_tags(
        &self,
        conn: &impl ConnectionTrait,
        id: Uuid,
        tags: &[String],
    ) -> Result<()> {
        let rows: Vec<(Uuid, &str)> = tags.iter().map(|t| (id, t.as_str())).collect();
        insert_tag_rows(conn, &rows).await
    }

    /// Applies a JSON merge patch (`clients:write`); with `if_match`, a stale version is 412.
    pub async fn update_client(
        &self,
        permit: &Permit,
        id: Uuid,
        patch: &Value,
        if_match: Option<&str>,
    ) -> Result<Client> {
        permit.require("clients", "write")?;
        if !patch.is_object() {
            return Err(Error::invalid("", "a merge patch must be a JSON object"));
        }
        let seen = self.scoped_client(permit, id).await?;
        // First the row as just read, off the write lock: the UPDATE writes it only if its
        // version is still the one read. When someone wrote in between (no row written, the
        // transaction rolls back with its event), or this read may be stale for the check,
        // the locked path below decides.
        if check_if_match(if_match, &seen).is_ok()
            && let Ok(patched) = self.patched(permit, &seen, patch)
        {
            let txn = self.db.begin().await?;
            if let Some(updated) = self.write_patched(&txn, &seen, patched).await? {
                txn.commit().await?;
                return Ok(updated);
            }
        }
        let txn = self.db.begin().await?;
        // Lock the row, so that concurrent patches queue instead of failing each other's
        // version check; the merge applies to the version this transaction holds.
        let current = self
            .lock_client(&txn, id)
            .await?
            .ok_or(Error::NotFound("client"))?;
        check_if_match(if_match, &current)?;
        let patched = self.patched(permit, &current, patch)?;
        let updated = self
            .write_patched(&txn, &current, patched)
            .await?
            .ok_or(Error::PreconditionFailed)?;
        txn.commit().await?;
        Ok(updated)
    }

    /// `patch` merged into `current`: the fields, the client it leaves, its UPDATE (of
    /// `current`'s version only) and its audit record.
    fn patched(&self, permit: &Permit, current: &Client, patch: &Value) -> Result<Patched> {
        let mut doc = ClientFields::from_client(current).to_json();
        merge_patch(&mut doc, patch);
        let fields = ClientFields::from_json(&doc)?;
        let (updated, update) = client_update(self.db.backend(), current, &fields)?;
        let changes = diff(
            &serde_json::to_value(current).unwrap_or_default(),
            &serde_json::to_value(&updated).unwrap_or_default(),
            &[],
        );
        let record = permit
            .audit("client.update", Outcome::Success)
            .resource("client", current.id)
            .client(Some(current.id))
            .changes(changes);
        Ok(Patched {
            fields,
            updated,
            update,
            record,
        })
    }

    /// Writes a patch of `current` with its event: the client it leaves, or `None` (nothing
    /// written) when `current`'s version is no longer the row's.
    async fn write_patched(
        &self,
        txn: &impl ConnectionTrait,
        current: &Client,
        patched: Patched,
    ) -> Result<Option<Client>> {
        let written = self
            .execute_audited(txn, patched.update, patched.record)
            .await
            .map_err(email_conflict)?;
        if written == 0 {
            return Ok(None);
        }
        if patched.fields.tags != current.tags {
            self.write_tags(txn, current.id, &patched.fields.tags)
                .await?;
        }
        Ok(Some(patched.updated))
    }

    /// Overwrites a client's fields inside the caller's transaction, bumping the version;
    /// `if_match` is checked against the row as locked by this transaction.
    pub async fn write_client(
        &self,
        conn: &impl ConnectionTrait,
        id: Uuid,
        f: &ClientFields,
        if_match: Option<&str>,
    ) -> Result<Client> {
        let current = self
            .find_client(conn, id)
            .await?
            .ok_or(Error::NotFound("client"))?;
        check_if_match(if_match, &current)?;
        let (updated, update) = client_update(conn.get_database_backend(), &current, f)?;
        let result = conn
            .execute_raw(update)
            .await
            .map_err(|e| map_unique(e, &EMAIL_UNIQUE, EMAIL_TAKEN))?;
        if result.rows_affected() == 0 {
            return Err(Error::PreconditionFailed);
        }
        if f.tags != current.tags {
            self.write_tags(conn, id, &f.tags).await?;
        }
        Ok(updated)
    }

    /// Deletes a client (`clients:delete`): afterwards it is 404 and lists leave it out.
    pub async fn delete_client(
        &self,
        permit: &Permit,
        id: Uuid,
        if_match: Option<&str>,
    ) -> Result<()> {
        permit.require("clients", "delete")?;
        let current = self.scoped_client(permit, id).await?;
        check_if_match(if_match, &current)?;
        let txn = self.db.begin().await?;
        let record = permit
            .audit("client.delete", Outcome::Success)
            .resource("client", id)
            .client(Some(id))
            .changes(json!({"before": serde_json::to_value(&current).unwrap_or_default(), "after": null}));
        let removal = client_removal(txn.get_database_backend(), id);
        if self.execute_audited(&txn, removal, record).await? == 0 {
            return Err(Error::NotFound("client"));
        }
        txn.commit().await?;
        Ok(())
    }

    /// Moves the records that belong to client `from` (its jobs today; documents and
    /// recordings as those agents add tables) to client `to`, inside the caller's transaction.
    pub async fn reassign_client_records(
        &self,
        conn: &impl ConnectionTrait,
        from: Uuid,
        to: Uuid,
    ) -> Result<()> {
        for table in CLIENT_OWNED_TABLES {
            conn.execute_raw(Statement::from_sql_and_values(
                conn.get_database_backend(),
                format!("UPDATE {table} SET client_id = $1 WHERE client_id = $2"),
                [to.into(), from.into()],
            ))
            .await?;
        }
        Ok(())
    }

    /// Marks a client deleted inside the caller's transaction (history and audit stay).
    pub async fn remove_client(&self, conn: &impl ConnectionTrait, id: Uuid) -> Result<()> {
        let done = conn
            .execute_raw(client_removal(conn.get_database_backend(), id))
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound("client"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1, 2]});
        merge_patch(&mut doc, &json!({"a": [3], "b": {"x": 1}}));
        assert_eq!(doc, json!({"a": [3], "b": {"x": 1}}));
    }

    #[test]
    fn fields_are_validated_and_normalised() {
        let f = ClientFields::from_json(
            &json!({"name": "  Acme ", "tags": ["vip", " vip", "eu"], "email": "A@B.io"}),
        )
        .unwrap();
        assert_eq!(f.name, "Acme");
        assert_eq!(f.tags, ["vip", "eu"]);
        assert_eq!(f.status, "active");
        let err = ClientFields::from_json(
            &json!({"name": "", "status": "gone", "metadata": [1], "id": "x", "phone": "call me"}),
        )
        .unwrap_err();
        let Error::Validation(fields) = err else {
            panic!()
        };
        let names: Vec<_> = fields.iter().map(|f| f.field.as_str()).collect();
        for f in ["name", "status", "metadata", "id", "phone"] {
            assert!(names.contains(&f), "{f} in {names:?}");
        }
        let big = json!({"name": "x", "metadata": {"k": "v".repeat(17_000)}});
        assert!(ClientFields::from_json(&big).is_err());
        assert_eq!(phone_key("+1 (555) 010-99"), "+155501099");
    }
}
