//! The `reports_analysis` agent: overviews, CSV and PDF reports with charts, and report schedules.
//!
//! For now only its manifest: the permission catalog lists its resource and actions.

use agentdesk_agent_sdk::{ActionSpec, Manifest};

/// The agent's name.
pub const NAME: &str = "reports_analysis";

/// The agent's manifest.
pub fn manifest() -> Manifest {
    Manifest {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "overviews, CSV and PDF reports with charts, and report schedules.",
        actions: vec![
            ActionSpec {
                name: "read",
                description: "read overviews and reports",
            },
            ActionSpec {
                name: "generate",
                description: "generate and schedule reports",
            },
        ],
        uses: vec![],
    }
}
