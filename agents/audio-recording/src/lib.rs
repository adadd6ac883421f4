//! The `audio_recording` agent: audio upload and live capture with speech-to-text.
//!
//! For now only its manifest: the permission catalog lists its resource and actions.

use agentdesk_agent_sdk::{ActionSpec, Manifest};

/// The agent's name.
pub const NAME: &str = "audio_recording";

/// The agent's manifest.
pub fn manifest() -> Manifest {
    Manifest {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "audio upload and live capture with speech-to-text.",
        actions: vec![
            ActionSpec {
                name: "read",
                description: "list, play, read transcripts and search recordings",
            },
            ActionSpec {
                name: "record",
                description: "upload and capture recordings",
            },
            ActionSpec {
                name: "delete",
                description: "delete recordings",
            },
        ],
        uses: vec![],
    }
}
