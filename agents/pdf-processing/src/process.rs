//! The processing job: reads the stored PDF into an isolated extraction, then stores pages,
//! metadata and fields and settles the document's status, audited, in one transaction.

use std::time::Duration;

use agentdesk_agent_sdk::core::services::audit::Outcome;
use agentdesk_agent_sdk::core::services::permissions::Need;
use agentdesk_agent_sdk::{JobContext, JobError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::child::ChildOptions;
use crate::documents::{self, audit_view};
use crate::extract::Limits;
use crate::isolate::{IsolationLimits, extract_isolated};

/// The processing job's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessArgs {
    /// The document to process.
    pub document_id: Uuid,
}

/// The limits from the settings.
pub fn isolation_limits(settings: &agentdesk_agent_sdk::core::config::Settings) -> IsolationLimits {
    let limits = Limits {
        max_pages: usize::try_from(settings.pdf_max_pages).unwrap_or(usize::MAX),
        ocr: settings.pdf_ocr,
        ocr_languages: settings.pdf_ocr_languages.clone(),
        ..Limits::default()
    };
    // JSON escapes can double the text; metadata and fields add a little.
    let max_output_bytes = limits.max_total_chars.saturating_mul(8) + 16 * 1024 * 1024;
    IsolationLimits {
        child: ChildOptions {
            max_memory_mb: settings.pdf_max_memory_mb,
            max_cpu_secs: settings.pdf_timeout_secs,
            limits,
        },
        timeout: Duration::from_secs(settings.pdf_timeout_secs),
        max_output_bytes,
    }
}

/// Runs a processing job. When it fails for good, the document is marked `failed` with
/// `processing_failed`, so that no document stays `processing` forever.
pub async fn run(ctx: &JobContext) -> Result<Value, JobError> {
    let result = attempt(ctx).await;
    if let Err(e) = &result {
        let job = ctx.job();
        let last = matches!(e, JobError::Fatal(_)) || job.attempts >= job.max_attempts;
        if last
            && let Ok(args) = serde_json::from_value::<ProcessArgs>(job.args.clone())
            && let Err(mark) = documents::mark_processing_failed(
                ctx.core().db.writer(),
                args.document_id,
                &e.to_string(),
            )
            .await
        {
            tracing::error!(error = %mark, document_id = %args.document_id, "could not mark a document failed");
        }
    }
    result
}

async fn attempt(ctx: &JobContext) -> Result<Value, JobError> {
    let args: ProcessArgs = serde_json::from_value(ctx.job().args.clone())
        .map_err(|e| JobError::Fatal(format!("bad job arguments: {e}")))?;
    let core = ctx.core();
    let Some(document) = documents::find(core.db.reader(), args.document_id).await? else {
        return Ok(json!({"skipped": "the document was deleted"}));
    };
    let permit = ctx
        .permit("agent:pdf_processing", "upload", Need::SomeClients)
        .await;
    let permit = match permit {
        Ok(p) if p.scope().covers(document.client_id) => p,
        Ok(_) | Err(_) => {
            return Err(JobError::Fatal(
                "the uploader may no longer upload documents for this client".into(),
            ));
        }
    };
    let limits = isolation_limits(&core.settings);
    let input = core
        .storage
        .get_stream(&document.storage_key)
        .await
        .map_err(JobError::from)?;
    let extraction = match extract_isolated(Box::pin(input), &limits).await {
        Ok(extraction) => extraction,
        Err(message) => return Err(JobError::Retryable(message)),
    };
    let txn = core.db.begin().await?;
    if !documents::store_extraction(&txn, &document, &extraction).await? {
        return Ok(json!({"skipped": "the document was deleted"}));
    }
    let outcome = if extraction.error.is_some() {
        Outcome::Error
    } else {
        Outcome::Success
    };
    let record = permit
        .audit("document.process", outcome)
        .resource("document", document.id)
        .client(Some(document.client_id))
        .changes(json!({
            "document": audit_view(&document),
            "page_count": extraction.page_count,
            "error": extraction.error,
        }));
    core.append(&txn, record).await?;
    txn.commit()
        .await
        .map_err(|e| JobError::Retryable(e.to_string()))?;
    Ok(json!({
        "document_id": document.id,
        "status": if extraction.error.is_some() { "failed" } else { "ready" },
        "page_count": extraction.page_count,
        "error": extraction.error,
    }))
}
