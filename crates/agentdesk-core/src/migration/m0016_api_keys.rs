use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// API keys: a user's credentials for scripts. Only the key's SHA-256 is stored (keys are 256
// random bits, so a fast hash is as strong as a slow one); `prefix` is the key's first
// characters, shown in lists so that a leaked key can be told apart. `grant_ids` (a JSON array)
// narrows the key to some of its owner's grants; null means all of them.
const UP: &str = r#"
CREATE TABLE api_keys (
    id {uuid} PRIMARY KEY,
    user_id {uuid} NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    grant_ids {json} NULL,
    expires_at {ts} NULL,
    created_at {ts} NOT NULL,
    last_used_at {ts} NULL,
    revoked_at {ts} NULL
);
CREATE INDEX ix_api_keys_user ON api_keys (user_id, created_at);
ALTER TABLE jobs ADD COLUMN api_key_id {uuid} NULL
"#;

// A job started with a key keeps its id (`jobs.api_key_id`): the agent then acts within the
// key's narrowing, not with everything its owner may do.
//
// What a key does is audited as its owner's, with the key's id beside (`api_key_id`, hashed
// into the event's chain when set: services::audit). Events arrive through the queue on
// PostgreSQL and the tail on SQLite, so those carry it too.
const POSTGRES: [&str; 2] = [
    "ALTER TABLE audit_events ADD COLUMN api_key_id UUID NULL",
    "ALTER TABLE audit_queue ADD COLUMN api_key_id UUID NULL",
];
const SQLITE: [&str; 2] = [
    "ALTER TABLE audit_events ADD COLUMN api_key_id BLOB NULL",
    "ALTER TABLE audit_tail ADD COLUMN api_key_id BLOB NULL",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await?;
        if manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            super::run_statements(manager, &POSTGRES).await
        } else {
            super::run_statements(manager, &SQLITE).await
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let (events, staging) =
            if manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
                ("audit_events", "audit_queue")
            } else {
                ("audit_events", "audit_tail")
            };
        super::run_statements(
            manager,
            &[
                format!("ALTER TABLE {events} DROP COLUMN api_key_id"),
                format!("ALTER TABLE {staging} DROP COLUMN api_key_id"),
                "ALTER TABLE jobs DROP COLUMN api_key_id".to_owned(),
            ],
        )
        .await?;
        super::ddl(manager, "DROP TABLE api_keys").await
    }
}
