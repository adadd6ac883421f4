//! `/permissions`: the catalog, grants, and checks.

use agentdesk_core::models::grant::Grant;
use agentdesk_core::pagination::PageRequest;
use agentdesk_core::services::permissions::{Decision, GrantFilter, NewGrant, ResourceInfo};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::extractors::{
    AppJson, AppQuery, AuthUser, Authorized, PermissionsRead, PermissionsWrite,
};
use crate::problem::{ApiResult, Problem};
use crate::v1::users::parse_id;

/// The routes of `/permissions`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(catalog))
        .routes(routes!(list_grants, create_grant))
        .routes(routes!(delete_grant))
        .routes(routes!(check))
}

/// The resources and actions that grants may name: the core's and one per agent.
#[utoipa::path(get, path = "/api/v1/permissions/catalog", tag = "permissions", security(("bearer" = [])),
    responses((status = 200, description = "The catalog", body = Vec<ResourceInfo>)))]
#[tracing::instrument(skip_all)]
async fn catalog(State(state): State<AppState>, _caller: AuthUser) -> AppJson<Vec<ResourceInfo>> {
    AppJson(state.core.catalog().resources().to_vec())
}

/// Filters and paging of the grant list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GrantQuery {
    /// Only this user's direct grants.
    pub user_id: Option<Uuid>,
    /// Only this role's grants.
    pub role: Option<String>,
    /// Only this resource.
    pub resource: Option<String>,
    /// Page size, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(schema_with = agentdesk_core::pagination::id_cursor_schema)]
    pub cursor: Option<String>,
}

/// A page of grants.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantPage {
    /// The grants.
    pub items: Vec<Grant>,
    /// The next page's cursor, or null.
    pub next_cursor: Option<String>,
}

/// List grants, newest first.
#[utoipa::path(get, path = "/api/v1/permissions/grants", tag = "permissions", params(GrantQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of grants", body = GrantPage),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list_grants(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<PermissionsRead>,
    AppQuery(query): AppQuery<GrantQuery>,
) -> ApiResult<AppJson<GrantPage>> {
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let filter = GrantFilter {
        user_id: query.user_id,
        role: query.role,
        resource: query.resource,
    };
    let page = state.core.list_grants(&permit, &filter, page).await?;
    Ok(AppJson(GrantPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// The resources of the permission catalog, as the document lists them.
fn resource_schema() -> utoipa::openapi::Object {
    let names: Vec<String> = crate::catalog()
        .resources()
        .iter()
        .map(|r| r.resource.clone())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    agentdesk_agent_sdk::http::choice_schema(&names)
}

/// A new grant: exactly one of `user_id` and `role`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    /// The user it is for.
    pub user_id: Option<Uuid>,
    /// Or the role it is for.
    pub role: Option<String>,
    /// A resource of the catalog.
    #[schema(schema_with = resource_schema)]
    pub resource: String,
    /// Actions of that resource.
    pub actions: Vec<String>,
    /// Only these clients; null or absent means all.
    pub client_ids: Option<Vec<Uuid>>,
    /// Stops matching at this time.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Create a grant. A non-admin may grant only what they hold themselves.
#[utoipa::path(post, path = "/api/v1/permissions/grants", tag = "permissions", request_body = CreateGrant, security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Grant),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown resource or action, or both/neither of user_id and role", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn create_grant(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<PermissionsWrite>,
    AppJson(body): AppJson<CreateGrant>,
) -> ApiResult<impl IntoResponse> {
    let new = NewGrant {
        user_id: body.user_id,
        role: body.role,
        resource: body.resource,
        actions: body.actions,
        client_ids: body.client_ids,
        expires_at: body.expires_at,
    };
    let grant = state.core.create_grant(&permit, new).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/permissions/grants/{}", grant.id))
    {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, AppJson(grant)))
}

/// Delete a grant; every instance stops honouring it within a second.
#[utoipa::path(delete, path = "/api/v1/permissions/grants/{id}", tag = "permissions",
    params(("id" = String, Path, description = "Grant id")), security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such grant", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn delete_grant(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<PermissionsWrite>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .core
        .delete_grant(&permit, parse_id(&id, "grant")?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A question for the permission check.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CheckRequest {
    /// Whose permission.
    pub user_id: Uuid,
    /// A resource of the catalog.
    #[schema(schema_with = resource_schema)]
    pub resource: String,
    /// One of its actions.
    pub action: String,
    /// For this client (absent: for all clients).
    pub client_id: Option<Uuid>,
}

/// May this user do this? With the reason: the deciding grant, or what is missing.
#[utoipa::path(post, path = "/api/v1/permissions/check", tag = "permissions", request_body = CheckRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "The decision", body = Decision),
        (status = 422, description = "Unknown user, resource or action", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn check(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<PermissionsRead>,
    AppJson(body): AppJson<CheckRequest>,
) -> ApiResult<AppJson<Decision>> {
    Ok(AppJson(
        state
            .core
            .check_for(
                &permit,
                body.user_id,
                &body.resource,
                &body.action,
                body.client_id,
            )
            .await?,
    ))
}
