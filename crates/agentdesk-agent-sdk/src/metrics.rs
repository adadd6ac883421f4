//! Figures an agent contributes to overviews and reports, so that the reports agent never reads
//! another agent's tables by name: each agent crate exports a [`MetricsProvider`] over its own
//! rows, and the binary hands the list to the reports agent.

use std::collections::HashMap;
use std::sync::Arc;

use agentdesk_core::services::permissions::ClientScope;
use agentdesk_core::{Core, Error};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Asterisk, Expr, Func};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TryGetable,
};
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

/// An agent's table of client-owned items as the metrics helpers read it: which columns hold
/// the row's id, its client and its creation time.
#[derive(Debug, Clone, Copy)]
pub struct ItemTable<E: EntityTrait> {
    /// The primary key (UUID v7, so id order is creation order).
    pub id: E::Column,
    /// The owning client.
    pub client: E::Column,
    /// When the row was created.
    pub created: E::Column,
}

impl<E: EntityTrait> ItemTable<E> {
    /// Rows whose client the query's scope covers (and is its one client, when given) created
    /// in its period.
    pub fn condition(&self, query: &MetricsQuery) -> Condition {
        let mut condition = Condition::all()
            .add(self.created.gte(query.from))
            .add(self.created.lt(query.to));
        condition = condition.add(query.scope.condition((E::default(), self.client)));
        if let Some(client) = query.client_id {
            condition = condition.add(self.client.eq(client));
        }
        condition
    }

    /// Per value of `status`: how many rows the query covers, and the sum of `sum` over them.
    pub async fn by_status<S: TryGetable>(
        &self,
        core: &Core,
        query: &MetricsQuery,
        status: E::Column,
        sum: E::Column,
    ) -> Result<Vec<(String, i64, Option<S>)>, Error> {
        Ok(E::find()
            .select_only()
            .column(status)
            .column_as(Expr::from(Func::count(Expr::col(Asterisk))), "n")
            .column_as(Expr::from(Func::sum(sum.into_expr())), "total")
            .filter(self.condition(query))
            .group_by(status)
            .into_tuple()
            .all(core.db.reader())
            .await?)
    }

    /// Up to `limit` rows the query covers, in id order after `after`.
    pub async fn rows_after(
        &self,
        core: &Core,
        query: &MetricsQuery,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<E::Model>, Error> {
        let mut select = E::find().filter(self.condition(query));
        if let Some(after) = after {
            select = select.filter(self.id.gt(after));
        }
        Ok(select
            .order_by_asc(self.id)
            .limit(limit)
            .all(core.db.reader())
            .await?)
    }

    /// How many rows the query covers for each of `clients` (absent: none).
    pub async fn counts_by_client(
        &self,
        core: &Core,
        query: &MetricsQuery,
        clients: &[Uuid],
    ) -> Result<HashMap<Uuid, i64>, Error> {
        let counts: Vec<(Uuid, i64)> = E::find()
            .select_only()
            .column(self.client)
            .column_as(Expr::from(Func::count(Expr::col(Asterisk))), "n")
            .filter(self.condition(query))
            .filter(self.client.is_in(clients.iter().copied()))
            .group_by(self.client)
            .into_tuple()
            .all(core.db.reader())
            .await?;
        Ok(counts.into_iter().collect())
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
/// per [`MetricsProvider::columns`] entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    /// The row's id; the next page starts after it.
    pub id: Uuid,
    /// The client the row is about, whose name the report prints beside it.
    pub client_id: Option<Uuid>,
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
    async fn overview(&self, core: &Core, query: &MetricsQuery) -> Result<Value, Error>;

    /// The report table's columns.
    fn columns(&self) -> &'static [Column];

    /// Up to `limit` rows of the report, in id order after `after`: the items in scope created
    /// in the period.
    async fn rows(
        &self,
        core: &Core,
        query: &MetricsQuery,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<ReportRow>, Error>;

    /// How many items in scope created in the period each of `clients` has (absent: none).
    async fn counts_by_client(
        &self,
        core: &Core,
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
