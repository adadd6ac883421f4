//! The `reports_analysis` agent: an overview of the business over the caller's clients, and
//! reports (client summary, activity, documents, recordings) as JSON, CSV or PDF files (with
//! charts, typeset by Typst in the process) made by jobs.
//!
//! Figures about other agents' items (documents, recordings) come through the SDK's
//! [`MetricsProvider`](agentdesk_agent_sdk::metrics::MetricsProvider)s that those agents
//! export; this crate never reads their tables. Everything is computed in SQL over the client
//! scope of the user asking (for a report: of its creator when it is made).

mod delivery;
mod generate;
pub mod overview;
pub mod pdf;
pub mod period;
pub mod reports;
mod routes;
pub mod schedules;

use std::sync::Arc;

use agentdesk_agent_sdk::core::Core;
use agentdesk_agent_sdk::metrics::MetricsProviders;
use agentdesk_agent_sdk::{ActionSpec, Agent, CronSpec, JobContext, JobError, Manifest};
use serde_json::Value;

pub use delivery::{Delivery, SIGNATURE_HEADER, signature};
pub use generate::GenerateArgs;
pub use routes::routes;

/// The agent's name.
pub const NAME: &str = "reports_analysis";
/// The job kind that makes a report's file.
pub const GENERATE: &str = "generate";
/// The job kind of a schedule's tick: makes the tick's report.
pub const SCHEDULED: &str = "scheduled";
/// The job kind that delivers a scheduled report by one channel.
pub const DELIVER: &str = "deliver";

/// The agent's manifest.
pub fn manifest() -> Manifest {
    Manifest {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "overviews, and JSON, CSV and PDF reports with charts, made by jobs over the caller's clients.",
        actions: vec![
            ActionSpec {
                name: "read",
                description: "read overviews and reports",
            },
            ActionSpec {
                name: "generate",
                description: "generate reports",
            },
        ],
        uses: vec![],
    }
}

/// The agent, with the metrics providers of the other agents the binary carries.
#[derive(Clone)]
pub struct ReportsAnalysis {
    providers: MetricsProviders,
}

/// The agent, ready for a runner.
pub fn agent(providers: MetricsProviders) -> Arc<dyn Agent> {
    Arc::new(ReportsAnalysis { providers })
}

#[async_trait::async_trait]
impl Agent for ReportsAnalysis {
    fn manifest(&self) -> Manifest {
        manifest()
    }

    async fn handle(&self, ctx: &JobContext) -> Result<Value, JobError> {
        match ctx.job().kind.as_str() {
            GENERATE => generate::run(ctx, &self.providers).await,
            SCHEDULED => schedules::run_tick(ctx).await,
            DELIVER => delivery::run(ctx).await,
            other => Err(JobError::Fatal(format!(
                "reports_analysis has no job kind `{other}`"
            ))),
        }
    }

    async fn schedules(
        &self,
        core: &Core,
    ) -> Result<Vec<CronSpec>, agentdesk_agent_sdk::core::Error> {
        schedules::cron_specs(core).await
    }

    fn problem(&self, core: &Core) -> Option<String> {
        let from = core.settings.mail_from.as_deref()?;
        from.parse::<lettre::message::Mailbox>().err().map(|e| {
            format!("AGENTDESK_MAIL_FROM `{from}` is not a mailbox ({e}): reports cannot be mailed")
        })
    }
}
