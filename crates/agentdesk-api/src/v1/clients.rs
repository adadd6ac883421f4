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
    #[param(schema_with = status_schema)]
    pub status: Option<String>,
    /// Only clients with this tag.
    pub tag: Option<String>,
    /// `-created_at` (default), `created_at`, `name`, `-name`, `updated_at`, `-updated_at`.
    #[param(schema_with = sort_schema)]
    pub sort: Option<String>,
    /// Page size, 1..=200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(schema_with = agentdesk_core::pagination::keyed_cursor_schema)]
    pub cursor: Option<String>,
}

/// What Rust's `trim` removes (Unicode White_Space), as a regular-expression class body.
const WHITE_SPACE: &str =
    "\\t\\n\\x0B\\f\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";
/// The same without the control characters among them.
const WHITE_SPACE_NOT_CONTROL: &str =
    " \\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";

/// The JSON schema of a client's fields as [`ClientFields::from_json`] checks them: `create`
/// says whether it is a new client (`name` required) or a merge patch (every field optional,
/// null removes one, except `name`, which a client always has).
///
/// [`ClientFields::from_json`]: agentdesk_core::services::clients::ClientFields::from_json
fn client_fields_schema(create: bool) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let text = |max: usize, description: &str| {
        // The NUL-free pattern is written in with every other free string's.
        serde_json::json!({"type": ["string", "null"], "maxLength": max, "description": description})
    };
    let statuses: Vec<serde_json::Value> = agentdesk_core::models::client::STATUSES
        .iter()
        .map(|s| (*s).into())
        .chain([serde_json::Value::Null])
        .collect();
    let schema = serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "required": if create { vec!["name"] } else { Vec::new() },
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200,
                "pattern": format!("^[^\\x00]*[^\\x00{WHITE_SPACE}][^\\x00]*$"),
                "description": "1 to 200 characters, not only spaces (kept trimmed)"},
            "email": {"anyOf": [
                    {"type": "string", "format": "email", "maxLength": 254},
                    {"type": "string", "pattern": format!("^[{WHITE_SPACE}]*$"), "maxLength": 254},
                    {"type": "null"}],
                "description": "An email address, unique among clients; empty or null for none"},
            "phone": {"type": ["string", "null"], "maxLength": 40,
                "pattern": format!("^[{WHITE_SPACE}]*(?:[ +().-]*(?:[0-9][ +().-]*){{3,}})?[{WHITE_SPACE}]*$"),
                "description": "At least 3 digits, with optional + - ( ) . and spaces"},
            "company": text(200, "Company"),
            "status": {"type": ["string", "null"], "enum": statuses,
                "description": "`active` when absent"},
            "tags": {"type": ["array", "null"], "maxItems": 50, "items": {"type": "string",
                "maxLength": 50,
                "pattern": format!("^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\x00-\\x1F\\x7F-\\x9F{WHITE_SPACE_NOT_CONTROL}][^\\x00-\\x1F\\x7F-\\x9F]*$")},
                "description": "At most 50 tags of 1 to 50 characters, no control characters"},
            "notes": text(10_000, "Free text"),
            "metadata": {"type": ["object", "null"],
                "description": "Any JSON object of at most 16 KiB"},
        },
    });
    serde_json::from_value(schema).unwrap_or_default()
}

/// The body of `POST /clients`.
pub struct NewClient;

impl utoipa::PartialSchema for NewClient {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        client_fields_schema(true)
    }
}

impl utoipa::ToSchema for NewClient {}

/// The body of `PATCH /clients/{id}`: a JSON merge patch of the client's fields.
pub struct ClientPatch;

impl utoipa::PartialSchema for ClientPatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        client_fields_schema(false)
    }
}

impl utoipa::ToSchema for ClientPatch {}

fn status_schema() -> utoipa::openapi::Object {
    agentdesk_agent_sdk::http::choice_schema(&agentdesk_core::models::client::STATUSES)
}

fn sort_schema() -> utoipa::openapi::Object {
    agentdesk_agent_sdk::http::choice_schema(&ClientSort::names())
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
#[utoipa::path(post, path = "/api/v1/clients", tag = "clients", request_body = NewClient, security(("bearer" = [])),
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
    request_body(content = ClientPatch, content_type = "application/merge-patch+json"), security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed client", body = Client, headers(("ETag" = String))),
        (status = 404, description = "No such client in the caller's scope", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another client has this email", body = Problem, content_type = "application/problem+json"),
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
