//! Version 1 of the HTTP API, mounted at `/api/v1`.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod clients;
pub mod jobs;
pub mod permissions;
pub mod users;

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// The routes of `/api/v1`, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(api_keys::routes())
        .merge(users::routes())
        .merge(clients::routes())
        .merge(agentdesk_agent_client_management::routes())
        .merge(agentdesk_agent_pdf_processing::routes())
        .merge(agentdesk_agent_audio_recording::routes())
        .merge(agentdesk_agent_reports_analysis::routes(
            crate::metrics_providers(),
        ))
        .merge(jobs::routes())
        .merge(permissions::routes())
        .merge(audit::routes())
}
