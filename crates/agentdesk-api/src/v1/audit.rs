//! `/audit`: the audit log: query, one event, chain verification, streamed export.

use agentdesk_core::models::audit::AuditEvent;
use agentdesk_core::services::audit::{AuditFilter, Outcome, Verification};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::extractors::{AppJson, AppQuery, AuditExport, AuditRead, AuditReadAll, Authorized};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::v1::users::parse_id;
use agentdesk_agent_sdk::http::{ExportFormat, csv_cell};

/// The routes of `/audit`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(verify))
        .routes(routes!(export))
}

/// Filters of the event list and export.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only this actor.
    pub actor_id: Option<Uuid>,
    /// Only this action (`auth.login`, `user.update`, ...).
    pub action: Option<String>,
    /// Only this kind of record.
    pub resource_type: Option<String>,
    /// Only this record.
    pub resource_id: Option<String>,
    /// Only this client.
    pub client_id: Option<Uuid>,
    /// `success`, `denied` or `error`.
    #[param(schema_with = outcome_schema)]
    pub outcome: Option<String>,
    /// From this time (RFC 3339, inclusive).
    pub from: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339, exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Page size, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(schema_with = agentdesk_core::pagination::number_cursor_schema)]
    pub cursor: Option<String>,
    /// Export only: `csv` or `jsonl`.
    #[param(schema_with = ExportFormat::schema)]
    pub format: Option<String>,
}

const OUTCOMES: [Outcome; 3] = [Outcome::Success, Outcome::Denied, Outcome::Error];

fn outcome_schema() -> utoipa::openapi::Object {
    let names: Vec<&str> = OUTCOMES.iter().map(|o| o.as_str()).collect();
    agentdesk_agent_sdk::http::choice_schema(&names)
}

impl EventQuery {
    /// The page size and the position to list from (`limit` and `cursor`).
    fn page(&self) -> Result<(u64, Option<i64>), ApiError> {
        let limit = agentdesk_core::pagination::parse_limit(self.limit)?;
        let before = self
            .cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(decode_seq_cursor)
            .transpose()?;
        Ok((limit, before))
    }

    fn filter(&self, scope: Option<Vec<Uuid>>) -> Result<AuditFilter, ApiError> {
        if let Some(outcome) = &self.outcome
            && !OUTCOMES.iter().any(|o| o.as_str() == outcome)
        {
            return Err(ApiError::http(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "outcome must be success, denied or error",
            ));
        }
        Ok(AuditFilter {
            actor_id: self.actor_id,
            action: self.action.clone(),
            resource_type: self.resource_type.clone(),
            resource_id: self.resource_id.clone(),
            client_id: self.client_id,
            outcome: self.outcome.clone(),
            from: self.from,
            to: self.to,
            scope,
        })
    }
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// The events, newest first.
    pub items: Vec<AuditEvent>,
    /// The next page's cursor, or null.
    pub next_cursor: Option<String>,
}

/// The position of an event cursor: a sequence number (any 8 bytes are one; beyond the
/// largest, the list simply ends).
fn decode_seq_cursor(cursor: &str) -> Result<i64, ApiError> {
    let n = agentdesk_core::pagination::decode_number_cursor(cursor)?;
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

/// List audit events, newest first, within the caller's client scope.
#[utoipa::path(get, path = "/api/v1/audit/events", tag = "audit", params(EventQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "Bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<AuditRead>,
    AppQuery(query): AppQuery<EventQuery>,
) -> ApiResult<AppJson<EventPage>> {
    let (limit, before) = query.page()?;
    // `format` is the export's; the list still checks it, as the shared document says.
    ExportFormat::parse(query.format.as_deref(), ExportFormat::Jsonl)?;
    let filter = query.filter(permit.scope().as_filter())?;
    let (items, next) = state.core.list_audit(&filter, limit, before).await?;
    Ok(AppJson(EventPage {
        items,
        next_cursor: next
            .map(|seq| agentdesk_core::pagination::encode_number_cursor(seq.max(0) as u64)),
    }))
}

/// One audit event.
#[utoipa::path(get, path = "/api/v1/audit/events/{id}", tag = "audit", params(("id" = String, Path, description = "Event id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event", body = AuditEvent),
        (status = 404, description = "No such event in the caller's scope", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn get(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<AuditRead>,
    Path(id): Path<String>,
) -> ApiResult<AppJson<AuditEvent>> {
    let id = parse_id(&id, "audit event")?;
    let scope = permit.scope().as_filter();
    match state.core.get_audit(id, scope.as_deref()).await {
        Err(agentdesk_core::Error::NotFound(_)) if scope.is_some() => Err(state
            .core
            .deny_out_of_scope(&permit, "audit event", id, None)
            .await
            .into()),
        other => Ok(AppJson(other?)),
    }
}

/// Walk the hash chain and report the first broken `seq`.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses(
        (status = 200, description = "The verification", body = Verification),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn verify(
    State(state): State<AppState>,
    Authorized(_permit, _): Authorized<AuditReadAll>,
) -> ApiResult<AppJson<Verification>> {
    Ok(AppJson(state.core.verify_audit().await?))
}

/// Export matching events, oldest first, as CSV or JSON Lines, streamed in constant memory.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", params(EventQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "The events: JSON Lines (the default), or CSV for format=csv",
            content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 400, description = "Bad format or filter", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn export(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<AuditExport>,
    AppQuery(query): AppQuery<EventQuery>,
) -> ApiResult<Response> {
    let format = ExportFormat::parse(query.format.as_deref(), ExportFormat::Jsonl)?;
    // An export is the whole filtered log; the paging parameters it shares with the list must
    // still be well formed, as the document says, though they select nothing here.
    query.page()?;
    let csv = format == ExportFormat::Csv;
    let filter = query.filter(permit.scope().as_filter())?;
    let record = permit
        .audit("audit.export", Outcome::Success)
        .resource_type("audit")
        .changes(serde_json::json!({"format": if csv { "csv" } else { "jsonl" }}));
    state.core.audit_alone(record).await?;
    let rows = state
        .core
        .stream_audit(filter)
        .map(move |event| match event {
            Ok(event) => Ok::<_, std::io::Error>(if csv {
                csv_line(&event)
            } else {
                json_line(&event)
            }),
            Err(e) => {
                tracing::error!(error = %e, "audit export failed midway");
                Err(std::io::Error::other("export failed"))
            }
        });
    let body = if csv {
        let header =
            futures::stream::once(async { Ok::<_, std::io::Error>(CSV_HEADER.to_owned()) });
        Body::from_stream(header.chain(rows))
    } else {
        Body::from_stream(rows)
    };
    Ok(format.attachment(body, "audit-events"))
}

const CSV_HEADER: &str = "id,seq,at,actor_id,actor_email,action,resource_type,resource_id,client_id,outcome,ip,user_agent,request_id,changes,prev_hash,hash,api_key_id\n";

fn json_line(event: &AuditEvent) -> String {
    let mut line = serde_json::to_string(event).unwrap_or_default();
    line.push('\n');
    line
}

fn csv_line(e: &AuditEvent) -> String {
    let opt = |v: &Option<String>| v.as_deref().map(csv_cell).unwrap_or_default();
    let uuid = |v: &Option<Uuid>| v.map(|u| u.to_string()).unwrap_or_default();
    let cells = [
        e.id.to_string(),
        e.seq.to_string(),
        e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        uuid(&e.actor_id),
        opt(&e.actor_email),
        csv_cell(&e.action),
        opt(&e.resource_type),
        opt(&e.resource_id),
        uuid(&e.client_id),
        csv_cell(&e.outcome),
        opt(&e.ip),
        opt(&e.user_agent),
        opt(&e.request_id),
        e.changes
            .as_ref()
            .map(|c| csv_cell(&c.to_string()))
            .unwrap_or_default(),
        csv_cell(&e.prev_hash),
        csv_cell(&e.hash),
        // Last, so that readers of the columns before it keep working.
        uuid(&e.api_key_id),
    ];
    let mut line = cells.join(",");
    line.push('\n');
    line
}
