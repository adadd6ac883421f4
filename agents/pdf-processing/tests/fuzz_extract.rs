//! A mutation fuzzer for the extraction entry point: corpus PDFs (and a generated one) with
//! random byte flips, deletions, duplications, truncations and injected PDF syntax (deep
//! nesting, reference loops, huge lengths). Every input must come back as an [`Extraction`]
//! with no panic escaping and, on failure, a known error code; an abort or a stack overflow
//! kills the test process, which is the crash this looks for.
//!
//! Each case runs on a thread with the child process's 256 MiB stack. CI runs a fixed set of a
//! few hundred cases. For a long run (random seed):
//! `AGENTDESK_FUZZ_CASES=1000000 AGENTDESK_FUZZ_SECS=600 cargo test --release -p agentdesk-agent-pdf-processing --test fuzz_extract -- --nocapture`

use std::path::PathBuf;

use agentdesk_agent_pdf_processing::extract::{CORRUPT, ENCRYPTED, LIMIT, Limits, extract};
use agentdesk_agent_pdf_processing::sample::pdf_with_pages;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Seeds: small corpus files (both sets) and a generated PDF.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![pdf_with_pages(&["Hello fuzz", "second page"])];
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/pdf");
    for set in ["good", "bad"] {
        let Ok(entries) = std::fs::read_dir(root.join(set)) else {
            eprintln!(
                "no corpus at {}: fuzzing the generated seed only",
                root.display()
            );
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= 64 * 1024);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // The bombs are exercised by the API tests through the isolated child.
            if small
                && !name.starts_with("bomb")
                && let Ok(bytes) = std::fs::read(&path)
            {
                seeds.push(bytes);
            }
        }
    }
    seeds
}

/// PDF syntax worth injecting: nesting, loops, absurd numbers, broken streams.
const SNIPPETS: &[&[u8]] = &[
    b"<<",
    b">>",
    b"[",
    b"]",
    b"(",
    b")",
    b"1 0 R",
    b"2 0 obj 2 0 R endobj",
    b"/Length 999999999",
    b"/Length -1",
    b"stream\n",
    b"endstream",
    b"/Filter /FlateDecode",
    b"/Kids [1 0 R]",
    b"/Count 2147483647",
    b"xref\n0 99999999\n",
    b"startxref\n0\n%%EOF",
    b"/Encrypt 1 0 R",
    b"/Type /ObjStm /N 100000 /First 0",
    b"\x00",
    b"\xff\xfe",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        value: u8,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Duplicate {
        at: usize,
        len: usize,
        times: usize,
    },
    Truncate {
        at: usize,
    },
    Inject {
        at: usize,
        snippet: usize,
        times: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Flip { at, value }),
        (any::<usize>(), 1usize..512).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 1usize..256, 1usize..64)
            .prop_map(|(at, len, times)| Mutation::Duplicate { at, len, times }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), 0..SNIPPETS.len(), 1usize..2000)
            .prop_map(|(at, snippet, times)| Mutation::Inject { at, snippet, times }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len().max(1);
    match *m {
        Mutation::Flip { at, value } => {
            if let Some(b) = bytes.get_mut(at % len) {
                *b = value;
            }
        }
        Mutation::Delete { at, len: n } => {
            let start = (at % len).min(bytes.len());
            let end = (start + n).min(bytes.len());
            bytes.drain(start..end);
        }
        Mutation::Duplicate { at, len: n, times } => {
            let start = (at % len).min(bytes.len());
            let end = (start + n).min(bytes.len());
            let chunk = bytes[start..end].repeat(times);
            bytes.splice(end..end, chunk);
        }
        Mutation::Truncate { at } => bytes.truncate(at % len),
        Mutation::Inject { at, snippet, times } => {
            let at = (at % len).min(bytes.len());
            let chunk = SNIPPETS[snippet].repeat(times);
            bytes.splice(at..at, chunk);
        }
    }
}

#[test]
fn extraction_survives_mutated_pdfs() {
    let seeds = seeds();
    let cases = std::env::var("AGENTDESK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let limits = Limits {
        ocr: false,
        threads: 1,
        ..Limits::default()
    };
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    // CI runs a fixed set of cases (a stack overflow found by a random seed would abort the
    // whole test binary, and only a long run is meant to hunt); long runs pick a new seed.
    let mut runner = if std::env::var("AGENTDESK_FUZZ_CASES").is_ok() {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        )
    };
    // Parser panics are caught by `extract` (the document fails as corrupt); count them, once
    // per input, and keep the first message of each kind for the report.
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static KINDS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file().rsplit('/').next().unwrap_or(""), l.line()))
            .unwrap_or_default();
        if let Ok(mut kinds) = KINDS.lock()
            && !kinds.contains(&at)
        {
            kinds.push(at);
        }
    }));
    let started = std::time::Instant::now();
    // A long run may be bounded by time: cases after the budget pass without running.
    let budget = std::env::var("AGENTDESK_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs);
    let ran = std::sync::atomic::AtomicUsize::new(0);
    let strategy = (0..seeds.len(), proptest::collection::vec(mutation(), 1..8));
    runner
        .run(&strategy, |(seed, mutations)| {
            if budget.is_some_and(|b| started.elapsed() > b) {
                return Ok(());
            }
            ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut bytes = seeds[seed].clone();
            for m in &mutations {
                apply(&mut bytes, m);
            }
            let limits = limits.clone();
            let out = std::thread::Builder::new()
                .stack_size(256 * 1024 * 1024)
                .spawn(move || extract(bytes, &limits))
                .expect("a thread")
                .join()
                .expect("extract never panics");
            if let Some(error) = &out.error {
                prop_assert!(
                    [CORRUPT, ENCRYPTED, LIMIT].contains(&error.code.as_str()),
                    "unknown code {}",
                    error.code
                );
            }
            prop_assert!(out.pages.len() <= out.page_count as usize);
            Ok(())
        })
        .unwrap();
    let _ = std::panic::take_hook();
    eprintln!(
        "fuzz: {} mutated PDFs from {} seeds in {:.1} s, no crash; {} parser panics caught \
         (as pdf_corrupt) at {:?}",
        ran.load(std::sync::atomic::Ordering::Relaxed),
        seeds.len(),
        started.elapsed().as_secs_f64(),
        PANICS.load(std::sync::atomic::Ordering::Relaxed),
        KINDS.lock().map(|k| k.clone()).unwrap_or_default()
    );
}
