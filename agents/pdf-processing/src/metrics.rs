//! The documents section of overviews and the `documents` report, through the SDK's
//! [`MetricsProvider`], so the reports agent never reads this agent's tables.

use std::collections::HashMap;
use std::sync::Arc;

use agentdesk_agent_sdk::core::{Core, Error};
use agentdesk_agent_sdk::metrics::{
    Column, ItemTable, MetricsProvider, MetricsQuery, ReportRow, counts_object,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::documents::{Column as Doc, Entity as Documents};

const TABLE: ItemTable<Documents> = ItemTable {
    id: Doc::Id,
    client: Doc::ClientId,
    created: Doc::CreatedAt,
};

/// The provider.
#[derive(Debug, Default, Clone, Copy)]
pub struct DocumentMetrics;

/// The provider, ready for the reports agent.
pub fn metrics() -> Arc<dyn MetricsProvider> {
    Arc::new(DocumentMetrics)
}

const COLUMNS: &[Column] = &[
    Column {
        key: "id",
        title: "Document",
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
        key: "status",
        title: "Status",
    },
    Column {
        key: "page_count",
        title: "Pages",
    },
    Column {
        key: "size_bytes",
        title: "Bytes",
    },
    Column {
        key: "created_at",
        title: "Uploaded",
    },
    Column {
        key: "processed_at",
        title: "Processed",
    },
];

#[async_trait::async_trait]
impl MetricsProvider for DocumentMetrics {
    fn section(&self) -> &'static str {
        "documents"
    }

    /// `{"total", "pages", "by_status", "pages_by_status"}` over the documents uploaded in the
    /// period.
    async fn overview(&self, core: &Core, query: &MetricsQuery) -> Result<Value, Error> {
        let groups = TABLE
            .by_status::<i64>(core, query, Doc::Status, Doc::PageCount)
            .await?;
        let total: i64 = groups.iter().map(|g| g.1).sum();
        let pages: i64 = groups.iter().filter_map(|g| g.2).sum();
        let pages_by_status =
            counts_object(groups.iter().map(|(s, _, p)| (s.clone(), p.unwrap_or(0))));
        Ok(json!({
            "total": total,
            "pages": pages,
            "by_status": counts_object(groups.into_iter().map(|(s, n, _)| (s, n))),
            "pages_by_status": pages_by_status,
        }))
    }

    fn title(&self) -> &'static str {
        "Documents"
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
            .map(|d| {
                let mut cells = Map::new();
                cells.insert("id".into(), json!(d.id));
                cells.insert("client_id".into(), json!(d.client_id));
                cells.insert("filename".into(), json!(d.filename));
                cells.insert("status".into(), json!(d.status));
                cells.insert("page_count".into(), json!(d.page_count));
                cells.insert("size_bytes".into(), json!(d.size_bytes));
                cells.insert("created_at".into(), json!(d.created_at));
                cells.insert("processed_at".into(), json!(d.processed_at));
                ReportRow {
                    id: d.id,
                    client_id: Some(d.client_id),
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
