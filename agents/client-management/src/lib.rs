//! The `client_management` agent: client import, export, duplicate detection and merge.
//!
//! For now only its manifest: the permission catalog lists its resource and actions.

use agentdesk_agent_sdk::{ActionSpec, Manifest};

/// The agent's name.
pub const NAME: &str = "client_management";

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
    }
}
