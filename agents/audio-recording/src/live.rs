//! Live capture over WebSocket. The client sends a header frame
//! (`{"sample_rate":16000,"format":"s16le","channels":1}`), then binary PCM frames; the server
//! answers `partial` results about every second and a `final` one per utterance (speech followed
//! by a pause), transcribing a sliding window of the utterance in progress as whisper.cpp's
//! stream example does. A client that sends faster than real time is slowed down (the server
//! stops reading until the wall clock catches up). When the socket closes (or drops), what
//! arrived becomes a Recording of the client, kept as 16 kHz mono WAV and transcribed by a job
//! like an upload. A text frame `{"type":"end"}` asks the server to finish, answer
//! `{"type":"recording","id"}` and close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::time::{Duration, Instant};

use agentdesk_agent_sdk::core::Core;
use agentdesk_agent_sdk::core::RequestMeta;
use agentdesk_agent_sdk::core::services::permissions::{Actor, Need, Permit};
use agentdesk_agent_sdk::http::extractors::{AppQuery, Meta};
use agentdesk_agent_sdk::http::problem::Problem;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinHandle;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::decode::{self, To16kMono, WHISPER_RATE};
use crate::process;
use crate::recordings::{self, NewRecording};
use crate::transcribe::{self, Options};

/// The token, for clients that cannot set a header on a WebSocket (browsers).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveQuery {
    /// An access token, when not sent as `Authorization: Bearer`.
    pub access_token: Option<String>,
}

/// The header frame.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamHeader {
    sample_rate: u32,
    format: SampleFormat,
    channels: u16,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum SampleFormat {
    S16le,
    F32le,
}

impl SampleFormat {
    fn bytes(self) -> usize {
        match self {
            SampleFormat::S16le => 2,
            SampleFormat::F32le => 4,
        }
    }
}

/// Largest binary frame accepted.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// How far ahead of real time a client may send before the server stops reading.
const BURST: Duration = Duration::from_secs(5);
/// How often a partial result is made of the utterance in progress.
const PARTIAL_EVERY_S: f64 = 1.0;
/// A pause this long after speech ends an utterance...
const PAUSE_S: f64 = 0.7;
/// ...once it holds this much audio; a shorter one waits for a longer pause, so that a reader's
/// breath between phrases does not cut a sentence into fragments the model hears badly.
const MIN_UTTERANCE_S: f64 = 2.5;
/// A pause this long ends any utterance.
const LONG_PAUSE_S: f64 = 1.2;
/// An utterance longer than this is finalised without waiting for a pause.
const MAX_UTTERANCE_S: f64 = 25.0;
/// Speech level of a 30 ms frame, in dBFS.
const SPEECH_DBFS: f64 = -42.0;

/// Live capture: a WebSocket of PCM in, `partial` and `final` transcripts out; the audio becomes
/// a Recording of the client when the socket closes.
#[utoipa::path(get, path = "/api/v1/clients/{client_id}/recordings/live", tag = "audio_recording",
    params(("client_id" = Uuid, Path, description = "The client"), LiveQuery),
    security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; auth and scope errors arrive as a `{\"type\":\"error\"}` message and close code 1008"),
        (status = 426, description = "Not a WebSocket upgrade request", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
pub(crate) async fn live(
    State(core): State<Core>,
    Path(client_id): Path<Uuid>,
    Meta(meta): Meta,
    headers: HeaderMap,
    AppQuery(query): AppQuery<LiveQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return agentdesk_agent_sdk::http::problem::ApiError::http(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "live capture is a WebSocket: send an Upgrade: websocket request",
        )
        .into_response();
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
        .or(query.access_token);
    upgrade
        .max_message_size(MAX_FRAME_BYTES * 4)
        .on_upgrade(move |socket| async move {
            session(socket, core, token, meta, client_id).await;
        })
}

/// Sends an error message and closes with `code`.
async fn fail(socket: &mut WebSocket, close: u16, code: &str, message: &str) {
    let text = json!({"type": "error", "code": code, "message": message}).to_string();
    let _ = socket.send(Message::Text(text.into())).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close,
            reason: code.to_owned().into(),
        })))
        .await;
}

async fn authorize(
    core: &Core,
    token: Option<String>,
    meta: RequestMeta,
    client_id: Uuid,
) -> Result<Permit, (&'static str, String)> {
    let token = token.ok_or(("unauthenticated", "an access token is required".to_owned()))?;
    let ctx = core
        .authenticate(&token)
        .await
        .map_err(|e| ("unauthenticated", e.to_string()))?;
    let permit = core
        .authorize(
            Actor::from_request(&ctx, meta),
            "agent:audio_recording",
            "record",
            Need::SomeClients,
        )
        .await
        .map_err(|e| ("forbidden", e.to_string()))?;
    core.scoped_client(&permit, client_id)
        .await
        .map_err(|_| ("not_found", "no such client in your scope".to_owned()))?;
    Ok(permit)
}

/// What a transcription in flight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Partial,
    Final,
}

type InFlight = JoinHandle<(Pass, usize, usize, Result<String, decode::AudioError>)>;

/// The audio of one session and where its transcription stands.
struct Capture {
    converter: Option<To16kMono>,
    header: StreamHeader,
    carry: Vec<u8>,
    audio: Vec<i16>,
    /// Samples before this are finalised (or silence that was dropped).
    committed: usize,
    /// The audio length at the last partial.
    partial_at: usize,
    last_partial: String,
}

impl Capture {
    /// Appends a PCM frame (any rate and channels) as 16 kHz mono.
    fn push(&mut self, bytes: &[u8]) -> Result<(), decode::AudioError> {
        self.carry.extend_from_slice(bytes);
        let frame = self.header.format.bytes() * usize::from(self.header.channels);
        let whole = self.carry.len() / frame * frame;
        let channels = usize::from(self.header.channels);
        let format = self.header.format;
        let samples: Vec<f32> = self.carry[..whole]
            .chunks_exact(frame)
            .map(|f| {
                let sum: f32 = f
                    .chunks_exact(format.bytes())
                    .map(|s| match format {
                        SampleFormat::S16le => {
                            f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0
                        }
                        SampleFormat::F32le => {
                            let v = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                            if v.is_finite() { v } else { 0.0 }
                        }
                    })
                    .sum();
                sum / channels as f32
            })
            .collect();
        self.carry.drain(..whole);
        if let Some(converter) = &mut self.converter {
            converter.push(samples, &mut self.audio)?;
        }
        Ok(())
    }

    /// Flushes the resampler at the end of the stream.
    fn finish(&mut self) {
        if let Some(converter) = self.converter.take()
            && let Err(e) = converter.finish(&mut self.audio)
        {
            tracing::warn!(error = %e, "the end of a live stream could not be resampled");
        }
    }

    fn seconds(&self) -> f64 {
        self.audio.len() as f64 / f64::from(WHISPER_RATE)
    }

    /// The uncommitted audio, frame by frame (30 ms): whether each holds speech.
    fn voiced_frames(&self) -> Vec<bool> {
        let frame = WHISPER_RATE as usize * 30 / 1000;
        let threshold = 32768.0 * 10f64.powf(SPEECH_DBFS / 20.0);
        self.audio[self.committed..]
            .chunks(frame)
            .map(|chunk| {
                let energy: f64 = chunk.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
                (energy / chunk.len() as f64).sqrt() > threshold
            })
            .collect()
    }

    /// Where the first finished utterance of the uncommitted audio ends (in samples): speech,
    /// then a pause long enough to end it ([`PAUSE_S`] after [`MIN_UTTERANCE_S`] of audio,
    /// [`LONG_PAUSE_S`] before). Found in the audio itself, so a transcription that was busy
    /// while the pause went by does not miss it.
    fn utterance_end(&self, voiced: &[bool]) -> Option<usize> {
        let frame = WHISPER_RATE as usize * 30 / 1000;
        let frame_s = 0.03;
        let mut speech_seen = false;
        let mut silence_from: Option<usize> = None;
        for (i, &v) in voiced.iter().enumerate() {
            if v {
                speech_seen = true;
                silence_from = None;
                continue;
            }
            if !speech_seen {
                continue;
            }
            let from = *silence_from.get_or_insert(i);
            let pause = (i + 1 - from) as f64 * frame_s;
            let before = from as f64 * frame_s;
            if pause >= LONG_PAUSE_S || (pause >= PAUSE_S && before >= MIN_UTTERANCE_S) {
                // Keep a little of the pause: a word's last sound is quieter than its start.
                let cut = self.committed + from * frame + (0.3 * f64::from(WHISPER_RATE)) as usize;
                return Some(cut.min(self.audio.len()));
            }
        }
        None
    }

    /// What to transcribe next, if anything: a final pass over a finished utterance, or a
    /// partial one over the utterance so far.
    fn next_pass(&mut self, ending: bool) -> Option<(Pass, usize, usize)> {
        let rate = f64::from(WHISPER_RATE);
        let len = self.audio.len();
        let voiced = self.voiced_frames();
        let Some(last_voiced) = voiced.iter().rposition(|&v| v) else {
            // Only silence since the last utterance: drop all but the last second of it.
            if len - self.committed > 10 * WHISPER_RATE as usize {
                self.committed = len - WHISPER_RATE as usize;
                self.partial_at = self.committed;
            }
            return None;
        };
        if let Some(cut) = self.utterance_end(&voiced) {
            return Some((Pass::Final, self.committed, cut));
        }
        let span = (len - self.committed) as f64 / rate;
        if ending || span >= MAX_UTTERANCE_S {
            return Some((Pass::Final, self.committed, len));
        }
        // A preview of the utterance in progress, while someone is speaking.
        let pause = (voiced.len() - 1 - last_voiced) as f64 * 0.03;
        if pause < 0.3 && (len - self.partial_at) as f64 / rate >= PARTIAL_EVERY_S {
            self.partial_at = len;
            return Some((Pass::Partial, self.committed, len));
        }
        None
    }
}

fn start_pass(
    model: &transcribe::Model,
    options: &Options,
    capture: &Capture,
    (pass, from, to): (Pass, usize, usize),
) -> InFlight {
    let model = model.clone();
    let options = Options {
        // Previews are encoded quickly; finals with the model's whole context.
        quick: pass == Pass::Partial,
        ..options.clone()
    };
    let samples = capture.audio[from..to].to_vec();
    tokio::task::spawn_blocking(move || {
        let progress = Arc::new(AtomicU8::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let text =
            transcribe::transcribe(&model, &samples, &options, &progress, &cancel).map(|t| {
                t.segments
                    .iter()
                    .map(|s| s.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            });
        (pass, from, to, text)
    })
}

/// Sends a result; `false` when the socket is gone.
async fn send_result(
    socket: &mut WebSocket,
    kind: &str,
    text: &str,
    from: usize,
    to: usize,
) -> bool {
    let rate = f64::from(WHISPER_RATE);
    let message = json!({
        "type": kind,
        "text": text,
        "start": (from as f64 / rate * 1000.0).round() / 1000.0,
        "end": (to as f64 / rate * 1000.0).round() / 1000.0,
    });
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .is_ok()
}

/// How a session's input ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// The client asked to finish and waits for the recording's id.
    Requested,
    /// The client closed the socket, or it dropped.
    Closed,
    /// The server ended it (a limit); the socket is closed already.
    Stopped,
}

async fn session(
    mut socket: WebSocket,
    core: Core,
    token: Option<String>,
    meta: RequestMeta,
    client_id: Uuid,
) {
    let permit = match authorize(&core, token, meta, client_id).await {
        Ok(permit) => permit,
        Err((code, message)) => return fail(&mut socket, 1008, code, &message).await,
    };
    let model = match process::load_model(&core.settings).await {
        Ok(model) => model,
        Err(e) => return fail(&mut socket, 1011, &e.code, &e.message).await,
    };
    let header = match tokio::time::timeout(Duration::from_secs(10), socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<StreamHeader>(&text)
            .map_err(|e| e.to_string())
            .and_then(|h| {
                if !(8_000..=192_000).contains(&h.sample_rate) {
                    Err("sample_rate must be between 8000 and 192000".into())
                } else if !(1..=8).contains(&h.channels) {
                    Err("channels must be between 1 and 8".into())
                } else {
                    Ok(h)
                }
            }),
        _ => Err("the first message must be a text frame with the stream's header".into()),
    };
    let header = match header {
        Ok(header) => header,
        Err(message) => {
            let message = format!(
                "{message}; expected {{\"sample_rate\":16000,\"format\":\"s16le\"|\"f32le\",\"channels\":1}}"
            );
            return fail(&mut socket, 1003, "bad_header", &message).await;
        }
    };
    let converter = match To16kMono::new(header.sample_rate) {
        Ok(c) => c,
        Err(e) => return fail(&mut socket, 1003, "bad_header", &e.message).await,
    };
    let mut capture = Capture {
        converter: Some(converter),
        header,
        carry: Vec::new(),
        audio: Vec::new(),
        committed: 0,
        partial_at: 0,
        last_partial: String::new(),
    };
    let options = Options {
        window_s: 30.0,
        ..process::options(&core.settings)
    };
    let max_s = core.settings.audio_live_max_secs as f64;
    let started = Instant::now();
    let mut in_flight: Option<InFlight> = None;
    let mut open = true;
    let ending = loop {
        // Back-pressure: read no more while the client is ahead of real time by the burst.
        let ahead = Duration::from_secs_f64(capture.seconds())
            .saturating_sub(started.elapsed())
            .saturating_sub(BURST);
        tokio::select! {
            done = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                if let Ok((pass, from, to, Ok(text))) = done {
                    open = deliver(&mut socket, &mut capture, pass, from, to, &text).await;
                }
            }
            () = tokio::time::sleep(ahead), if !ahead.is_zero() => {}
            message = socket.recv(), if ahead.is_zero() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if bytes.len() > MAX_FRAME_BYTES {
                        fail(&mut socket, 1009, "frame_too_large", &format!("a frame may hold at most {MAX_FRAME_BYTES} bytes")).await;
                        open = false;
                        break Ending::Stopped;
                    }
                    if let Err(e) = capture.push(&bytes) {
                        fail(&mut socket, 1003, "bad_audio", &e.message).await;
                        open = false;
                        break Ending::Stopped;
                    }
                    if capture.seconds() > max_s {
                        fail(&mut socket, 1008, "session_too_long", &format!("a live capture may last at most {max_s} s; what arrived is kept")).await;
                        open = false;
                        break Ending::Stopped;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v["type"] == "end") {
                        break Ending::Requested;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    open = false;
                    break Ending::Closed;
                }
                Some(Ok(_)) => {}
            },
        }
        if in_flight.is_none()
            && let Some(pass) = capture.next_pass(false)
        {
            in_flight = Some(start_pass(&model, &options, &capture, pass));
        }
    };
    capture.finish();
    // The utterance in progress gets its final result while the client still listens.
    if let Some(pending) = in_flight.take()
        && let Ok((pass, from, to, Ok(text))) = pending.await
        && open
    {
        open = deliver(&mut socket, &mut capture, pass, from, to, &text).await;
    }
    // Then every utterance still waiting, each with its final.
    while open && let Some((_, from, to)) = capture.next_pass(true) {
        match start_pass(&model, &options, &capture, (Pass::Final, from, to)).await {
            Ok((pass, from, to, Ok(text))) => {
                open = deliver(&mut socket, &mut capture, pass, from, to, &text).await;
            }
            _ => break,
        }
    }
    let kept = keep(&core, &permit, client_id, &capture.audio).await;
    if open && ending == Ending::Requested {
        let message = match &kept {
            Some(id) => json!({"type": "recording", "id": id}),
            None => {
                json!({"type": "error", "code": "no_audio", "message": "no audio arrived, so no recording was made"})
            }
        };
        let _ = socket.send(Message::Text(message.to_string().into())).await;
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    }
}

/// Sends a pass's result and moves the capture on; `false` when the socket is gone.
async fn deliver(
    socket: &mut WebSocket,
    capture: &mut Capture,
    pass: Pass,
    from: usize,
    to: usize,
    text: &str,
) -> bool {
    match pass {
        Pass::Final => {
            capture.committed = capture.committed.max(to);
            capture.partial_at = capture.partial_at.max(to);
            capture.last_partial.clear();
            text.is_empty() || send_result(socket, "final", text, from, to).await
        }
        Pass::Partial => {
            if text.is_empty() || text == capture.last_partial {
                return true;
            }
            capture.last_partial = text.to_owned();
            send_result(socket, "partial", text, from, to).await
        }
    }
}

/// Stores what arrived as a 16 kHz mono WAV Recording of the client, with its transcription
/// job; `None` when nothing arrived (or it could not be stored, which is logged).
async fn keep(core: &Core, permit: &Permit, client_id: Uuid, audio: &[i16]) -> Option<Uuid> {
    if audio.is_empty() {
        return None;
    }
    let wav = bytes::Bytes::from(decode::wav_bytes(audio));
    let limit = wav.len() as u64 + 1;
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(wav) });
    let stored =
        match agentdesk_agent_sdk::http::store_upload(core, "recordings", Box::pin(body), limit)
            .await
        {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(error = ?e, "a live capture could not be stored");
                return None;
            }
        };
    let filename = format!("live-{}.wav", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    let new = NewRecording {
        id: Uuid::now_v7(),
        client_id,
        filename: &filename,
        source: recordings::source::LIVE,
        content_type: "audio/wav",
        created_by: permit.user().id,
        job_id: Uuid::nil(),
    };
    match crate::routes::create_recording(core, permit, new, &stored, "recording.live").await {
        Ok(row) => Some(row.id),
        Err(e) => {
            tracing::error!(error = ?e, "a live capture's recording could not be created");
            None
        }
    }
}
