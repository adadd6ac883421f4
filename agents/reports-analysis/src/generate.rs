//! The report job: checks that the creator may still generate reports and still sees the client
//! asked for, then streams the report's rows page by page into a file in storage (memory stays
//! bounded however many rows), and marks the report ready, audited, in one transaction.

use std::collections::HashMap;
use std::sync::Arc;

use agentdesk_agent_sdk::core::models::audit::AuditEvent;
use agentdesk_agent_sdk::core::models::client;
use agentdesk_agent_sdk::core::services::audit::Outcome;
use agentdesk_agent_sdk::core::services::permissions::{Need, Permit};
use agentdesk_agent_sdk::core::{Core, Error};
use agentdesk_agent_sdk::http::csv_cell;
use agentdesk_agent_sdk::metrics::{
    Column, MetricsProvider, MetricsProviders, MetricsQuery, ReportRow,
};
use agentdesk_agent_sdk::{JobContext, JobError};
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::overview::{activity_section, clients_in_scope, clients_section, events_in_scope};
use crate::pdf::PdfDraft;
use crate::reports::{self, format, kind, status};

/// Rows fetched per query.
const PAGE: u64 = 500;
/// Bytes buffered before they go to storage.
const CHUNK: usize = 64 * 1024;
/// The largest report file.
const MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The job's arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateArgs {
    /// The report to make.
    pub report_id: Uuid,
}

/// Runs a report job. When it fails for good, the report is marked `failed` with the failure's
/// code, so that no report stays `processing` forever.
pub async fn run(ctx: &JobContext, providers: &MetricsProviders) -> Result<Value, JobError> {
    let Failure { code, error } = match attempt(ctx, providers).await {
        Ok(result) => return Ok(result),
        Err(failure) => failure,
    };
    let job = ctx.job();
    let last = matches!(error, JobError::Fatal(_)) || job.attempts >= job.max_attempts;
    if last
        && let Ok(args) = serde_json::from_value::<GenerateArgs>(job.args.clone())
        && let Err(mark) = mark_failed(ctx.core(), args.report_id, code, &error.to_string()).await
    {
        tracing::error!(error = %mark, report_id = %args.report_id, "could not mark a report failed");
    }
    Err(error)
}

/// Why an attempt failed, with the code the report keeps if it was the last attempt.
struct Failure {
    code: &'static str,
    error: JobError,
}

impl Failure {
    /// The report's creator may no longer make it.
    fn forbidden(message: String) -> Self {
        Self {
            code: "forbidden",
            error: JobError::Fatal(message),
        }
    }
}

impl From<JobError> for Failure {
    fn from(error: JobError) -> Self {
        Self {
            code: "report_failed",
            error,
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        JobError::from(error).into()
    }
}

async fn mark_failed(core: &Core, id: Uuid, code: &str, message: &str) -> Result<(), Error> {
    reports::Entity::update_many()
        .col_expr(reports::Column::Status, status::FAILED.into())
        .col_expr(reports::Column::ErrorCode, code.into())
        .col_expr(reports::Column::ErrorMessage, message.into())
        .col_expr(reports::Column::FinishedAt, Utc::now().into())
        .filter(reports::Column::Id.eq(id))
        .exec(core.db.writer())
        .await?;
    Ok(())
}

async fn attempt(ctx: &JobContext, providers: &MetricsProviders) -> Result<Value, Failure> {
    let args: GenerateArgs = serde_json::from_value(ctx.job().args.clone())
        .map_err(|e| JobError::Fatal(format!("bad job arguments: {e}")))?;
    let core = ctx.core();
    let Some(report) = reports::Entity::find_by_id(args.report_id)
        .one(core.db.writer())
        .await
        .map_err(Error::from)?
    else {
        return Ok(json!({"skipped": "the report was deleted"}));
    };
    // The creator's grant as of now: a report never holds a client they no longer see.
    let permit = ctx
        .permit("agent:reports_analysis", "generate", Need::SomeClients)
        .await
        .map_err(|_| {
            Failure::forbidden("the report's creator may no longer generate reports".into())
        })?;
    if let Some(client) = report.client_id
        && !permit.scope().covers(client)
    {
        return Err(Failure::forbidden(format!(
            "the report's creator no longer sees the client {client}"
        )));
    }
    let mut processing: reports::ActiveModel = report.clone().into();
    processing.status = Set(status::PROCESSING.into());
    processing
        .update(core.db.writer())
        .await
        .map_err(Error::from)?;
    ctx.progress(1).await;

    let query = MetricsQuery {
        scope: permit.scope().clone(),
        client_id: report.client_id,
        from: report.period_from,
        to: report.period_to,
    };
    let source = Source::of(&report.kind, providers)
        .ok_or_else(|| JobError::Fatal(format!("no report kind `{}`", report.kind)))?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(4);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let upload = core.storage.put_stream("reports", body, MAX_BYTES);
    let produce = async {
        let mut out = Writer::new(&report.format, &core.settings.instance_name, tx);
        let result = write_report(
            ctx, core, &permit, &report, &source, providers, &query, &mut out,
        )
        .await;
        match result {
            Ok(rows) => out.finish(rows).await.map(|()| rows),
            Err(e) => {
                out.abort(&e.to_string()).await;
                Err(e)
            }
        }
    };
    let (stored, rows) = tokio::join!(upload, produce);
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            // A PDF that failed to typeset ends the upload cleanly (empty): remove that file.
            if let Ok(file) = &stored {
                let _ = core.storage.delete(&file.key).await;
            }
            return Err(e.into());
        }
    };
    let stored = stored.map_err(|e| JobError::Retryable(format!("storing the report: {e}")))?;

    let mut saved = report.clone();
    saved.status = status::READY.into();
    saved.storage_key = Some(stored.key.clone());
    saved.content_type = Some(format::content_type(&report.format).into());
    saved.size_bytes = Some(i64::try_from(stored.size).unwrap_or(i64::MAX));
    saved.sha256 = Some(stored.sha256.clone());
    saved.row_count = Some(i64::try_from(rows).unwrap_or(i64::MAX));
    saved.finished_at = Some(Utc::now());
    saved.error_code = None;
    saved.error_message = None;
    let txn = core.db.begin().await?;
    let ready = reports::ActiveModel::from(saved.clone()).reset_all();
    let updated = reports::Entity::update_many()
        .set(ready)
        .filter(reports::Column::Id.eq(report.id))
        .exec(&txn)
        .await
        .map_err(Error::from)?;
    if updated.rows_affected == 0 {
        // Deleted while it was being made: nothing may point at the file, so it goes too.
        drop(txn);
        let _ = core.storage.delete(&stored.key).await;
        return Ok(json!({"skipped": "the report was deleted"}));
    }
    if let Some(schedule) = report.schedule_id {
        // A scheduled report goes where its schedule says, as the schedule says it now.
        let deliver = crate::schedules::Entity::find_by_id(schedule)
            .one(&txn)
            .await
            .map_err(Error::from)?
            .and_then(|s| serde_json::from_value(s.deliver).ok())
            .unwrap_or_default();
        crate::delivery::plan(core, &txn, &saved, &deliver).await?;
    }
    let record = permit
        .audit("report.generate", Outcome::Success)
        .resource("report", report.id)
        .client(report.client_id)
        .changes(json!({"before": null, "after": reports::audit_view(&saved)}));
    core.append(&txn, record).await?;
    txn.commit().await.map_err(Error::from)?;
    ctx.progress(100).await;
    Ok(json!({"report_id": report.id, "rows": rows, "size_bytes": stored.size}))
}

/// Where a report's rows come from.
enum Source {
    Clients,
    Activity,
    Provider(Arc<dyn MetricsProvider>),
}

impl Source {
    fn of(kind: &str, providers: &MetricsProviders) -> Option<Self> {
        match kind {
            kind::CLIENT_SUMMARY => Some(Self::Clients),
            kind::ACTIVITY => Some(Self::Activity),
            other => providers
                .iter()
                .find(|p| p.section() == other)
                .cloned()
                .map(Self::Provider),
        }
    }
}

const CLIENT_COLUMNS: &[Column] = &[
    Column {
        key: "id",
        title: "Client",
    },
    Column {
        key: "name",
        title: "Name",
    },
    Column {
        key: "email",
        title: "E-mail",
    },
    Column {
        key: "phone",
        title: "Phone",
    },
    Column {
        key: "company",
        title: "Company",
    },
    Column {
        key: "status",
        title: "Status",
    },
    Column {
        key: "tags",
        title: "Tags",
    },
    Column {
        key: "created_at",
        title: "Created",
    },
    Column {
        key: "updated_at",
        title: "Updated",
    },
];

const ACTIVITY_COLUMNS: &[Column] = &[
    Column {
        key: "seq",
        title: "#",
    },
    Column {
        key: "at",
        title: "When",
    },
    Column {
        key: "actor",
        title: "Who",
    },
    Column {
        key: "action",
        title: "Action",
    },
    Column {
        key: "resource_type",
        title: "Resource",
    },
    Column {
        key: "resource_id",
        title: "Resource id",
    },
    Column {
        key: "client_id",
        title: "Client id",
    },
    Column {
        key: "outcome",
        title: "Outcome",
    },
];

/// The `client` column that rows about a client get: the client's name.
const CLIENT_NAME: Column = Column {
    key: "client",
    title: "Client",
};

/// Writes the report's header, summary and rows; returns how many rows.
#[allow(clippy::too_many_arguments)]
async fn write_report(
    ctx: &JobContext,
    core: &Core,
    permit: &Permit,
    report: &reports::Model,
    source: &Source,
    providers: &MetricsProviders,
    query: &MetricsQuery,
    out: &mut Writer,
) -> Result<u64, JobError> {
    let mut summary = Map::new();
    let (expected, mut columns) = match source {
        Source::Clients => {
            let clients = clients_section(core, query).await?;
            let total = clients.get("total").and_then(Value::as_u64);
            summary.insert("clients".into(), clients);
            let mut columns = CLIENT_COLUMNS.to_vec();
            for p in providers.iter() {
                summary.insert(p.section().into(), p.overview(core, query).await?);
                columns.push(Column {
                    key: p.section(),
                    title: p.title(),
                });
            }
            (total, columns)
        }
        Source::Activity => {
            core.flush_audit().await?;
            let activity = activity_section(core, query).await?;
            let total = activity.get("total").and_then(Value::as_u64);
            summary.insert("activity".into(), activity);
            (total, ACTIVITY_COLUMNS.to_vec())
        }
        Source::Provider(p) => {
            let section = p.overview(core, query).await?;
            let total = section.get("total").and_then(Value::as_u64);
            summary.insert(p.section().into(), section);
            (total, p.columns().to_vec())
        }
    };
    let expected = expected.unwrap_or(0).max(1);
    let with_client_name = !matches!(source, Source::Clients);
    if with_client_name {
        columns.insert(2.min(columns.len()), CLIENT_NAME);
    }
    let client_name = match report.client_id {
        Some(id) => client::Entity::find_by_id(id)
            .one(core.db.reader())
            .await
            .map_err(Error::from)?
            .map(|c| c.name),
        None => None,
    };
    let header = json!({
        "id": report.id,
        "kind": report.kind,
        "format": report.format,
        "params": report.params,
        "period": {"from": report.period_from, "to": report.period_to},
        "client_id": report.client_id,
        "client_name": client_name,
        "generated_at": Utc::now(),
        "generated_by": permit.user().email,
    });
    out.start(&header, &Value::Object(summary), &columns)
        .await?;
    // The period's events come through the audit log's own export stream, in `seq` order.
    let mut events = matches!(source, Source::Activity).then(|| {
        core.stream_audit(events_in_scope(query))
            .chunks(PAGE as usize)
            .boxed()
    });
    let mut after: Option<Uuid> = None;
    let mut written = 0u64;
    loop {
        if ctx.is_cancelled() {
            return Err(JobError::Fatal("the job was cancelled".into()));
        }
        let mut page: Vec<ReportRow> = match source {
            Source::Clients => {
                let mut rows = client_rows(core, query, after).await?;
                add_counts(core, providers, query, &mut rows).await?;
                rows
            }
            Source::Activity => match events.as_mut() {
                Some(events) => events
                    .next()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|event| event.map(activity_row))
                    .collect::<Result<_, Error>>()?,
                None => Vec::new(),
            },
            Source::Provider(p) => p.rows(core, query, after, PAGE).await?,
        };
        let full = page.len() as u64 == PAGE;
        after = page.last().map(|r| r.id).or(after);
        if with_client_name {
            add_client_names(core, &mut page).await?;
        }
        for row in &page {
            out.row(&columns, &row.cells).await?;
        }
        written += page.len() as u64;
        let percent = 1 + (98 * written.min(expected) / expected);
        ctx.progress(i32::try_from(percent).unwrap_or(99)).await;
        if !full {
            break;
        }
    }
    Ok(written)
}

/// Each client row gets one count per provider: its items created in the period.
async fn add_counts(
    core: &Core,
    providers: &MetricsProviders,
    query: &MetricsQuery,
    rows: &mut [ReportRow],
) -> Result<(), Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    for p in providers.iter() {
        let counts = p.counts_by_client(core, query, &ids).await?;
        for row in rows.iter_mut() {
            let n = counts.get(&row.id).copied().unwrap_or(0);
            row.cells.insert(p.section().into(), json!(n));
        }
    }
    Ok(())
}

/// A page of live clients in scope, by id.
async fn client_rows(
    core: &Core,
    query: &MetricsQuery,
    after: Option<Uuid>,
) -> Result<Vec<ReportRow>, Error> {
    let mut select = client::Entity::find().filter(clients_in_scope(query));
    if let Some(after) = after {
        select = select.filter(client::Column::Id.gt(after));
    }
    let rows = select
        .order_by_asc(client::Column::Id)
        .limit(PAGE)
        .all(core.db.reader())
        .await?;
    Ok(rows
        .into_iter()
        .map(|c| {
            let mut cells = Map::new();
            cells.insert("id".into(), json!(c.id));
            cells.insert("name".into(), json!(c.name));
            cells.insert("email".into(), json!(c.email));
            cells.insert("phone".into(), json!(c.phone));
            cells.insert("company".into(), json!(c.company));
            cells.insert("status".into(), json!(c.status));
            cells.insert("tags".into(), c.tags.clone());
            cells.insert("created_at".into(), json!(c.created_at));
            cells.insert("updated_at".into(), json!(c.updated_at));
            ReportRow {
                id: c.id,
                client_id: None,
                cells,
            }
        })
        .collect())
}

/// An event as a row of the activity report.
fn activity_row(event: AuditEvent) -> ReportRow {
    let mut cells = Map::new();
    cells.insert("seq".into(), json!(event.seq));
    cells.insert("at".into(), json!(event.at));
    cells.insert("actor".into(), json!(event.actor_email));
    cells.insert("action".into(), json!(event.action));
    cells.insert("resource_type".into(), json!(event.resource_type));
    cells.insert("resource_id".into(), json!(event.resource_id));
    cells.insert("client_id".into(), json!(event.client_id));
    cells.insert("outcome".into(), json!(event.outcome));
    ReportRow {
        id: event.id,
        client_id: event.client_id,
        cells,
    }
}

/// Fills the `client` cell of each row with its client's name, one query per page.
async fn add_client_names(core: &Core, rows: &mut [ReportRow]) -> Result<(), Error> {
    let ids: Vec<Uuid> = rows.iter().filter_map(|r| r.client_id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let names: HashMap<Uuid, String> = client::Entity::find()
        .select_only()
        .columns([client::Column::Id, client::Column::Name])
        .filter(client::Column::Id.is_in(ids))
        .into_tuple::<(Uuid, String)>()
        .all(core.db.reader())
        .await?
        .into_iter()
        .collect();
    for row in rows {
        let name = row.client_id.and_then(|id| names.get(&id).cloned());
        row.cells.insert(CLIENT_NAME.key.into(), json!(name));
    }
    Ok(())
}

/// Writes a report file in its format, in chunks, to the storage upload.
struct Writer {
    format: String,
    tx: mpsc::Sender<Result<Bytes, String>>,
    buffer: Vec<u8>,
    first_row: bool,
    instance: String,
    pdf: Option<PdfDraft>,
}

impl Writer {
    fn new(format: &str, instance: &str, tx: mpsc::Sender<Result<Bytes, String>>) -> Self {
        Self {
            format: format.to_owned(),
            tx,
            buffer: Vec::with_capacity(CHUNK * 2),
            first_row: true,
            instance: instance.to_owned(),
            pdf: None,
        }
    }

    async fn start(
        &mut self,
        header: &Value,
        summary: &Value,
        columns: &[Column],
    ) -> Result<(), JobError> {
        match self.format.as_str() {
            format::CSV => {
                let line: Vec<String> = columns.iter().map(|c| csv_cell(c.key)).collect();
                self.buffer.extend_from_slice(line.join(",").as_bytes());
                self.buffer.extend_from_slice(b"\r\n");
            }
            format::PDF => {
                self.pdf = Some(PdfDraft::new(header, summary, columns, &self.instance));
            }
            _ => {
                let columns: Vec<Value> = columns
                    .iter()
                    .map(|c| json!({"key": c.key, "title": c.title}))
                    .collect();
                self.buffer.extend_from_slice(b"{\"report\":");
                self.buffer.extend_from_slice(header.to_string().as_bytes());
                self.buffer.extend_from_slice(b",\"summary\":");
                self.buffer
                    .extend_from_slice(summary.to_string().as_bytes());
                self.buffer.extend_from_slice(b",\"columns\":");
                self.buffer
                    .extend_from_slice(Value::from(columns).to_string().as_bytes());
                self.buffer.extend_from_slice(b",\"rows\":[");
            }
        }
        self.flush_if_full().await
    }

    async fn row(
        &mut self,
        columns: &[Column],
        cells: &Map<String, Value>,
    ) -> Result<(), JobError> {
        if let Some(pdf) = &mut self.pdf {
            pdf.row(cells);
            return Ok(());
        }
        if self.format == format::CSV {
            let line: Vec<String> = columns
                .iter()
                .map(|c| csv_cell(&csv_text(cells.get(c.key).unwrap_or(&Value::Null))))
                .collect();
            self.buffer.extend_from_slice(line.join(",").as_bytes());
            self.buffer.extend_from_slice(b"\r\n");
        } else {
            if !self.first_row {
                self.buffer.push(b',');
            }
            let ordered: Map<String, Value> = columns
                .iter()
                .map(|c| {
                    (
                        c.key.to_owned(),
                        cells.get(c.key).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect();
            self.buffer
                .extend_from_slice(Value::Object(ordered).to_string().as_bytes());
        }
        self.first_row = false;
        self.flush_if_full().await
    }

    async fn finish(mut self, rows: u64) -> Result<(), JobError> {
        if let Some(pdf) = self.pdf.take() {
            let bytes = pdf.compile().await.map_err(JobError::Fatal)?;
            self.buffer = bytes;
        } else if self.format != format::CSV {
            self.buffer
                .extend_from_slice(format!("],\"row_count\":{rows}}}").as_bytes());
        }
        self.flush().await
    }

    /// Ends the upload with an error, so storage removes what was written.
    async fn abort(self, why: &str) {
        let _ = self.tx.send(Err(why.to_owned())).await;
    }

    async fn flush_if_full(&mut self) -> Result<(), JobError> {
        if self.buffer.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), JobError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.tx
            .send(Ok(chunk))
            .await
            .map_err(|_| JobError::Retryable("storage stopped taking the report".into()))
    }
}

/// A cell as CSV text: strings as they are, lists joined with `; `, nothing for null.
fn csv_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(csv_text).collect::<Vec<_>>().join("; "),
        other => other.to_string(),
    }
}
