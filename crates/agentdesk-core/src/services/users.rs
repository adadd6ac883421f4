//! Users: create, list, read, change, deactivate; the first admin at start. Every change is
//! audited in its own transaction; only admins may create admins or change an admin.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
    sea_query::{Expr, ExprTrait, Func, LikeExpr},
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{AuditRecord, Outcome, diff};
use super::auth::revoke_user_sessions;
use super::permissions::Permit;
use super::{Core, RequestMeta};
use crate::cache::Invalidation;
use crate::error::{Error, Result, map_unique};
use crate::models::user::{self, ROLE_ADMIN, ROLE_MEMBER, User};
use crate::pagination::{Page, PageRequest};
use crate::validators::{Email, FieldErrors, NewPassword, RoleName, parse_full_name};

/// Filters of the user list.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Matches email or full name, case-insensitively.
    pub q: Option<String>,
    /// Only this role.
    pub role: Option<String>,
    /// Only active (or only inactive) users.
    pub is_active: Option<bool>,
}

/// A new user, as submitted.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Email address, unique case-insensitively.
    pub email: String,
    /// Password, checked against the policy.
    pub password: String,
    /// Display name.
    pub full_name: String,
    /// Role; `member` when absent.
    pub role: Option<String>,
}

/// A change to a user; absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New display name.
    pub full_name: Option<String>,
    /// New role.
    pub role: Option<String>,
    /// Activate or deactivate.
    pub is_active: Option<bool>,
    /// New password (revokes every session of the user).
    pub password: Option<String>,
}

const EMAIL_TAKEN: &str = "a user with this email already exists";
const EMAIL_UNIQUE: [&str; 2] = ["ux_users_email_key", "users.email_key"];

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern, lowercased, wrapped in `%`.
pub fn like_pattern(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 2);
    out.push('%');
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// A case-insensitive substring match on a column.
pub fn contains_ci(
    column: impl sea_orm::sea_query::IntoColumnRef,
    q: &str,
) -> sea_orm::sea_query::SimpleExpr {
    Expr::expr(Func::lower(Expr::col(column))).like(LikeExpr::new(like_pattern(q)).escape('\\'))
}

fn public(user: &User) -> serde_json::Value {
    serde_json::to_value(user).unwrap_or_default()
}

impl Core {
    /// Creates a user (`users:write`). 409 when the email exists (case-insensitively); 422 for
    /// bad fields; only an admin may create an admin.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn create_user(&self, permit: &Permit, new: NewUser) -> Result<User> {
        permit.require("users", "write")?;
        if new.role.as_deref() == Some(ROLE_ADMIN) && !permit.user().is_admin() {
            let reason = "only an admin may create an admin".to_owned();
            return Err(self
                .deny(permit.actor(), "users", "write", None, reason)
                .await);
        }
        self.insert_user(new, permit.audit("user.create", Outcome::Success))
            .await
    }

    async fn insert_user(&self, new: NewUser, audit: AuditRecord) -> Result<User> {
        let mut errors = FieldErrors::new();
        let email = errors.check("email", Email::parse(&new.email));
        let password = errors.check("password", NewPassword::parse(&new.password));
        let full_name = errors.check("full_name", parse_full_name(&new.full_name));
        let role = errors.check(
            "role",
            RoleName::parse(new.role.as_deref().unwrap_or(ROLE_MEMBER)),
        );
        errors.finish()?;
        let (Some(email), Some(password), Some(full_name), Some(role)) =
            (email, password, full_name, role)
        else {
            return Err(Error::internal("field errors were not recorded"));
        };
        let hash = self.hasher.hash(password.expose()).await?;
        let now = Utc::now();
        let model = user::ActiveModel {
            id: Set(Uuid::now_v7()),
            email_key: Set(email.key()),
            email: Set(email.as_str().to_owned()),
            full_name: Set(full_name),
            role: Set(role.as_str().to_owned()),
            password_hash: Set(hash),
            is_active: Set(true),
            created_at: Set(now),
            updated_at: Set(now),
            last_login_at: Set(None),
        };
        let txn = self.db.begin().await?;
        let created = User::from(
            model
                .insert(&txn)
                .await
                .map_err(|e| map_unique(e, &EMAIL_UNIQUE, EMAIL_TAKEN))?,
        );
        let record = audit
            .resource("user", created.id)
            .changes(json!({"before": null, "after": public(&created)}));
        self.append(&txn, record).await?;
        txn.commit().await?;
        Ok(created)
    }

    /// One user by id (`users:read`).
    pub async fn get_user(&self, permit: &Permit, id: Uuid) -> Result<User> {
        permit.require("users", "read")?;
        self.find_user(id).await
    }

    /// One user by id, for the core's own use and the agents' job contexts.
    pub async fn user_by_id(&self, id: Uuid) -> Result<User> {
        self.find_user(id).await
    }

    /// One user by id, for the core's own use.
    pub(crate) async fn find_user(&self, id: Uuid) -> Result<User> {
        user::Entity::find_by_id(id)
            .one(self.db.reader())
            .await?
            .map(User::from)
            .ok_or(Error::NotFound("user"))
    }

    /// A user's effective grants (`users:read`).
    pub async fn user_grants(
        &self,
        permit: &Permit,
        id: Uuid,
    ) -> Result<Vec<crate::models::grant::Grant>> {
        permit.require("users", "read")?;
        let user = self.find_user(id).await?;
        self.effective_grants(&user).await
    }

    /// A page of users, newest first (`users:read`).
    pub async fn list_users(
        &self,
        permit: &Permit,
        filter: &UserFilter,
        page: PageRequest,
    ) -> Result<Page<User>> {
        permit.require("users", "read")?;
        let mut condition = Condition::all();
        if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            condition = condition.add(
                Condition::any()
                    .add(contains_ci(user::Column::EmailKey, q))
                    .add(contains_ci(user::Column::FullName, q)),
            );
        }
        if let Some(role) = &filter.role {
            condition = condition.add(user::Column::Role.eq(role.clone()));
        }
        if let Some(active) = filter.is_active {
            condition = condition.add(user::Column::IsActive.eq(active));
        }
        if let Some(after) = page.after {
            condition = condition.add(user::Column::Id.lt(after));
        }
        let rows = user::Entity::find()
            .filter(condition)
            .order_by_desc(user::Column::Id)
            .limit(page.limit + 1)
            .all(self.db.reader())
            .await?;
        Ok(Page::from_rows(rows, page, |u| u.id).map(User::from))
    }

    /// Changes a user (`users:write`). A role change, deactivation or new password takes effect
    /// on the user's next request on every instance; deactivation and a new password revoke
    /// their sessions. The last active admin cannot be demoted or deactivated (409); only an
    /// admin may change an admin or make someone one.
    #[tracing::instrument(skip_all, fields(user.id = %id), err(level = "info"))]
    pub async fn update_user(&self, permit: &Permit, id: Uuid, patch: UserPatch) -> Result<User> {
        permit.require("users", "write")?;
        if !permit.user().is_admin() {
            let target = self.find_user(id).await?;
            if target.is_admin() || patch.role.as_deref() == Some(ROLE_ADMIN) {
                let reason = "only an admin may change an admin or grant the admin role".to_owned();
                return Err(self
                    .deny(
                        permit.actor(),
                        "users",
                        "write",
                        Some(id.to_string()),
                        reason,
                    )
                    .await);
            }
        }
        let action = if patch.is_active == Some(false)
            && patch.full_name.is_none()
            && patch.role.is_none()
            && patch.password.is_none()
        {
            "user.deactivate"
        } else {
            "user.update"
        };
        self.change_user(id, patch, permit.audit(action, Outcome::Success))
            .await
    }

    async fn change_user(&self, id: Uuid, patch: UserPatch, audit: AuditRecord) -> Result<User> {
        let mut errors = FieldErrors::new();
        let full_name = patch
            .full_name
            .as_deref()
            .map(|n| errors.check("full_name", parse_full_name(n)));
        let role = patch
            .role
            .as_deref()
            .map(|r| errors.check("role", RoleName::parse(r)));
        let password = patch
            .password
            .as_deref()
            .map(|p| errors.check("password", NewPassword::parse(p)));
        errors.finish()?;
        let hash = match password.flatten() {
            Some(p) => Some(self.hasher.hash(p.expose()).await?),
            None => None,
        };
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let current = user::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or(Error::NotFound("user"))?;
        let new_role = role.flatten().map(|r| r.as_str().to_owned());
        let loses_admin = current.role == ROLE_ADMIN
            && current.is_active
            && (new_role.as_deref().is_some_and(|r| r != ROLE_ADMIN)
                || patch.is_active == Some(false));
        if loses_admin {
            let admins = user::Entity::find()
                .filter(user::Column::Role.eq(ROLE_ADMIN))
                .filter(user::Column::IsActive.eq(true))
                .count(&txn)
                .await?;
            if admins <= 1 {
                return Err(Error::Conflict(
                    "the last active admin cannot be demoted or deactivated".into(),
                ));
            }
        }
        let deactivated = current.is_active && patch.is_active == Some(false);
        let before = User::from(current.clone());
        let mut active: user::ActiveModel = current.into();
        if let Some(name) = full_name.flatten() {
            active.full_name = Set(name);
        }
        if let Some(role) = &new_role {
            active.role = Set(role.clone());
        }
        if let Some(is_active) = patch.is_active {
            active.is_active = Set(is_active);
        }
        if let Some(hash) = &hash {
            active.password_hash = Set(hash.clone());
        }
        active.updated_at = Set(now);
        let updated = User::from(active.update(&txn).await?);
        if deactivated || hash.is_some() {
            let reason = if deactivated {
                "user deactivated"
            } else {
                "password reset"
            };
            revoke_user_sessions(&txn, id, None, now, reason).await?;
        }
        let mut changes = diff(&public(&before), &public(&updated), &[]);
        if hash.is_some() {
            changes["after"]["password"] = json!("[changed]");
        }
        self.append(&txn, audit.resource("user", id).changes(changes))
            .await?;
        txn.commit().await?;
        self.caches.invalidate(Invalidation::User(id)).await;
        Ok(updated)
    }

    /// Deactivates a user (`users:write`); their history stays.
    pub async fn deactivate_user(&self, permit: &Permit, id: Uuid) -> Result<()> {
        self.update_user(
            permit,
            id,
            UserPatch {
                is_active: Some(false),
                ..Default::default()
            },
        )
        .await
        .map(|_| ())
    }

    /// Creates the user, or resets their password, role and activity (`agentdesk admin create`).
    pub async fn upsert_user(
        &self,
        email: &str,
        password: &str,
        full_name: &str,
        role: &str,
    ) -> Result<User> {
        let parsed = Email::parse(email).map_err(|m| Error::invalid("email", m))?;
        let existing = user::Entity::find()
            .filter(user::Column::EmailKey.eq(parsed.key()))
            .one(self.db.reader())
            .await?;
        let meta = RequestMeta::system("cli");
        match existing {
            None => {
                let new = NewUser {
                    email: email.into(),
                    password: password.into(),
                    full_name: full_name.into(),
                    role: Some(role.into()),
                };
                self.insert_user(
                    new,
                    AuditRecord::new("user.create", Outcome::Success, &meta),
                )
                .await
            }
            Some(user) => {
                let patch = UserPatch {
                    role: Some(role.into()),
                    is_active: Some(true),
                    password: Some(password.into()),
                    full_name: None,
                };
                self.change_user(
                    user.id,
                    patch,
                    AuditRecord::new("user.update", Outcome::Success, &meta),
                )
                .await
            }
        }
    }

    /// At start: creates the configured admin if no user has that email; with none configured
    /// and no user at all, creates `admin@localhost` with a random password and returns it so
    /// that it can be printed once.
    pub async fn bootstrap_admin(&self) -> Result<Option<(String, String)>> {
        let audit = AuditRecord::new(
            "user.create",
            Outcome::Success,
            &RequestMeta::system("bootstrap"),
        );
        if let (Some(email), Some(password)) =
            (&self.settings.admin_email, &self.settings.admin_password)
        {
            let parsed = Email::parse(email).map_err(|m| Error::Config {
                key: "admin_email".into(),
                message: m,
            })?;
            let exists = user::Entity::find()
                .filter(user::Column::EmailKey.eq(parsed.key()))
                .count(self.db.reader())
                .await?
                > 0;
            if !exists {
                let new = NewUser {
                    email: email.clone(),
                    password: password.expose().to_owned(),
                    full_name: "Administrator".into(),
                    role: Some(ROLE_ADMIN.into()),
                };
                match self.insert_user(new, audit).await {
                    Ok(_) | Err(Error::Conflict(_)) => {}
                    Err(Error::Validation(errors)) => {
                        let message = errors
                            .iter()
                            .map(|e| format!("{} {}", e.field, e.message))
                            .collect::<Vec<_>>()
                            .join("; ");
                        return Err(Error::Config {
                            key: "admin_password".into(),
                            message,
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(None);
        }
        if user::Entity::find().count(self.db.reader()).await? > 0 {
            return Ok(None);
        }
        let password = crate::security::random_hex(12);
        let new = NewUser {
            email: "admin@localhost".into(),
            password: password.clone(),
            full_name: "Administrator".into(),
            role: Some(ROLE_ADMIN.into()),
        };
        match self.insert_user(new, audit).await {
            Ok(user) => Ok(Some((user.email, password))),
            // Another instance created it first.
            Err(Error::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
