use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
CREATE TABLE grants (
    id {uuid} PRIMARY KEY,
    user_id {uuid} NULL REFERENCES users (id),
    role TEXT NULL,
    resource TEXT NOT NULL,
    actions {json} NOT NULL,
    client_ids {json} NULL,
    expires_at {ts} NULL,
    created_at {ts} NOT NULL,
    created_by {uuid} NULL,
    CHECK ((user_id IS NULL) <> (role IS NULL))
);
CREATE INDEX ix_grants_user ON grants (user_id);
CREATE INDEX ix_grants_role ON grants (role);
CREATE TABLE audit_events (
    id {uuid} PRIMARY KEY,
    seq {bigint} NOT NULL,
    at {ts} NOT NULL,
    actor_id {uuid} NULL,
    actor_email TEXT NULL,
    action TEXT NOT NULL,
    resource_type TEXT NULL,
    resource_id TEXT NULL,
    client_id {uuid} NULL,
    outcome TEXT NOT NULL,
    ip TEXT NULL,
    user_agent TEXT NULL,
    request_id TEXT NULL,
    changes {json} NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE UNIQUE INDEX ux_audit_events_seq ON audit_events (seq);
CREATE INDEX ix_audit_events_actor ON audit_events (actor_id, seq);
CREATE INDEX ix_audit_events_action ON audit_events (action, seq);
CREATE INDEX ix_audit_events_resource ON audit_events (resource_type, resource_id, seq);
CREATE INDEX ix_audit_events_client ON audit_events (client_id, seq);
CREATE INDEX ix_audit_events_at ON audit_events (at)
"#;

// Nothing in the application updates or deletes an audit event; the database refuses it too.
const PG_TRIGGERS: [&str; 2] = [
    "CREATE FUNCTION agentdesk_audit_immutable() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit events are immutable'; END $$",
    "CREATE TRIGGER audit_events_immutable BEFORE UPDATE OR DELETE ON audit_events FOR EACH ROW EXECUTE FUNCTION agentdesk_audit_immutable()",
];
const SQLITE_TRIGGERS: [&str; 2] = [
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events BEGIN SELECT RAISE(ABORT, 'audit events are immutable'); END",
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events BEGIN SELECT RAISE(ABORT, 'audit events are immutable'); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await?;
        let triggers = match manager.get_database_backend() {
            DatabaseBackend::Postgres => PG_TRIGGERS,
            _ => SQLITE_TRIGGERS,
        };
        super::run_statements(manager, &triggers).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, "DROP TABLE audit_events;\nDROP TABLE grants").await?;
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION agentdesk_audit_immutable()")
                .await?;
        }
        Ok(())
    }
}
