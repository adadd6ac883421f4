use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// A user's TOTP second factor and its recovery codes. `secret` is encrypted (services::mfa);
// `last_step` is the time step of the last code accepted, so that no code is accepted twice.
// A recovery code is stored as an HMAC keyed by the instance's secret, so that a copy of the
// database alone cannot be searched for them.
const UP: &str = r#"
CREATE TABLE user_totp (
    user_id {uuid} PRIMARY KEY REFERENCES users (id),
    secret TEXT NOT NULL,
    confirmed_at {ts} NULL,
    last_step {bigint} NULL,
    created_at {ts} NOT NULL
);
CREATE TABLE recovery_codes (
    code_hash TEXT PRIMARY KEY,
    user_id {uuid} NOT NULL REFERENCES users (id),
    used_at {ts} NULL
);
CREATE INDEX ix_recovery_codes_user ON recovery_codes (user_id)
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, "DROP TABLE recovery_codes;\nDROP TABLE user_totp").await
    }
}
