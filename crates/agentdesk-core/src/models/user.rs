//! Users: the people who log in.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use serde::Serialize;

/// A row of `users`. Holds the password hash: never serialise it; use [`User`].
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub email: String,
    pub email_key: String,
    pub full_name: String,
    pub role: String,
    pub password_hash: String,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

/// `users` has no relations that the ORM needs to know.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// The administrator role: may do everything.
pub const ROLE_ADMIN: &str = "admin";
/// The default role of a new user.
pub const ROLE_MEMBER: &str = "member";

/// A user as the API shows it: never a password or hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// UUID v7.
    pub id: Uuid,
    /// The email as entered; unique case-insensitively.
    pub email: String,
    /// Display name.
    pub full_name: String,
    /// `admin`, `member`, or any role name that grants refer to.
    pub role: String,
    /// A deactivated user cannot log in and their sessions are revoked.
    pub is_active: bool,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
    /// When the user was last changed.
    pub updated_at: DateTime<Utc>,
    /// When the user last logged in, if ever.
    pub last_login_at: Option<DateTime<Utc>>,
}

impl From<Model> for User {
    fn from(m: Model) -> Self {
        Self {
            id: m.id,
            email: m.email,
            full_name: m.full_name,
            role: m.role,
            is_active: m.is_active,
            created_at: m.created_at,
            updated_at: m.updated_at,
            last_login_at: m.last_login_at,
        }
    }
}

impl User {
    /// Whether the user is an administrator.
    pub fn is_admin(&self) -> bool {
        self.role == ROLE_ADMIN
    }
}
