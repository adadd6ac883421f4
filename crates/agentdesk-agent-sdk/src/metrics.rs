//! Figures an agent contributes to overviews and reports, so that the reports agent never reads
//! another agent's tables by name: each agent crate exports a [`MetricsProvider`] over its own
//! rows, and the binary hands the list to the reports agent.

use std::collections::HashMap;
use std::sync::Arc;

use agentdesk_core::Error;
use agentdesk_core::services::permissions::ClientScope;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, SimpleExpr};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Which rows a figure or a report covers: the caller's client scope, optionally one client,
/// and the period `[from, to)` of the rows' creation.
#[derive(Debug, Clone)]
pub struct MetricsQuery {
    /// The client scope of the user the figures are for.
    pub scope: ClientScope,
    /// Only this client (already checked to be in scope).
    pub client_id: Option<Uuid>,
    /// Start of the period, inclusive.
    pub from: DateTime<Utc>,
    /// End of the period, exclusive.
    pub to: DateTime<Utc>,
}

impl MetricsQuery {
    /// The SQL condition that keeps rows whose `client_column` is in scope (and is the one
    /// client, when given) and whose `time_column` lies in the period.
    pub fn condition(&self, client_column: &str, time_column: &str) -> SimpleExpr {
        let mut condition = Expr::col(Alias::new(time_column))
            .gte(self.from)
            .and(Expr::col(Alias::new(time_column)).lt(self.to));
        if let ClientScope::Only(ids) = &self.scope {
            condition = condition.and(Expr::col(Alias::new(client_column)).is_in(ids.clone()));
        }
        if let Some(client) = self.client_id {
            condition = condition.and(Expr::col(Alias::new(client_column)).eq(client));
        }
        condition
    }
}

/// One column of a report table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The key in JSON rows and the CSV header.
    pub key: &'static str,
    /// The heading in a PDF table.
    pub title: &'static str,
}

/// A row of a report table: its key (rows come in key order, for paging) and its cells, one
/// per [`MetricsProvider::columns`] entry, with `client_id` among them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    /// The row's id; the next page starts after it.
    pub id: Uuid,
    /// The cells.
    pub cells: Map<String, Value>,
}

/// Figures and report rows over one agent's items (documents, recordings).
#[async_trait::async_trait]
pub trait MetricsProvider: Send + Sync + 'static {
    /// The overview section it fills and the report kind it backs: `documents`.
    fn section(&self) -> &'static str;

    /// The section's heading: `Documents`.
    fn title(&self) -> &'static str;

    /// The section of an overview: a JSON object of totals over the items in scope created in
    /// the period (`{"total", ...}`); a `by_status` object, when there is one, is charted.
    async fn overview(
        &self,
        core: &agentdesk_core::Core,
        query: &MetricsQuery,
    ) -> Result<Value, Error>;

    /// The report table's columns.
    fn columns(&self) -> &'static [Column];

    /// Up to `limit` rows of the report, in id order after `after`: the items in scope created
    /// in the period.
    async fn rows(
        &self,
        core: &agentdesk_core::Core,
        query: &MetricsQuery,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<ReportRow>, Error>;

    /// How many items in scope created in the period each of `clients` has (absent: none).
    async fn counts_by_client(
        &self,
        core: &agentdesk_core::Core,
        query: &MetricsQuery,
        clients: &[Uuid],
    ) -> Result<HashMap<Uuid, i64>, Error>;
}

/// The providers of every agent a binary carries.
pub type MetricsProviders = Arc<Vec<Arc<dyn MetricsProvider>>>;

/// A `{"status": count}` object from grouped rows, keys sorted.
pub fn counts_object(rows: impl IntoIterator<Item = (String, i64)>) -> Value {
    let mut sorted: Vec<(String, i64)> = rows.into_iter().collect();
    sorted.sort();
    Value::Object(
        sorted
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect(),
    )
}
