//! A mutation fuzzer for the decoder: the corpus audio (WAV, MP3, OGG/Vorbis, FLAC) with random
//! byte changes, cuts, repeats and forged header fields (huge chunk sizes, zero or absurd rates
//! and channel counts, fake frame syncs). Every input must come back as decoded audio or an
//! error with a known code, in bounded memory; a panic inside a codec is caught by `decode` and
//! counted; an abort or a stack overflow would kill the test process, which is what this hunts.
//!
//! CI runs a fixed set of cases. A long run (random seed):
//! `AGENTDESK_FUZZ_CASES=10000000 AGENTDESK_FUZZ_SECS=600 cargo test --release -p agentdesk-agent-audio-recording --test fuzz_decode -- --nocapture`

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentdesk_agent_audio_recording::decode::{
    CORRUPT, DecodeLimits, TOO_LONG, UNSUPPORTED, decode,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Seeds: the small corpus files of every container.
fn seeds() -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/audio");
    let names = [
        "librivox_ss01_0870.wav",
        "librivox_ss01_0870.mp3",
        "librivox_ss01_0870.ogg",
        "librivox_ss01_0870.flac",
        "ps_cards_001.wav",
    ];
    let seeds: Vec<Vec<u8>> = names
        .iter()
        .filter_map(|n| std::fs::read(root.join(n)).ok())
        .collect();
    assert!(!seeds.is_empty(), "no corpus at {}", root.display());
    seeds
}

/// What a mutation may write: forged sizes and fields, syncs and magic numbers.
const SNIPPETS: &[&[u8]] = &[
    b"\xff\xff\xff\x7f",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"data\xff\xff\xff\xff",
    b"fmt \x10\x00\x00\x00\x01\x00\xff\xff\x00\x00\x00\x00",
    b"fmt \x10\x00\x00\x00\x01\x00\x01\x00\xff\xff\xff\xff",
    b"\xff\xfb\x90\x64",
    b"\xff\xf1\x50\x80",
    b"OggS\x00\x02",
    b"fLaC\x00\x00\x00\x22",
    b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f",
    b"\x01vorbis",
];

fn mutation() -> impl Strategy<Value = (u8, usize, usize, usize)> {
    (0u8..4, any::<usize>(), 1usize..4096, 0usize..SNIPPETS.len())
}

fn apply(bytes: &mut Vec<u8>, (kind, at, len, snippet): (u8, usize, usize, usize)) {
    if bytes.is_empty() {
        return;
    }
    let at = at % bytes.len();
    match kind {
        // Overwrite with a forged field (the header is where it hurts, so aim there half the time).
        0 => {
            let at = if len % 2 == 0 {
                at % 64.min(bytes.len())
            } else {
                at
            };
            let s = SNIPPETS[snippet];
            let end = (at + s.len()).min(bytes.len());
            bytes[at..end].copy_from_slice(&s[..end - at]);
        }
        1 => bytes.truncate(at),
        2 => {
            let end = (at + len).min(bytes.len());
            bytes.drain(at..end);
        }
        _ => {
            let end = (at + len.min(512)).min(bytes.len());
            let chunk = bytes[at..end].repeat(1 + len % 8);
            bytes.splice(end..end, chunk);
        }
    }
}

#[test]
fn decoding_survives_mutated_audio() {
    let seeds = seeds();
    let from_env = std::env::var("AGENTDESK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    let config = Config {
        cases: from_env.unwrap_or(200),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = if from_env.is_some() {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        )
    };
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    std::panic::set_hook(Box::new(|_| {
        PANICS.fetch_add(1, Ordering::Relaxed);
    }));
    let budget = std::env::var("AGENTDESK_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs);
    let started = std::time::Instant::now();
    let ran = AtomicUsize::new(0);
    let outcomes = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    // A recording of at most a minute: mutations that claim hours must fail as too long.
    let limits = DecodeLimits {
        max_duration_s: 60.0,
    };
    let strategy = (0..seeds.len(), proptest::collection::vec(mutation(), 1..6));
    runner
        .run(&strategy, |(seed, mutations)| {
            if budget.is_some_and(|b| started.elapsed() > b) {
                return Ok(());
            }
            ran.fetch_add(1, Ordering::Relaxed);
            let mut bytes = seeds[seed].clone();
            for m in mutations {
                apply(&mut bytes, m);
            }
            let outcome = match decode(bytes, &limits) {
                Ok(decoded) => {
                    prop_assert!(decoded.duration_s() <= 60.0 + 1.0);
                    "decoded".to_owned()
                }
                Err(e) => {
                    prop_assert!(
                        [CORRUPT, UNSUPPORTED, TOO_LONG].contains(&e.code.as_str()),
                        "unknown code {}",
                        e.code
                    );
                    e.code
                }
            };
            if let Ok(mut counts) = outcomes.lock() {
                *counts.entry(outcome).or_default() += 1;
            }
            Ok(())
        })
        .unwrap();
    let _ = std::panic::take_hook();
    eprintln!(
        "fuzz: {} mutated files from {} seeds in {:.1} s, no crash; outcomes {:?}; {} decoder panics caught (as audio_corrupt)",
        ran.load(Ordering::Relaxed),
        seeds.len(),
        started.elapsed().as_secs_f64(),
        outcomes.lock().map(|o| o.clone()).unwrap_or_default(),
        PANICS.load(Ordering::Relaxed),
    );
}
