//! `/api-keys`: the caller's API keys, for scripts. Managed only through a user's session.

use agentdesk_core::services::api_keys::{ApiKey, CreatedApiKey, NewApiKey};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::extractors::{AppJson, Meta, SessionUser};
use crate::problem::{ApiResult, Problem};

/// The routes of `/api-keys`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

/// A key to make.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateApiKey {
    /// A name to recognise it by (1..=100 characters).
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Narrow the key to these of the caller's live grants (ids); leave out for all.
    #[schema(min_items = 1, max_items = 100)]
    pub grants: Option<Vec<Uuid>>,
    /// When it stops working (in the future); leave out for never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Make an API key for the caller. The key is in this answer only.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api_keys", request_body = CreateApiKey, security(("bearer" = [])),
    responses(
        (status = 201, description = "Made; `key` is shown this once", body = CreatedApiKey, headers(("Location" = String, description = "The key's URL"))),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key was used: this route needs a user's session (`session_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The caller holds the most keys allowed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (a grant that is not the caller's, an expiry in the past)", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    SessionUser(caller): SessionUser,
    Meta(meta): Meta,
    AppJson(body): AppJson<CreateApiKey>,
) -> ApiResult<impl IntoResponse> {
    let created = state
        .core
        .create_api_key(
            &caller,
            NewApiKey {
                name: body.name,
                grants: body.grants,
                expires_at: body.expires_at,
            },
            &meta,
        )
        .await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/api-keys/{}", created.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, AppJson(created)))
}

/// The caller's keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    /// Not revoked (expired ones included), newest first; never the keys themselves.
    pub items: Vec<ApiKey>,
}

/// The caller's API keys.
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api_keys", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's keys", body = ApiKeyList),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key was used: this route needs a user's session (`session_required`)", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list(
    State(state): State<AppState>,
    SessionUser(caller): SessionUser,
) -> ApiResult<AppJson<ApiKeyList>> {
    Ok(AppJson(ApiKeyList {
        items: state.core.list_api_keys(&caller).await?,
    }))
}

/// Revoke one of the caller's API keys, on every instance within a second.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api_keys",
    params(("id" = String, Path, description = "The key's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key was used: this route needs a user's session (`session_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not one of the caller's keys, or already revoked", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn revoke(
    State(state): State<AppState>,
    SessionUser(caller): SessionUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = crate::v1::users::parse_id(&id, "api key")?;
    state.core.revoke_api_key(&caller, id, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}
