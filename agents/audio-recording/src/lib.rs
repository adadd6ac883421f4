//! The `audio_recording` agent: audio upload and live capture, transcribed by whisper.cpp in the
//! process, with full-text search over the transcripts.
//!
//! An upload is judged by its bytes, stored, and queued for a transcription job in one
//! transaction. The job decodes the file (symphonia) to 16 kHz mono (rubato) and transcribes it
//! on the blocking pool with one model context shared by the process and a state per job; the
//! segments are stored and indexed for search (FTS5 on SQLite, tsvector on PostgreSQL). Live
//! capture streams PCM over a WebSocket with partial and final results as it goes, and ends as
//! a recording transcribed like an upload. Models are installed by `agentdesk models install`,
//! which converts CTranslate2 Whisper models to whisper.cpp's format; nothing is downloaded.

pub mod convert;
pub mod decode;
pub mod formats;
mod live;
pub mod metrics;
pub mod models;
mod process;
pub mod recordings;
mod routes;
pub mod transcribe;

use std::sync::Arc;

use agentdesk_agent_sdk::core::Core;
use agentdesk_agent_sdk::{ActionSpec, Agent, JobContext, JobError, Manifest};
use serde_json::Value;

pub use metrics::metrics;
pub use process::{TranscribeArgs, model_problem, transcribe_file};
pub use routes::routes;

/// The agent's name.
pub const NAME: &str = "audio_recording";
/// The job kind that transcribes a recording.
pub const TRANSCRIBE: &str = "transcribe";

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

/// The agent.
#[derive(Debug, Default, Clone, Copy)]
pub struct AudioRecording;

/// The agent, ready for a runner.
pub fn agent() -> Arc<dyn Agent> {
    Arc::new(AudioRecording)
}

#[async_trait::async_trait]
impl Agent for AudioRecording {
    fn manifest(&self) -> Manifest {
        manifest()
    }

    async fn handle(&self, ctx: &JobContext) -> Result<Value, JobError> {
        match ctx.job().kind.as_str() {
            TRANSCRIBE => process::run(ctx).await,
            other => Err(JobError::Fatal(format!(
                "audio_recording has no job kind `{other}`"
            ))),
        }
    }

    /// Each transcription uses every core it is given; two at once would only share them.
    fn concurrency(&self) -> usize {
        1
    }

    fn problem(&self, core: &Core) -> Option<String> {
        model_problem(&core.settings).map(|e| e.message)
    }
}
