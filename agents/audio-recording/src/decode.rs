//! Audio in: what an upload is judged to be by its bytes, and decoding any supported file to the
//! 16 kHz mono signal Whisper takes (symphonia decodes, rubato resamples). Decoding runs in the
//! job, never in the request, with limits on duration; a parser panic is caught and becomes
//! `audio_corrupt`, so a hostile file can fail only its own job.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rubato::{FftFixedIn, Resampler};
use serde::{Deserialize, Serialize};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// The rate Whisper listens at.
pub const WHISPER_RATE: u32 = 16_000;

/// Error code of bytes that are no audio this build decodes.
pub const UNSUPPORTED: &str = "audio_unsupported";
/// Error code of a file that claims a supported format but cannot be decoded.
pub const CORRUPT: &str = "audio_corrupt";
/// Error code of a recording longer than the configured limit.
pub const TOO_LONG: &str = "audio_too_long";

/// Why audio could not be read: `{"code","message"}` as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AudioError {
    /// `audio_unsupported`, `audio_corrupt`, `audio_too_long`, `model_missing`, ...
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl AudioError {
    /// An error with a code.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for AudioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A container this build reads, as told by a file's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// RIFF WAVE.
    Wav,
    /// MPEG audio (with or without an ID3v2 tag) or ADTS AAC.
    Mpeg,
    /// Ogg (Vorbis).
    Ogg,
    /// Native FLAC.
    Flac,
    /// ISO base media (MP4, M4A).
    Mp4,
}

impl Container {
    /// The media type to serve the original with.
    pub fn content_type(self) -> &'static str {
        match self {
            Container::Wav => "audio/wav",
            Container::Mpeg => "audio/mpeg",
            Container::Ogg => "audio/ogg",
            Container::Flac => "audio/flac",
            Container::Mp4 => "audio/mp4",
        }
    }
}

/// Bytes looked at to judge an upload.
pub const SNIFF_BYTES: usize = 64;

/// What the first bytes of a file say it is, judged by content and never by name: `None` for
/// anything that is no audio this build decodes (text, PDF, raw PCM without a header, RIFX).
pub fn sniff(head: &[u8]) -> Option<Container> {
    if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WAVE" {
        return Some(Container::Wav);
    }
    if head.starts_with(b"OggS") {
        return Some(Container::Ogg);
    }
    if head.starts_with(b"fLaC") {
        return Some(Container::Flac);
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        return Some(Container::Mp4);
    }
    if head.starts_with(b"ID3") || mpeg_frame_header(head) {
        return Some(Container::Mpeg);
    }
    None
}

/// An MPEG audio frame header (or ADTS) at the start: the sync word and fields that are valid.
fn mpeg_frame_header(head: &[u8]) -> bool {
    let [a, b, c, ..] = head else {
        return false;
    };
    if *a != 0xFF || b & 0xE0 != 0xE0 {
        return false;
    }
    let version = (b >> 3) & 0b11;
    let layer = (b >> 1) & 0b11;
    if layer == 0 {
        // ADTS AAC: MPEG-2/4 sync with layer 00; its sampling index must be a real one.
        return b & 0xF6 == 0xF0 && (c >> 2) & 0x0F < 13;
    }
    let bitrate = c >> 4;
    let rate = (c >> 2) & 0b11;
    version != 0b01 && bitrate != 0b1111 && rate != 0b11
}

/// Limits of one decode.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Longest recording accepted, in seconds.
    pub max_duration_s: f64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_duration_s: 4.0 * 3600.0,
        }
    }
}

/// A decoded recording: the signal Whisper takes, and facts about the original.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// 16 kHz mono, as 16-bit samples (half the memory of `f32` for long recordings).
    pub samples: Vec<i16>,
    /// The original's sample rate.
    pub sample_rate: u32,
    /// The original's channels.
    pub channels: u16,
    /// Packets that could not be decoded and were skipped (a damaged stretch of a file).
    pub skipped_packets: u64,
}

impl Decoded {
    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / f64::from(WHISPER_RATE)
    }
}

/// Decodes a whole file to 16 kHz mono. Never panics: a panic inside a codec becomes
/// `audio_corrupt`.
pub fn decode(bytes: Vec<u8>, limits: &DecodeLimits) -> Result<Decoded, AudioError> {
    match catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, limits))) {
        Ok(result) => result,
        Err(_) => Err(AudioError::new(
            CORRUPT,
            "the audio could not be decoded (the decoder gave up on its structure)",
        )),
    }
}

fn decode_inner(bytes: Vec<u8>, limits: &DecodeLimits) -> Result<Decoded, AudioError> {
    if sniff(&bytes).is_none() {
        return Err(AudioError::new(
            UNSUPPORTED,
            "the file is no audio this server reads (WAV, MP3, OGG/Vorbis, FLAC, AAC/M4A)",
        ));
    }
    let source = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            &Hint::new(),
            source,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| corrupt_or_unsupported(&e))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::new(UNSUPPORTED, "the file holds no audio track"))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| corrupt_or_unsupported(&e))?;
    let mut sample_rate = params.sample_rate.unwrap_or(0);
    let mut channels = params.channels.map_or(0, |c| c.count() as u16);
    let mut resampler: Option<To16kMono> = None;
    let mut out: Vec<i16> = Vec::new();
    let mut skipped_packets = 0u64;
    let mut decoded_packets = 0u64;
    let max_samples = (limits.max_duration_s * f64::from(WHISPER_RATE)) as usize;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            // The end of the stream, or a file cut short: keep what was decoded.
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) if decoded_packets > 0 => {
                tracing::debug!(error = %e, "the audio stream ends in damage; keeping what was read");
                break;
            }
            Err(e) => return Err(corrupt_or_unsupported(&e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let audio = match decoder.decode(&packet) {
            Ok(audio) => audio,
            Err(SymphoniaError::DecodeError(_)) | Err(SymphoniaError::IoError(_)) => {
                skipped_packets += 1;
                if skipped_packets > 1000 && decoded_packets == 0 {
                    return Err(AudioError::new(CORRUPT, "no packet of the file decodes"));
                }
                continue;
            }
            Err(e) => return Err(corrupt_or_unsupported(&e)),
        };
        decoded_packets += 1;
        let spec = *audio.spec();
        if audio.frames() == 0 {
            continue;
        }
        let resample = match &mut resampler {
            Some(r) => r,
            None => {
                sample_rate = spec.rate;
                channels = spec.channels.count() as u16;
                resampler.insert(To16kMono::new(spec.rate)?)
            }
        };
        if spec.rate != resample.rate_in {
            return Err(AudioError::new(
                UNSUPPORTED,
                "the sample rate changes within the file",
            ));
        }
        let mut buffer = SampleBuffer::<f32>::new(audio.capacity() as u64, spec);
        buffer.copy_interleaved_ref(audio);
        let n_channels = spec.channels.count().max(1);
        let mono = buffer
            .samples()
            .chunks(n_channels)
            .map(|frame| frame.iter().sum::<f32>() / n_channels as f32);
        resample.push(mono, &mut out)?;
        if out.len() > max_samples {
            return Err(AudioError::new(
                TOO_LONG,
                format!(
                    "the recording is longer than the limit of {} s",
                    limits.max_duration_s
                ),
            ));
        }
    }
    let Some(resample) = resampler else {
        return Err(AudioError::new(
            CORRUPT,
            "the file holds no decodable audio",
        ));
    };
    resample.finish(&mut out)?;
    Ok(Decoded {
        samples: out,
        sample_rate,
        channels,
        skipped_packets,
    })
}

fn corrupt_or_unsupported(e: &SymphoniaError) -> AudioError {
    match e {
        SymphoniaError::Unsupported(what) => {
            AudioError::new(UNSUPPORTED, format!("unsupported audio: {what}"))
        }
        other => AudioError::new(CORRUPT, format!("the audio could not be decoded: {other}")),
    }
}

/// Mono samples at any rate in, 16 kHz 16-bit samples out, in chunks (for a file being decoded
/// or a live stream arriving).
pub struct To16kMono {
    rate_in: u32,
    resampler: Option<FftFixedIn<f32>>,
    pending: Vec<f32>,
    /// Input frames taken, to cut the output to its exact length at the end.
    frames_in: u64,
    /// Output frames produced, including the resampler's delay at the start.
    frames_out: u64,
    delay: usize,
}

impl To16kMono {
    /// A converter from `rate_in` Hz.
    pub fn new(rate_in: u32) -> Result<Self, AudioError> {
        if !(1_000..=384_000).contains(&rate_in) {
            return Err(AudioError::new(
                UNSUPPORTED,
                format!("a sample rate of {rate_in} Hz is not supported"),
            ));
        }
        let resampler = if rate_in == WHISPER_RATE {
            None
        } else {
            Some(
                FftFixedIn::<f32>::new(rate_in as usize, WHISPER_RATE as usize, 1024, 2, 1)
                    .map_err(|e| AudioError::new(UNSUPPORTED, e.to_string()))?,
            )
        };
        let delay = resampler.as_ref().map_or(0, Resampler::output_delay);
        Ok(Self {
            rate_in,
            resampler,
            pending: Vec::new(),
            frames_in: 0,
            frames_out: 0,
            delay,
        })
    }

    /// The input rate.
    pub fn rate_in(&self) -> u32 {
        self.rate_in
    }

    /// Takes mono samples in [-1, 1]; appends what is ready to `out`.
    pub fn push(
        &mut self,
        samples: impl IntoIterator<Item = f32>,
        out: &mut Vec<i16>,
    ) -> Result<(), AudioError> {
        let Some(resampler) = &mut self.resampler else {
            for s in samples {
                self.frames_in += 1;
                out.push(to_i16(s));
            }
            return Ok(());
        };
        let before = self.pending.len();
        self.pending.extend(samples);
        self.frames_in += (self.pending.len() - before) as u64;
        let mut start = 0;
        while self.pending.len() - start >= resampler.input_frames_next() {
            let need = resampler.input_frames_next();
            let chunk = &self.pending[start..start + need];
            let produced = resampler
                .process(&[chunk], None)
                .map_err(|e| AudioError::new(CORRUPT, e.to_string()))?;
            start += need;
            emit(&produced[0], &mut self.frames_out, self.delay, out);
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Flushes what is left; this converter's output in `out` then holds exactly the input's
    /// duration at 16 kHz.
    pub fn finish(mut self, out: &mut Vec<i16>) -> Result<(), AudioError> {
        let Some(resampler) = &mut self.resampler else {
            return Ok(());
        };
        let expected = (self.frames_in as f64 * f64::from(WHISPER_RATE) / f64::from(self.rate_in))
            .round() as u64;
        let rest = std::mem::take(&mut self.pending);
        let produced = resampler
            .process_partial(Some(&[rest.as_slice()]), None)
            .map_err(|e| AudioError::new(CORRUPT, e.to_string()))?;
        emit(&produced[0], &mut self.frames_out, self.delay, out);
        // The resampler holds back `delay` frames: feed it silence until they are out.
        while emitted(self.frames_out, self.delay) < expected {
            let produced = resampler
                .process_partial::<&[f32]>(None, None)
                .map_err(|e| AudioError::new(CORRUPT, e.to_string()))?;
            if produced[0].is_empty() {
                break;
            }
            emit(&produced[0], &mut self.frames_out, self.delay, out);
        }
        let excess = emitted(self.frames_out, self.delay).saturating_sub(expected) as usize;
        out.truncate(out.len().saturating_sub(excess));
        Ok(())
    }
}

/// Frames appended to the output so far, of `frames_out` produced after a delay of `delay`.
fn emitted(frames_out: u64, delay: usize) -> u64 {
    frames_out.saturating_sub(delay as u64)
}

/// Appends resampled frames, dropping the first `delay` of the whole stream.
fn emit(frames: &[f32], frames_out: &mut u64, delay: usize, out: &mut Vec<i16>) {
    for &s in frames {
        if *frames_out >= delay as u64 {
            out.push(to_i16(s));
        }
        *frames_out += 1;
    }
}

fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// 16-bit samples as the `f32` Whisper takes.
pub fn to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// A 16 kHz mono 16-bit WAV file of `samples` (what a live capture is kept as).
pub fn wav_bytes(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&WHISPER_RATE.to_le_bytes());
    out.extend_from_slice(&(WHISPER_RATE * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, seconds: f64, freq: f64) -> Vec<f32> {
        (0..(f64::from(rate) * seconds) as usize)
            .map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())
                    as f32
            })
            .collect()
    }

    #[test]
    fn containers_are_judged_by_content() {
        let wav = wav_bytes(&[0; 16]);
        assert_eq!(sniff(&wav), Some(Container::Wav));
        assert_eq!(sniff(b"OggS\0\x02"), Some(Container::Ogg));
        assert_eq!(sniff(b"fLaC\0\0\0\x22"), Some(Container::Flac));
        assert_eq!(sniff(b"ID3\x04\0\0"), Some(Container::Mpeg));
        assert_eq!(sniff(&[0xFF, 0xFB, 0x90, 0x64]), Some(Container::Mpeg));
        assert_eq!(sniff(b"\0\0\0\x20ftypM4A "), Some(Container::Mp4));
        for not_audio in [
            &b""[..],
            b"%PDF-1.7",
            b"RIFX\0\0\0\0WAVX",
            b"name,email\n",
            &[0x12, 0x34, 0x56, 0x78, 0x9a],
            &[0xFF, 0xFF, 0xFF, 0xFF],
        ] {
            assert_eq!(sniff(not_audio), None, "{not_audio:?}");
        }
    }

    #[test]
    fn resampling_keeps_duration_and_pitch() {
        for rate in [8_000u32, 16_000, 22_050, 44_100, 48_000] {
            let input = tone(rate, 1.5, 440.0);
            let mut conv = To16kMono::new(rate).unwrap();
            let mut out = Vec::new();
            for chunk in input.chunks(777) {
                conv.push(chunk.iter().copied(), &mut out).unwrap();
            }
            conv.finish(&mut out).unwrap();
            assert_eq!(out.len(), 24_000, "{rate} Hz");
            // The tone crosses zero 880 times a second, wherever it came from.
            let crossings = out.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
            assert!(
                (1300..=1340).contains(&crossings),
                "{rate} Hz: {crossings} zero crossings in 1.5 s"
            );
        }
    }

    #[test]
    fn a_wav_round_trips_and_damage_is_an_error_not_a_panic() {
        let samples: Vec<i16> = tone(16_000, 0.5, 300.0).into_iter().map(to_i16).collect();
        let wav = wav_bytes(&samples);
        let decoded = decode(wav.clone(), &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.samples.len(), samples.len());
        assert_eq!((decoded.sample_rate, decoded.channels), (16_000, 1));
        assert_eq!(
            decode(wav[..30].to_vec(), &DecodeLimits::default())
                .unwrap_err()
                .code,
            CORRUPT
        );
        assert_eq!(
            decode(b"hello".to_vec(), &DecodeLimits::default())
                .unwrap_err()
                .code,
            UNSUPPORTED
        );
        let short = DecodeLimits {
            max_duration_s: 0.1,
        };
        assert_eq!(decode(wav, &short).unwrap_err().code, TOO_LONG);
    }
}
