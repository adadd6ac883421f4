//! Database entities (SeaORM) and the domain types the services return.

pub mod api_key;
pub mod audit;
pub mod client;
pub mod grant;
pub mod job;
pub mod mfa;
pub mod session;
pub mod user;
