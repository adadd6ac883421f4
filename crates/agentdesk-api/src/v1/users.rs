//! `/users`: user management, behind grants on `users` (`read`, `write`).

use agentdesk_core::models::grant::Grant;
use agentdesk_core::models::user::User;
use agentdesk_core::pagination::{Page, PageRequest};
use agentdesk_core::services::users::{NewUser, UserFilter, UserPatch};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::extractors::{AppJson, AppQuery, Authorized, UsersRead, UsersWrite};
use crate::problem::{ApiResult, Problem};

/// The routes of `/users`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get, update, delete))
        .routes(routes!(grants))
        .routes(routes!(remove_mfa))
}

/// Filters and paging of the user list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Matches email or full name, case-insensitively.
    pub q: Option<String>,
    /// Only this role.
    pub role: Option<String>,
    /// Only active or only inactive users.
    pub is_active: Option<bool>,
    /// Page size, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(schema_with = agentdesk_core::pagination::id_cursor_schema)]
    pub cursor: Option<String>,
}

/// A page of users.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct UserPage {
    /// The users.
    pub items: Vec<User>,
    /// The next page's cursor, or null.
    pub next_cursor: Option<String>,
}

impl From<Page<User>> for UserPage {
    fn from(p: Page<User>) -> Self {
        Self {
            items: p.items,
            next_cursor: p.next_cursor,
        }
    }
}

/// List users, newest first.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, description = "Bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<UsersRead>,
    AppQuery(query): AppQuery<ListQuery>,
) -> ApiResult<AppJson<UserPage>> {
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let filter = UserFilter {
        q: query.q,
        role: query.role,
        is_active: query.is_active,
    };
    Ok(AppJson(
        state.core.list_users(&permit, &filter, page).await?.into(),
    ))
}

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateUser {
    /// Email, unique case-insensitively.
    pub email: String,
    /// At least 12 characters, not a common password.
    pub password: String,
    /// Display name.
    pub full_name: String,
    /// `member` (default), `admin`, or another role name.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub role: Option<String>,
}

/// Create a user.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser, security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = User, headers(("Location" = String, description = "The user's URL"))),
        (status = 409, description = "The email exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<UsersWrite>,
    AppJson(body): AppJson<CreateUser>,
) -> ApiResult<impl IntoResponse> {
    let user = state
        .core
        .create_user(
            &permit,
            NewUser {
                email: body.email,
                password: body.password,
                full_name: body.full_name,
                role: body.role,
            },
        )
        .await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/users/{}", user.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, AppJson(user)))
}

/// Parses a path id; a malformed id is a 404 (no such user), not a 400.
pub fn parse_id(raw: &str, what: &'static str) -> Result<Uuid, agentdesk_core::Error> {
    Uuid::parse_str(raw).map_err(|_| agentdesk_core::Error::NotFound(what))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path, description = "User id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn get(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<UsersRead>,
    Path(id): Path<String>,
) -> ApiResult<AppJson<User>> {
    Ok(AppJson(
        state.core.get_user(&permit, parse_id(&id, "user")?).await?,
    ))
}

/// A change to a user; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New display name.
    pub full_name: Option<String>,
    /// New role.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub role: Option<String>,
    /// Activate or deactivate.
    pub is_active: Option<bool>,
    /// New password (revokes all their sessions).
    pub password: Option<String>,
}

/// Change a user.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path, description = "User id")),
    request_body = UpdateUser, security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed user", body = User),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Would leave no active admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn update(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<UsersWrite>,
    Path(id): Path<String>,
    AppJson(body): AppJson<UpdateUser>,
) -> ApiResult<AppJson<User>> {
    let id = parse_id(&id, "user")?;
    let patch = UserPatch {
        full_name: body.full_name,
        role: body.role,
        is_active: body.is_active,
        password: body.password,
    };
    Ok(AppJson(state.core.update_user(&permit, id, patch).await?))
}

/// Deactivate a user: they can no longer log in and their sessions end; their history stays.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path, description = "User id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deactivated"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Would leave no active admin", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn delete(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<UsersWrite>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .core
        .deactivate_user(&permit, parse_id(&id, "user")?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's effective grants (direct and through the role; expired ones left out).
#[utoipa::path(get, path = "/api/v1/users/{id}/grants", tag = "users", params(("id" = String, Path, description = "User id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Effective grants", body = Vec<Grant>),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn grants(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<UsersRead>,
    Path(id): Path<String>,
) -> ApiResult<AppJson<Vec<Grant>>> {
    Ok(AppJson(
        state
            .core
            .user_grants(&permit, parse_id(&id, "user")?)
            .await?,
    ))
}

/// Remove a user's second factor (a lost authenticator and lost recovery codes). Idempotent.
#[utoipa::path(delete, path = "/api/v1/users/{id}/mfa", tag = "users", params(("id" = String, Path, description = "User id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The user has no second factor now"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn remove_mfa(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<UsersWrite>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "user")?;
    state.core.remove_user_totp(&permit, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
