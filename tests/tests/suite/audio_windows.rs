//! Long recordings are transcribed in windows that overlap at their seams: a recording three
//! times longer than the window loses no words and repeats none where windows meet, with the
//! real tiny.en.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use agentdesk_agent_audio_recording::decode::{DecodeLimits, decode};
use agentdesk_agent_audio_recording::transcribe::{Options, load, transcribe};

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .map(|w| {
            if w == "mr" {
                "mister".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect()
}

fn word_errors(reference: &[String], hypothesis: &[String]) -> usize {
    let mut row: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let next = (row[j] + 1)
                .min(row[j + 1] + 1)
                .min(prev + usize::from(r != h));
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[hypothesis.len()]
}

#[test]
fn windows_lose_and_repeat_no_words_at_their_seams() {
    if !agentdesk_tests::speech_model_available() {
        return;
    }
    let dir = agentdesk_tests::speech_models_dir().expect("checked above");
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/audio");
    let wav = std::fs::read(corpus.join("librivox_ss01_concat.wav")).unwrap();
    let once = decode(wav, &DecodeLimits::default()).unwrap().samples;
    // 80 s: three times the five sentences, one second of silence between them.
    let mut samples = Vec::new();
    for _ in 0..3 {
        samples.extend_from_slice(&once);
        samples.extend(std::iter::repeat_n(0i16, 16_000));
    }
    let model = load("tiny.en", &dir.join("ggml-tiny.en.bin")).unwrap();
    let options = Options {
        window_s: 30.0,
        overlap_s: 10.0,
        ..Options::default()
    };
    let progress = Arc::new(AtomicU8::new(0));
    let transcript = transcribe(
        &model,
        &samples,
        &options,
        &progress,
        &Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(progress.load(Ordering::Relaxed), 100);
    let said: Vec<&str> = transcript
        .segments
        .iter()
        .map(|s| s.text.as_str())
        .collect();
    let reference = "and mister john dashwood had then leisure to consider how much there might be prudently in his power to do for them he was not an ill disposed young man unless to be rather cold hearted and rather selfish is to be ill disposed had he married a more a amiable woman he might have been made still more respectable than he was he might even have been made amiable himself";
    let reference: Vec<String> = words(&format!("{reference} {reference} {reference}"));
    let hypothesis = words(&said.join(" "));
    let errors = word_errors(&reference, &hypothesis);
    let wer = errors as f64 / reference.len() as f64;
    eprintln!("{} segments, WER {wer:.3}: {said:?}", said.len());
    assert!(wer < 0.08, "WER {wer:.3} over three windows: {said:?}");
    // Times move on and stay within the recording.
    let mut last = 0.0;
    for s in &transcript.segments {
        assert!(
            s.start >= last - 0.01 && s.end >= s.start && s.end <= 83.3,
            "{:?}",
            transcript.segments
        );
        last = s.end;
    }
}
