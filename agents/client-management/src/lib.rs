//! The `client_management` agent: CSV import (a job), export, duplicate detection and merge.
//!
//! Import streams the CSV from storage record by record and writes in batches of
//! [`BATCH_ROWS`] rows per transaction, each change audited in its batch's transaction, so
//! memory stays flat however long the file is. Duplicate detection compares clients only within
//! blocks (same email, same phone, same name prefix), never every pair.

mod duplicates;
mod import;
mod merge;
mod routes;

use std::sync::Arc;

use agentdesk_agent_sdk::{ActionSpec, Agent, JobContext, JobError, Manifest, ResourceUse};
use serde_json::Value;

pub use duplicates::{DuplicateGroup, find_duplicates};
pub use import::{ImportArgs, ImportResult, RowError};
pub use merge::merge_clients;
pub use routes::routes;

/// The agent's name.
pub const NAME: &str = "client_management";
/// Rows written per transaction during an import.
pub const BATCH_ROWS: usize = 500;
/// The job kind of an import.
pub const IMPORT: &str = "import";

/// The agent's manifest.
pub fn manifest() -> Manifest {
    Manifest {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "client import, export, duplicate detection and merge.",
        actions: vec![ActionSpec {
            name: "run",
            description: "import, export, find duplicates and merge clients",
        }],
        uses: vec![ResourceUse {
            resource: "clients",
            actions: &["read", "write", "delete"],
        }],
    }
}

/// The agent.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientManagement;

/// The agent, ready for a runner.
pub fn agent() -> Arc<dyn Agent> {
    Arc::new(ClientManagement)
}

#[async_trait::async_trait]
impl Agent for ClientManagement {
    fn manifest(&self) -> Manifest {
        manifest()
    }

    async fn handle(&self, ctx: &JobContext) -> Result<Value, JobError> {
        match ctx.job().kind.as_str() {
            IMPORT => import::run(ctx).await,
            other => Err(JobError::Fatal(format!(
                "client_management has no job kind `{other}`"
            ))),
        }
    }
}
