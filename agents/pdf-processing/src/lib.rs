//! The `pdf_processing` agent: PDF upload, text and metadata extraction, field detection and
//! full-text search.
//!
//! An upload stores the file and queues a processing job in one transaction. The job streams
//! the file into a child process (`agentdesk pdf-extract`) that limits its own memory and CPU
//! time, so a hostile PDF can only kill that child; the parent adds a wall-clock limit and a cap
//! on the answer's size. Pages, metadata and fields are then stored with the document's status
//! in one transaction, and the page text is indexed for search (FTS5 on SQLite, tsvector on
//! PostgreSQL).

pub mod allocator;
pub mod child;
pub mod documents;
pub mod extract;
pub mod fields;
pub mod isolate;
pub mod metrics;
pub mod ocr;
mod process;
mod routes;
pub mod sample;

use std::sync::Arc;

use agentdesk_agent_sdk::{ActionSpec, Agent, JobContext, JobError, Manifest};
use serde_json::Value;

pub use metrics::metrics;

pub use child::child_main;
pub use isolate::{ExtractorCommand, set_extractor_command};
pub use process::{ProcessArgs, isolation_limits};
pub use routes::routes;

/// The agent's name.
pub const NAME: &str = "pdf_processing";
/// The job kind that processes an uploaded document.
pub const PROCESS: &str = "process";

/// The agent's manifest.
pub fn manifest() -> Manifest {
    Manifest {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "PDF upload, text and metadata extraction, field detection and full-text search.",
        actions: vec![
            ActionSpec {
                name: "read",
                description: "list, read, download and search documents",
            },
            ActionSpec {
                name: "upload",
                description: "upload documents",
            },
            ActionSpec {
                name: "delete",
                description: "delete documents",
            },
        ],
        uses: vec![],
    }
}

/// The agent.
#[derive(Debug, Default, Clone, Copy)]
pub struct PdfProcessing;

/// The agent, ready for a runner.
pub fn agent() -> Arc<dyn Agent> {
    Arc::new(PdfProcessing)
}

#[async_trait::async_trait]
impl Agent for PdfProcessing {
    fn manifest(&self) -> Manifest {
        manifest()
    }

    async fn handle(&self, ctx: &JobContext) -> Result<Value, JobError> {
        match ctx.job().kind.as_str() {
            PROCESS => process::run(ctx).await,
            other => Err(JobError::Fatal(format!(
                "pdf_processing has no job kind `{other}`"
            ))),
        }
    }

    /// Each job runs a child process that may use a core fully.
    fn concurrency(&self) -> usize {
        2
    }
}
