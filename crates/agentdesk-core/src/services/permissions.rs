//! Agent-based permissions. A grant gives a user (or a role) some actions on one resource,
//! optionally for some clients only and until a date. Admins may do everything; anyone else
//! only what a live grant allows. A user's effective grants (direct and through their role) are
//! cached per instance and evicted through the invalidation bus on any change, so a check is a
//! lookup in memory; expiry needs no job, because an expired grant simply stops matching.
//!
//! [`Core::authorize`] is the one gate: it returns a [`Permit`], the proof value that services
//! take, and records a `denied` audit event when it refuses.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, IntoColumnRef, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Set,
};
use serde::Serialize;
use uuid::Uuid;

use super::audit::{AuditRecord, Outcome};
use super::{Core, RequestMeta};
use crate::cache::{ApiKeyScope, AuthContext, Invalidation};
use crate::error::{Error, FieldError, Result};
use crate::models::grant::{self, Grant};
use crate::models::user::{self, User};
use crate::pagination::{Page, PageRequest};
use crate::validators::RoleName;

/// One action of a resource, for the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActionInfo {
    /// The action's name.
    pub name: String,
    /// What it allows.
    pub description: String,
}

/// A resource of the permission catalog and its actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ResourceInfo {
    /// `users`, `clients`, `permissions`, `audit` or `agent:<name>`.
    pub resource: String,
    /// What it is.
    pub description: String,
    /// Its actions.
    pub actions: Vec<ActionInfo>,
}

impl ResourceInfo {
    /// A resource from names and descriptions.
    pub fn new(resource: &str, description: &str, actions: &[(&str, &str)]) -> Self {
        Self {
            resource: resource.to_owned(),
            description: description.to_owned(),
            actions: actions
                .iter()
                .map(|(n, d)| ActionInfo {
                    name: (*n).to_owned(),
                    description: (*d).to_owned(),
                })
                .collect(),
        }
    }

    /// Whether records of this resource belong to clients, so that grants may be limited to some.
    pub fn is_client_scoped(&self) -> bool {
        self.resource == "clients"
            || self.resource == "audit"
            || self.resource.starts_with("agent:")
    }
}

/// The permission catalog: the core's resources plus one per agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog(Vec<ResourceInfo>);

impl Catalog {
    /// The core's resources plus `extra` (the agents').
    pub fn new(extra: Vec<ResourceInfo>) -> Self {
        let mut resources = vec![
            ResourceInfo::new(
                "users",
                "user accounts",
                &[
                    ("read", "list and read users"),
                    ("write", "create, change and deactivate users"),
                ],
            ),
            ResourceInfo::new(
                "clients",
                "client records",
                &[
                    ("read", "list and read clients"),
                    ("write", "create and change clients"),
                    ("delete", "delete clients"),
                ],
            ),
            ResourceInfo::new(
                "permissions",
                "grants",
                &[
                    ("read", "list grants and check permissions"),
                    ("write", "create and delete grants"),
                ],
            ),
            ResourceInfo::new(
                "audit",
                "the audit log",
                &[
                    ("read", "list, read and verify audit events"),
                    ("export", "export audit events"),
                ],
            ),
        ];
        resources.extend(extra);
        Self(resources)
    }

    /// Every resource.
    pub fn resources(&self) -> &[ResourceInfo] {
        &self.0
    }

    /// One resource by name.
    pub fn get(&self, resource: &str) -> Option<&ResourceInfo> {
        self.0.iter().find(|r| r.resource == resource)
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

/// Which clients a permit covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientScope {
    /// Every client.
    All,
    /// Only the clients of these grants.
    Only(Arc<ScopedClients>),
}

/// The clients of a scoped permit: the grants that give them (for SQL, which joins their rows
/// in `grant_clients`) and the ids themselves, sorted (for checks in memory).
#[derive(Debug, PartialEq, Eq, Default)]
pub struct ScopedClients {
    grants: Vec<Uuid>,
    clients: Vec<Uuid>,
}

impl ScopedClients {
    /// The clients of `grants` (each a grant's id and its client ids).
    pub fn new<'a>(grants: impl IntoIterator<Item = (Uuid, &'a [Uuid])>) -> Self {
        let mut scope = Self::default();
        for (grant, clients) in grants {
            scope.grants.push(grant);
            scope.clients.extend_from_slice(clients);
        }
        scope.grants.sort_unstable();
        scope.grants.dedup();
        scope.clients.sort_unstable();
        scope.clients.dedup();
        scope
    }

    /// The grants whose clients these are.
    pub fn grants(&self) -> &[Uuid] {
        &self.grants
    }

    /// The client ids, sorted.
    pub fn clients(&self) -> &[Uuid] {
        &self.clients
    }

    /// Whether `client` is one of them.
    pub fn contains(&self, client: Uuid) -> bool {
        self.clients.binary_search(&client).is_ok()
    }
}

impl ClientScope {
    /// Whether `client` is covered.
    pub fn covers(&self, client: Uuid) -> bool {
        match self {
            ClientScope::All => true,
            ClientScope::Only(scoped) => scoped.contains(client),
        }
    }

    /// The list for a SQL `IN`, or `None` for all clients.
    pub fn as_filter(&self) -> Option<Vec<Uuid>> {
        match self {
            ClientScope::All => None,
            ClientScope::Only(scoped) => Some(scoped.clients.clone()),
        }
    }

    /// The SQL condition that `column` (a client id) is covered: nothing for all clients, else
    /// membership in the grants' rows of `grant_clients`, which the planner reaches through its
    /// primary key, however many clients the grants name.
    pub fn condition(&self, column: impl IntoColumnRef) -> Condition {
        match self {
            ClientScope::All => Condition::all(),
            ClientScope::Only(scoped) => {
                let grant_id = Expr::col(Alias::new("grant_id"));
                let of_grants = match scoped.grants.as_slice() {
                    [one] => grant_id.eq(*one),
                    many => grant_id.is_in(many.iter().copied()),
                };
                let clients = Query::select()
                    .column(Alias::new("client_id"))
                    .from(Alias::new("grant_clients"))
                    .and_where(of_grants)
                    .to_owned();
                Condition::all().add(Expr::col(column).in_subquery(clients))
            }
        }
    }
}

/// A user's grants as cached (direct and through their role, expired ones included), with the
/// client scopes computed from them, so that a request with a 500-client grant does not collect
/// and sort those ids again. The memo goes when the grants do (any change invalidates them).
#[derive(Debug, Default)]
pub struct UserGrants {
    grants: Vec<Grant>,
    scopes: std::sync::Mutex<Vec<MemoScope>>,
}

#[derive(Debug)]
struct MemoScope {
    resource: String,
    action: String,
    scope: Option<ClientScope>,
    /// The earliest expiry among the grants it was computed from: then it is computed again.
    valid_until: Option<DateTime<Utc>>,
}

impl UserGrants {
    /// Wraps a user's grants.
    pub fn new(grants: Vec<Grant>) -> Self {
        Self {
            grants,
            scopes: Default::default(),
        }
    }

    /// The grants.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// The clients for which these grants allow `action` on `resource` at `now`; `None` when
    /// none.
    fn scope(&self, resource: &str, action: &str, now: DateTime<Utc>) -> Option<ClientScope> {
        let memo = |scopes: &Vec<MemoScope>| {
            scopes
                .iter()
                .find(|m| {
                    m.resource == resource
                        && m.action == action
                        && m.valid_until.is_none_or(|until| now < until)
                })
                .map(|m| m.scope.clone())
        };
        if let Ok(scopes) = self.scopes.lock()
            && let Some(found) = memo(&scopes)
        {
            return found;
        }
        let (scope, valid_until) = scope_of(self.grants.iter(), resource, action, now);
        if let Ok(mut scopes) = self.scopes.lock() {
            scopes.retain(|m| !(m.resource == resource && m.action == action));
            scopes.push(MemoScope {
                resource: resource.to_owned(),
                action: action.to_owned(),
                scope: scope.clone(),
                valid_until,
            });
        }
        scope
    }
}

/// The clients for which `grants` allow `action` on `resource` at `now` (`None` when none),
/// and the earliest expiry among the grants that gave them.
fn scope_of<'a>(
    grants: impl Iterator<Item = &'a Grant>,
    resource: &str,
    action: &str,
    now: DateTime<Utc>,
) -> (Option<ClientScope>, Option<DateTime<Utc>>) {
    let matching: Vec<&Grant> = grants
        .filter(|g| {
            g.is_live(now) && g.resource == resource && g.actions.iter().any(|a| a == action)
        })
        .collect();
    let valid_until = matching.iter().filter_map(|g| g.expires_at).min();
    let scope = if matching.is_empty() {
        None
    } else if matching.iter().any(|g| g.client_ids.is_none()) {
        Some(ClientScope::All)
    } else {
        Some(ClientScope::Only(Arc::new(ScopedClients::new(
            matching
                .iter()
                .map(|g| (g.id, g.client_ids.as_deref().unwrap_or_default())),
        ))))
    };
    (scope, valid_until)
}

/// Who is acting and from where.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The user.
    pub user: User,
    /// Their session, for requests (an API key's id when they used one).
    pub session_id: Option<Uuid>,
    /// The API key of the request, when it used one: it may narrow what the user may do.
    pub api_key: Option<Arc<ApiKeyScope>>,
    /// Request id, IP, user agent.
    pub meta: RequestMeta,
}

impl Actor {
    /// The actor of an authenticated request.
    pub fn from_request(ctx: &AuthContext, meta: RequestMeta) -> Self {
        Self {
            user: ctx.user.clone(),
            session_id: Some(ctx.session_id),
            api_key: ctx.api_key.clone(),
            meta,
        }
    }

    /// The actor of work that no request started (a job, the command line).
    pub fn system(user: User, meta: RequestMeta) -> Self {
        Self {
            user,
            session_id: None,
            api_key: None,
            meta,
        }
    }
}

/// Proof that an actor may perform `action` on `resource`, for the clients in `scope`. Only
/// [`Core::authorize`] makes one, and the services that change or reveal state require one.
#[derive(Debug, Clone)]
pub struct Permit {
    actor: Actor,
    resource: String,
    action: String,
    scope: ClientScope,
}

impl Permit {
    /// Who acts.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The acting user.
    pub fn user(&self) -> &User {
        &self.actor.user
    }

    /// The clients covered.
    pub fn scope(&self) -> &ClientScope {
        &self.scope
    }

    /// An audit record for this actor.
    pub fn audit(&self, action: &str, outcome: Outcome) -> AuditRecord {
        AuditRecord::new(action, outcome, &self.actor.meta)
            .actor(&self.actor.user)
            .api_key(self.actor.api_key.as_ref().map(|k| k.id))
    }

    /// Fails unless this permit is for `resource` and `action` (guards against passing the
    /// wrong permit to a service).
    pub fn require(&self, resource: &str, action: &str) -> Result<()> {
        if self.resource == resource && self.action == action {
            Ok(())
        } else {
            Err(Error::internal(format!(
                "a permit for {}:{} was used for {resource}:{action}",
                self.resource, self.action
            )))
        }
    }
}

/// Whether a permit must cover every client, or may cover some (lists filtered in SQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Actions that are not about a client's records: only a grant for all clients allows them.
    AllClients,
    /// Lists and client records: a grant for some clients allows them within its scope.
    SomeClients,
}

/// The answer of a permission check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Decision {
    /// Whether it is allowed.
    pub allowed: bool,
    /// Why: the deciding grant, or what is missing.
    pub reason: String,
    /// The deciding grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<Uuid>,
}

/// A new grant, as submitted.
#[derive(Debug, Clone, Default)]
pub struct NewGrant {
    /// The user, or
    pub user_id: Option<Uuid>,
    /// the role.
    pub role: Option<String>,
    /// The resource.
    pub resource: String,
    /// Its actions.
    pub actions: Vec<String>,
    /// Only these clients (null: all).
    pub client_ids: Option<Vec<Uuid>>,
    /// Until when.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Filters of the grant list.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    /// Only this user's direct grants.
    pub user_id: Option<Uuid>,
    /// Only this role's grants.
    pub role: Option<String>,
    /// Only this resource.
    pub resource: Option<String>,
}

fn describe(grant: &Grant) -> String {
    match (&grant.user_id, &grant.role) {
        (_, Some(role)) => format!("grant {} (role {role})", grant.id),
        _ => format!("grant {}", grant.id),
    }
}

impl Core {
    /// A user's grants, direct and through their role, expired ones included (the check
    /// compares with the time), from the cache.
    async fn all_grants(&self, user: &User) -> Result<Arc<UserGrants>> {
        if let Some(grants) = self.caches.grants(user.id).await {
            return Ok(grants);
        }
        let rows = grant::Entity::find()
            .filter(
                Condition::any()
                    .add(grant::Column::UserId.eq(user.id))
                    .add(grant::Column::Role.eq(user.role.clone())),
            )
            .order_by_asc(grant::Column::Id)
            .all(self.db.reader())
            .await?;
        let grants = Arc::new(UserGrants::new(rows.into_iter().map(Grant::from).collect()));
        self.caches.put_grants(user.id, grants.clone()).await;
        Ok(grants)
    }

    /// A user's live grants, direct and through their role.
    pub async fn effective_grants(&self, user: &User) -> Result<Vec<Grant>> {
        let now = Utc::now();
        Ok(self
            .all_grants(user)
            .await?
            .grants()
            .iter()
            .filter(|g| g.is_live(now))
            .cloned()
            .collect())
    }

    /// May `user` do `action` on `resource`, for `client` (or, without one, for all clients)?
    pub async fn check(
        &self,
        user: &User,
        resource: &str,
        action: &str,
        client: Option<Uuid>,
    ) -> Result<Decision> {
        let deny = |reason: String| Decision {
            allowed: false,
            reason,
            grant_id: None,
        };
        if !user.is_active {
            return Ok(deny("the user is deactivated".into()));
        }
        if user.is_admin() {
            return Ok(Decision {
                allowed: true,
                reason: "the admin role may do everything".into(),
                grant_id: None,
            });
        }
        let now = Utc::now();
        let grants = self.all_grants(user).await?;
        let matching: Vec<&Grant> = grants
            .grants()
            .iter()
            .filter(|g| g.resource == resource && g.actions.iter().any(|a| a == action))
            .collect();
        let live: Vec<&Grant> = matching
            .iter()
            .copied()
            .filter(|g| g.is_live(now))
            .collect();
        if live.is_empty() {
            return Ok(deny(match matching.first() {
                Some(expired) => format!(
                    "{} gave `{action}` on `{resource}` but expired",
                    describe(expired)
                ),
                None => format!("no grant gives `{action}` on `{resource}`"),
            }));
        }
        let deciding = match client {
            Some(c) => live.iter().find(|g| g.covers_client(c)),
            None => live.iter().find(|g| g.client_ids.is_none()),
        };
        Ok(match (deciding, client) {
            (Some(g), Some(c)) => Decision {
                allowed: true,
                reason: format!(
                    "{} allows `{action}` on `{resource}` for client {c}",
                    describe(g)
                ),
                grant_id: Some(g.id),
            },
            (Some(g), None) => Decision {
                allowed: true,
                reason: format!(
                    "{} allows `{action}` on `{resource}` for all clients",
                    describe(g)
                ),
                grant_id: Some(g.id),
            },
            (None, Some(c)) => deny(format!(
                "grants for `{action}` on `{resource}` do not cover client {c}"
            )),
            (None, None) => deny(format!(
                "grants for `{action}` on `{resource}` are limited to specific clients"
            )),
        })
    }

    /// The clients for which `user` may do `action` on `resource`; `None` when none.
    pub async fn client_scope(
        &self,
        user: &User,
        resource: &str,
        action: &str,
    ) -> Result<Option<ClientScope>> {
        if !user.is_active {
            return Ok(None);
        }
        if user.is_admin() {
            return Ok(Some(ClientScope::All));
        }
        Ok(self
            .all_grants(user)
            .await?
            .scope(resource, action, Utc::now()))
    }

    /// The clients for which `actor` may do `action` on `resource`: the user's scope, or, for
    /// an API key narrowed to some grants, what those of the user's current grants allow (the
    /// admin role's blanket right does not pass through a narrowed key).
    async fn actor_scope(
        &self,
        actor: &Actor,
        resource: &str,
        action: &str,
    ) -> Result<Option<ClientScope>> {
        let Some(only) = actor.api_key.as_ref().and_then(|k| k.grant_ids.as_deref()) else {
            return self.client_scope(&actor.user, resource, action).await;
        };
        if !actor.user.is_active {
            return Ok(None);
        }
        let grants = self.all_grants(&actor.user).await?;
        let listed = grants
            .grants()
            .iter()
            .filter(|g| only.binary_search(&g.id).is_ok());
        Ok(scope_of(listed, resource, action, Utc::now()).0)
    }

    /// The gate in front of every protected route: a permit, or 403 and a `denied` audit event.
    pub async fn authorize(
        &self,
        actor: Actor,
        resource: &str,
        action: &str,
        need: Need,
    ) -> Result<Permit> {
        let scope = self.actor_scope(&actor, resource, action).await?;
        let scope = match (scope, need) {
            (Some(ClientScope::All), _) => ClientScope::All,
            (Some(only @ ClientScope::Only(_)), Need::SomeClients) => only,
            (Some(ClientScope::Only(_)), Need::AllClients) => {
                let reason = format!(
                    "grants for `{action}` on `{resource}` are limited to specific clients"
                );
                return Err(self.deny(&actor, resource, action, None, reason).await);
            }
            (None, _) => {
                let owner = self.check(&actor.user, resource, action, None).await?;
                let reason = if owner.allowed {
                    // The owner may, so the key's narrowing is what refuses.
                    format!("the API key's grants do not give `{action}` on `{resource}`")
                } else {
                    owner.reason
                };
                return Err(self.deny(&actor, resource, action, None, reason).await);
            }
        };
        Ok(Permit {
            actor,
            resource: resource.to_owned(),
            action: action.to_owned(),
            scope,
        })
    }

    /// Records a denied request and returns the 403 to answer with.
    pub(crate) async fn deny(
        &self,
        actor: &Actor,
        resource: &str,
        action: &str,
        resource_id: Option<String>,
        reason: String,
    ) -> Error {
        let mut record = AuditRecord::new(
            &format!("{}.{action}", resource.replace(':', ".")),
            Outcome::Denied,
            &actor.meta,
        )
        .actor(&actor.user)
        .api_key(actor.api_key.as_ref().map(|k| k.id))
        .resource_type(resource)
        .changes(serde_json::json!({"reason": reason}));
        record.resource_id = resource_id;
        if let Err(e) = self.audit_alone(record).await {
            return e;
        }
        Error::Forbidden(format!("not permitted: {reason}"))
    }

    /// For a record outside the permit's client scope: records a denied event and returns the
    /// 404 to answer with (the record's existence is not revealed).
    pub async fn deny_out_of_scope(
        &self,
        permit: &Permit,
        kind: &'static str,
        id: impl ToString,
        client: Option<Uuid>,
    ) -> Error {
        let record = permit
            .audit(
                &format!("{}.{}", permit.resource.replace(':', "."), permit.action),
                Outcome::Denied,
            )
            .resource(kind, id.to_string())
            .client(client)
            .changes(serde_json::json!({"reason": "outside the caller's client scope"}));
        if let Err(e) = self.audit_alone(record).await {
            return e;
        }
        Error::NotFound(kind)
    }

    /// The catalog of resources and actions.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Creates a grant. A non-admin may grant only what they hold themselves.
    pub async fn create_grant(&self, permit: &Permit, new: NewGrant) -> Result<Grant> {
        permit.require("permissions", "write")?;
        let mut errors = Vec::new();
        match (&new.user_id, &new.role) {
            (Some(_), Some(_)) => errors.push(FieldError::new(
                "role",
                "give either user_id or role, not both",
            )),
            (None, None) => errors.push(FieldError::new("user_id", "give either user_id or role")),
            (None, Some(role)) => {
                if let Err(m) = RoleName::parse(role) {
                    errors.push(FieldError::new("role", m));
                }
            }
            (Some(_), None) => {}
        }
        let resource = self.catalog.get(&new.resource).cloned();
        let mut actions: Vec<String> = new.actions.clone();
        actions.sort();
        actions.dedup();
        match &resource {
            None => errors.push(FieldError::new(
                "resource",
                format!(
                    "unknown resource `{}`; see /api/v1/permissions/catalog",
                    new.resource
                ),
            )),
            Some(info) => {
                if actions.is_empty() {
                    errors.push(FieldError::new("actions", "must name at least one action"));
                }
                for a in &actions {
                    if !info.actions.iter().any(|x| &x.name == a) {
                        errors.push(FieldError::new(
                            "actions",
                            format!("`{a}` is not an action of `{}`", info.resource),
                        ));
                    }
                }
                if new.client_ids.is_some() && !info.is_client_scoped() {
                    errors.push(FieldError::new(
                        "client_ids",
                        format!(
                            "`{}` is not about clients; leave client_ids null",
                            info.resource
                        ),
                    ));
                }
            }
        }
        let client_ids = new.client_ids.clone().map(|mut ids| {
            ids.sort();
            ids.dedup();
            ids
        });
        match &client_ids {
            Some(ids) if ids.is_empty() => errors.push(FieldError::new(
                "client_ids",
                "must not be empty (null means all clients)",
            )),
            Some(ids) if ids.len() > 1000 => {
                errors.push(FieldError::new("client_ids", "at most 1000 clients"))
            }
            _ => {}
        }
        if new.expires_at.is_some_and(|at| at <= Utc::now()) {
            errors.push(FieldError::new("expires_at", "must be in the future"));
        }
        if let Some(uid) = new.user_id
            && user::Entity::find_by_id(uid)
                .one(self.db.reader())
                .await?
                .is_none()
        {
            errors.push(FieldError::new("user_id", "no such user"));
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        // Delegation: nobody hands out more than they have.
        if !permit.user().is_admin() {
            for action in &actions {
                let held = self
                    .client_scope(permit.user(), &new.resource, action)
                    .await?;
                let enough = match (&held, &client_ids) {
                    (Some(ClientScope::All), _) => true,
                    (Some(ClientScope::Only(mine)), Some(wanted)) => {
                        wanted.iter().all(|c| mine.contains(*c))
                    }
                    _ => false,
                };
                if !enough {
                    let reason = format!(
                        "you cannot grant `{action}` on `{}` beyond what you hold",
                        new.resource
                    );
                    return Err(self
                        .deny(permit.actor(), "permissions", "write", None, reason)
                        .await);
                }
            }
        }
        let now = Utc::now();
        let model = grant::ActiveModel {
            id: Set(Uuid::now_v7()),
            user_id: Set(new.user_id),
            role: Set(new.role.clone()),
            resource: Set(new.resource.clone()),
            actions: Set(serde_json::json!(actions)),
            client_ids: Set(client_ids.as_ref().map(|ids| serde_json::json!(ids))),
            expires_at: Set(new.expires_at),
            created_at: Set(now),
            created_by: Set(Some(permit.user().id)),
        };
        let txn = self.db.begin().await?;
        let created = Grant::from(model.insert(&txn).await?);
        let after = serde_json::to_value(&created).unwrap_or_default();
        self.append(
            &txn,
            permit
                .audit("permission.grant", Outcome::Success)
                .resource("grant", created.id)
                .changes(serde_json::json!({"before": null, "after": after})),
        )
        .await?;
        txn.commit().await?;
        self.caches.invalidate(grant_invalidation(&created)).await;
        Ok(created)
    }

    /// Deletes a grant; every instance stops honouring it within a second.
    pub async fn delete_grant(&self, permit: &Permit, id: Uuid) -> Result<()> {
        permit.require("permissions", "write")?;
        let txn = self.db.begin().await?;
        let existing = grant::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or(Error::NotFound("grant"))?;
        let existing = Grant::from(existing);
        grant::Entity::delete_by_id(id).exec(&txn).await?;
        let before = serde_json::to_value(&existing).unwrap_or_default();
        self.append(
            &txn,
            permit
                .audit("permission.revoke", Outcome::Success)
                .resource("grant", id)
                .changes(serde_json::json!({"before": before, "after": null})),
        )
        .await?;
        txn.commit().await?;
        self.caches.invalidate(grant_invalidation(&existing)).await;
        Ok(())
    }

    /// A page of grants, newest first.
    pub async fn list_grants(
        &self,
        permit: &Permit,
        filter: &GrantFilter,
        page: PageRequest,
    ) -> Result<Page<Grant>> {
        permit.require("permissions", "read")?;
        let mut condition = Condition::all();
        if let Some(u) = filter.user_id {
            condition = condition.add(grant::Column::UserId.eq(u));
        }
        if let Some(r) = &filter.role {
            condition = condition.add(grant::Column::Role.eq(r.clone()));
        }
        if let Some(r) = &filter.resource {
            condition = condition.add(grant::Column::Resource.eq(r.clone()));
        }
        if let Some(after) = page.after {
            condition = condition.add(grant::Column::Id.lt(after));
        }
        let rows = grant::Entity::find()
            .filter(condition)
            .order_by_desc(grant::Column::Id)
            .limit(page.limit + 1)
            .all(self.db.reader())
            .await?;
        Ok(Page::from_rows(rows, page, |g| g.id).map(Grant::from))
    }

    /// `POST /permissions/check`: the decision for another user, validated against the catalog.
    pub async fn check_for(
        &self,
        permit: &Permit,
        user_id: Uuid,
        resource: &str,
        action: &str,
        client: Option<Uuid>,
    ) -> Result<Decision> {
        permit.require("permissions", "read")?;
        let info = self
            .catalog
            .get(resource)
            .ok_or_else(|| Error::invalid("resource", format!("unknown resource `{resource}`")))?;
        if !info.actions.iter().any(|a| a.name == action) {
            return Err(Error::invalid(
                "action",
                format!("`{action}` is not an action of `{resource}`"),
            ));
        }
        let user = user::Entity::find_by_id(user_id)
            .one(self.db.reader())
            .await?
            .ok_or_else(|| Error::invalid("user_id", "no such user"))?;
        self.check(&User::from(user), resource, action, client)
            .await
    }
}

fn grant_invalidation(grant: &Grant) -> Invalidation {
    match grant.user_id {
        Some(user) => Invalidation::User(user),
        // A role's grants affect everyone with that role.
        None => Invalidation::All,
    }
}
