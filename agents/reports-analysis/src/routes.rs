//! The routes this agent contributes: the overview, and reports (create, list, read, download,
//! delete), behind `agent:reports_analysis` and the caller's client scope, audited.

use agentdesk_agent_sdk::core::Core;
use agentdesk_agent_sdk::core::pagination::{Page, PageRequest};
use agentdesk_agent_sdk::core::services::audit::Outcome;
use agentdesk_agent_sdk::core::services::jobs::NewJob;
use agentdesk_agent_sdk::core::{Error, services::permissions::Permit};
use agentdesk_agent_sdk::http::attachment_response;
use agentdesk_agent_sdk::http::extractors::{AppJson, AppQuery, Authorized};
use agentdesk_agent_sdk::http::problem::{ApiResult, Problem};
use agentdesk_agent_sdk::metrics::{MetricsProviders, MetricsQuery};
use axum::Extension;
use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::generate::GenerateArgs;
use crate::period::Period;
use crate::reports::{self, ListFilter, Report, ReportParams, format, kind, status};
use crate::schedules::{self, NewSchedule, Schedule};
use crate::{GENERATE, NAME};

agentdesk_agent_sdk::requirements! {
    /// `agent:reports_analysis` `read`, within the caller's client scope.
    ReportsRead = "agent:reports_analysis", "read", SomeClients;
    /// `agent:reports_analysis` `generate`, within the caller's client scope.
    ReportsGenerate = "agent:reports_analysis", "generate", SomeClients;
}

/// The routes this agent contributes, over any state that holds the core; `providers` are the
/// metrics providers of the other agents the binary carries.
pub fn routes<S>(providers: MetricsProviders) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Core: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(overview))
        .routes(routes!(create_report, list_reports))
        .routes(routes!(get_report, delete_report))
        .routes(routes!(download_report))
        .routes(routes!(create_schedule, list_schedules))
        .routes(routes!(get_schedule, delete_schedule))
        .layer(Extension(providers))
}

/// The period of an overview.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OverviewQuery {
    /// Start: a date, an RFC 3339 time, `now` or relative (`-7d`, `-1m`); default 30 days
    /// before `to`.
    pub from: Option<String>,
    /// End: as `from` (a date includes its day); default now.
    pub to: Option<String>,
}

/// The business at a glance over the caller's clients: clients (all of them by status, those
/// created in the period by month), documents and recordings created in the period, and the
/// period's audit events by day with the ten most active people.
#[utoipa::path(get, path = "/api/v1/reports/overview", tag = "reports_analysis", params(OverviewQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{period, clients: {total, by_status, new, new_by_month}, documents: {total, pages, by_status}, recordings: {total, minutes, by_status}, activity: {total, events_by_day, top_actors}}`", body = Object),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad `from` or `to`", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn overview(
    State(core): State<Core>,
    Extension(providers): Extension<MetricsProviders>,
    Authorized(permit, _): Authorized<ReportsRead>,
    AppQuery(query): AppQuery<OverviewQuery>,
) -> ApiResult<AppJson<Value>> {
    let period = Period::resolve(query.from.as_deref(), query.to.as_deref(), Utc::now())?;
    let query = MetricsQuery {
        scope: permit.scope().clone(),
        client_id: None,
        from: period.from,
        to: period.to,
    };
    Ok(AppJson(
        crate::overview::overview(&core, &providers, &query).await?,
    ))
}

/// What to report on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReport {
    /// `client_summary`, `activity`, `documents` or `recordings`.
    #[schema(schema_with = kind_schema)]
    pub kind: String,
    /// The period and, optionally, one client.
    #[serde(default, deserialize_with = "agentdesk_agent_sdk::http::object_only")]
    pub params: ReportParams,
    /// `json` (default), `csv` or `pdf`.
    #[schema(schema_with = format_schema)]
    pub format: Option<String>,
}

/// The document's list of report kinds (`check_choice` holds a request to the same list).
pub(crate) fn kind_schema() -> utoipa::openapi::Object {
    agentdesk_agent_sdk::http::choice_schema(&kind::ALL)
}

/// The document's list of report formats, or null.
pub(crate) fn format_schema() -> utoipa::openapi::Object {
    agentdesk_agent_sdk::http::nullable_choice_schema(&format::ALL)
}

/// A 422 naming `field` unless `value` is one of `allowed`.
pub(crate) fn check_choice(field: &str, value: &str, allowed: &[&str]) -> Result<(), Error> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("must be one of {}", allowed.join(", ")),
        ))
    }
}

/// Ask for a report: a job makes its file over the caller's clients as they are then.
#[utoipa::path(post, path = "/api/v1/reports", tag = "reports_analysis", request_body = NewReport,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The report, queued", body = Report),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client in scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown kind or format, or a bad period", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn create_report(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ReportsGenerate>,
    AppJson(body): AppJson<NewReport>,
) -> ApiResult<Response> {
    check_choice("kind", &body.kind, &kind::ALL)?;
    let format = body.format.unwrap_or_else(|| format::JSON.into());
    check_choice("format", &format, &format::ALL)?;
    let period = Period::resolve(
        body.params.from.as_deref(),
        body.params.to.as_deref(),
        Utc::now(),
    )?;
    if let Some(client) = body.params.client_id {
        core.scoped_client(&permit, client).await?;
    }
    let row = create(
        &core,
        &permit,
        &body.kind,
        &format,
        &body.params,
        period,
        None,
    )
    .await?;
    let mut response = (StatusCode::ACCEPTED, AppJson(Report::from(row.clone()))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/reports/{}", row.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The schedule and tick a report is made for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scheduled {
    /// The schedule.
    pub schedule_id: Uuid,
    /// Its tick.
    pub tick: chrono::DateTime<Utc>,
}

/// Creates a report's row and its job in one transaction, audited.
pub(crate) async fn create(
    core: &Core,
    permit: &Permit,
    kind: &str,
    format: &str,
    params: &ReportParams,
    period: Period,
    scheduled: Option<Scheduled>,
) -> Result<reports::Model, Error> {
    let id = Uuid::now_v7();
    let mut job = NewJob::new(
        NAME,
        GENERATE,
        serde_json::to_value(GenerateArgs { report_id: id }).map_err(Error::internal)?,
    );
    job.act_for(permit.actor());
    job.client_id = params.client_id;
    job.max_attempts = 3;
    let txn = core.db.begin().await?;
    let job = core.enqueue(&txn, job).await?;
    let row = reports::ActiveModel {
        id: Set(id),
        kind: Set(kind.into()),
        format: Set(format.into()),
        params: Set(serde_json::to_value(params).map_err(Error::internal)?),
        period_from: Set(period.from),
        period_to: Set(period.to),
        client_id: Set(params.client_id),
        status: Set(status::QUEUED.into()),
        error_code: Set(None),
        error_message: Set(None),
        schedule_id: Set(scheduled.map(|s| s.schedule_id)),
        scheduled_for: Set(scheduled.map(|s| s.tick)),
        storage_key: Set(None),
        content_type: Set(None),
        size_bytes: Set(None),
        sha256: Set(None),
        row_count: Set(None),
        job_id: Set(Some(job.id)),
        created_by: Set(Some(permit.user().id)),
        created_at: Set(Utc::now()),
        finished_at: Set(None),
    }
    .insert(&txn)
    .await?;
    let record = permit
        .audit("report.create", Outcome::Success)
        .resource("report", row.id)
        .client(row.client_id)
        .changes(serde_json::json!({"before": null, "after": reports::audit_view(&row)}));
    core.append(&txn, record).await?;
    txn.commit().await?;
    core.wake_workers().await;
    Ok(row)
}

/// List filters and page options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this kind.
    #[param(schema_with = kind_schema)]
    pub kind: Option<String>,
    /// Only reports made by this schedule.
    pub schedule_id: Option<Uuid>,
    /// Rows per page, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    #[param(schema_with = agentdesk_agent_sdk::core::pagination::id_cursor_schema)]
    pub cursor: Option<String>,
}

/// The reports the caller may see, newest first: their own, or every report for a caller who
/// may read reports over every client.
#[utoipa::path(get, path = "/api/v1/reports", tag = "reports_analysis", params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of reports", body = Page<Report>),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown kind", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list_reports(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ReportsRead>,
    AppQuery(query): AppQuery<ListQuery>,
) -> ApiResult<AppJson<Page<Report>>> {
    if let Some(kind) = &query.kind {
        check_choice("kind", kind, &kind::ALL)?;
    }
    let request = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let filter = ListFilter {
        kind: query.kind,
        schedule_id: query.schedule_id,
    };
    Ok(AppJson(
        reports::list(&core, &permit, &filter, request).await?,
    ))
}

/// A report: its status, period and file facts.
#[utoipa::path(get, path = "/api/v1/reports/{id}", tag = "reports_analysis",
    params(("id" = Uuid, Path, description = "The report")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The report", body = Report),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such report for the caller", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn get_report(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ReportsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<AppJson<Report>> {
    let mut report = [Report::from(
        reports::visible_report(&core, &permit, id).await?,
    )];
    reports::attach_deliveries(&core, &mut report).await?;
    let [report] = report;
    Ok(AppJson(report))
}

/// The report's file, once ready (the download is audited).
#[utoipa::path(get, path = "/api/v1/reports/{id}/download", tag = "reports_analysis",
    params(("id" = Uuid, Path, description = "The report")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The file: JSON, CSV or PDF (with charts)", content(
            (Object = "application/json"), (String = "text/csv"), (Vec<u8> = "application/pdf"))),
        (status = 404, description = "No such report for the caller", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not ready (yet)", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn download_report(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ReportsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let report = reports::visible_report(&core, &permit, id).await?;
    let (Some(key), status::READY) = (report.storage_key.as_deref(), report.status.as_str()) else {
        return Err(Error::Conflict(format!(
            "the report is {}; its file exists once it is ready",
            report.status
        ))
        .into());
    };
    let stream = core.storage.get_stream(key).await?;
    let record = permit
        .audit("report.download", Outcome::Success)
        .resource("report", id)
        .client(report.client_id)
        .changes(serde_json::json!({"sha256": report.sha256, "size_bytes": report.size_bytes}));
    core.audit_alone(record).await?;
    let filename = format!(
        "{}-{}-{}.{}",
        report.kind,
        report.period_from.format("%Y%m%d"),
        report.period_to.format("%Y%m%d"),
        report.format
    );
    Ok(attachment_response(
        stream,
        format::content_type(&report.format),
        report.size_bytes.unwrap_or(0),
        &filename,
    ))
}

/// Delete a report and its file: its creator, or an admin.
#[utoipa::path(delete, path = "/api/v1/reports/{id}", tag = "reports_analysis",
    params(("id" = Uuid, Path, description = "The report")), security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not the report's creator nor an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such report for the caller", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn delete_report(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ReportsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let report = reports::visible_report(&core, &permit, id).await?;
    if report.created_by != Some(permit.user().id) && !permit.user().is_admin() {
        return Err(
            Error::Forbidden("only the report's creator or an admin may delete it".into()).into(),
        );
    }
    let txn = core.db.begin().await?;
    reports::Entity::delete_by_id(id)
        .exec(&txn)
        .await
        .map_err(Error::from)?;
    crate::delivery::Entity::delete_many()
        .filter(crate::delivery::Column::ReportId.eq(id))
        .exec(&txn)
        .await
        .map_err(Error::from)?;
    let record = permit
        .audit("report.delete", Outcome::Success)
        .resource("report", id)
        .client(report.client_id)
        .changes(serde_json::json!({"before": reports::audit_view(&report), "after": null}));
    core.append(&txn, record).await?;
    txn.commit().await.map_err(Error::from)?;
    if let Some(key) = &report.storage_key
        && let Err(e) = core.storage.delete(key).await
    {
        tracing::warn!(error = %e, key = %key, "could not delete a report's file");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Schedule a report: at every tick of `cron` (five fields, read in `timezone`) one report is made
/// as the caller, once across all instances, its relative period resolved at the tick, then
/// delivered by mail and/or a signed webhook. The webhook's signing key is in this answer only.
#[utoipa::path(post, path = "/api/v1/reports/schedules", tag = "reports_analysis", request_body = NewSchedule,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The schedule, with `webhook_secret` when it calls a webhook", body = Schedule),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client in scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown kind or format, a bad cron, time zone, period, address or URL, or mail asked of an instance without SMTP", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn create_schedule(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ReportsGenerate>,
    AppJson(body): AppJson<NewSchedule>,
) -> ApiResult<Response> {
    let schedule = schedules::create(&core, &permit, body).await?;
    let mut response = (StatusCode::CREATED, AppJson(schedule.clone())).into_response();
    if let Ok(location) =
        HeaderValue::from_str(&format!("/api/v1/reports/schedules/{}", schedule.id))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Page options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SchedulePageQuery {
    /// Rows per page, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    #[param(schema_with = agentdesk_agent_sdk::core::pagination::id_cursor_schema)]
    pub cursor: Option<String>,
}

/// The schedules the caller may see, newest first: their own, or every schedule for a caller
/// who may read reports over every client.
#[utoipa::path(get, path = "/api/v1/reports/schedules", tag = "reports_analysis", params(SchedulePageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of schedules", body = Page<Schedule>),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list_schedules(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ReportsRead>,
    AppQuery(query): AppQuery<SchedulePageQuery>,
) -> ApiResult<AppJson<Page<Schedule>>> {
    let request = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    Ok(AppJson(schedules::list(&core, &permit, request).await?))
}

/// A schedule: its cron, next tick, status (and why it stopped) and last report.
#[utoipa::path(get, path = "/api/v1/reports/schedules/{id}", tag = "reports_analysis",
    params(("id" = Uuid, Path, description = "The schedule")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The schedule", body = Schedule),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule for the caller", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn get_schedule(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ReportsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<AppJson<Schedule>> {
    Ok(AppJson(Schedule::of(
        schedules::visible_schedule(&core, &permit, id).await?,
    )))
}

/// Delete a schedule (its owner or an admin); the reports it made stay.
#[utoipa::path(delete, path = "/api/v1/reports/schedules/{id}", tag = "reports_analysis",
    params(("id" = Uuid, Path, description = "The schedule")), security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not the schedule's owner nor an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule for the caller", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn delete_schedule(
    State(core): State<Core>,
    Authorized(permit, _): Authorized<ReportsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    schedules::delete(&core, &permit, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
