//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{
    Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme,
};
use utoipa::{Modify, OpenApi};

/// The document's frame; paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(title = "agentdesk", description = "The self-hosted backend for client-service teams. Errors are application/problem+json with a stable `code`."),
    modifiers(&SecuritySchemes),
    tags(
        (name = "system", description = "Health, readiness, version, metrics"),
        (name = "auth", description = "Login, tokens, sessions"),
        (name = "api_keys", description = "API keys for scripts: `Authorization: Bearer adk_...`"),
        (name = "users", description = "User management"),
        (name = "clients", description = "Customer records"),
        (name = "client_management", description = "Import, export, duplicates, merge"),
        (name = "jobs", description = "Agents and their jobs"),
        (name = "permissions", description = "Grants, the catalog, checks"),
        (name = "audit", description = "The tamper-evident audit log"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or API key (adk_...)")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new(
                "/api/v1/auth/token",
                Scopes::new(),
            ))])),
        );
    }
}
