//! The transcription job: reads the stored original, decodes it to 16 kHz mono and transcribes
//! it on the blocking pool, reporting progress, then stores the transcript and settles the
//! recording's status, audited, in one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use agentdesk_agent_sdk::core::config::Settings;
use agentdesk_agent_sdk::core::services::audit::Outcome;
use agentdesk_agent_sdk::core::services::permissions::Need;
use agentdesk_agent_sdk::{JobContext, JobError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::decode::{self, AudioError, DecodeLimits, Decoded};
use crate::models;
use crate::recordings::{self, AudioFacts, audit_view};
use crate::transcribe::{self, MODEL_MISSING, Options, Transcript};

/// The transcription job's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TranscribeArgs {
    /// The recording to transcribe.
    pub recording_id: Uuid,
}

/// The transcription options from the settings.
pub fn options(settings: &Settings) -> Options {
    let threads = match settings.audio_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
        n => n as usize,
    };
    Options {
        language: (settings.audio_language != "auto").then(|| settings.audio_language.clone()),
        threads,
        ..Options::default()
    }
}

/// Why no model can be used, as a recording's error.
pub fn model_problem(settings: &Settings) -> Option<AudioError> {
    models::resolve(&settings.models_dir(), settings.audio_model.as_deref())
        .err()
        .map(|e| AudioError::new(MODEL_MISSING, e.to_string()))
}

/// Loads the configured model (blocking work, on the blocking pool).
pub async fn load_model(settings: &Settings) -> Result<transcribe::Model, AudioError> {
    let (name, path) = models::resolve(&settings.models_dir(), settings.audio_model.as_deref())
        .map_err(|e| AudioError::new(MODEL_MISSING, e.to_string()))?;
    tokio::task::spawn_blocking(move || transcribe::load(&name, &path))
        .await
        .map_err(|e| AudioError::new(transcribe::MODEL_FAILED, e.to_string()))?
}

/// Decodes and transcribes one file with the configured (or named) model, blocking: what
/// `agentdesk models transcribe` runs to check a model, and what the speech bench times.
/// Returns the transcript and the audio's duration in seconds.
pub fn transcribe_file(
    settings: &Settings,
    path: &std::path::Path,
    model: Option<&str>,
) -> Result<(Transcript, f64), AudioError> {
    let (name, file) = models::resolve(
        &settings.models_dir(),
        model.or(settings.audio_model.as_deref()),
    )
    .map_err(|e| AudioError::new(MODEL_MISSING, e.to_string()))?;
    let model = transcribe::load(&name, &file)?;
    let bytes = std::fs::read(path)
        .map_err(|e| AudioError::new(decode::UNSUPPORTED, format!("{}: {e}", path.display())))?;
    let limits = DecodeLimits {
        max_duration_s: settings.audio_max_duration_secs as f64,
    };
    let decoded = decode::decode(bytes, &limits)?;
    let progress = Arc::new(AtomicU8::new(0));
    let cancel = Arc::new(AtomicBool::new(false));
    let transcript = transcribe::transcribe(
        &model,
        &decoded.samples,
        &options(settings),
        &progress,
        &cancel,
    )?;
    Ok((transcript, decoded.duration_s()))
}

/// Runs a transcription job. A recording that cannot be transcribed (bad audio, no model) ends
/// `failed` with its code; a job that fails for another reason and gives up marks it failed too,
/// so that no recording stays `processing` forever.
pub async fn run(ctx: &JobContext) -> Result<Value, JobError> {
    let result = attempt(ctx).await;
    if let Err(e) = &result {
        let job = ctx.job();
        let last = matches!(e, JobError::Fatal(_)) || job.attempts >= job.max_attempts;
        if last && let Ok(args) = serde_json::from_value::<TranscribeArgs>(job.args.clone()) {
            let error = AudioError::new("processing_failed", format!("processing failed: {e}"));
            if let Err(mark) =
                recordings::store_failure(ctx.core().db.writer(), args.recording_id, &error, None)
                    .await
            {
                tracing::error!(error = %mark, recording_id = %args.recording_id, "could not mark a recording failed");
            }
        }
    }
    result
}

async fn attempt(ctx: &JobContext) -> Result<Value, JobError> {
    let args: TranscribeArgs = serde_json::from_value(ctx.job().args.clone())
        .map_err(|e| JobError::Fatal(format!("bad job arguments: {e}")))?;
    let core = ctx.core();
    let Some(recording) = recordings::find(core.db.reader(), args.recording_id).await? else {
        return Ok(json!({"skipped": "the recording was deleted"}));
    };
    let permit = match ctx
        .permit("agent:audio_recording", "record", Need::SomeClients)
        .await
    {
        Ok(p) if p.scope().covers(recording.client_id) => p,
        Ok(_) | Err(_) => {
            return Err(JobError::Fatal(
                "the recording's owner may no longer record for this client".into(),
            ));
        }
    };
    recordings::mark_processing(core.db.writer(), recording.id).await?;
    ctx.progress(1).await;
    let outcome = transcribe_stored(ctx, &recording).await?;
    let txn = core.db.begin().await?;
    let (stored, audit_outcome, result) = match &outcome {
        Ok((decoded, transcript, model)) => {
            let facts = facts(decoded);
            let stored =
                recordings::store_transcript(&txn, &recording, facts, transcript, model).await?;
            (
                stored,
                Outcome::Success,
                json!({
                    "recording_id": recording.id,
                    "status": recordings::status::READY,
                    "duration_s": facts.duration_s,
                    "language": transcript.language,
                    "segments": transcript.segments.len(),
                    "model": model,
                }),
            )
        }
        Err((error, decoded)) => {
            let stored =
                recordings::store_failure(&txn, recording.id, error, decoded.as_ref().map(facts))
                    .await?;
            (
                stored,
                Outcome::Error,
                json!({
                    "recording_id": recording.id,
                    "status": recordings::status::FAILED,
                    "error": error,
                }),
            )
        }
    };
    if !stored {
        return Ok(json!({"skipped": "the recording was deleted"}));
    }
    let record = permit
        .audit("recording.transcribe", audit_outcome)
        .resource("recording", recording.id)
        .client(Some(recording.client_id))
        .changes(json!({"recording": audit_view(&recording), "result": result}));
    core.append(&txn, record).await?;
    txn.commit()
        .await
        .map_err(|e| JobError::Retryable(e.to_string()))?;
    ctx.progress(100).await;
    Ok(result)
}

fn facts(decoded: &Decoded) -> AudioFacts {
    AudioFacts {
        duration_s: (decoded.duration_s() * 1000.0).round() / 1000.0,
        sample_rate: decoded.sample_rate,
        channels: decoded.channels,
    }
}

/// What transcribing a recording gave: the decoded audio, its transcript and the model's name,
/// or the recording's error (with the decoded audio when decoding got that far). The outer
/// error is a job error (storage or database), worth a retry.
type Transcribed = Result<(Decoded, Transcript, String), (AudioError, Option<Decoded>)>;

async fn transcribe_stored(
    ctx: &JobContext,
    recording: &recordings::Model,
) -> Result<Transcribed, JobError> {
    let core = ctx.core();
    let settings = &core.settings;
    // The model first: without one there is no point in decoding.
    let model = match load_model(settings).await {
        Ok(model) => model,
        Err(error) => return Ok(Err((error, None))),
    };
    let limit = settings.max_upload_mb.saturating_mul(1024 * 1024) as usize;
    let mut stream = core
        .storage
        .get_stream(&recording.storage_key)
        .await
        .map_err(JobError::from)?;
    let mut bytes = Vec::with_capacity(usize::try_from(recording.size_bytes).unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| JobError::Retryable(e.to_string()))?;
        if bytes.len() + chunk.len() > limit.max(recording.size_bytes as usize) {
            return Err(JobError::Fatal(
                "the stored file is larger than it was when uploaded".into(),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let limits = DecodeLimits {
        max_duration_s: settings.audio_max_duration_secs as f64,
    };
    let decoded = tokio::task::spawn_blocking(move || decode::decode(bytes, &limits))
        .await
        .map_err(|e| JobError::Retryable(format!("the decoder stopped: {e}")))?;
    let decoded = match decoded {
        Ok(decoded) => decoded,
        Err(error) => return Ok(Err((error, None))),
    };
    ctx.progress(5).await;
    let options = options(settings);
    let progress = Arc::new(AtomicU8::new(0));
    let cancel = Arc::new(AtomicBool::new(false));
    let work = {
        let progress = Arc::clone(&progress);
        let cancel = Arc::clone(&cancel);
        tokio::task::spawn_blocking(move || {
            let result =
                transcribe::transcribe(&model, &decoded.samples, &options, &progress, &cancel);
            (result, decoded, model.name)
        })
    };
    tokio::pin!(work);
    let mut reported = 5u8;
    let mut stopping = false;
    let (result, decoded, model_name) = loop {
        tokio::select! {
            done = &mut work => {
                break done.map_err(|e| JobError::Retryable(format!("the transcriber stopped: {e}")))?;
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                let now = job_progress(progress.load(Ordering::Relaxed));
                if now > reported {
                    reported = now;
                    ctx.progress(i32::from(now)).await;
                }
            }
            () = ctx.cancelled(), if !stopping => {
                // The model stops at its next step; the loop then sees the work end.
                stopping = true;
                cancel.store(true, Ordering::Relaxed);
            }
        }
    };
    Ok(match result {
        Ok(transcript) => Ok((decoded, transcript, model_name)),
        Err(error) => Err((error, Some(decoded))),
    })
}

/// The job's progress for the model's `model_percent` (0..=100): 5 % for decoding, then 5..99 %
/// for the model, so the job reaches 100 % only when the transcript is stored. Computed in `u16`:
/// `u8` arithmetic overflowed (a panic in debug builds) as soon as the model passed 2 %.
fn job_progress(model_percent: u8) -> u8 {
    let scaled = 5 + u16::from(model_percent.min(100)) * 94 / 100;
    u8::try_from(scaled).unwrap_or(99)
}

#[cfg(test)]
mod tests {
    use super::job_progress;

    #[test]
    fn job_progress_spans_decoding_and_the_model_without_overflow() {
        assert_eq!(job_progress(0), 5);
        assert_eq!(job_progress(3), 7);
        assert_eq!(job_progress(50), 52);
        assert_eq!(job_progress(100), 99);
        // Out-of-range input from a callback is clamped, never wrapped.
        assert_eq!(job_progress(u8::MAX), 99);
        let all: Vec<u8> = (0..=100).map(job_progress).collect();
        assert!(all.windows(2).all(|w| w[0] <= w[1]), "never goes backwards");
    }
}
