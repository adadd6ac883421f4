//! The extraction child process: `agentdesk pdf-extract` reads a PDF on standard input, limits
//! its own writable memory and CPU time, extracts, and writes the [`Extraction`] as JSON on
//! standard output. The agent runs one per document (see [`crate::isolate`]).

use std::io::{Read, Write};

use crate::extract::{Extraction, Limits, extract};

/// Options of the child, given on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildOptions {
    /// Limit of writable memory in MiB (RLIMIT_DATA; 0: none).
    pub max_memory_mb: u64,
    /// CPU-time limit in seconds (0: none).
    pub max_cpu_secs: u64,
    /// Extraction limits.
    pub limits: Limits,
}

impl Default for ChildOptions {
    fn default() -> Self {
        Self {
            max_memory_mb: 2048,
            max_cpu_secs: 120,
            limits: Limits::default(),
        }
    }
}

impl ChildOptions {
    /// The command-line arguments that carry these options.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--max-memory-mb".into(),
            self.max_memory_mb.to_string(),
            "--max-cpu-secs".into(),
            self.max_cpu_secs.to_string(),
            "--limits".into(),
            serde_json::to_string(&self.limits).unwrap_or_default(),
        ]
    }

    /// Reads the options back; unknown arguments are an error.
    pub fn from_args(args: &[String]) -> Result<Self, String> {
        let mut options = Self::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--max-memory-mb" => {
                    options.max_memory_mb = value.parse().map_err(|_| format!("bad {flag}"))?;
                }
                "--max-cpu-secs" => {
                    options.max_cpu_secs = value.parse().map_err(|_| format!("bad {flag}"))?;
                }
                "--limits" => {
                    options.limits =
                        serde_json::from_str(value).map_err(|e| format!("bad {flag}: {e}"))?;
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(options)
    }
}

fn apply_resource_limits(options: &ChildOptions) -> Result<(), String> {
    if options.max_memory_mb > 0 {
        let bytes = options.max_memory_mb.saturating_mul(1024 * 1024);
        // RLIMIT_DATA bounds writable private memory (heap, anonymous maps, thread stacks) as
        // it is committed, but not address space merely reserved: the allocator's arena,
        // reserved inaccessible before `main`, does not eat into the limit.
        rlimit::Resource::DATA
            .set(bytes, bytes)
            .map_err(|e| format!("could not limit memory: {e}"))?;
    }
    if options.max_cpu_secs > 0 {
        // The soft limit sends SIGXCPU; the hard limit one second later is the backstop.
        rlimit::Resource::CPU
            .set(options.max_cpu_secs, options.max_cpu_secs + 1)
            .map_err(|e| format!("could not limit CPU time: {e}"))?;
    }
    Ok(())
}

/// Runs the child: limits, reads standard input, extracts, writes JSON. Returns the exit code.
pub fn child_main(args: &[String]) -> i32 {
    let options = match ChildOptions::from_args(args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("pdf-extract: {message}");
            return 2;
        }
    };
    if let Err(message) = apply_resource_limits(&options) {
        eprintln!("pdf-extract: {message}");
        return 2;
    }
    // Parser panics are caught and reported in the JSON; the default hook would only add noise.
    std::panic::set_hook(Box::new(|_| {}));
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("pdf-extract: could not read standard input: {e}");
        return 2;
    }
    // Parsing recurses on nesting; run it on a thread with a deep stack (an eighth of the
    // memory limit, at most 256 MiB), and give page readers the same.
    let stack_mb = if options.max_memory_mb == 0 {
        256
    } else {
        usize::try_from(options.max_memory_mb / 8)
            .unwrap_or(256)
            .clamp(8, 256)
    };
    let mut limits = options.limits.clone();
    limits.thread_stack_mb = limits.thread_stack_mb.min(stack_mb);
    let parsed = std::thread::Builder::new()
        .stack_size(stack_mb * 1024 * 1024)
        .spawn(move || extract(bytes, &limits))
        .map(|worker| worker.join());
    let extraction: Extraction = match parsed {
        Ok(Ok(extraction)) => extraction,
        _ => {
            eprintln!("pdf-extract: the extraction thread could not run");
            return 3;
        }
    };
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer(&mut out, &extraction)
        .and_then(|()| out.flush().map_err(serde_json::Error::io))
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pdf-extract: could not write the result: {e}");
            3
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip() {
        let options = ChildOptions {
            max_memory_mb: 512,
            max_cpu_secs: 7,
            limits: Limits {
                max_pages: 3,
                ..Limits::default()
            },
        };
        assert_eq!(ChildOptions::from_args(&options.to_args()), Ok(options));
        assert!(ChildOptions::from_args(&["--what".into(), "1".into()]).is_err());
        assert!(ChildOptions::from_args(&["--max-cpu-secs".into()]).is_err());
    }
}
