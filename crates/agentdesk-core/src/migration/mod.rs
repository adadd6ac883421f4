//! One set of migrations for SQLite and PostgreSQL. DDL is written once with type placeholders
//! that [`ddl`] fills in per backend, so the two schemas cannot drift apart.

use sea_orm_migration::prelude::*;

pub(crate) mod contract;
mod m0001_users_sessions;
mod m0002_permissions_audit;
mod m0003_clients;
mod m0004_jobs;
mod m0005_documents;
mod m0006_audit_chain_guard;
mod m0007_audit_queue;
mod m0008_audit_tail;
mod m0009_audit_chain_per_statement;
mod m0010_audit_body_digest;
mod m0011_recordings;
mod m0012_reports;
mod m0013_report_schedules;
mod m0014_grant_clients;
mod m0015_jobs_queued_index;
mod m0016_api_keys;
mod m0017_totp;
mod m0018_schedule_api_key;
mod m0019_clients_search_deferred;

/// Makes one migration (migrations are trait objects, made afresh for each run).
pub type MakeMigration = fn() -> Box<dyn MigrationTrait>;

/// Migrations a binary adds after the core's (see [`add_migrations`]).
static ADDED: std::sync::OnceLock<Vec<MakeMigration>> = std::sync::OnceLock::new();

/// Adds migrations after the core's, once per process, before the database is first migrated.
/// The upgrade test's build (`agentdesk` with the `upgrade-probe` feature) uses it to be "the
/// next release with a new migration" without a second copy of the workspace. Returns false if
/// migrations were already added.
pub fn add_migrations(migrations: Vec<MakeMigration>) -> bool {
    ADDED.set(migrations).is_ok()
}

/// Applies the schema, in order. A migration, once released, is never edited: add a new one.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut list = Self::core_migrations();
        list.extend(ADDED.get().into_iter().flatten().map(|make| make()));
        list
    }
}

impl Migrator {
    fn core_migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_users_sessions::Migration),
            Box::new(m0002_permissions_audit::Migration),
            Box::new(m0003_clients::Migration),
            Box::new(m0004_jobs::Migration),
            Box::new(m0005_documents::Migration),
            Box::new(m0006_audit_chain_guard::Migration),
            Box::new(m0007_audit_queue::Migration),
            Box::new(m0008_audit_tail::Migration),
            Box::new(m0009_audit_chain_per_statement::Migration),
            Box::new(m0010_audit_body_digest::Migration),
            Box::new(m0011_recordings::Migration),
            Box::new(m0012_reports::Migration),
            Box::new(m0013_report_schedules::Migration),
            Box::new(m0014_grant_clients::Migration),
            Box::new(m0015_jobs_queued_index::Migration),
            Box::new(m0016_api_keys::Migration),
            Box::new(m0017_totp::Migration),
            Box::new(m0018_schedule_api_key::Migration),
            Box::new(m0019_clients_search_deferred::Migration),
        ]
    }
}

/// The names of this build's migrations, in order: the last is its schema version.
pub fn known_migrations() -> Vec<String> {
    Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect()
}

/// The schema version this build migrates to: its last migration's name.
pub fn schema_version() -> String {
    known_migrations().pop().unwrap_or_default()
}

/// Removals that a release only makes once no older binary serves the database: dropped tables
/// and columns, renames, tightened constraints, replaced triggers (see [`contract`]). Applied by
/// `agentdesk migrate --contract`, and at start only to a database that the same start created;
/// kept in their own table so that an older binary's migrator does not see them.
///
/// Expand-only rule: a migration in [`Migrator`] only adds (tables, nullable or defaulted
/// columns, indexes); `scripts/check-migrations` fails CI when one drops or renames anything.
pub struct ContractMigrator;

#[async_trait::async_trait]
impl MigratorTrait for ContractMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(contract::ClientsSearchDeferred)]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("agentdesk_contract_migrations").into_iden()
    }
}

/// Fills the type placeholders of a DDL script for the backend and runs each statement.
///
/// `{uuid}` UUID / BLOB, `{ts}` TIMESTAMPTZ / TEXT, `{bool}` BOOLEAN / INTEGER, `{json}` JSONB / TEXT,
/// `{true}` / `{false}` boolean literals, `{bigint}` BIGINT / INTEGER.
pub(crate) async fn ddl(manager: &SchemaManager<'_>, script: &str) -> Result<(), DbErr> {
    let postgres = manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres;
    let types: [(&str, &str, &str); 7] = [
        ("{uuid}", "UUID", "BLOB"),
        ("{ts}", "TIMESTAMPTZ", "TEXT"),
        ("{bool}", "BOOLEAN", "INTEGER"),
        ("{json}", "JSONB", "TEXT"),
        ("{true}", "TRUE", "1"),
        ("{false}", "FALSE", "0"),
        ("{bigint}", "BIGINT", "INTEGER"),
    ];
    let mut sql = script.to_owned();
    for (placeholder, pg, lite) in types {
        sql = sql.replace(placeholder, if postgres { pg } else { lite });
    }
    let conn = manager.get_connection();
    for statement in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        conn.execute_unprepared(statement).await?;
    }
    Ok(())
}

/// Runs backend-specific statements (search indexes, triggers) one by one: literals, or SQL built
/// with `format!` around shared constants.
pub(crate) async fn run_statements(
    manager: &SchemaManager<'_>,
    statements: &[impl AsRef<str>],
) -> Result<(), DbErr> {
    for statement in statements {
        manager
            .get_connection()
            .execute_unprepared(statement.as_ref())
            .await?;
    }
    Ok(())
}
