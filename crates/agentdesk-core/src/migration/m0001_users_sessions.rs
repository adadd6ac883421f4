use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
CREATE TABLE users (
    id {uuid} PRIMARY KEY,
    email TEXT NOT NULL,
    email_key TEXT NOT NULL,
    full_name TEXT NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    is_active {bool} NOT NULL DEFAULT {true},
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    last_login_at {ts} NULL
);
CREATE UNIQUE INDEX ux_users_email_key ON users (email_key);
CREATE INDEX ix_users_role ON users (role);
CREATE TABLE sessions (
    id {uuid} PRIMARY KEY,
    user_id {uuid} NOT NULL REFERENCES users (id),
    created_at {ts} NOT NULL,
    last_used_at {ts} NOT NULL,
    expires_at {ts} NOT NULL,
    revoked_at {ts} NULL,
    revoked_reason TEXT NULL,
    ip TEXT NULL,
    user_agent TEXT NULL
);
CREATE INDEX ix_sessions_user ON sessions (user_id);
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id {uuid} NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at {ts} NOT NULL,
    used_at {ts} NULL
);
CREATE INDEX ix_refresh_tokens_session ON refresh_tokens (session_id)
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(
            manager,
            "DROP TABLE refresh_tokens;\nDROP TABLE sessions;\nDROP TABLE users",
        )
        .await
    }
}
