//! The black-box suite: each module starts real servers on random ports and talks HTTP to them.
//! One test binary for all of them: each binary links the whole server (≈ 465 MB unoptimised),
//! so one per file cost ten gigabytes of disk and a link step each. Run one area with a filter,
//! e.g. `cargo test -p agentdesk-tests --test suite -- clients::`.

mod account;
mod audio_recording;
mod audio_windows;
mod audit;
mod auth;
mod backup;
mod client_management;
mod clients;
mod fuzz_inputs;
mod jobs;
mod matrix;
mod mfa;
mod nul_characters;
mod outages;
mod pdf_processing;
mod permissions;
mod report_schedules;
mod reports;
mod system;
mod upgrades;
mod users;
