//! Grants: which user (or role) may do which actions on which resource, for which clients,
//! until when.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use serde::Serialize;

/// A row of `grants`. `actions` and `client_ids` are JSON arrays.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "grants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub role: Option<String>,
    pub resource: String,
    pub actions: Json,
    pub client_ids: Option<Json>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
}

/// Relations the ORM does not need.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// A grant as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Grant {
    /// UUID v7.
    pub id: Uuid,
    /// The user it is for, or null when it is for a role.
    pub user_id: Option<Uuid>,
    /// The role it is for, or null when it is for a user.
    pub role: Option<String>,
    /// `users`, `clients`, `permissions`, `audit` or `agent:<name>`.
    pub resource: String,
    /// Actions from the resource's catalog.
    pub actions: Vec<String>,
    /// Only these clients; null means all clients.
    pub client_ids: Option<Vec<Uuid>>,
    /// It stops matching at this time; null means never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: Option<Uuid>,
}

impl Grant {
    /// Whether it still matches at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    /// Whether it covers `client` (a grant without client ids covers every client).
    pub fn covers_client(&self, client: Uuid) -> bool {
        self.client_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&client))
    }
}

impl From<Model> for Grant {
    fn from(m: Model) -> Self {
        Self {
            id: m.id,
            user_id: m.user_id,
            role: m.role,
            resource: m.resource,
            actions: serde_json::from_value(m.actions).unwrap_or_default(),
            client_ids: m
                .client_ids
                .and_then(|ids| serde_json::from_value(ids).ok()),
            expires_at: m.expires_at,
            created_at: m.created_at,
            created_by: m.created_by,
        }
    }
}
