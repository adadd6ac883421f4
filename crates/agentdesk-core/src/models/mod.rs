//! Database entities (SeaORM) and the domain types the services return.

pub mod session;
pub mod user;
