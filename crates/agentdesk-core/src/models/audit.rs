//! Audit events: append-only, hash-chained.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use serde::Serialize;

/// A row of `audit_events`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    pub actor_email: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub client_id: Option<Uuid>,
    pub outcome: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub api_key_id: Option<Uuid>,
    pub changes: Option<Json>,
    pub prev_hash: String,
    pub hash: String,
    /// How `hash` was computed: 1 over the whole event, 2 over a digest of its body
    /// (services::audit).
    pub hash_version: i16,
}

/// Relations the ORM does not need.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// An audit event as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// UUID v7.
    pub id: Uuid,
    /// Position in the chain: 1, 2, 3, ... with no gaps.
    pub seq: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who did it (null for an anonymous attempt).
    pub actor_id: Option<Uuid>,
    /// Their email at the time (or the email an anonymous login tried).
    pub actor_email: Option<String>,
    /// Dotted action: `auth.login`, `user.create`, `permission.grant`, ...
    pub action: String,
    /// The kind of record acted on.
    pub resource_type: Option<String>,
    /// The record acted on.
    pub resource_id: Option<String>,
    /// The client the record belongs to, if any.
    pub client_id: Option<Uuid>,
    /// `success`, `denied` or `error`.
    pub outcome: String,
    /// The client's IP.
    pub ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// The request's id.
    pub request_id: Option<String>,
    /// The API key the actor used, when they used one (null for a session).
    pub api_key_id: Option<Uuid>,
    /// `before` and `after` of the fields that changed (never secrets); null for an event that
    /// changed no field (a login, a denied request).
    #[schema(value_type = Option<Object>)]
    pub changes: Option<serde_json::Value>,
    /// The previous event's hash (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over this event's canonical encoding and `prev_hash`.
    pub hash: String,
}

impl From<Model> for AuditEvent {
    fn from(m: Model) -> Self {
        Self {
            id: m.id,
            seq: m.seq,
            at: m.at,
            actor_id: m.actor_id,
            actor_email: m.actor_email,
            action: m.action,
            resource_type: m.resource_type,
            resource_id: m.resource_id,
            client_id: m.client_id,
            outcome: m.outcome,
            ip: m.ip,
            user_agent: m.user_agent,
            request_id: m.request_id,
            api_key_id: m.api_key_id,
            changes: m.changes,
            prev_hash: m.prev_hash,
            hash: m.hash,
        }
    }
}
