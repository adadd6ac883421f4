//! CSV import: upsert by email, per-row errors, dry runs, progress.

use agentdesk_agent_sdk::core::models::client::Client;
use agentdesk_agent_sdk::core::services::audit::Outcome;
use agentdesk_agent_sdk::core::services::clients::ClientFields;
use agentdesk_agent_sdk::core::services::permissions::{Need, Permit};
use agentdesk_agent_sdk::core::validators::Email;
use agentdesk_agent_sdk::{JobContext, JobError};
use futures::StreamExt;
use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{BATCH_ROWS, NAME};

/// The import job's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportArgs {
    /// The uploaded CSV's storage key.
    pub file_key: String,
    /// Its size, for progress.
    pub size: u64,
    /// Validate and count, change nothing.
    pub dry_run: bool,
}

/// One rejected row.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RowError {
    /// The row's number in the file (the header is row 1).
    pub row: u64,
    /// What is wrong with it.
    pub message: String,
}

/// The import job's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportResult {
    /// New clients.
    pub created: u64,
    /// Clients found by email and changed.
    pub updated: u64,
    /// Rows that matched a client and changed nothing.
    pub skipped: u64,
    /// Rows rejected (at most the first 1000; `error_count` counts all).
    pub errors: Vec<RowError>,
    /// How many rows were rejected.
    pub error_count: u64,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Header columns that are not client fields (ignored).
    pub ignored_columns: Vec<String>,
}

const MAX_REPORTED_ERRORS: usize = 1000;
const KNOWN: [&str; 7] = [
    "name", "email", "phone", "company", "status", "tags", "notes",
];

impl ImportResult {
    fn reject(&mut self, row: u64, message: String) {
        self.error_count += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(RowError { row, message });
        }
    }
}

fn field_errors(e: agentdesk_agent_sdk::core::Error) -> String {
    match e {
        agentdesk_agent_sdk::core::Error::Validation(errors) => errors
            .iter()
            .map(|e| format!("{} {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// Runs an import job.
pub async fn run(ctx: &JobContext) -> Result<Value, JobError> {
    let args: ImportArgs = serde_json::from_value(ctx.job().args.clone())
        .map_err(|e| JobError::Fatal(format!("bad import arguments: {e}")))?;
    ctx.permit(&format!("agent:{NAME}"), "run", Need::AllClients)
        .await?;
    let permit = ctx.permit("clients", "write", Need::AllClients).await?;
    let core = ctx.core();
    let stream = core
        .storage
        .get_stream(&args.file_key)
        .await
        .map_err(JobError::from)?;
    let read_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = read_bytes.clone();
    let stream = stream.inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let reader = tokio_util::io::StreamReader::new(stream);
    let mut csv = csv_async::AsyncReaderBuilder::new()
        .flexible(true)
        .trim(csv_async::Trim::All)
        .create_reader(reader);
    let headers: Vec<String> = csv
        .headers()
        .await
        .map_err(|e| JobError::Fatal(format!("the file is not CSV: {e}")))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_lowercase())
        .collect();
    if !headers.iter().any(|h| h == "name") {
        return Err(JobError::Fatal("the CSV has no `name` column".into()));
    }
    let mut result = ImportResult {
        dry_run: args.dry_run,
        ignored_columns: headers
            .iter()
            .filter(|h| !KNOWN.contains(&h.as_str()))
            .cloned()
            .collect(),
        ..Default::default()
    };
    let mut batch: Vec<(u64, Map<String, Value>)> = Vec::with_capacity(BATCH_ROWS);
    let mut next_analyze = 2 * BATCH_ROWS as u64;
    let mut records = csv.records();
    let mut row = 1u64;
    while let Some(record) = records.next().await {
        row += 1;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                result.reject(row, format!("unreadable row: {e}"));
                continue;
            }
        };
        let mut doc = Map::new();
        for (header, value) in headers.iter().zip(record.iter()) {
            if !KNOWN.contains(&header.as_str()) || value.is_empty() {
                continue;
            }
            // Undo the export's formula defusing ('=..., '+..., ...), so an export imports back as it was.
            let value = match value.strip_prefix('\'') {
                Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r']) => rest,
                _ => value,
            };
            let value = if header == "tags" {
                json!(
                    value
                        .split([';', '|'])
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .collect::<Vec<_>>()
                )
            } else {
                Value::String(value.to_owned())
            };
            doc.insert(header.clone(), value);
        }
        batch.push((row, doc));
        if batch.len() >= BATCH_ROWS {
            write_batch(ctx, &permit, &mut batch, &mut result, args.dry_run).await?;
            // PostgreSQL plans each batch's lookup by email from the table's statistics; while
            // an import grows the table from nothing they say "tiny", and the planner walks a
            // whole index per batch (an import slowed from 3,700 to 1,100 rows/s by 100,000
            // rows). Refreshing them each time the table doubled keeps the lookup on its index.
            if !args.dry_run && result.created + result.updated >= next_analyze {
                next_analyze *= 2;
                analyze_clients(core).await;
            }
            let done = read_bytes.load(std::sync::atomic::Ordering::Relaxed);
            ctx.progress(((done * 100) / args.size.max(1)).min(99) as i32)
                .await;
            if ctx.is_cancelled() {
                return Err(JobError::Fatal("cancelled".into()));
            }
        }
    }
    write_batch(ctx, &permit, &mut batch, &mut result, args.dry_run).await?;
    if !args.dry_run {
        // Not now: a crash before the success is recorded runs the import again, from this file.
        ctx.remove_after_success(args.file_key.clone());
        // A bulk load leaves the planner's statistics behind; refresh them so that lists and
        // filters keep their plans (PostgreSQL; SQLite plans without them).
        if result.created + result.updated > 1000 {
            analyze_clients(core).await;
        }
    }
    serde_json::to_value(result).map_err(|e| JobError::Fatal(e.to_string()))
}

/// Writes one batch in one transaction: upsert by email, each change audited with it. A dry
/// run does the same work and rolls back. Consecutive new clients are inserted together (see
/// [`create_pending`]); a row that updates a client first writes those, so the log keeps the
/// file's order.
async fn write_batch(
    ctx: &JobContext,
    permit: &Permit,
    batch: &mut Vec<(u64, Map<String, Value>)>,
    result: &mut ImportResult,
    dry_run: bool,
) -> Result<(), JobError> {
    if batch.is_empty() {
        return Ok(());
    }
    let core = ctx.core();
    let txn = core.db.begin().await.map_err(JobError::from)?;
    // One lookup for the batch; clients created or changed earlier in it are tracked here.
    let emails: Vec<String> = batch.iter().filter_map(|(_, doc)| email_key(doc)).collect();
    let mut known = core
        .find_clients_by_emails(&txn, &emails)
        .await
        .map_err(JobError::from)?;
    let mut pending = Pending::default();
    for (row, doc) in batch.drain(..) {
        let incoming = Value::Object(doc.clone());
        let email_key = email_key(&doc);
        // A second row for an email that a waiting row creates updates that client.
        if email_key
            .as_ref()
            .is_some_and(|k| pending.emails.contains(k))
        {
            create_pending(ctx, permit, &txn, &mut pending, &mut known, result).await?;
        }
        let existing = email_key.as_ref().and_then(|k| known.get(k).cloned());
        match existing {
            None => match ClientFields::from_json(&incoming) {
                Err(e) => result.reject(row, field_errors(e)),
                Ok(fields) => {
                    if let Some(key) = &email_key {
                        pending.emails.insert(key.clone());
                    }
                    pending.rows.push((row, email_key));
                    pending.fields.push(fields);
                }
            },
            Some(current) => {
                create_pending(ctx, permit, &txn, &mut pending, &mut known, result).await?;
                // The file's non-empty fields override; the rest stays.
                let mut merged = ClientFields::from_client(&current).to_json();
                if let (Some(base), Value::Object(new)) = (merged.as_object_mut(), incoming) {
                    base.extend(new);
                }
                match ClientFields::from_json(&merged) {
                    Err(e) => result.reject(row, field_errors(e)),
                    Ok(fields) if fields == ClientFields::from_client(&current) => {
                        result.skipped += 1
                    }
                    Ok(fields) => match core.write_client(&txn, current.id, &fields, None).await {
                        Ok(updated) => {
                            if let Some(key) = &email_key {
                                known.insert(key.clone(), updated.clone());
                            }
                            let changes = agentdesk_agent_sdk::core::services::audit::diff(
                                &serde_json::to_value(&current).unwrap_or_default(),
                                &serde_json::to_value(&updated).unwrap_or_default(),
                                &[],
                            );
                            let record = permit
                                .audit("client.update", Outcome::Success)
                                .resource("client", current.id)
                                .client(Some(current.id))
                                .changes(changes);
                            core.append(&txn, record).await.map_err(JobError::from)?;
                            result.updated += 1;
                        }
                        Err(e) => result.reject(row, field_errors(e)),
                    },
                }
            }
        }
    }
    create_pending(ctx, permit, &txn, &mut pending, &mut known, result).await?;
    if dry_run {
        txn.rollback()
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))?;
    } else {
        txn.commit()
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))?;
    }
    Ok(())
}

/// The key a row's email is stored under ([`Email::key`]: trimmed as the client's fields trim
/// it, so that `bob@x.io` followed by a no-break space finds bob@x.io), or none for a row
/// without a valid email.
fn email_key(doc: &Map<String, Value>) -> Option<String> {
    let raw = doc.get("email").and_then(Value::as_str)?;
    Email::parse(raw).ok().map(|email| email.key())
}

/// PostgreSQL: refreshes the planner's statistics of the clients' tables (SQLite plans
/// without them). A failure only costs speed, so it is logged.
async fn analyze_clients(core: &agentdesk_agent_sdk::core::Core) {
    if core.db.kind() != agentdesk_agent_sdk::core::config::DatabaseKind::Postgres {
        return;
    }
    let analyzed = core
        .db
        .writer()
        .execute_unprepared("ANALYZE clients, client_tags")
        .await;
    if let Err(e) = analyzed {
        tracing::warn!(error = %e, "ANALYZE during the import failed");
    }
}

/// A savepoint that could not be taken, released or rolled back: the batch is retried.
fn savepoint_error(e: sea_orm::DbErr) -> JobError {
    JobError::from(agentdesk_agent_sdk::core::Error::from(e))
}

/// New clients of a batch waiting to be inserted together: each row's number and lowercased
/// email, and beside them its fields (in the form `insert_clients` takes).
#[derive(Default)]
struct Pending {
    rows: Vec<(u64, Option<String>)>,
    fields: Vec<ClientFields>,
    emails: std::collections::HashSet<String>,
}

/// Inserts the waiting new clients by multi-row statements and queues their events together
/// (on PostgreSQL a round trip per statement is what an import costs). In a savepoint: when an
/// email was taken meanwhile by another writer, the statement fails whole, and then each row
/// goes alone in a savepoint of its own, so only that row is refused.
async fn create_pending(
    ctx: &JobContext,
    permit: &Permit,
    txn: &DatabaseTransaction,
    pending: &mut Pending,
    known: &mut std::collections::HashMap<String, Client>,
    result: &mut ImportResult,
) -> Result<(), JobError> {
    if pending.rows.is_empty() {
        return Ok(());
    }
    let core = ctx.core();
    let author = Some(permit.user().id);
    let rows = std::mem::take(&mut pending.rows);
    let fields = std::mem::take(&mut pending.fields);
    pending.emails.clear();
    let together = txn.begin().await.map_err(savepoint_error)?;
    let outcomes: Vec<Result<Client, agentdesk_agent_sdk::core::Error>> =
        match core.insert_clients(&together, &fields, author).await {
            Ok(created) => {
                together.commit().await.map_err(savepoint_error)?;
                created.into_iter().map(Ok).collect()
            }
            Err(_) => {
                together.rollback().await.map_err(savepoint_error)?;
                let mut outcomes = Vec::with_capacity(fields.len());
                for f in &fields {
                    let alone = txn.begin().await.map_err(savepoint_error)?;
                    match core.insert_client(&alone, f, author).await {
                        Ok(client) => {
                            alone.commit().await.map_err(savepoint_error)?;
                            outcomes.push(Ok(client));
                        }
                        Err(e) => {
                            alone.rollback().await.map_err(savepoint_error)?;
                            outcomes.push(Err(e));
                        }
                    }
                }
                outcomes
            }
        };
    let mut records = Vec::with_capacity(rows.len());
    for ((row, email_key), outcome) in rows.into_iter().zip(outcomes) {
        match outcome {
            Ok(client) => {
                records.push(
                    permit
                        .audit("client.create", Outcome::Success)
                        .resource("client", client.id)
                        .client(Some(client.id))
                        .changes(json!({"before": null, "after": client, "source": "import", "job_id": ctx.job().id})),
                );
                if let Some(key) = email_key {
                    known.insert(key, client);
                }
                result.created += 1;
            }
            Err(e) => result.reject(row, field_errors(e)),
        }
    }
    core.append_many(txn, records).await.map_err(JobError::from)
}
