//! Speech to text with whisper.cpp (whisper-rs): one model context per model file, shared by
//! every job of the process; a state per transcription, on the blocking pool. Long recordings
//! are transcribed in windows that overlap at their seams, so no word is lost where two meet.
//! Silence is caught before the model hears it, and segments the model itself judges to be no
//! speech are dropped: silence transcribes to nothing, never to invented words.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

use crate::decode::{AudioError, WHISPER_RATE, to_f32};

/// Error code of a transcription without a model.
pub const MODEL_MISSING: &str = "model_missing";
/// Error code of a model that could not be loaded or run.
pub const MODEL_FAILED: &str = "transcription_failed";

/// One stretch of speech.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Segment {
    /// Start, in seconds from the start of the recording.
    pub start: f64,
    /// End, in seconds.
    pub end: f64,
    /// What was said.
    pub text: String,
}

/// A transcript: `{"language","segments":[...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Transcript {
    /// The spoken language (ISO 639-1), detected by a multilingual model or the English-only
    /// model's `en`.
    pub language: Option<String>,
    /// Segments in time order.
    pub segments: Vec<Segment>,
}

impl Transcript {
    /// The words, one segment a line.
    pub fn text(&self) -> String {
        self.segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A loaded model.
#[derive(Clone)]
pub struct Model {
    /// Its name (`tiny.en`).
    pub name: String,
    context: Arc<WhisperContext>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).finish()
    }
}

impl Model {
    /// Whether it knows languages other than English.
    pub fn multilingual(&self) -> bool {
        self.context.is_multilingual()
    }
}

/// The models this process has loaded, by file: loading reads the whole file, so it happens once.
fn loaded() -> &'static Mutex<HashMap<PathBuf, Model>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Model>>> = OnceLock::new();
    LOADED.get_or_init(|| {
        // whisper.cpp logs to stderr by default; through tracing it lands in our logs.
        whisper_rs::install_logging_hooks();
        Mutex::new(HashMap::new())
    })
}

/// Loads model `name` from `path` once per process (blocking: call it on the blocking pool).
pub fn load(name: &str, path: &Path) -> Result<Model, AudioError> {
    let mut cache = loaded()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(model) = cache.get(path) {
        return Ok(model.clone());
    }
    if !path.is_file() {
        return Err(AudioError::new(
            MODEL_MISSING,
            format!("the speech model {} is not installed", path.display()),
        ));
    }
    let mut params = WhisperContextParameters::default();
    params.use_gpu(cfg!(feature = "cuda"));
    let context = WhisperContext::new_with_params(path, params).map_err(|e| {
        AudioError::new(
            MODEL_FAILED,
            format!(
                "the speech model {} could not be loaded: {e}",
                path.display()
            ),
        )
    })?;
    let model = Model {
        name: name.to_owned(),
        context: Arc::new(context),
    };
    cache.insert(path.to_owned(), model.clone());
    Ok(model)
}

/// How to transcribe.
#[derive(Debug, Clone)]
pub struct Options {
    /// The spoken language, or `None` to detect it (multilingual models).
    pub language: Option<String>,
    /// Threads (at least 1).
    pub threads: usize,
    /// Longest stretch given to the model at once, in seconds; longer recordings are cut into
    /// windows that overlap by [`Options::overlap_s`].
    pub window_s: f64,
    /// How much of a window's end is done again at the start of the next (a word cut by the
    /// window's edge is heard whole there).
    pub overlap_s: f64,
    /// Encode only as much context as the audio needs instead of Whisper's full 30 s (as
    /// whisper.cpp's stream example does with `-ac`): several times faster on short audio, a
    /// little less accurate. For live previews.
    pub quick: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            language: None,
            threads: 2,
            window_s: 600.0,
            overlap_s: 20.0,
            quick: false,
        }
    }
}

/// Below this level (dBFS) for every 30 ms frame a recording is taken to be silence.
const SILENCE_DBFS: f64 = -50.0;

/// Whether any 30 ms frame of `samples` is louder than [`SILENCE_DBFS`].
pub fn has_sound(samples: &[i16]) -> bool {
    let frame = (WHISPER_RATE as usize) * 30 / 1000;
    let threshold = 32768.0 * 10f64.powf(SILENCE_DBFS / 20.0);
    samples.chunks(frame).any(|chunk| {
        let energy: f64 = chunk.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        (energy / chunk.len() as f64).sqrt() > threshold
    })
}

/// Segments that are the model's notes on sound rather than words: `[BLANK_AUDIO]`, `(music)`,
/// `[ Silence ]`, `*applause*`.
fn is_annotation(text: &str) -> bool {
    let t = text.trim();
    t.is_empty()
        || (t.starts_with('[') && t.ends_with(']'))
        || (t.starts_with('(') && t.ends_with(')'))
        || (t.starts_with('*') && t.ends_with('*'))
        || t.chars().all(|c| !c.is_alphanumeric())
}

/// Transcribes 16 kHz mono `samples` (blocking; run it on the blocking pool). `progress` is set
/// to the percentage done; `cancel` stops the work between steps of the model.
pub fn transcribe(
    model: &Model,
    samples: &[i16],
    options: &Options,
    progress: &Arc<AtomicU8>,
    cancel: &Arc<AtomicBool>,
) -> Result<Transcript, AudioError> {
    let language = if model.multilingual() {
        options.language.clone()
    } else {
        Some("en".to_owned())
    };
    let mut transcript = Transcript {
        language: language.clone(),
        segments: Vec::new(),
    };
    if !has_sound(samples) {
        progress.store(100, Ordering::Relaxed);
        return Ok(transcript);
    }
    let rate = f64::from(WHISPER_RATE);
    let total = samples.len();
    let window = ((options.window_s * rate) as usize).max(WHISPER_RATE as usize * 30);
    let overlap = ((options.overlap_s * rate) as usize).min(window / 3);
    let mut state = model
        .context
        .create_state()
        .map_err(|e| AudioError::new(MODEL_FAILED, format!("no state for the model: {e}")))?;
    let mut offset = 0usize;
    let mut detected: Option<String> = None;
    while offset < total {
        if cancel.load(Ordering::Relaxed) {
            return Err(AudioError::new(
                MODEL_FAILED,
                "the transcription was stopped",
            ));
        }
        let end = (offset + window).min(total);
        let last = end == total;
        let chunk = to_f32(&samples[offset..end]);
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(options.threads.max(1) as i32);
        let lang = language
            .clone()
            .or_else(|| detected.clone())
            .unwrap_or_else(|| "auto".to_owned());
        params.set_language(Some(&lang));
        params.set_translate(false);
        // Each window stands alone: text carried over from the last one is how a decoder
        // loops on its own output.
        params.set_no_context(true);
        params.set_suppress_blank(true);
        params.set_suppress_nst(true);
        params.set_no_speech_thold(0.6);
        if options.quick {
            // 1500 frames of context are 30 s; keep a margin and a floor the model copes with.
            let seconds = (end - offset) as f64 / rate;
            params.set_audio_ctx(((seconds + 1.0) / 30.0 * 1500.0).clamp(384.0, 1500.0) as i32);
        }
        params.set_logprob_thold(-1.0);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        let sink = Callbacks {
            progress: Arc::clone(progress),
            cancel: Arc::clone(cancel),
            done_before: offset as f64 / total as f64,
            share: (end - offset) as f64 / total as f64,
        };
        sink.install(&mut params);
        let result = state.full(params, &chunk);
        // `sink` is borrowed by the model's callbacks until `full` returns.
        drop(sink);
        if cancel.load(Ordering::Relaxed) {
            return Err(AudioError::new(
                MODEL_FAILED,
                "the transcription was stopped",
            ));
        }
        result.map_err(|e| AudioError::new(MODEL_FAILED, format!("the model failed: {e}")))?;
        if detected.is_none() && language.is_none() {
            detected = whisper_rs::get_lang_str(state.full_lang_id_from_state()).map(str::to_owned);
        }
        // Keep what ends before the overlap; the rest is heard again, whole, in the next window.
        let keep_until = if last {
            f64::INFINITY
        } else {
            (end - offset - overlap) as f64 / rate
        };
        let mut kept_end: Option<f64> = None;
        for segment in state.as_iter() {
            let start = segment.start_timestamp() as f64 / 100.0;
            let stop = segment.end_timestamp() as f64 / 100.0;
            if stop > keep_until {
                break;
            }
            kept_end = Some(stop);
            if segment.no_speech_probability() > 0.8 {
                continue;
            }
            let Ok(text) = segment.to_str_lossy() else {
                continue;
            };
            let text = text.trim();
            if is_annotation(text) {
                continue;
            }
            let base = offset as f64 / rate;
            transcript.segments.push(Segment {
                start: round_ms(base + start),
                end: round_ms(base + stop.max(start)),
                text: text.to_owned(),
            });
        }
        if last {
            break;
        }
        let advance = kept_end
            .map(|t| (t * rate) as usize)
            .filter(|&n| n > 0)
            .unwrap_or(end - offset - overlap);
        offset += advance;
    }
    if transcript.language.is_none() {
        transcript.language = detected;
    }
    progress.store(100, Ordering::Relaxed);
    Ok(transcript)
}

/// What the model's progress and abort callbacks reach. whisper-rs's safe wrappers box a closure
/// per call and never free it (and its abort wrapper reads the box as the closure itself), so the
/// plain C callbacks are given this, which lives on the caller's stack for the call.
struct Callbacks {
    progress: Arc<AtomicU8>,
    cancel: Arc<AtomicBool>,
    done_before: f64,
    share: f64,
}

impl Callbacks {
    fn install(&self, params: &mut FullParams<'_, '_>) {
        let data = std::ptr::from_ref(self)
            .cast_mut()
            .cast::<std::ffi::c_void>();
        // SAFETY: both callbacks only read `*data` as a `Callbacks`, which outlives the `full`
        // call that uses them (the caller drops it only after `full` returns).
        unsafe {
            params.set_progress_callback(Some(on_progress));
            params.set_progress_callback_user_data(data);
            params.set_abort_callback(Some(should_abort));
            params.set_abort_callback_user_data(data);
        }
    }
}

unsafe extern "C" fn on_progress(
    _: *mut whisper_rs::WhisperSysContext,
    _: *mut whisper_rs::WhisperSysState,
    percent: std::os::raw::c_int,
    data: *mut std::ffi::c_void,
) {
    // SAFETY: `data` is the `Callbacks` installed with this function (see `Callbacks::install`).
    let sink = unsafe { &*data.cast::<Callbacks>() };
    let overall =
        (sink.done_before + sink.share * f64::from(percent.clamp(0, 100)) / 100.0) * 100.0;
    sink.progress
        .store(overall.min(99.0) as u8, Ordering::Relaxed);
}

unsafe extern "C" fn should_abort(data: *mut std::ffi::c_void) -> bool {
    // SAFETY: as for `on_progress`.
    let sink = unsafe { &*data.cast::<Callbacks>() };
    sink.cancel.load(Ordering::Relaxed)
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_and_annotations_carry_no_words() {
        assert!(!has_sound(&vec![0i16; 16_000 * 3]));
        // Dither at -60 dBFS is still silence.
        let quiet: Vec<i16> = (0..48_000)
            .map(|i| if i % 2 == 0 { 30 } else { -30 })
            .collect();
        assert!(!has_sound(&quiet));
        let mut speechlike = vec![0i16; 48_000];
        speechlike[20_000..21_000]
            .iter_mut()
            .for_each(|s| *s = 3_000);
        assert!(has_sound(&speechlike));
        for note in [
            "[BLANK_AUDIO]",
            "(music)",
            " [ Silence ] ",
            "*applause*",
            "...",
            "",
        ] {
            assert!(is_annotation(note), "{note}");
        }
        assert!(!is_annotation("Go forward ten meters."));
    }
}
