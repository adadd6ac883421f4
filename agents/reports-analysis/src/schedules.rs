//! Report schedules: a kind, format and filters made into a report at every tick of a
//! five-field cron read in a time zone, then delivered by mail and/or webhook.
//!
//! The runner's cron loop reads the active schedules every few seconds
//! ([`crate::ReportsAnalysis`]'s `schedules`) and fires each tick once across every instance
//! (the queue's `cron_ticks`); the tick's job ([`run_tick`]) checks that the owner may still
//! generate reports, then makes the report as its owner at the tick. An owner who lost the
//! grant stops the schedule, which says why.

use std::str::FromStr;

use agentdesk_agent_sdk::core::models::client;
use agentdesk_agent_sdk::core::pagination::{Page, PageRequest};
use agentdesk_agent_sdk::core::services::audit::{AuditRecord, Outcome};
use agentdesk_agent_sdk::core::services::jobs::NewJob;
use agentdesk_agent_sdk::core::services::permissions::{Need, Permit};
use agentdesk_agent_sdk::core::{Core, Error, RequestMeta};
use agentdesk_agent_sdk::{CronSpec, JobContext, JobError};
use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use rand::RngCore;
use sea_orm::entity::prelude::*;
use sea_orm::{QueryOrder, QuerySelect, Set};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::period::Period;
use crate::reports::{self, ReportParams, format, kind};
use crate::routes::check_choice;
use crate::{NAME, SCHEDULED};

/// A row of `report_schedules`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "report_schedules")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub kind: String,
    pub format: String,
    pub params: Json,
    pub cron: String,
    pub timezone: String,
    pub deliver: Json,
    pub webhook_secret: Option<String>,
    pub status: String,
    pub disabled_reason: Option<String>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_report_id: Option<Uuid>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    /// The API key the schedule was made with, if any: its reports are made within the key.
    pub api_key_id: Option<Uuid>,
}

/// Relations the ORM does not need.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Schedule statuses.
pub mod status {
    /// Makes a report at every tick.
    pub const ACTIVE: &str = "active";
    /// Stopped; `disabled_reason` says why.
    pub const DISABLED: &str = "disabled";
}

/// Recipients of one schedule's mail, at most.
pub const MAX_RECIPIENTS: usize = 20;
/// Schedules one person may keep.
pub const MAX_PER_OWNER: u64 = 100;

/// Where a schedule's reports go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deliver {
    /// Mail the report (a PDF, CSV or JSON attachment) to these addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<String>,
    /// POST the report's facts to this URL (`https://`; `http://` only to this machine), signed
    /// in `Agentdesk-Signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// A new schedule.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// `client_summary`, `activity`, `documents` or `recordings`.
    #[schema(schema_with = crate::routes::kind_schema)]
    pub kind: String,
    /// The period (relative to each tick: `-7d`, `-1m`, `now`) and, optionally, one client.
    #[serde(default, deserialize_with = "agentdesk_agent_sdk::http::object_only")]
    pub params: ReportParams,
    /// `pdf` (default), `csv` or `json`.
    #[schema(schema_with = crate::routes::format_schema)]
    pub format: Option<String>,
    /// Five fields: minute hour day-of-month month day-of-week (`0 8 * * MON`).
    pub cron: String,
    /// IANA time zone the cron is read in (`Europe/Madrid`); default `UTC`.
    pub timezone: Option<String>,
    /// Where each report goes; without it reports are only listed.
    #[serde(
        default,
        deserialize_with = "agentdesk_agent_sdk::http::optional_object"
    )]
    pub deliver: Option<Deliver>,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Schedule {
    /// UUID v7.
    pub id: Uuid,
    /// The report kind.
    pub kind: String,
    /// The report format.
    pub format: String,
    /// The filters, as given (relative bounds resolve at each tick).
    #[schema(value_type = Object)]
    pub params: Value,
    /// Five-field cron.
    pub cron: String,
    /// IANA time zone of the cron.
    pub timezone: String,
    /// Where reports go.
    pub deliver: Deliver,
    /// `active` or `disabled`.
    pub status: String,
    /// Why it stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// The next tick, while active.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The last tick that made a report.
    pub last_run_at: Option<DateTime<Utc>>,
    /// The report it made then.
    pub last_report_id: Option<Uuid>,
    /// Its owner: reports are made as this person.
    pub created_by: Uuid,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// The key that signs webhook calls (HMAC-SHA256): shown once, when the schedule is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

impl Schedule {
    /// The view of a row; the webhook secret is left out.
    pub fn of(m: Model) -> Self {
        let next_run_at = (m.status == status::ACTIVE)
            .then(|| parse_cron(&m.cron).ok())
            .flatten()
            .zip(Tz::from_str(&m.timezone).ok())
            .and_then(|(cron, tz)| next_tick(&cron, tz, Utc::now()));
        Self {
            id: m.id,
            kind: m.kind,
            format: m.format,
            params: m.params,
            cron: m.cron,
            timezone: m.timezone,
            deliver: serde_json::from_value(m.deliver).unwrap_or_default(),
            status: m.status,
            disabled_reason: m.disabled_reason,
            next_run_at,
            last_run_at: m.last_run_at,
            last_report_id: m.last_report_id,
            created_by: m.created_by,
            created_at: m.created_at,
            webhook_secret: None,
        }
    }
}

/// The JSON the audit log keeps of a schedule (never its secret).
fn audit_view(m: &Model) -> Value {
    json!({
        "kind": m.kind,
        "format": m.format,
        "params": m.params,
        "cron": m.cron,
        "timezone": m.timezone,
        "deliver": m.deliver,
        "status": m.status,
        "disabled_reason": m.disabled_reason,
    })
}

/// Parses a five-field cron (minute hour day-of-month month day-of-week).
pub fn parse_cron(raw: &str) -> Result<croner::Cron, String> {
    let fields = raw.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "must have five fields (minute hour day-of-month month day-of-week), not {fields}"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(raw)
        .map_err(|e| e.to_string())
}

/// The first tick after `after`.
pub fn next_tick(cron: &croner::Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Ticks are whole seconds: a fraction of `after` would carry into the tick.
    cron.find_next_occurrence(&after.trunc_subsecs(0).with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Checks an e-mail address the way the mailer will read it.
fn check_email(raw: &str) -> Result<(), String> {
    lettre::Address::from_str(raw.trim())
        .map(|_| ())
        .map_err(|_| format!("`{raw}` is not an e-mail address"))
}

/// Checks a webhook URL: HTTPS, or plain HTTP to this machine (development receivers).
pub fn check_webhook(raw: &str) -> Result<reqwest::Url, String> {
    if raw.len() > 2000 {
        return Err("must be at most 2000 characters".into());
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err("has no host".into()),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("must be https:// (http:// only to localhost)".into()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    Ok(url)
}

/// A fresh signing key: `whsec_` and 32 random bytes in hex.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", hex::encode(bytes))
}

/// Validates and stores a schedule for the caller, audited. The answer carries the webhook
/// secret, which is never shown again.
pub async fn create(core: &Core, permit: &Permit, body: NewSchedule) -> Result<Schedule, Error> {
    check_choice("kind", &body.kind, &kind::ALL)?;
    let format = body.format.unwrap_or_else(|| format::PDF.into());
    check_choice("format", &format, &format::ALL)?;
    let cron_text = body.cron.split_whitespace().collect::<Vec<_>>().join(" ");
    let cron = parse_cron(&cron_text).map_err(|m| Error::invalid("cron", m))?;
    let timezone = body.timezone.unwrap_or_else(|| "UTC".into());
    let tz = Tz::from_str(timezone.trim()).map_err(|_| {
        Error::invalid(
            "timezone",
            format!("`{timezone}` is not an IANA time zone (such as Europe/Madrid)"),
        )
    })?;
    if next_tick(&cron, tz, Utc::now()).is_none() {
        return Err(Error::invalid("cron", "never fires"));
    }
    // The filters must make sense now; relative bounds resolve again at every tick.
    Period::resolve(
        body.params.from.as_deref(),
        body.params.to.as_deref(),
        Utc::now(),
    )?;
    if let Some(client) = body.params.client_id {
        core.scoped_client(permit, client).await?;
    }
    let mut deliver = body.deliver.unwrap_or_default();
    deliver.email = deliver.email.iter().map(|e| e.trim().to_owned()).collect();
    deliver.email.sort();
    deliver.email.dedup();
    if deliver.email.len() > MAX_RECIPIENTS {
        return Err(Error::invalid(
            "deliver.email",
            format!("at most {MAX_RECIPIENTS} recipients"),
        ));
    }
    for address in &deliver.email {
        check_email(address).map_err(|m| Error::invalid("deliver.email", m))?;
    }
    if !deliver.email.is_empty() && core.settings.smtp_url.is_none() {
        return Err(Error::invalid(
            "deliver.email",
            "this instance sends no mail: its operator has not set AGENTDESK_SMTP_URL",
        ));
    }
    if let Some(url) = &deliver.webhook {
        check_webhook(url).map_err(|m| Error::invalid("deliver.webhook", m))?;
    }
    let owned = Entity::find()
        .filter(Column::CreatedBy.eq(permit.user().id))
        .count(core.db.reader())
        .await?;
    if owned >= MAX_PER_OWNER {
        return Err(Error::invalid(
            "cron",
            format!("one person may keep at most {MAX_PER_OWNER} schedules; delete one first"),
        ));
    }
    let secret = deliver.webhook.is_some().then(new_secret);
    let txn = core.db.begin().await?;
    let row = ActiveModel {
        id: Set(Uuid::now_v7()),
        kind: Set(body.kind),
        format: Set(format),
        params: Set(serde_json::to_value(&body.params).map_err(Error::internal)?),
        cron: Set(cron_text),
        timezone: Set(tz.name().to_owned()),
        deliver: Set(serde_json::to_value(&deliver).map_err(Error::internal)?),
        webhook_secret: Set(secret.clone()),
        status: Set(status::ACTIVE.into()),
        disabled_reason: Set(None),
        last_run_at: Set(None),
        last_report_id: Set(None),
        created_by: Set(permit.user().id),
        created_at: Set(Utc::now()),
        api_key_id: Set(permit.actor().api_key.as_ref().map(|k| k.id)),
    }
    .insert(&txn)
    .await?;
    let record = permit
        .audit("report_schedule.create", Outcome::Success)
        .resource("report_schedule", row.id)
        .client(body.params.client_id)
        .changes(json!({"before": null, "after": audit_view(&row)}));
    core.append(&txn, record).await?;
    txn.commit().await?;
    let mut view = Schedule::of(row);
    view.webhook_secret = secret;
    Ok(view)
}

/// The schedule, if the caller may see it.
pub async fn visible_schedule(core: &Core, permit: &Permit, id: Uuid) -> Result<Model, Error> {
    Entity::find_by_id(id)
        .filter(reports::visible_to(permit, Column::CreatedBy))
        .one(core.db.reader())
        .await?
        .ok_or(Error::NotFound("report schedule"))
}

/// A page of the schedules the caller may see, newest first.
pub async fn list(
    core: &Core,
    permit: &Permit,
    request: PageRequest,
) -> Result<Page<Schedule>, Error> {
    let mut condition = reports::visible_to(permit, Column::CreatedBy);
    if let Some(after) = request.after {
        condition = condition.add(Column::Id.lt(after));
    }
    let rows = Entity::find()
        .filter(condition)
        .order_by_desc(Column::Id)
        .limit(request.limit + 1)
        .all(core.db.reader())
        .await?;
    Ok(Page::from_rows(rows, request, |r| r.id).map(Schedule::of))
}

/// Deletes a schedule (its owner or an admin); the reports it made stay.
pub async fn delete(core: &Core, permit: &Permit, id: Uuid) -> Result<(), Error> {
    let schedule = visible_schedule(core, permit, id).await?;
    if schedule.created_by != permit.user().id && !permit.user().is_admin() {
        return Err(Error::Forbidden(
            "only the schedule's owner or an admin may delete it".into(),
        ));
    }
    let txn = core.db.begin().await?;
    Entity::delete_by_id(id).exec(&txn).await?;
    let record = permit
        .audit("report_schedule.delete", Outcome::Success)
        .resource("report_schedule", id)
        .changes(json!({"before": audit_view(&schedule), "after": null}));
    core.append(&txn, record).await?;
    txn.commit().await?;
    Ok(())
}

/// The cron name under which a schedule's ticks are fired once.
fn tick_name(id: Uuid) -> String {
    format!("{NAME}.schedule:{id}")
}

/// The job of one tick.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TickArgs {
    /// The schedule.
    pub schedule_id: Uuid,
    /// The tick it fires for.
    pub tick: DateTime<Utc>,
}

/// The active schedules as cron specs for the runner; each tick enqueues a [`run_tick`] job
/// acting for the schedule's owner (within the API key they made it with, if any).
pub async fn cron_specs(core: &Core) -> Result<Vec<CronSpec>, Error> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(Uuid, String, String, Uuid, DateTime<Utc>, Option<Uuid>)> = Entity::find()
        .select_only()
        .column(Column::Id)
        .column(Column::Cron)
        .column(Column::Timezone)
        .column(Column::CreatedBy)
        .column(Column::CreatedAt)
        .column(Column::ApiKeyId)
        .filter(Column::Status.eq(status::ACTIVE))
        .into_tuple()
        .all(core.db.reader())
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, cron, timezone, owner, created_at, api_key)| {
            let tz = Tz::from_str(&timezone).ok()?;
            let spec = CronSpec::new(tick_name(id), cron, move |tick| {
                let args = serde_json::to_value(TickArgs {
                    schedule_id: id,
                    tick,
                })
                .unwrap_or(Value::Null);
                let mut job = NewJob::new(NAME, SCHEDULED, args);
                job.created_by = Some(owner);
                job.api_key_id = api_key;
                job.max_attempts = 5;
                job
            });
            Some(spec.in_timezone(tz).since(created_at))
        })
        .collect())
}

/// Stops a schedule, saying why, audited as done by the system for its owner.
async fn disable(ctx: &JobContext, schedule: &Model, reason: &str) -> Result<(), Error> {
    let core = ctx.core();
    let txn = core.db.begin().await?;
    let updated = Entity::update_many()
        .col_expr(Column::Status, status::DISABLED.into())
        .col_expr(Column::DisabledReason, reason.into())
        .filter(Column::Id.eq(schedule.id))
        .filter(Column::Status.eq(status::ACTIVE))
        .exec(&txn)
        .await?;
    if updated.rows_affected == 0 {
        return Ok(());
    }
    let mut record = AuditRecord::new(
        "report_schedule.disable",
        Outcome::Success,
        &RequestMeta::system(&format!("job:{}", ctx.job().id)),
    )
    .resource("report_schedule", schedule.id)
    .changes(json!({"reason": reason}));
    if let Ok(owner) = ctx.user().await {
        record = record.actor(&owner);
    }
    core.append(&txn, record).await?;
    txn.commit().await?;
    tracing::warn!(schedule_id = %schedule.id, %reason, "report schedule disabled");
    Ok(())
}

/// One tick of a schedule: unless the owner lost the right to it (which stops the schedule),
/// a report of the schedule's kind over the period resolved at the tick, made as its owner.
/// A retried tick finds the report it made before instead of making a second.
pub async fn run_tick(ctx: &JobContext) -> Result<Value, JobError> {
    let args: TickArgs = serde_json::from_value(ctx.job().args.clone())
        .map_err(|e| JobError::Fatal(format!("bad job arguments: {e}")))?;
    let core = ctx.core();
    let Some(schedule) = Entity::find_by_id(args.schedule_id)
        .one(core.db.writer())
        .await
        .map_err(Error::from)?
    else {
        return Ok(json!({"skipped": "the schedule was deleted"}));
    };
    if schedule.status != status::ACTIVE {
        return Ok(json!({"skipped": "the schedule is disabled"}));
    }
    let permit = match ctx
        .permit("agent:reports_analysis", "generate", Need::SomeClients)
        .await
    {
        Ok(permit) => permit,
        Err(e) => {
            let reason = format!(
                "its owner may no longer generate reports (agent:reports_analysis generate): {e}"
            );
            disable(ctx, &schedule, &reason).await?;
            return Ok(json!({"disabled": reason}));
        }
    };
    let params: ReportParams = serde_json::from_value(schedule.params.clone())
        .map_err(|e| JobError::Fatal(format!("the schedule's filters are unreadable: {e}")))?;
    if let Some(client) = params.client_id {
        let live = client::Entity::find_by_id(client)
            .filter(client::Column::DeletedAt.is_null())
            .one(core.db.reader())
            .await
            .map_err(Error::from)?;
        if live.is_none() || !permit.scope().covers(client) {
            let reason = format!("its owner no longer sees the client {client}");
            disable(ctx, &schedule, &reason).await?;
            return Ok(json!({"disabled": reason}));
        }
    }
    let existing = reports::Entity::find()
        .filter(reports::Column::ScheduleId.eq(schedule.id))
        .filter(reports::Column::ScheduledFor.eq(args.tick))
        .one(core.db.writer())
        .await
        .map_err(Error::from)?;
    let report = match existing {
        Some(report) => report,
        None => {
            let period = Period::resolve(params.from.as_deref(), params.to.as_deref(), args.tick)
                .map_err(|e| JobError::Fatal(format!("the schedule's period: {e}")))?;
            let scheduled = crate::routes::Scheduled {
                schedule_id: schedule.id,
                tick: args.tick,
            };
            crate::routes::create(
                core,
                &permit,
                &schedule.kind,
                &schedule.format,
                &params,
                period,
                Some(scheduled),
            )
            .await?
        }
    };
    Entity::update_many()
        .col_expr(Column::LastRunAt, args.tick.into())
        .col_expr(Column::LastReportId, report.id.into())
        .filter(Column::Id.eq(schedule.id))
        .exec(core.db.writer())
        .await
        .map_err(Error::from)?;
    Ok(json!({"report_id": report.id, "tick": args.tick}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_has_five_fields() {
        assert!(parse_cron("0 8 * * MON").is_ok());
        assert!(parse_cron("*/15 * * * *").is_ok());
        assert!(parse_cron("0 0 8 * * *").is_err(), "six fields");
        assert!(parse_cron("* * * *").is_err());
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("every day").is_err());
    }

    #[test]
    fn ticks_follow_the_time_zone() {
        let cron = parse_cron("0 8 * * *").unwrap();
        let tz = Tz::from_str("Europe/Madrid").unwrap();
        // 8:00 in Madrid is 7:00 UTC in winter, 6:00 UTC in summer.
        let winter = DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            next_tick(&cron, tz, winter).unwrap().to_rfc3339(),
            "2026-12-06T07:00:00+00:00"
        );
        // A fraction of a second in `after` never carries into the tick.
        let fraction = winter + chrono::Duration::milliseconds(835);
        assert_eq!(
            next_tick(&cron, tz, fraction).unwrap().to_rfc3339(),
            "2026-12-06T07:00:00+00:00"
        );
        let summer = DateTime::parse_from_rfc3339("2026-07-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            next_tick(&cron, tz, summer).unwrap().to_rfc3339(),
            "2026-07-02T06:00:00+00:00"
        );
    }

    #[test]
    fn webhooks_are_https_or_local() {
        assert!(check_webhook("https://hooks.example.com/agentdesk").is_ok());
        assert!(check_webhook("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_webhook("http://localhost/hook").is_ok());
        assert!(check_webhook("http://[::1]:9000/").is_ok());
        assert!(check_webhook("http://hooks.example.com/").is_err());
        assert!(check_webhook("ftp://example.com/").is_err());
        assert!(check_webhook("https://user:pw@example.com/").is_err());
        assert!(check_webhook("not a url").is_err());
    }

    #[test]
    fn emails_are_checked() {
        assert!(check_email("ana@example.com").is_ok());
        assert!(check_email("ana").is_err());
        assert!(check_email("ana@").is_err());
    }
}
