//! Extractors that speak problem+json even when axum rejects a request, and the
//! authentication and authorization guards handlers name: [`AuthUser`] (any logged-in user) and
//! [`Authorized`] (a caller whom a grant allows the route's resource and action).

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use agentdesk_core::RequestMeta;
use agentdesk_core::cache::AuthContext;
use agentdesk_core::models::user::User;
use agentdesk_core::services::permissions::{Actor, Need, Permit};
use agentdesk_core::validators;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use agentdesk_core::Core;
use axum::extract::FromRef;

use super::RequestId;
use super::problem::ApiError;

/// `Json<T>` whose rejections are problem+json: 400 malformed, 415 wrong media type, 413 too
/// large, 422 for a missing or mistyped field (named in `errors`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_media(req.headers()) {
            return Err(ApiError::http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request body with Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| body_rejection(e.status(), e.body_text()))?;
        refuse_nul_in_json(&bytes)?;
        // Every JSON body of the API is an object; serde would also read a struct from an
        // array of its fields in order, which no client means and the document rules out.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(
                agentdesk_core::Error::invalid("", "the body must be a JSON object").into(),
            );
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `application/json` or any `application/*+json`, as axum's `Json` accepts.
fn is_json_media(headers: &axum::http::HeaderMap) -> bool {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Text with U+0000 is refused where every body and query string is parsed, for every route at
/// once: PostgreSQL cannot store it, and both backends must answer the same 422 naming the
/// field. Valid JSON spells a NUL only as `\u0000`, so a body without that sequence is not walked.
fn refuse_nul_in_json(raw: &[u8]) -> Result<(), ApiError> {
    if !validators::json_may_hold_nul(raw) {
        return Ok(());
    }
    // Malformed JSON is left to the parse that follows, which says what is wrong with it.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(raw) else {
        return Ok(());
    };
    match validators::nul_path(&value) {
        Some(path) => Err(ApiError::Core(agentdesk_core::Error::invalid(
            path,
            validators::NUL_MESSAGE,
        ))),
        None => Ok(()),
    }
}

/// The same for a query string or a form body, naming the parameter.
fn refuse_nul_in_urlencoded(raw: &[u8]) -> Result<(), ApiError> {
    match validators::urlencoded_nul_field(raw) {
        Some(field) => Err(ApiError::Core(agentdesk_core::Error::invalid(
            field,
            validators::NUL_MESSAGE,
        ))),
        None => Ok(()),
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for AppJson<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            // axum's text is "Failed to deserialize the JSON body into the target type: path: message".
            let text = e.body_text();
            let text = text
                .split_once("target type: ")
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or(text);
            let (field, message) = match text.split_once(": ") {
                Some((path, message)) if !path.contains(' ') => {
                    (path.to_owned(), message.to_owned())
                }
                _ => (String::new(), text.clone()),
            };
            let field = if field.is_empty() {
                missing_field(&message).unwrap_or_default()
            } else {
                field
            };
            ApiError::Core(agentdesk_core::Error::invalid(field, message))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::http(StatusCode::BAD_REQUEST, "malformed_json", e.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a request body with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) => body_rejection(e.status(), e.body_text()),
        other => ApiError::http(other.status(), "bad_request", other.body_text()),
    }
}

/// serde says "missing field `email`" at the top level, with no path.
fn missing_field(message: &str) -> Option<String> {
    let start = message.find("missing field `")? + "missing field `".len();
    let end = message[start..].find('`')? + start;
    Some(message[start..end].to_owned())
}

fn body_rejection(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::http(status, "payload_too_large", "the request body is too large")
    } else {
        ApiError::http(StatusCode::BAD_REQUEST, "bad_request", text)
    }
}

/// `Multipart` whose rejections are problem+json: 415 for a body that is not
/// `multipart/form-data` (or has no boundary), 400 for another malformed one.
#[derive(Debug)]
pub struct AppMultipart(pub axum::extract::Multipart);

impl<S> FromRequest<S> for AppMultipart
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::multipart::MultipartRejection;
        match axum::extract::Multipart::from_request(req, state).await {
            Ok(multipart) => Ok(Self(multipart)),
            Err(MultipartRejection::InvalidBoundary(_)) => Err(ApiError::http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be multipart/form-data (with a boundary) holding a `file` field",
            )),
            Err(other) => Err(ApiError::http(
                StatusCode::BAD_REQUEST,
                "bad_request",
                other.body_text(),
            )),
        }
    }
}

/// `Query<T>` whose rejection is a 400 problem naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        refuse_nul_in_urlencoded(parts.uri.query().unwrap_or("").as_bytes())?;
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                let text = e.body_text();
                let text = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_owned();
                Err(ApiError::http(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    text,
                ))
            }
            Err(other) => Err(ApiError::http(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                other.body_text(),
            )),
        }
    }
}

/// `Form<T>` whose rejections are problem+json.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppForm<T>(pub T);

impl<T, S> FromRequest<S> for AppForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/x-www-form-urlencoded" {
            return Err(ApiError::http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/x-www-form-urlencoded",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| body_rejection(e.status(), e.body_text()))?;
        refuse_nul_in_urlencoded(&bytes)?;
        serde_urlencoded::from_bytes(&bytes).map(Self).map_err(|e| {
            let text = e.to_string();
            let field = missing_field(&text).unwrap_or_default();
            ApiError::Core(agentdesk_core::Error::invalid(field, text))
        })
    }
}

/// A JSON body sent as `application/merge-patch+json` (RFC 7396) or `application/json`.
#[derive(Debug, Clone)]
pub struct MergePatch(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for MergePatch {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/merge-patch+json" && media != "application/json" {
            return Err(ApiError::http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/merge-patch+json or application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| body_rejection(e.status(), e.body_text()))?;
        refuse_nul_in_json(&bytes)?;
        serde_json::from_slice(&bytes).map(Self).map_err(|e| {
            ApiError::http(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {e}"),
            )
        })
    }
}

/// The authenticated caller. Every route but login, token, refresh and the system routes names
/// this (or a guard built on it), so an unauthenticated request never reaches a service.
#[derive(Debug, Clone)]
pub struct AuthUser(pub AuthContext);

impl AuthUser {
    /// The calling user.
    pub fn user(&self) -> &User {
        &self.0.user
    }
}

/// The bearer token of a request: `Authorization: Bearer ...`.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Core: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ctx) = parts.extensions.get::<AuthContext>() {
            return Ok(Self(ctx.clone()));
        }
        let Some(token) = bearer_token(parts) else {
            return Err(ApiError::http(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "an access token is required (Authorization: Bearer)",
            ));
        };
        let ctx = Core::from_ref(state).authenticate(token).await?;
        tracing::Span::current().record("user_id", tracing::field::display(ctx.user.id));
        parts.extensions.insert(ctx.clone());
        Ok(Self(ctx))
    }
}

/// The authenticated caller, through a user's session: an API key is refused with 403
/// `session_required`. The account's own settings (sessions, API keys, password, logout) take
/// this, so that a leaked key cannot make more keys or lock its owner out.
#[derive(Debug, Clone)]
pub struct SessionUser(pub AuthContext);

impl<S> FromRequestParts<S> for SessionUser
where
    S: Send + Sync,
    Core: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let AuthUser(ctx) = AuthUser::from_request_parts(parts, state).await?;
        ctx.require_session()?;
        Ok(Self(ctx))
    }
}

/// What a route requires: a resource, an action, and whether a grant for some clients suffices.
pub trait Requirement: Send + Sync + 'static {
    /// The resource (`users`, `clients`, `agent:pdf_processing`, ...).
    const RESOURCE: &'static str;
    /// The action.
    const ACTION: &'static str;
    /// Whether the permit must cover all clients.
    const NEED: Need;
}

/// Declares requirement marker types: `requirements! { /// doc\n Name = "resource", "action", AllClients; }`.
#[macro_export]
macro_rules! requirements {
    ($($(#[$doc:meta])* $name:ident = $resource:literal, $action:literal, $need:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;
        impl $crate::http::extractors::Requirement for $name {
            const RESOURCE: &'static str = $resource;
            const ACTION: &'static str = $action;
            const NEED: $crate::core::services::permissions::Need = $crate::core::services::permissions::Need::$need;
        }
    )*};
}

requirements! {
    /// `users:read`.
    UsersRead = "users", "read", AllClients;
    /// `users:write`.
    UsersWrite = "users", "write", AllClients;
    /// `permissions:read`.
    PermissionsRead = "permissions", "read", AllClients;
    /// `permissions:write`.
    PermissionsWrite = "permissions", "write", AllClients;
    /// `clients:read`, within the caller's client scope.
    ClientsRead = "clients", "read", SomeClients;
    /// `clients:write`, within the caller's client scope.
    ClientsWrite = "clients", "write", SomeClients;
    /// `clients:delete`, within the caller's client scope.
    ClientsDelete = "clients", "delete", SomeClients;
    /// `audit:read`, within the caller's client scope.
    AuditRead = "audit", "read", SomeClients;
    /// `audit:read` over the whole chain (verification).
    AuditReadAll = "audit", "read", AllClients;
    /// `audit:export`, within the caller's client scope.
    AuditExport = "audit", "export", SomeClients;
}

/// An authenticated caller whom a live grant (or the admin role) allows `R`. A handler that
/// names it cannot run without the check; a refusal is a 403 with a `denied` audit event.
#[derive(Debug, Clone)]
pub struct Authorized<R>(pub Permit, pub PhantomData<R>);

impl<R: Requirement, S> FromRequestParts<S> for Authorized<R>
where
    S: Send + Sync,
    Core: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let AuthUser(ctx) = AuthUser::from_request_parts(parts, state).await?;
        let Ok(Meta(meta)) = Meta::from_request_parts(parts, state).await;
        let permit = Core::from_ref(state)
            .authorize(
                Actor::from_request(&ctx, meta),
                R::RESOURCE,
                R::ACTION,
                R::NEED,
            )
            .await?;
        Ok(Self(permit, PhantomData))
    }
}

/// Who is asking, from where: request id, client IP and user agent.
#[derive(Debug, Clone)]
pub struct Meta(pub RequestMeta);

impl<S> FromRequestParts<S> for Meta
where
    S: Send + Sync,
    Core: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self(RequestMeta {
            request_id,
            ip: client_ip(parts, Core::from_ref(state).settings.trust_forwarded_for),
            user_agent,
        }))
    }
}

/// The client's IP: the socket peer, or the first `X-Forwarded-For` hop when trusted.
pub fn client_ip(parts: &Parts, trust_forwarded_for: bool) -> Option<String> {
    if trust_forwarded_for {
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|ip| ip.trim().parse::<IpAddr>().ok());
        if let Some(ip) = forwarded {
            return Some(ip.to_string());
        }
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
}
