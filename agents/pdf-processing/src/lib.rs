//! The `pdf_processing` agent: PDF upload, text and metadata extraction, field detection and full-text search.
//!
//! For now only its manifest: the permission catalog lists its resource and actions.

use agentdesk_agent_sdk::{ActionSpec, Manifest};

/// The agent's name.
pub const NAME: &str = "pdf_processing";

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
