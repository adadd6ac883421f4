//! Reports in the database: the row, the API shape, who may see one, and listing.

use agentdesk_agent_sdk::core::pagination::{Page, PageRequest};
use agentdesk_agent_sdk::core::services::permissions::{ClientScope, Permit};
use agentdesk_agent_sdk::core::{Core, Error};
use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{Condition, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A row of `reports`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "reports")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub kind: String,
    pub format: String,
    pub params: Json,
    pub period_from: DateTime<Utc>,
    pub period_to: DateTime<Utc>,
    pub client_id: Option<Uuid>,
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub schedule_id: Option<Uuid>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub storage_key: Option<String>,
    pub content_type: Option<String>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub row_count: Option<i64>,
    pub job_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Relations the ORM does not need.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Report statuses.
pub mod status {
    /// Its job waits.
    pub const QUEUED: &str = "queued";
    /// Being generated.
    pub const PROCESSING: &str = "processing";
    /// Its file can be downloaded.
    pub const READY: &str = "ready";
    /// Could not be generated; `error` says why.
    pub const FAILED: &str = "failed";
}

/// The report kinds.
pub mod kind {
    /// Every client in scope with its status and its documents and recordings in the period.
    pub const CLIENT_SUMMARY: &str = "client_summary";
    /// The audit events of the period, within scope.
    pub const ACTIVITY: &str = "activity";
    /// Documents uploaded in the period.
    pub const DOCUMENTS: &str = "documents";
    /// Recordings made in the period.
    pub const RECORDINGS: &str = "recordings";
    /// All of them.
    pub const ALL: [&str; 4] = [CLIENT_SUMMARY, ACTIVITY, DOCUMENTS, RECORDINGS];
}

/// The file formats.
pub mod format {
    /// One JSON document: the report's facts, its summary and its rows.
    pub const JSON: &str = "json";
    /// The rows as CSV with a header line.
    pub const CSV: &str = "csv";
    /// A typeset document: title page, key figures, charts and the rows as a table.
    pub const PDF: &str = "pdf";
    /// The formats this build makes.
    pub const ALL: [&str; 3] = [JSON, CSV, PDF];

    /// The media type of a format.
    pub fn content_type(format: &str) -> &'static str {
        match format {
            CSV => "text/csv; charset=utf-8",
            PDF => "application/pdf",
            _ => "application/json",
        }
    }
}

/// The filters of a report, as asked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// Start: a date, an RFC 3339 time, `now` or relative (`-7d`, `-1m`); default 30 days
    /// before `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// End: as `from` (a date includes its day); default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Only this client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Uuid>,
}

/// Why a report failed.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReportError {
    /// Stable code: `forbidden`, `report_failed`.
    pub code: String,
    /// In words.
    pub message: String,
}

/// The period a report covers, as resolved when it was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PeriodView {
    /// Inclusive start.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
}

/// A report as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// UUID v7.
    pub id: Uuid,
    /// `client_summary`, `activity`, `documents` or `recordings`.
    pub kind: String,
    /// `json`, `csv` or `pdf`.
    pub format: String,
    /// The filters as asked.
    #[schema(value_type = Object)]
    pub params: Value,
    /// The period they resolved to.
    pub period: PeriodView,
    /// `queued`, `processing`, `ready` or `failed`.
    pub status: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ReportError>,
    /// The schedule that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
    /// The schedule's tick it was made for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Its deliveries (mail, webhook), for a scheduled report that has them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<crate::delivery::Delivery>,
    /// Rows in the file, once ready.
    pub row_count: Option<i64>,
    /// Size of the file, once ready.
    pub size_bytes: Option<i64>,
    /// SHA-256 of the file, hex, once ready.
    pub sha256: Option<String>,
    /// The generating job.
    pub job_id: Option<Uuid>,
    /// Who asked for it.
    pub created_by: Option<Uuid>,
    /// When it was asked for.
    pub created_at: DateTime<Utc>,
    /// When it became ready or failed.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<Model> for Report {
    fn from(m: Model) -> Self {
        let error = m.error_code.map(|code| ReportError {
            code,
            message: m.error_message.unwrap_or_default(),
        });
        Self {
            id: m.id,
            kind: m.kind,
            format: m.format,
            params: m.params,
            period: PeriodView {
                from: m.period_from,
                to: m.period_to,
            },
            status: m.status,
            error,
            schedule_id: m.schedule_id,
            scheduled_for: m.scheduled_for,
            deliveries: Vec::new(),
            row_count: m.row_count,
            size_bytes: m.size_bytes,
            sha256: m.sha256,
            job_id: m.job_id,
            created_by: m.created_by,
            created_at: m.created_at,
            finished_at: m.finished_at,
        }
    }
}

/// The JSON the audit log keeps of a report.
pub fn audit_view(r: &Model) -> Value {
    json!({
        "kind": r.kind,
        "format": r.format,
        "params": r.params,
        "period": {"from": r.period_from, "to": r.period_to},
        "status": r.status,
        "row_count": r.row_count,
        "sha256": r.sha256,
    })
}

/// Who sees which reports: their creator, and whoever may read reports over every client (a
/// report never holds more than every client). Others get a 404, as for a report that does not
/// exist.
fn visible(permit: &Permit) -> Condition {
    visible_to(permit, Column::CreatedBy)
}

/// Rows (reports, schedules) seen by the person in `owner`, and by whoever may read reports
/// over every client.
pub(crate) fn visible_to(permit: &Permit, owner: impl ColumnTrait) -> Condition {
    match permit.scope() {
        ClientScope::All => Condition::all(),
        ClientScope::Only(_) => Condition::all().add(owner.eq(permit.user().id)),
    }
}

/// The report, if the caller may see it.
pub async fn visible_report(core: &Core, permit: &Permit, id: Uuid) -> Result<Model, Error> {
    Entity::find_by_id(id)
        .filter(visible(permit))
        .one(core.db.reader())
        .await?
        .ok_or(Error::NotFound("report"))
}

/// List filters.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only reports made by this schedule.
    pub schedule_id: Option<Uuid>,
}

/// A page of the reports the caller may see, newest first.
pub async fn list(
    core: &Core,
    permit: &Permit,
    filter: &ListFilter,
    request: PageRequest,
) -> Result<Page<Report>, Error> {
    let mut condition = visible(permit);
    if let Some(kind) = &filter.kind {
        condition = condition.add(Column::Kind.eq(kind.clone()));
    }
    if let Some(schedule) = filter.schedule_id {
        condition = condition.add(Column::ScheduleId.eq(schedule));
    }
    if let Some(after) = request.after {
        condition = condition.add(Column::Id.lt(after));
    }
    let rows = Entity::find()
        .filter(condition)
        .order_by_desc(Column::Id)
        .limit(request.limit + 1)
        .all(core.db.reader())
        .await?;
    let mut page = Page::from_rows(rows, request, |r| r.id).map(Report::from);
    attach_deliveries(core, &mut page.items).await?;
    Ok(page)
}

/// Fills in the reports' deliveries, in one query.
pub async fn attach_deliveries(core: &Core, reports: &mut [Report]) -> Result<(), Error> {
    let scheduled: Vec<Uuid> = reports
        .iter()
        .filter(|r| r.schedule_id.is_some())
        .map(|r| r.id)
        .collect();
    for delivery in crate::delivery::of_reports(core, &scheduled).await? {
        if let Some(report) = reports.iter_mut().find(|r| r.id == delivery.report_id) {
            report.deliveries.push(delivery.into());
        }
    }
    Ok(())
}
