//! agentdesk's core: configuration, the database, security, models and the services that hold
//! the business rules. Nothing in here knows HTTP; the API crate maps [`Error`] to responses.
//!
//! [`services::Core`] is built once at start ([`services::Core::start`]) and shared by the API
//! and the agents. Writes run in transactions on the database's writer handle (one connection
//! on SQLite, `BEGIN IMMEDIATE`); reads use the reader pool. Caches live per instance and are
//! kept honest by the invalidation bus in [`cache`].

pub mod backup;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod database;
pub mod error;
pub mod inline_reads;
pub mod migration;
pub mod models;
pub mod pagination;
pub mod search_index;
pub mod security;
pub mod services;
pub mod storage;
pub mod validators;

pub use error::{Error, FieldError, Result};
pub use services::{Core, RequestMeta};
