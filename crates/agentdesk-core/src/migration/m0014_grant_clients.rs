use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// A grant's clients as rows, so that a member's client scope reaches SQL as a join to an index
// (`grant_id, client_id`) instead of a list of hundreds of bound ids rebuilt per request.
// `grants.client_ids` stays the record; triggers keep these rows in step with it (grants are
// only inserted and deleted), so a previous release that writes only `grants` keeps them right
// during a blue/green upgrade. Existing grants are copied once here.
const UP: &str = r#"
CREATE TABLE grant_clients (
    grant_id {uuid} NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    client_id {uuid} NOT NULL,
    PRIMARY KEY (grant_id, client_id)
)
"#;

const SQLITE: [&str; 2] = [
    "CREATE TRIGGER grant_clients_insert AFTER INSERT ON grants WHEN new.client_ids IS NOT NULL \
     BEGIN INSERT OR IGNORE INTO grant_clients (grant_id, client_id) \
     SELECT new.id, unhex(replace(value, '-', '')) FROM json_each(new.client_ids); END",
    "INSERT OR IGNORE INTO grant_clients (grant_id, client_id) \
     SELECT grants.id, unhex(replace(j.value, '-', '')) FROM grants, json_each(grants.client_ids) AS j \
     WHERE grants.client_ids IS NOT NULL",
];

const POSTGRES: [&str; 3] = [
    "CREATE FUNCTION agentdesk_grant_clients_insert() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN \
       IF NEW.client_ids IS NOT NULL THEN \
         INSERT INTO grant_clients (grant_id, client_id) \
         SELECT NEW.id, value::uuid FROM jsonb_array_elements_text(NEW.client_ids) \
         ON CONFLICT DO NOTHING; \
       END IF; \
       RETURN NULL; \
     END $$",
    "CREATE TRIGGER grant_clients_insert AFTER INSERT ON grants \
     FOR EACH ROW EXECUTE FUNCTION agentdesk_grant_clients_insert()",
    "INSERT INTO grant_clients (grant_id, client_id) \
     SELECT grants.id, j.value::uuid FROM grants, jsonb_array_elements_text(grants.client_ids) AS j \
     WHERE grants.client_ids IS NOT NULL ON CONFLICT DO NOTHING",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await?;
        let statements: &[&str] = match manager.get_database_backend() {
            DatabaseBackend::Postgres => &POSTGRES,
            _ => &SQLITE,
        };
        super::run_statements(manager, statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            connection
                .execute_unprepared(
                    "DROP TRIGGER grant_clients_insert ON grants; DROP TABLE grant_clients; \
                     DROP FUNCTION agentdesk_grant_clients_insert()",
                )
                .await?;
        } else {
            connection
                .execute_unprepared("DROP TRIGGER grant_clients_insert; DROP TABLE grant_clients")
                .await?;
        }
        Ok(())
    }
}
