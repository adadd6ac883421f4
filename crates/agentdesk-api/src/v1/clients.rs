//! `/clients`: the customer records, behind grants on `clients` with client scope.

use agentdesk_core::models::client::Client;
use agentdesk_core::services::clients::{ClientFilter, ClientPage, ClientSort};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extractors::{
    AppJson, AppQuery, Authorized, ClientsDelete, ClientsRead, ClientsWrite, MergePatch,
};
use crate::problem::{ApiResult, Problem};
use crate::v1::users::parse_id;

/// The routes of `/clients`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get, update, delete))
}

/// Filters, order and paging of the client list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Matches name, email and company, case-insensitively.
    pub q: Option<String>,
    /// `lead`, `active`, `inactive` or `archived`.
    pub status: Option<String>,
    /// Only clients with this tag.
    pub tag: Option<String>,
    /// `-created_at` (default), `created_at`, `name`, `-name`, `updated_at`, `-updated_at`.
    pub sort: Option<String>,
    /// Page size, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn with_etag(client: &Client, mut headers: HeaderMap) -> HeaderMap {
    if let Ok(etag) = HeaderValue::from_str(&client.etag()) {
        headers.insert(header::ETAG, etag);
    }
    headers
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// List the clients in the caller's scope.
#[utoipa::path(get, path = "/api/v1/clients", tag = "clients", params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of clients", body = ClientPage),
        (status = 400, description = "Bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<ClientsRead>,
    AppQuery(query): AppQuery<ListQuery>,
) -> ApiResult<AppJson<ClientPage>> {
    let sort = ClientSort::parse(query.sort.as_deref())?;
    let filter = ClientFilter {
        q: query.q,
        status: query.status,
        tag: query.tag,
    };
    Ok(AppJson(
        state
            .core
            .list_clients(&permit, &filter, sort, query.limit, query.cursor.as_deref())
            .await?,
    ))
}

/// Create a client.
#[utoipa::path(post, path = "/api/v1/clients", tag = "clients", request_body = Object, security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Client, headers(("Location" = String), ("ETag" = String))),
        (status = 409, description = "A client with this email exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<ClientsWrite>,
    AppJson(body): AppJson<serde_json::Value>,
) -> ApiResult<Response> {
    let client = state.core.create_client(&permit, &body).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/clients/{}", client.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::CREATED,
        with_etag(&client, headers),
        AppJson(client),
    )
        .into_response())
}

/// One client.
#[utoipa::path(get, path = "/api/v1/clients/{id}", tag = "clients", params(("id" = String, Path, description = "Client id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The client", body = Client, headers(("ETag" = String))),
        (status = 404, description = "No such client in the caller's scope", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn get(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<ClientsRead>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let client = state
        .core
        .get_client(&permit, parse_id(&id, "client")?)
        .await?;
    Ok((with_etag(&client, HeaderMap::new()), AppJson(client)).into_response())
}

/// Change a client with a JSON merge patch; with `If-Match`, a stale version gets 412.
#[utoipa::path(patch, path = "/api/v1/clients/{id}", tag = "clients",
    params(("id" = String, Path, description = "Client id"), ("If-Match" = Option<String>, Header, description = "The ETag read")),
    request_body(content = Object, content_type = "application/merge-patch+json"), security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed client", body = Client, headers(("ETag" = String))),
        (status = 404, description = "No such client in the caller's scope", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The client changed since it was read", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn update(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<ClientsWrite>,
    Path(id): Path<String>,
    headers: HeaderMap,
    MergePatch(patch): MergePatch,
) -> ApiResult<Response> {
    let client = state
        .core
        .update_client(
            &permit,
            parse_id(&id, "client")?,
            &patch,
            if_match(&headers).as_deref(),
        )
        .await?;
    Ok((with_etag(&client, HeaderMap::new()), AppJson(client)).into_response())
}

/// Delete a client: afterwards it is 404 and lists leave it out.
#[utoipa::path(delete, path = "/api/v1/clients/{id}", tag = "clients",
    params(("id" = String, Path, description = "Client id"), ("If-Match" = Option<String>, Header, description = "The ETag read")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such client in the caller's scope", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The client changed since it was read", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn delete(
    State(state): State<AppState>,
    Authorized(permit, _): Authorized<ClientsDelete>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    state
        .core
        .delete_client(
            &permit,
            parse_id(&id, "client")?,
            if_match(&headers).as_deref(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
