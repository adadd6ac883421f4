//! Second factors: a user's TOTP secret (encrypted) and their one-time recovery codes.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;

/// A row of `user_totp`: one per user with a factor (confirmed) or an enrolment (not yet).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_totp")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// The secret, encrypted (`services::mfa::SecretBox`).
    pub secret: String,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub last_step: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// Relations the ORM does not need.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Recovery codes: each usable once, stored as a keyed hash.
pub mod recovery_code {
    use super::*;

    /// A row of `recovery_codes`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recovery_codes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code_hash: String,
        pub user_id: Uuid,
        pub used_at: Option<DateTime<Utc>>,
    }

    /// Relations the ORM does not need.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
