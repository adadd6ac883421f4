//! Clients: the customer records.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use serde::Serialize;

/// A row of `clients`. `*_key` columns are normalised copies for matching; `search_text` feeds
/// the substring index.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "clients")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub name_key: String,
    pub email: Option<String>,
    pub email_key: Option<String>,
    pub phone: Option<String>,
    pub phone_key: Option<String>,
    pub company: Option<String>,
    pub status: String,
    pub tags: Json,
    pub notes: Option<String>,
    pub metadata: Json,
    pub search_text: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// Relations the ORM does not need.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl crate::inline_reads::InlineRow for Model {
    const COLUMNS: &'static [&'static str] = &[
        "id",
        "name",
        "name_key",
        "email",
        "email_key",
        "phone",
        "phone_key",
        "company",
        "status",
        "tags",
        "notes",
        "metadata",
        "search_text",
        "version",
        "created_at",
        "updated_at",
        "created_by",
        "deleted_at",
    ];

    fn decode(row: &rusqlite::Row<'_>) -> Option<Self> {
        use crate::inline_reads::{integer, json, optional, text, time, uuid};
        Some(Self {
            id: uuid(row, 0)?,
            name: text(row, 1)?,
            name_key: text(row, 2)?,
            email: optional(row, 3, text)?,
            email_key: optional(row, 4, text)?,
            phone: optional(row, 5, text)?,
            phone_key: optional(row, 6, text)?,
            company: optional(row, 7, text)?,
            status: text(row, 8)?,
            tags: json(row, 9)?,
            notes: optional(row, 10, text)?,
            metadata: json(row, 11)?,
            search_text: text(row, 12)?,
            version: integer(row, 13)?,
            created_at: time(row, 14)?,
            updated_at: time(row, 15)?,
            created_by: optional(row, 16, uuid)?,
            deleted_at: optional(row, 17, time)?,
        })
    }
}

/// The statuses a client can have.
pub const STATUSES: [&str; 4] = ["lead", "active", "inactive", "archived"];

/// A client as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Client {
    /// UUID v7.
    pub id: Uuid,
    /// 1..=200 characters.
    pub name: String,
    /// Unique among live clients, case-insensitively.
    pub email: Option<String>,
    /// A phone number as entered.
    pub phone: Option<String>,
    /// Company name.
    pub company: Option<String>,
    /// `lead`, `active`, `inactive` or `archived`.
    pub status: String,
    /// Short labels.
    pub tags: Vec<String>,
    /// Free text.
    pub notes: Option<String>,
    /// A free JSON object (at most 16 KiB).
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Increases with every change; the `ETag`.
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: Option<Uuid>,
}

impl Client {
    /// The entity tag of this version.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

impl From<Model> for Client {
    fn from(m: Model) -> Self {
        Self {
            id: m.id,
            name: m.name,
            email: m.email,
            phone: m.phone,
            company: m.company,
            status: m.status,
            tags: serde_json::from_value(m.tags).unwrap_or_default(),
            notes: m.notes,
            metadata: m.metadata,
            version: m.version,
            created_at: m.created_at,
            updated_at: m.updated_at,
            created_by: m.created_by,
        }
    }
}
