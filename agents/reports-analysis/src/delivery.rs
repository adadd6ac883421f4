//! Deliveries of scheduled reports: one mail (the file attached, to every recipient) or one
//! webhook call (the report's facts, signed) per channel, each a job of its own so that a
//! failing one is retried with the queue's backoff without resending the other. The report
//! shows each delivery's status, attempts and last error.

use std::time::Duration;

use agentdesk_agent_sdk::core::services::jobs::NewJob;
use agentdesk_agent_sdk::core::{Core, Error};
use agentdesk_agent_sdk::{JobContext, JobError};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sea_orm::entity::prelude::*;
use sea_orm::{ConnectionTrait, QueryOrder, Set};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::reports::{self, Report};
use crate::schedules::{self, Deliver};
use crate::{DELIVER, NAME};

/// A row of `report_deliveries`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "report_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub report_id: Uuid,
    pub channel: String,
    pub target: String,
    pub status: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub response_status: Option<i32>,
    pub job_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Relations the ORM does not need.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Delivery channels.
pub mod channel {
    /// A mail with the report attached.
    pub const EMAIL: &str = "email";
    /// A signed POST of the report's facts.
    pub const WEBHOOK: &str = "webhook";
}

/// Delivery statuses.
pub mod status {
    /// Not tried yet.
    pub const PENDING: &str = "pending";
    /// Tried and failed; it will be tried again.
    pub const RETRYING: &str = "retrying";
    /// Accepted by the mail relay or answered 2xx by the webhook.
    pub const SENT: &str = "sent";
    /// Failed on its last attempt.
    pub const FAILED: &str = "failed";
}

/// The header that carries a webhook's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>" keyed by the schedule's secret>`.
pub const SIGNATURE_HEADER: &str = "Agentdesk-Signature";

/// Files larger than this are not attached; the mail says where to download them.
const MAX_ATTACHMENT: usize = 15 * 1024 * 1024;

/// A delivery as the API shows it, on its report.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// UUID v7; also the webhook's event id (`Agentdesk-Delivery`).
    pub id: Uuid,
    /// `email` or `webhook`.
    pub channel: String,
    /// The recipients, or the URL.
    pub target: String,
    /// `pending`, `retrying`, `sent` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// The last attempt's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The webhook's last HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<i32>,
    /// When it was sent.
    pub delivered_at: Option<DateTime<Utc>>,
}

impl From<Model> for Delivery {
    fn from(m: Model) -> Self {
        Self {
            id: m.id,
            channel: m.channel,
            target: m.target,
            status: m.status,
            attempts: m.attempts,
            error: m.error,
            response_status: m.response_status,
            delivered_at: m.delivered_at,
        }
    }
}

/// The deliveries of these reports, oldest first.
pub async fn of_reports(core: &Core, ids: &[Uuid]) -> Result<Vec<Model>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(Entity::find()
        .filter(Column::ReportId.is_in(ids.iter().copied()))
        .order_by_asc(Column::Id)
        .all(core.db.reader())
        .await?)
}

/// The job's arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverArgs {
    /// The delivery to make.
    pub delivery_id: Uuid,
}

/// Plans a ready scheduled report's deliveries and enqueues their jobs, in the caller's
/// transaction (the one that marks the report ready).
pub async fn plan(
    core: &Core,
    conn: &impl ConnectionTrait,
    report: &reports::Model,
    deliver: &Deliver,
) -> Result<(), Error> {
    let mut targets = Vec::new();
    if !deliver.email.is_empty() {
        targets.push((channel::EMAIL, deliver.email.join(", ")));
    }
    if let Some(url) = &deliver.webhook {
        targets.push((channel::WEBHOOK, url.clone()));
    }
    for (channel, target) in targets {
        let id = Uuid::now_v7();
        let mut job = NewJob::new(
            NAME,
            DELIVER,
            serde_json::to_value(DeliverArgs { delivery_id: id }).map_err(Error::internal)?,
        );
        job.created_by = report.created_by;
        job.client_id = report.client_id;
        job.max_attempts = i32::try_from(core.settings.delivery_max_attempts).unwrap_or(8);
        job.backoff_base_ms = i64::try_from(core.settings.delivery_backoff_ms).unwrap_or(30_000);
        let job = core.enqueue(conn, job).await?;
        ActiveModel {
            id: Set(id),
            report_id: Set(report.id),
            channel: Set(channel.into()),
            target: Set(target),
            status: Set(status::PENDING.into()),
            attempts: Set(0),
            error: Set(None),
            response_status: Set(None),
            job_id: Set(Some(job.id)),
            created_at: Set(Utc::now()),
            delivered_at: Set(None),
        }
        .insert(conn)
        .await?;
    }
    Ok(())
}

/// Why an attempt failed, and whether trying again can help.
struct Failed {
    message: String,
    retry: bool,
    response_status: Option<i32>,
}

impl Failed {
    fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: true,
            response_status: None,
        }
    }
    fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: false,
            response_status: None,
        }
    }
}

impl From<sea_orm::DbErr> for Failed {
    fn from(e: sea_orm::DbErr) -> Self {
        Error::from(e).into()
    }
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Self {
            retry: e.is_retryable(),
            message: e.to_string(),
            response_status: None,
        }
    }
}

/// Runs one attempt of a delivery and records its outcome on the delivery.
pub async fn run(ctx: &JobContext) -> Result<Value, JobError> {
    let args: DeliverArgs = serde_json::from_value(ctx.job().args.clone())
        .map_err(|e| JobError::Fatal(format!("bad job arguments: {e}")))?;
    let core = ctx.core();
    let Some(delivery) = Entity::find_by_id(args.delivery_id)
        .one(core.db.writer())
        .await
        .map_err(Error::from)?
    else {
        return Ok(json!({"skipped": "the report was deleted"}));
    };
    if delivery.status == status::SENT {
        return Ok(json!({"skipped": "already sent"}));
    }
    let attempts = ctx.job().attempts;
    let outcome = attempt(core, &delivery).await;
    let job = ctx.job();
    let mut row: ActiveModel = delivery.clone().into();
    row.attempts = Set(attempts);
    let result = match outcome {
        Ok(response_status) => {
            row.status = Set(status::SENT.into());
            row.error = Set(None);
            row.response_status = Set(response_status);
            row.delivered_at = Set(Some(Utc::now()));
            Ok(json!({"delivery_id": delivery.id, "channel": delivery.channel}))
        }
        Err(failed) => {
            let last = !failed.retry || attempts >= job.max_attempts;
            row.status = Set(if last {
                status::FAILED
            } else {
                status::RETRYING
            }
            .into());
            row.error = Set(Some(failed.message.clone()));
            row.response_status = Set(failed.response_status);
            tracing::warn!(delivery_id = %delivery.id, channel = %delivery.channel, attempts, error = %failed.message, "report delivery failed");
            Err(if failed.retry {
                JobError::Retryable(failed.message)
            } else {
                JobError::Fatal(failed.message)
            })
        }
    };
    row.update(core.db.writer()).await.map_err(Error::from)?;
    result
}

async fn attempt(core: &Core, delivery: &Model) -> Result<Option<i32>, Failed> {
    let Some(report) = reports::Entity::find_by_id(delivery.report_id)
        .one(core.db.reader())
        .await?
    else {
        return Err(Failed::fatal("the report was deleted"));
    };
    match delivery.channel.as_str() {
        channel::EMAIL => send_mail(core, &report, &delivery.target)
            .await
            .map(|()| None),
        channel::WEBHOOK => call_webhook(core, &report, delivery).await.map(Some),
        other => Err(Failed::fatal(format!("no delivery channel `{other}`"))),
    }
}

/// A kind's name in a sentence.
fn kind_title(kind: &str) -> &str {
    match kind {
        reports::kind::CLIENT_SUMMARY => "Client summary",
        reports::kind::ACTIVITY => "Activity",
        reports::kind::DOCUMENTS => "Documents",
        reports::kind::RECORDINGS => "Recordings",
        other => other,
    }
}

/// The report's file, unless it is larger than `limit`.
async fn read_file(core: &Core, key: &str, limit: usize) -> Result<Option<Vec<u8>>, Failed> {
    let mut stream = core.storage.get_stream(key).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Failed::retry(format!("reading the report: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes))
}

async fn send_mail(core: &Core, report: &reports::Model, to: &str) -> Result<(), Failed> {
    let settings = &core.settings;
    let Some(url) = &settings.smtp_url else {
        return Err(Failed::fatal(
            "this instance sends no mail: AGENTDESK_SMTP_URL is not set",
        ));
    };
    let from: Mailbox = settings
        .mail_from
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|e| Failed::fatal(format!("AGENTDESK_MAIL_FROM is not a mailbox: {e}")))?;
    let (Some(key), reports::status::READY) =
        (report.storage_key.as_deref(), report.status.as_str())
    else {
        return Err(Failed::fatal("the report is not ready"));
    };
    let period = format!(
        "{} to {}",
        report.period_from.format("%Y-%m-%d %H:%M UTC"),
        report.period_to.format("%Y-%m-%d %H:%M UTC")
    );
    let subject = format!(
        "{}: {} report, {}",
        settings.instance_name,
        kind_title(&report.kind),
        report.period_from.format("%Y-%m-%d")
    );
    let filename = format!(
        "{}-{}-{}.{}",
        report.kind,
        report.period_from.format("%Y%m%d"),
        report.period_to.format("%Y%m%d"),
        report.format
    );
    let file = read_file(core, key, MAX_ATTACHMENT).await?;
    let mut text = format!(
        "{} report of {}\n\nPeriod: {period}\nRows: {}\nReport: {}\n",
        kind_title(&report.kind),
        settings.instance_name,
        report.row_count.unwrap_or(0),
        report.id,
    );
    if file.is_some() {
        text.push_str(&format!("\nThe report is attached ({filename}).\n"));
    } else {
        text.push_str(&format!(
            "\nThe report is too large to attach; download it from agentdesk at /api/v1/reports/{}/download.\n",
            report.id
        ));
    }
    text.push_str("\nThis mail was sent by a report schedule.\n");
    let mut body = MultiPart::mixed().singlepart(SinglePart::plain(text));
    if let Some(bytes) = file {
        let content_type = ContentType::parse(reports::format::content_type(&report.format))
            .map_err(|e| Failed::fatal(format!("content type: {e}")))?;
        body = body.singlepart(Attachment::new(filename).body(bytes, content_type));
    }
    let mut message = Message::builder().from(from).subject(subject);
    for address in to.split(", ").filter(|a| !a.is_empty()) {
        let mailbox: Mailbox = address
            .parse()
            .map_err(|e| Failed::fatal(format!("`{address}` is not a mailbox: {e}")))?;
        message = message.to(mailbox);
    }
    let message = message
        .multipart(body)
        .map_err(|e| Failed::fatal(format!("building the mail: {e}")))?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
        .map_err(|e| Failed::fatal(format!("AGENTDESK_SMTP_URL: {e}")))?
        .timeout(Some(Duration::from_secs(30)))
        .build();
    transport.send(message).await.map_err(|e| Failed {
        // A relay that refuses for good (5xx) will refuse again.
        retry: !e.is_permanent(),
        message: format!("the mail relay: {e}"),
        response_status: None,
    })?;
    Ok(())
}

/// The signature of a webhook body at `timestamp`, as the receiver recomputes it.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // An HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// One HTTP client for every webhook call: no redirects (the URL was checked, where it
/// redirects to was not), bounded time.
fn http_client() -> Result<&'static reqwest::Client, Failed> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("agentdesk/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failed::fatal(format!("the HTTP client: {e}")))?;
    Ok(CLIENT.get_or_init(|| client))
}

async fn call_webhook(
    core: &Core,
    report: &reports::Model,
    delivery: &Model,
) -> Result<i32, Failed> {
    let url = schedules::check_webhook(&delivery.target).map_err(Failed::fatal)?;
    let secret = match report.schedule_id {
        Some(id) => schedules::Entity::find_by_id(id)
            .one(core.db.reader())
            .await?
            .and_then(|s| s.webhook_secret),
        None => None,
    }
    .ok_or_else(|| Failed::fatal("the schedule was deleted: no key to sign the call with"))?;
    let body = json!({
        "id": delivery.id,
        "type": "report.ready",
        "created_at": Utc::now(),
        "instance": core.settings.instance_name,
        "report": Report::from(report.clone()),
        "download_path": format!("/api/v1/reports/{}/download", report.id),
    });
    let body = serde_json::to_vec(&body).map_err(|e| Failed::fatal(e.to_string()))?;
    let timestamp = Utc::now().timestamp();
    let signed = format!("t={timestamp},v1={}", signature(&secret, timestamp, &body));
    let response = http_client()?
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signed)
        .header("Agentdesk-Event", "report.ready")
        .header("Agentdesk-Delivery", delivery.id.to_string())
        .body(body)
        .send()
        .await
        .map_err(|e| Failed::retry(format!("calling the webhook: {e}")))?;
    let code = i32::from(response.status().as_u16());
    if response.status().is_success() {
        Ok(code)
    } else {
        Err(Failed {
            message: format!("the webhook answered {}", response.status()),
            retry: true,
            response_status: Some(code),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::signature;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_and_body() {
        // Computed independently with Python's hmac module:
        // hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("whsec_test", 1_700_000_000, b"{}"),
            "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }
}
