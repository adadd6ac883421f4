//! The `upgrade-probe` feature: this build is "the next release", with one more migration than
//! the core's, so that the blue/green upgrade test (`deploy/test-upgrade.sh`) upgrades to a build
//! that adds a migration while the previous build serves. Never in a release.

use sea_orm_migration::prelude::*;

/// `m9000_upgrade_probe`: an additive migration (a new table), as an expand release makes.
struct UpgradeProbe;

impl MigrationName for UpgradeProbe {
    fn name(&self) -> &str {
        "m9000_upgrade_probe"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for UpgradeProbe {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE upgrade_probe (id INTEGER PRIMARY KEY, note TEXT NOT NULL)",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE upgrade_probe")
            .await
            .map(|_| ())
    }
}

/// Adds the probe's migration to the core's.
pub fn install() {
    agentdesk_core::migration::add_migrations(vec![|| Box::new(UpgradeProbe)]);
}
