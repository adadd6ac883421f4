//! The recordings section of overviews and the `recordings` report, through the SDK's
//! [`MetricsProvider`], so the reports agent never reads this agent's tables.

use std::collections::HashMap;
use std::sync::Arc;

use agentdesk_agent_sdk::core::{Core, Error};
use agentdesk_agent_sdk::metrics::{
    Column, ItemTable, MetricsProvider, MetricsQuery, ReportRow, counts_object,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::recordings::{Column as Rec, Entity as Recordings};

const TABLE: ItemTable<Recordings> = ItemTable {
    id: Rec::Id,
    client: Rec::ClientId,
    created: Rec::CreatedAt,
};

/// The provider.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecordingMetrics;

/// The provider, ready for the reports agent.
pub fn metrics() -> Arc<dyn MetricsProvider> {
    Arc::new(RecordingMetrics)
}

const COLUMNS: &[Column] = &[
    Column {
        key: "id",
        title: "Recording",
    },
    Column {
        key: "client_id",
        title: "Client",
    },
    Column {
        key: "filename",
        title: "File",
    },
    Column {
        key: "source",
        title: "Source",
    },
    Column {
        key: "status",
        title: "Status",
    },
    Column {
        key: "duration_s",
        title: "Seconds",
    },
    Column {
        key: "language",
        title: "Language",
    },
    Column {
        key: "created_at",
        title: "Recorded",
    },
    Column {
        key: "transcribed_at",
        title: "Transcribed",
    },
];

#[async_trait::async_trait]
impl MetricsProvider for RecordingMetrics {
    fn section(&self) -> &'static str {
        "recordings"
    }

    /// `{"total", "minutes", "by_status"}` over the recordings made in the period.
    async fn overview(&self, core: &Core, query: &MetricsQuery) -> Result<Value, Error> {
        let groups = TABLE
            .by_status::<f64>(core, query, Rec::Status, Rec::DurationS)
            .await?;
        let total: i64 = groups.iter().map(|g| g.1).sum();
        let seconds: f64 = groups.iter().filter_map(|g| g.2).sum();
        Ok(json!({
            "total": total,
            "minutes": (seconds / 6.0).round() / 10.0,
            "by_status": counts_object(groups.into_iter().map(|(s, n, _)| (s, n))),
        }))
    }

    fn title(&self) -> &'static str {
        "Recordings"
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    async fn rows(
        &self,
        core: &Core,
        query: &MetricsQuery,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<ReportRow>, Error> {
        let rows = TABLE.rows_after(core, query, after, limit).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut cells = Map::new();
                cells.insert("id".into(), json!(r.id));
                cells.insert("client_id".into(), json!(r.client_id));
                cells.insert("filename".into(), json!(r.filename));
                cells.insert("source".into(), json!(r.source));
                cells.insert("status".into(), json!(r.status));
                cells.insert("duration_s".into(), json!(r.duration_s));
                cells.insert("language".into(), json!(r.language));
                cells.insert("created_at".into(), json!(r.created_at));
                cells.insert("transcribed_at".into(), json!(r.transcribed_at));
                ReportRow {
                    id: r.id,
                    client_id: Some(r.client_id),
                    cells,
                }
            })
            .collect())
    }

    async fn counts_by_client(
        &self,
        core: &Core,
        query: &MetricsQuery,
        clients: &[Uuid],
    ) -> Result<HashMap<Uuid, i64>, Error> {
        TABLE.counts_by_client(core, query, clients).await
    }
}
