//! Login, token refresh with rotation and theft detection, logout, password change, and the
//! per-request authentication of access tokens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set, sea_query::Expr,
};
use serde::Serialize;
use uuid::Uuid;

use super::audit::{AuditRecord, Outcome};
use super::{Core, RequestMeta};
use crate::cache::{AuthContext, Invalidation};
use crate::error::{Error, Result};
use crate::models::session::{self, refresh_token};
use crate::models::user::{self, User};
use crate::security::{hash_token, new_refresh_token};
use crate::validators::{Email, NewPassword};

/// An access token and a refresh token, as login and refresh return them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    /// A short-lived JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// A long-lived, single-use token for `/auth/refresh`.
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The logged-in user.
    pub user: User,
}

fn limiter_keys(email: &str, ip: Option<&str>) -> (String, Option<String>) {
    (
        format!("login:email:{}", email.trim().to_lowercase()),
        ip.map(|ip| format!("login:ip:{ip}")),
    )
}

impl Core {
    fn login_window(&self) -> Duration {
        Duration::from_secs(self.settings.login_window_secs)
    }

    /// Logs in with email and password, and `code` (a TOTP or recovery code) when the account
    /// has a second factor. Wrong password and unknown email are the same error and cost the
    /// same time; a disabled account and a missing code are revealed only after a correct
    /// password. Wrong codes count toward the same rate limit as wrong passwords.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        code: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<TokenPair> {
        let window = self.login_window();
        let failed = |reason: &str, user: Option<&user::Model>| {
            let mut record = AuditRecord::new("auth.login_failed", Outcome::Denied, meta)
                .actor_email(email.trim())
                .changes(serde_json::json!({"reason": reason}));
            if let Some(user) = user {
                record = record.actor(&User::from(user.clone()));
            }
            record
        };
        let (email_key, ip_key) = limiter_keys(email, meta.ip.as_deref());
        let (email_count, email_left) = self.limiter.current(&email_key, window).await?;
        let mut limited =
            (email_count >= self.settings.login_max_failures_per_email).then_some(email_left);
        if let (None, Some(ip_key)) = (limited, &ip_key) {
            let (ip_count, ip_left) = self.limiter.current(ip_key, window).await?;
            limited = (ip_count >= self.settings.login_max_failures_per_ip).then_some(ip_left);
        }
        if let Some(retry_after_secs) = limited {
            self.audit_alone(failed("rate_limited", None)).await?;
            return Err(Error::RateLimited { retry_after_secs });
        }

        let found = match Email::parse(email) {
            Ok(email) => {
                user::Entity::find()
                    .filter(user::Column::EmailKey.eq(email.key()))
                    .one(self.db.reader())
                    .await?
            }
            Err(_) => None,
        };
        let verified = match &found {
            Some(u) => self.hasher.verify(password, &u.password_hash).await?,
            None => {
                self.hasher.verify_dummy(password).await?;
                false
            }
        };
        let user = match (found, verified) {
            (Some(user), true) => user,
            (found, _) => {
                self.limiter.hit(&email_key, window).await?;
                if let Some(ip_key) = &ip_key {
                    self.limiter.hit(ip_key, window).await?;
                }
                self.audit_alone(failed("invalid_credentials", found.as_ref()))
                    .await?;
                return Err(Error::InvalidCredentials);
            }
        };
        if !user.is_active {
            self.audit_alone(failed("account_disabled", Some(&user)))
                .await?;
            return Err(Error::AccountDisabled);
        }
        let factor = match self.check_second_factor(&user, code).await {
            Ok(factor) => factor,
            Err(Error::MfaRequired) => {
                // The password was right: not a failure to count, but no tokens either.
                self.audit_alone(failed("mfa_required", Some(&user)))
                    .await?;
                return Err(Error::MfaRequired);
            }
            Err(Error::InvalidMfaCode) => {
                self.limiter.hit(&email_key, window).await?;
                if let Some(ip_key) = &ip_key {
                    self.limiter.hit(ip_key, window).await?;
                }
                self.audit_alone(failed("invalid_mfa_code", Some(&user)))
                    .await?;
                return Err(Error::InvalidMfaCode);
            }
            Err(e) => return Err(e),
        };
        self.limiter.reset(&email_key).await?;

        let now = Utc::now();
        let txn = self.db.begin().await?;
        let (session_id, refresh) = self.create_session(&txn, user.id, now, meta).await?;
        user::Entity::update_many()
            .col_expr(user::Column::LastLoginAt, Expr::value(now))
            .filter(user::Column::Id.eq(user.id))
            .exec(&txn)
            .await?;
        let mut user = User::from(user);
        user.last_login_at = Some(now);
        let mut record = AuditRecord::new("auth.login", Outcome::Success, meta)
            .actor(&user)
            .resource("session", session_id);
        if let Some(factor) = factor.as_audit() {
            record = record.changes(serde_json::json!({"second_factor": factor}));
        }
        self.append(&txn, record).await?;
        txn.commit().await?;
        self.token_pair(user, session_id, refresh, now)
    }

    async fn create_session(
        &self,
        conn: &impl ConnectionTrait,
        user_id: Uuid,
        now: DateTime<Utc>,
        meta: &RequestMeta,
    ) -> Result<(Uuid, String)> {
        let session_id = Uuid::now_v7();
        session::ActiveModel {
            id: Set(session_id),
            user_id: Set(user_id),
            created_at: Set(now),
            last_used_at: Set(now),
            expires_at: Set(now + self.refresh_ttl()),
            revoked_at: Set(None),
            revoked_reason: Set(None),
            ip: Set(meta.ip.clone()),
            user_agent: Set(meta
                .user_agent
                .as_ref()
                .map(|ua| ua.chars().take(512).collect())),
        }
        .insert(conn)
        .await?;
        let refresh = self.add_refresh_token(conn, session_id, now).await?;
        Ok((session_id, refresh))
    }

    async fn add_refresh_token(
        &self,
        conn: &impl ConnectionTrait,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<String> {
        let (token, hash) = new_refresh_token();
        refresh_token::ActiveModel {
            token_hash: Set(hash),
            session_id: Set(session_id),
            created_at: Set(now),
            used_at: Set(None),
        }
        .insert(conn)
        .await?;
        Ok(token)
    }

    fn refresh_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.settings.refresh_token_ttl_secs as i64)
    }

    fn token_pair(
        &self,
        user: User,
        session_id: Uuid,
        refresh_token: String,
        now: DateTime<Utc>,
    ) -> Result<TokenPair> {
        Ok(TokenPair {
            access_token: self.signer.issue(user.id, session_id, now)?,
            refresh_token,
            token_type: "bearer",
            expires_in: self.signer.ttl_secs(),
            user,
        })
    }

    /// Exchanges a refresh token for a new pair. The old token stops working; presenting it
    /// again is taken as theft and revokes the whole session.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn refresh(&self, token: &str, meta: &RequestMeta) -> Result<TokenPair> {
        const INVALID: Error = Error::InvalidToken("the refresh token is invalid or expired");
        let now = Utc::now();
        let hash = hash_token(token);
        let txn = self.db.begin().await?;
        let Some(stored) = refresh_token::Entity::find_by_id(hash.clone())
            .one(&txn)
            .await?
        else {
            return Err(INVALID);
        };
        // Mark used only if still unused, so two concurrent refreshes cannot both succeed.
        let marked = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
            .filter(refresh_token::Column::TokenHash.eq(hash))
            .filter(refresh_token::Column::UsedAt.is_null())
            .exec(&txn)
            .await?;
        if marked.rows_affected == 0 {
            revoke_session(&txn, stored.session_id, now, "refresh token reuse").await?;
            let mut record = AuditRecord::new("auth.refresh_reuse", Outcome::Denied, meta)
                .resource("session", stored.session_id)
                .changes(serde_json::json!({"reason": "a used refresh token was presented again; session revoked"}));
            if let Some(owner) = session::Entity::find_by_id(stored.session_id)
                .one(&txn)
                .await?
                && let Some(user) = user::Entity::find_by_id(owner.user_id).one(&txn).await?
            {
                record = record.actor(&User::from(user));
            }
            self.append(&txn, record).await?;
            txn.commit().await?;
            self.caches
                .invalidate(Invalidation::Session(stored.session_id))
                .await;
            tracing::warn!(session_id = %stored.session_id, "refresh token reused: session revoked");
            return Err(INVALID);
        }
        let Some(session) = session::Entity::find_by_id(stored.session_id)
            .one(&txn)
            .await?
        else {
            return Err(INVALID);
        };
        if session.revoked_at.is_some() || session.expires_at <= now {
            return Err(INVALID);
        }
        let Some(user) = user::Entity::find_by_id(session.user_id).one(&txn).await? else {
            return Err(INVALID);
        };
        if !user.is_active {
            return Err(Error::AccountDisabled);
        }
        let mut active: session::ActiveModel = session.into();
        active.last_used_at = Set(now);
        active.expires_at = Set(now + self.refresh_ttl());
        let session = active.update(&txn).await?;
        let refresh = self.add_refresh_token(&txn, session.id, now).await?;
        let user = User::from(user);
        self.append(
            &txn,
            AuditRecord::new("auth.refresh", Outcome::Success, meta)
                .actor(&user)
                .resource("session", session.id),
        )
        .await?;
        txn.commit().await?;
        self.token_pair(user, session.id, refresh, now)
    }

    /// Revokes the session that `refresh_token` belongs to, when it is the caller's; otherwise
    /// the caller's current session. Either way the caller's tokens stop working.
    #[tracing::instrument(skip_all, fields(user.id = %caller.user.id))]
    pub async fn logout(
        &self,
        caller: &AuthContext,
        refresh_token: &str,
        meta: &RequestMeta,
    ) -> Result<()> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let owned = match refresh_token::Entity::find_by_id(hash_token(refresh_token))
            .one(&txn)
            .await?
        {
            Some(stored) => session::Entity::find_by_id(stored.session_id)
                .one(&txn)
                .await?
                .filter(|s| s.user_id == caller.user.id)
                .map(|s| s.id),
            None => None,
        };
        let session_id = owned.unwrap_or(caller.session_id);
        revoke_session(&txn, session_id, now, "logout").await?;
        self.append(
            &txn,
            AuditRecord::new("auth.logout", Outcome::Success, meta)
                .actor(&caller.user)
                .resource("session", session_id),
        )
        .await?;
        txn.commit().await?;
        self.caches
            .invalidate(Invalidation::Session(session_id))
            .await;
        Ok(())
    }

    /// Changes the caller's password and revokes every other session of theirs.
    #[tracing::instrument(skip_all, fields(user.id = %caller.user.id), err(level = "info"))]
    pub async fn change_password(
        &self,
        caller: &AuthContext,
        current: &str,
        new: &str,
        meta: &RequestMeta,
    ) -> Result<()> {
        let user = user::Entity::find_by_id(caller.user.id)
            .one(self.db.reader())
            .await?
            .ok_or(Error::NotFound("user"))?;
        if !self.hasher.verify(current, &user.password_hash).await? {
            let record = AuditRecord::new("auth.password_change", Outcome::Denied, meta)
                .actor(&caller.user)
                .resource("user", user.id)
                .changes(serde_json::json!({"reason": "wrong current password"}));
            self.audit_alone(record).await?;
            return Err(Error::invalid("current_password", "is not correct"));
        }
        let new = NewPassword::parse(new).map_err(|m| Error::invalid("new_password", m))?;
        if new.expose() == current {
            return Err(Error::invalid(
                "new_password",
                "must differ from the current password",
            ));
        }
        let hash = self.hasher.hash(new.expose()).await?;
        let now = Utc::now();
        let txn = self.db.begin().await?;
        user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, Expr::value(hash))
            .col_expr(user::Column::UpdatedAt, Expr::value(now))
            .filter(user::Column::Id.eq(user.id))
            .exec(&txn)
            .await?;
        revoke_user_sessions(
            &txn,
            user.id,
            Some(caller.session_id),
            now,
            "password changed",
        )
        .await?;
        let record = AuditRecord::new("auth.password_change", Outcome::Success, meta)
            .actor(&caller.user)
            .resource("user", user.id)
            .changes(serde_json::json!({"before": {}, "after": {"password": "[changed]"}}));
        self.append(&txn, record).await?;
        txn.commit().await?;
        self.caches.invalidate(Invalidation::User(user.id)).await;
        Ok(())
    }

    /// Verifies an access token and its session: the session must be live and the user active.
    /// Cached per instance for a few seconds; revocations evict the cache on every instance.
    /// An API key (`adk_...`) is checked as such.
    pub async fn authenticate(&self, access_token: &str) -> Result<AuthContext> {
        if super::api_keys::is_api_key(access_token) {
            return self.authenticate_api_key(access_token).await;
        }
        let claims = self.signer.verify(access_token)?;
        if let Some(ctx) = self.caches.session(claims.sid).await {
            return if ctx.user.id == claims.sub {
                self.last_used.session(ctx.session_id, Utc::now());
                Ok(ctx)
            } else {
                Err(Error::InvalidToken("the access token is invalid"))
            };
        }
        let conn = self.db.reader();
        let session = session::Entity::find_by_id(claims.sid).one(conn).await?;
        let session = match session {
            Some(s)
                if s.user_id == claims.sub
                    && s.revoked_at.is_none()
                    && s.expires_at > Utc::now() =>
            {
                s
            }
            _ => return Err(Error::InvalidToken("the session has ended")),
        };
        let user = user::Entity::find_by_id(session.user_id).one(conn).await?;
        let user = match user {
            Some(u) if u.is_active => User::from(u),
            _ => return Err(Error::InvalidToken("the account is disabled")),
        };
        let ctx = AuthContext {
            user,
            session_id: session.id,
            api_key: None,
        };
        self.caches.put_session(ctx.clone()).await;
        self.last_used.session(ctx.session_id, Utc::now());
        Ok(ctx)
    }
}

/// Marks one session revoked (idempotent).
pub(crate) async fn revoke_session(
    conn: &impl ConnectionTrait,
    session_id: Uuid,
    now: DateTime<Utc>,
    reason: &str,
) -> Result<()> {
    session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(session::Column::RevokedReason, Expr::value(reason))
        .filter(session::Column::Id.eq(session_id))
        .filter(session::Column::RevokedAt.is_null())
        .exec(conn)
        .await?;
    Ok(())
}

/// Revokes every live session of a user, except `keep`.
pub(crate) async fn revoke_user_sessions(
    conn: &impl ConnectionTrait,
    user_id: Uuid,
    keep: Option<Uuid>,
    now: DateTime<Utc>,
    reason: &str,
) -> Result<()> {
    let mut update = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(session::Column::RevokedReason, Expr::value(reason))
        .filter(session::Column::UserId.eq(user_id))
        .filter(session::Column::RevokedAt.is_null());
    if let Some(keep) = keep {
        update = update.filter(session::Column::Id.ne(keep));
    }
    update.exec(conn).await?;
    Ok(())
}
