//! `/auth`: login, OAuth2 password flow, refresh, logout, me, password change.

use agentdesk_core::models::grant::Grant;
use agentdesk_core::models::user::User;
use agentdesk_core::services::account::SessionInfo;
use agentdesk_core::services::auth::TokenPair;
use agentdesk_core::services::mfa::{RecoveryCodes, TotpEnrolment};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extractors::{AppForm, AppJson, AuthUser, Meta, SessionUser};
use crate::problem::{ApiResult, Problem};

/// The routes of `/auth`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(token))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(list_sessions))
        .routes(routes!(end_session))
        .routes(routes!(begin_totp, remove_totp))
        .routes(routes!(confirm_totp))
}

/// Login credentials.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// The account's email (case-insensitive).
    pub email: String,
    /// The account's password.
    pub password: String,
    /// A TOTP code or a recovery code, for an account with a second factor.
    pub code: Option<String>,
}

/// Log in with email and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 401, description = "Wrong email or password (`invalid_credentials`); the account has a second factor and no `code` came (`mfa_required`, no tokens); the code is wrong or used (`invalid_mfa_code`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Account disabled (after a correct password)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed attempts", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn login(
    State(state): State<AppState>,
    Meta(meta): Meta,
    AppJson(body): AppJson<LoginRequest>,
) -> ApiResult<AppJson<TokenPair>> {
    Ok(AppJson(
        state
            .core
            .login(&body.email, &body.password, body.code.as_deref(), &meta)
            .await?,
    ))
}

/// OAuth2 password-flow form (`grant_type` is accepted and must be `password` if sent).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenForm {
    /// The email.
    pub username: String,
    /// The password.
    pub password: String,
    /// `password`, if given.
    pub grant_type: Option<String>,
    /// A TOTP code or a recovery code, for an account with a second factor.
    pub code: Option<String>,
}

/// The OAuth2 token answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessToken {
    /// The access token.
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// OAuth2 password flow, so that the docs page can authorize.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Logged in", body = AccessToken),
        (status = 401, description = "Wrong email or password, or a second-factor code missing (`mfa_required`) or wrong (`invalid_mfa_code`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed attempts", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn token(
    State(state): State<AppState>,
    Meta(meta): Meta,
    AppForm(form): AppForm<TokenForm>,
) -> ApiResult<AppJson<AccessToken>> {
    if form.grant_type.as_deref().is_some_and(|g| g != "password") {
        return Err(agentdesk_core::Error::invalid("grant_type", "must be `password`").into());
    }
    let pair = state
        .core
        .login(&form.username, &form.password, form.code.as_deref(), &meta)
        .await?;
    Ok(AppJson(AccessToken {
        access_token: pair.access_token,
        token_type: "bearer",
        expires_in: pair.expires_in,
    }))
}

/// A refresh token.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The refresh token from login or the last refresh.
    pub refresh_token: String,
}

/// Exchange a refresh token for a new pair; the old one stops working.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenPair),
        (status = 401, description = "Invalid, expired or reused token (reuse revokes the session)", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn refresh(
    State(state): State<AppState>,
    Meta(meta): Meta,
    AppJson(body): AppJson<RefreshRequest>,
) -> ApiResult<AppJson<TokenPair>> {
    Ok(AppJson(
        state.core.refresh(&body.refresh_token, &meta).await?,
    ))
}

/// End the session: its refresh and access tokens are refused from now on.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key was used: this route needs a user's session (`session_required`)", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn logout(
    State(state): State<AppState>,
    SessionUser(caller): SessionUser,
    Meta(meta): Meta,
    AppJson(body): AppJson<RefreshRequest>,
) -> ApiResult<StatusCode> {
    state
        .core
        .logout(&caller, &body.refresh_token, &meta)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller and their effective grants.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The caller.
    pub user: User,
    /// Effective grants, direct and through the role.
    pub grants: Vec<Grant>,
}

/// Who am I?
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn me(State(state): State<AppState>, AuthUser(caller): AuthUser) -> ApiResult<AppJson<Me>> {
    let grants = state.core.effective_grants(&caller.user).await?;
    Ok(AppJson(Me {
        user: caller.user,
        grants,
    }))
}

/// A password change.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordChange {
    /// The password now.
    pub current_password: String,
    /// The new password (at least 12 characters, not a common one).
    pub new_password: String,
}

/// Change my password; every other session of mine is revoked.
#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth", request_body = PasswordChange, security(("bearer" = [])),
    responses(
        (status = 204, description = "Changed"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key was used: this route needs a user's session (`session_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong current password or weak new one", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn change_password(
    State(state): State<AppState>,
    SessionUser(caller): SessionUser,
    Meta(meta): Meta,
    AppJson(body): AppJson<PasswordChange>,
) -> ApiResult<StatusCode> {
    state
        .core
        .change_password(&caller, &body.current_password, &body.new_password, &meta)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Live sessions, the most recent login first.
    pub items: Vec<SessionInfo>,
}

/// My live sessions: where and when I logged in, and which one is this request's.
#[utoipa::path(get, path = "/api/v1/auth/sessions", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's live sessions", body = SessionList),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key was used: this route needs a user's session (`session_required`)", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn list_sessions(
    State(state): State<AppState>,
    SessionUser(caller): SessionUser,
) -> ApiResult<AppJson<SessionList>> {
    Ok(AppJson(SessionList {
        items: state.core.list_sessions(&caller).await?,
    }))
}

/// End one of my sessions (this one too): its tokens are refused on every instance.
#[utoipa::path(delete, path = "/api/v1/auth/sessions/{id}", tag = "auth",
    params(("id" = String, Path, description = "The session")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Ended"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key was used: this route needs a user's session (`session_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not one of the caller's live sessions", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn end_session(
    State(state): State<AppState>,
    SessionUser(caller): SessionUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = crate::v1::users::parse_id(&id, "session")?;
    state.core.end_session(&caller, id, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start a TOTP enrolment for the caller: a new secret, not required at login until confirmed.
#[utoipa::path(post, path = "/api/v1/auth/mfa/totp", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The secret, its otpauth:// link and that link as an SVG QR code", body = TotpEnrolment),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key was used: this route needs a user's session (`session_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A second factor is already active", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn begin_totp(
    State(state): State<AppState>,
    SessionUser(caller): SessionUser,
    Meta(meta): Meta,
) -> ApiResult<AppJson<TotpEnrolment>> {
    Ok(AppJson(state.core.begin_totp(&caller, &meta).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TotpConfirmation {
    /// The authenticator's current 6-digit code.
    pub code: String,
}

/// Confirm the enrolment with a current code: login needs a code from now on.
#[utoipa::path(post, path = "/api/v1/auth/mfa/totp/confirm", tag = "auth", request_body = TotpConfirmation, security(("bearer" = [])),
    responses(
        (status = 200, description = "Active; ten one-time recovery codes, shown this once", body = RecoveryCodes),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key was used: this route needs a user's session (`session_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No enrolment to confirm, or the factor is already active", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The code is not the authenticator's current one", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn confirm_totp(
    State(state): State<AppState>,
    SessionUser(caller): SessionUser,
    Meta(meta): Meta,
    AppJson(body): AppJson<TotpConfirmation>,
) -> ApiResult<AppJson<RecoveryCodes>> {
    Ok(AppJson(
        state.core.confirm_totp(&caller, &body.code, &meta).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TotpRemoval {
    /// The caller's password.
    pub password: String,
}

/// Remove the caller's second factor (and its recovery codes), given their password.
#[utoipa::path(delete, path = "/api/v1/auth/mfa/totp", tag = "auth", request_body = TotpRemoval, security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed (or there was none)"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key was used: this route needs a user's session (`session_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong password", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn remove_totp(
    State(state): State<AppState>,
    SessionUser(caller): SessionUser,
    Meta(meta): Meta,
    AppJson(body): AppJson<TotpRemoval>,
) -> ApiResult<StatusCode> {
    state
        .core
        .remove_totp(&caller, &body.password, &meta)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
