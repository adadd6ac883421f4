use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// Report schedules of the reports_analysis agent, and the deliveries of the reports they make.
// A scheduled report remembers its tick (`scheduled_for`): with the schedule it is unique, so a
// tick retried after a crash never makes a second report. A delivery is one mail (to all its
// recipients) or one webhook call, with its own attempts, so that one failing never resends the
// other.
const UP: &str = r#"
CREATE TABLE report_schedules (
    id {uuid} PRIMARY KEY,
    kind TEXT NOT NULL,
    format TEXT NOT NULL,
    params {json} NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    deliver {json} NOT NULL,
    webhook_secret TEXT NULL,
    status TEXT NOT NULL,
    disabled_reason TEXT NULL,
    last_run_at {ts} NULL,
    last_report_id {uuid} NULL,
    created_by {uuid} NOT NULL,
    created_at {ts} NOT NULL
);
CREATE INDEX ix_report_schedules_creator ON report_schedules (created_by, id);
CREATE INDEX ix_report_schedules_status ON report_schedules (status);
ALTER TABLE reports ADD COLUMN scheduled_for {ts} NULL;
CREATE UNIQUE INDEX ux_reports_schedule_tick ON reports (schedule_id, scheduled_for);
CREATE TABLE report_deliveries (
    id {uuid} PRIMARY KEY,
    report_id {uuid} NOT NULL,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NULL,
    response_status INTEGER NULL,
    job_id {uuid} NULL,
    created_at {ts} NOT NULL,
    delivered_at {ts} NULL
);
CREATE INDEX ix_report_deliveries_report ON report_deliveries (report_id)
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::ddl(
            manager,
            "DROP TABLE report_deliveries;\nDROP INDEX ux_reports_schedule_tick;\nALTER TABLE reports DROP COLUMN scheduled_for;\nDROP TABLE report_schedules",
        )
        .await
    }
}
