//! The caller's own account: the sessions they can see and end, and when each credential was
//! last used, kept without a write on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Statement};
use serde::Serialize;
use uuid::Uuid;

use super::audit::{AuditRecord, Outcome};
use super::auth::revoke_session;
use super::{Core, RequestMeta};
use crate::cache::{AuthContext, Invalidation};
use crate::database::Database;
use crate::error::{Error, Result};
use crate::models::session;

/// How often the last uses gathered in memory are written.
pub const LAST_USED_FLUSH: Duration = Duration::from_secs(5);

/// Rows whose last use one statement writes (two parameters each).
const LAST_USED_PER_STATEMENT: usize = 500;

/// One of the caller's live sessions (a login, kept alive by its refresh token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    /// The session's id.
    pub id: Uuid,
    /// When the user logged in.
    pub created_at: DateTime<Utc>,
    /// When one of its tokens was last used (to within a few seconds).
    pub last_used_at: DateTime<Utc>,
    /// When it ends unless its refresh token is used again.
    pub expires_at: DateTime<Utc>,
    /// The address it logged in from.
    pub ip: Option<String>,
    /// The browser or program it logged in with.
    pub user_agent: Option<String>,
    /// Whether it is the session of this request.
    pub current: bool,
}

/// When sessions and API keys were last used, gathered per request in memory and written every
/// [`LAST_USED_FLUSH`] in one statement per table: a request never waits for a write.
#[derive(Debug, Clone, Default)]
pub struct LastUsed(Arc<Mutex<Pending>>);

#[derive(Debug, Default)]
struct Pending {
    sessions: HashMap<Uuid, DateTime<Utc>>,
    api_keys: HashMap<Uuid, DateTime<Utc>>,
}

impl LastUsed {
    /// Notes a use of a session.
    pub fn session(&self, id: Uuid, at: DateTime<Utc>) {
        if let Ok(mut pending) = self.0.lock() {
            pending.sessions.insert(id, at);
        }
    }

    /// Notes a use of an API key.
    pub fn api_key(&self, id: Uuid, at: DateTime<Utc>) {
        if let Ok(mut pending) = self.0.lock() {
            pending.api_keys.insert(id, at);
        }
    }

    /// A use of this session noted here but not yet written.
    fn pending_session(&self, id: Uuid) -> Option<DateTime<Utc>> {
        self.0.lock().ok()?.sessions.get(&id).copied()
    }

    /// A use of this API key noted here but not yet written.
    pub(crate) fn pending_api_key(&self, id: Uuid) -> Option<DateTime<Utc>> {
        self.0.lock().ok()?.api_keys.get(&id).copied()
    }

    /// Writes what was gathered. On an error the uses are kept for the next flush.
    pub async fn flush(&self, db: &Database) -> Result<()> {
        let taken = match self.0.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Ok(()),
        };
        let sessions = write_last_used(db, "sessions", &taken.sessions).await;
        let api_keys = write_last_used(db, "api_keys", &taken.api_keys).await;
        if let Ok(mut pending) = self.0.lock() {
            // Kept for the next flush; newer uses noted meanwhile win.
            if sessions.is_err() {
                for (id, at) in taken.sessions {
                    pending.sessions.entry(id).or_insert(at);
                }
            }
            if api_keys.is_err() {
                for (id, at) in taken.api_keys {
                    pending.api_keys.entry(id).or_insert(at);
                }
            }
        }
        sessions.and(api_keys)
    }

    /// Flushes every [`LAST_USED_FLUSH`] for as long as the process runs.
    pub(crate) fn spawn_flusher(&self, db: Database) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(LAST_USED_FLUSH);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = this.flush(&db).await {
                    tracing::warn!(error = %e, "could not record when credentials were last used");
                }
            }
        });
    }
}

/// `UPDATE {table} SET last_used_at = …` for many rows at once; a later use is never replaced
/// by an earlier one (instances flush in any order).
async fn write_last_used(
    db: &Database,
    table: &str,
    uses: &HashMap<Uuid, DateTime<Utc>>,
) -> Result<()> {
    let uses: Vec<(&Uuid, &DateTime<Utc>)> = uses.iter().collect();
    for chunk in uses.chunks(LAST_USED_PER_STATEMENT) {
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 2);
        let (at, ids) = super::case_by_id(&mut values, chunk.iter().map(|(id, at)| (**id, **at)));
        let sql = format!(
            "UPDATE {table} SET last_used_at = {at} \
             WHERE id IN ({ids}) AND (last_used_at IS NULL OR last_used_at < {at})"
        );
        db.writer()
            .execute_raw(Statement::from_sql_and_values(db.backend(), sql, values))
            .await?;
    }
    Ok(())
}

impl Core {
    /// The caller's live sessions, the most recent login first.
    pub async fn list_sessions(&self, caller: &AuthContext) -> Result<Vec<SessionInfo>> {
        let rows = session::Entity::find()
            .filter(session::Column::UserId.eq(caller.user.id))
            .filter(session::Column::RevokedAt.is_null())
            .filter(session::Column::ExpiresAt.gt(Utc::now()))
            .order_by_desc(session::Column::CreatedAt)
            .order_by_desc(session::Column::Id)
            .all(self.db.reader())
            .await?;
        Ok(rows
            .into_iter()
            .map(|s| SessionInfo {
                current: s.id == caller.session_id,
                last_used_at: self
                    .last_used
                    .pending_session(s.id)
                    .map_or(s.last_used_at, |at| at.max(s.last_used_at)),
                id: s.id,
                created_at: s.created_at,
                expires_at: s.expires_at,
                ip: s.ip,
                user_agent: s.user_agent,
            })
            .collect())
    }

    /// Ends one of the caller's sessions (the current one too, as a logout would): its tokens
    /// are refused on every instance from the next request (the invalidation bus). 404 for a
    /// session that is not the caller's or has already ended.
    pub async fn end_session(
        &self,
        caller: &AuthContext,
        id: Uuid,
        meta: &RequestMeta,
    ) -> Result<()> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let live = session::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .filter(|s| {
                s.user_id == caller.user.id && s.revoked_at.is_none() && s.expires_at > now
            });
        if live.is_none() {
            return Err(Error::NotFound("session"));
        }
        revoke_session(&txn, id, now, "ended by its user").await?;
        self.append(
            &txn,
            AuditRecord::new("auth.session_end", Outcome::Success, meta)
                .actor(&caller.user)
                .resource("session", id),
        )
        .await?;
        txn.commit().await?;
        self.caches.invalidate(Invalidation::Session(id)).await;
        Ok(())
    }
}
