//! API keys: credentials a user makes for their scripts. A key is shown once and stored as its
//! SHA-256 (it is 256 random bits, so a slow hash would add nothing); it starts with
//! [`KEY_PREFIX`] so that secret scanners can recognise a leaked one. A key acts as its owner,
//! optionally narrowed to some of the owner's grants, and is checked against the owner as they
//! are at each request: a revoked grant or a deactivated owner stops it at once.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set,
    sea_query::Expr,
};
use serde::Serialize;
use uuid::Uuid;

use super::audit::{AuditRecord, Outcome};
use super::{Core, RequestMeta};
use crate::cache::{ApiKeyScope, AuthContext, Invalidation};
use crate::error::{Error, Result};
use crate::models::api_key;
use crate::models::user::{self, User};
use crate::security::hash_token;

/// How every API key begins.
pub const KEY_PREFIX: &str = "adk_";

/// How many of a key's first characters are kept to tell it apart (`adk_` and 8 more).
const SHOWN_PREFIX_LEN: usize = 12;

/// A key's length: the prefix and 32 random bytes in unpadded base32 (52 characters).
const KEY_LEN: usize = 4 + 52;

/// Keys a user may hold at once (revoked ones do not count).
pub const MAX_KEYS_PER_USER: u64 = 100;

/// Grants one key may be narrowed to.
pub const MAX_KEY_GRANTS: usize = 100;

/// An API key as its owner sees it: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    /// The key's id.
    pub id: Uuid,
    /// What the owner called it.
    pub name: String,
    /// The key's first characters (`adk_` and 8 more), to tell it apart.
    pub prefix: String,
    /// The owner's grants the key is narrowed to; null when it may do all the owner may.
    pub grants: Option<Vec<Uuid>>,
    /// When it stops working; null for never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last used (to within a few seconds); null if never.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A key just made: the only time `key` is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    /// The key's id.
    pub id: Uuid,
    /// What the owner called it.
    pub name: String,
    /// The key's first characters.
    pub prefix: String,
    /// The key, for `Authorization: Bearer`. It cannot be shown again.
    pub key: String,
    /// The owner's grants the key is narrowed to; null for all.
    pub grants: Option<Vec<Uuid>>,
    /// When it stops working; null for never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// A key to make, as submitted.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    /// A name for the owner to recognise it by (1..=100 characters).
    pub name: String,
    /// Narrow the key to these of the owner's grants (by id); `None` for all.
    pub grants: Option<Vec<Uuid>>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
}

fn grant_ids_of(row: &api_key::Model) -> Option<Vec<Uuid>> {
    row.grant_ids
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// What a stored key allows.
fn key_scope(row: &api_key::Model) -> Arc<ApiKeyScope> {
    Arc::new(ApiKeyScope {
        id: row.id,
        grant_ids: grant_ids_of(row),
        expires_at: row.expires_at,
    })
}

impl ApiKey {
    fn from_row(row: api_key::Model, pending_use: Option<DateTime<Utc>>) -> Self {
        Self {
            grants: grant_ids_of(&row),
            last_used_at: match (row.last_used_at, pending_use) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            id: row.id,
            name: row.name,
            prefix: row.prefix,
            expires_at: row.expires_at,
            created_at: row.created_at,
        }
    }
}

/// A new random key: `adk_` and 32 random bytes in lowercase, unpadded base32.
fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(KEY_PREFIX);
    key.push_str(
        &data_encoding::BASE32_NOPAD
            .encode(&bytes)
            .to_ascii_lowercase(),
    );
    key
}

/// Whether `token` is shaped like an API key (the check of a session's token takes the rest).
pub fn is_api_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

impl Core {
    /// Makes a key for the caller (who must be using a session, not a key). Every grant it is
    /// narrowed to must be one of the caller's live grants.
    pub async fn create_api_key(
        &self,
        caller: &AuthContext,
        new: NewApiKey,
        meta: &RequestMeta,
    ) -> Result<CreatedApiKey> {
        caller.require_session()?;
        let mut errors = Vec::new();
        let name = new.name.trim().to_owned();
        if name.is_empty() {
            errors.push(("name", "is required".to_owned()));
        } else if name.chars().count() > 100 {
            errors.push(("name", "must be at most 100 characters".to_owned()));
        } else if name.chars().any(char::is_control) {
            errors.push(("name", "must not contain control characters".to_owned()));
        }
        let now = Utc::now();
        if new.expires_at.is_some_and(|at| at <= now) {
            errors.push(("expires_at", "must be in the future".to_owned()));
        }
        let grants = match new.grants {
            None => None,
            Some(mut ids) => {
                ids.sort_unstable();
                ids.dedup();
                if ids.is_empty() {
                    errors.push((
                        "grants",
                        "must name at least one grant (leave it out for all)".to_owned(),
                    ));
                } else if ids.len() > MAX_KEY_GRANTS {
                    errors.push((
                        "grants",
                        format!("may name at most {MAX_KEY_GRANTS} grants"),
                    ));
                } else {
                    let held = self.effective_grants(&caller.user).await?;
                    if let Some(missing) = ids.iter().find(|id| !held.iter().any(|g| g.id == **id))
                    {
                        errors.push((
                            "grants",
                            format!("{missing} is not one of your live grants"),
                        ));
                    }
                }
                Some(ids)
            }
        };
        if !errors.is_empty() {
            return Err(Error::Validation(
                errors
                    .into_iter()
                    .map(|(field, message)| crate::error::FieldError::new(field, message))
                    .collect(),
            ));
        }
        let live = api_key::Entity::find()
            .filter(api_key::Column::UserId.eq(caller.user.id))
            .filter(api_key::Column::RevokedAt.is_null())
            .count(self.db.reader())
            .await?;
        if live >= MAX_KEYS_PER_USER {
            return Err(Error::Conflict(format!(
                "a user may hold at most {MAX_KEYS_PER_USER} API keys; revoke one first"
            )));
        }

        let key = new_key();
        let id = Uuid::now_v7();
        let prefix: String = key.chars().take(SHOWN_PREFIX_LEN).collect();
        let grants_json = grants
            .as_ref()
            .map(|ids| serde_json::to_value(ids).unwrap_or_default());
        let txn = self.db.begin().await?;
        api_key::ActiveModel {
            id: Set(id),
            user_id: Set(caller.user.id),
            name: Set(name.clone()),
            prefix: Set(prefix.clone()),
            key_hash: Set(hash_token(&key)),
            grant_ids: Set(grants_json.clone()),
            expires_at: Set(new.expires_at),
            created_at: Set(now),
            last_used_at: Set(None),
            revoked_at: Set(None),
        }
        .insert(&txn)
        .await?;
        self.append(
            &txn,
            AuditRecord::new("api_key.create", Outcome::Success, meta)
                .actor(&caller.user)
                .resource("api_key", id)
                .changes(serde_json::json!({"before": {}, "after": {
                    "name": name, "prefix": prefix, "grants": grants_json, "expires_at": new.expires_at,
                }})),
        )
        .await?;
        txn.commit().await?;
        Ok(CreatedApiKey {
            id,
            name,
            prefix,
            key,
            grants,
            expires_at: new.expires_at,
            created_at: now,
        })
    }

    /// The caller's keys that are not revoked (expired ones included), newest first.
    pub async fn list_api_keys(&self, caller: &AuthContext) -> Result<Vec<ApiKey>> {
        caller.require_session()?;
        let rows = api_key::Entity::find()
            .filter(api_key::Column::UserId.eq(caller.user.id))
            .filter(api_key::Column::RevokedAt.is_null())
            .order_by_desc(api_key::Column::CreatedAt)
            .order_by_desc(api_key::Column::Id)
            .all(self.db.reader())
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let pending = self.last_used.pending_api_key(row.id);
                ApiKey::from_row(row, pending)
            })
            .collect())
    }

    /// Revokes one of the caller's keys: refused on every instance from the next request (the
    /// invalidation bus). 404 for a key that is not the caller's or is already revoked.
    pub async fn revoke_api_key(
        &self,
        caller: &AuthContext,
        id: Uuid,
        meta: &RequestMeta,
    ) -> Result<()> {
        caller.require_session()?;
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let revoked = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now))
            .filter(api_key::Column::Id.eq(id))
            .filter(api_key::Column::UserId.eq(caller.user.id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        if revoked.rows_affected == 0 {
            return Err(Error::NotFound("api key"));
        }
        self.append(
            &txn,
            AuditRecord::new("api_key.revoke", Outcome::Success, meta)
                .actor(&caller.user)
                .resource("api_key", id),
        )
        .await?;
        txn.commit().await?;
        self.caches.invalidate(Invalidation::ApiKey(id)).await;
        Ok(())
    }

    /// The scope of a live key (not revoked, not expired) by its id, for work it started that
    /// runs later (a job); `None` when it no longer works.
    pub async fn api_key_scope(&self, id: Uuid) -> Result<Option<Arc<ApiKeyScope>>> {
        let now = Utc::now();
        Ok(api_key::Entity::find_by_id(id)
            .one(self.db.reader())
            .await?
            .filter(|r| r.revoked_at.is_none() && r.expires_at.is_none_or(|at| at > now))
            .map(|row| key_scope(&row)))
    }

    /// Verifies an API key: not revoked, not expired, its owner active. Cached per instance like
    /// a session (revocations evict it everywhere); the key's hash is the cache's key.
    pub(crate) async fn authenticate_api_key(&self, key: &str) -> Result<AuthContext> {
        const INVALID: Error = Error::InvalidToken("the API key is invalid, revoked or expired");
        if key.len() != KEY_LEN {
            return Err(INVALID);
        }
        let now = Utc::now();
        let hash = hash_token(key);
        if let Some(ctx) = self.caches.api_key(&hash).await {
            if ctx
                .api_key
                .as_ref()
                .and_then(|k| k.expires_at)
                .is_some_and(|at| at <= now)
            {
                return Err(INVALID);
            }
            self.last_used.api_key(ctx.session_id, now);
            return Ok(ctx);
        }
        let conn = self.db.reader();
        let row = api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(hash.as_str()))
            .one(conn)
            .await?;
        let row = match row {
            Some(r) if r.revoked_at.is_none() && r.expires_at.is_none_or(|at| at > now) => r,
            _ => return Err(INVALID),
        };
        let user = match user::Entity::find_by_id(row.user_id).one(conn).await? {
            Some(u) if u.is_active => User::from(u),
            _ => return Err(Error::InvalidToken("the account is disabled")),
        };
        let ctx = AuthContext {
            user,
            session_id: row.id,
            api_key: Some(key_scope(&row)),
        };
        self.caches.put_api_key(hash, ctx.clone()).await;
        self.last_used.api_key(row.id, now);
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_lowercase_base32_of_the_expected_length() {
        let key = new_key();
        assert_eq!(key.len(), KEY_LEN);
        assert!(is_api_key(&key));
        assert!(
            key[KEY_PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_ne!(key, new_key());
    }
}
