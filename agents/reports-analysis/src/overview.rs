//! The overview: clients by status and new by month, the agents' sections (documents,
//! recordings) through their metrics providers, and activity by day with the top actors, all
//! computed in SQL over the caller's scope.

use std::collections::BTreeMap;

use agentdesk_agent_sdk::core::models::{audit, client};
use agentdesk_agent_sdk::core::services::audit::AuditFilter;
use agentdesk_agent_sdk::core::{Core, Error};
use agentdesk_agent_sdk::metrics::{MetricsProviders, MetricsQuery, counts_object};
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use sea_orm::sea_query::{Asterisk, Expr, Func, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, DatabaseBackend, EntityTrait, Order, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde_json::{Map, Value, json};

/// How many actors `top_actors` names.
pub const TOP_ACTORS: u64 = 10;

/// A SQL expression for the UTC day (`YYYY-MM-DD`) or month (`YYYY-MM`) of a timestamp column.
/// SQLite keeps timestamps as RFC 3339 text in UTC, so a prefix is the day or the month.
fn bucket(backend: DatabaseBackend, column: &str, month: bool) -> SimpleExpr {
    match (backend, month) {
        (DatabaseBackend::Postgres, true) => {
            Expr::cust(format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM')"))
        }
        (DatabaseBackend::Postgres, false) => Expr::cust(format!(
            "to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        )),
        (_, true) => Expr::cust(format!("substr({column}, 1, 7)")),
        (_, false) => Expr::cust(format!("substr({column}, 1, 10)")),
    }
}

/// Live clients in scope (and the one client, when asked).
pub fn clients_in_scope(query: &MetricsQuery) -> Condition {
    let condition = Core::live_client(&query.scope);
    match query.client_id {
        Some(id) => condition.add(client::Column::Id.eq(id)),
        None => condition,
    }
}

/// Audit events of the period that the scope covers: every event for an unrestricted caller,
/// else only events about the caller's clients (as the audit log's own filter has it).
pub fn events_in_scope(query: &MetricsQuery) -> AuditFilter {
    AuditFilter {
        client_id: query.client_id,
        from: Some(query.from),
        to: Some(query.to),
        scope: query.scope.as_filter(),
        ..AuditFilter::default()
    }
}

/// `{"total", "by_status", "new", "new_by_month"}`: every live client in scope, and those
/// created in the period by month (months without any included, for charts).
pub async fn clients_section(core: &Core, query: &MetricsQuery) -> Result<Value, Error> {
    let backend = core.db.backend();
    let by_status: Vec<(String, i64)> = client::Entity::find()
        .select_only()
        .column(client::Column::Status)
        .column_as(Expr::from(Func::count(Expr::col(Asterisk))), "n")
        .filter(clients_in_scope(query))
        .group_by(client::Column::Status)
        .into_tuple()
        .all(core.db.reader())
        .await?;
    let month = bucket(backend, "created_at", true);
    let by_month: Vec<(String, i64)> = client::Entity::find()
        .select_only()
        .column_as(month.clone(), "month")
        .column_as(Expr::from(Func::count(Expr::col(Asterisk))), "n")
        .filter(clients_in_scope(query))
        .filter(client::Column::CreatedAt.gte(query.from))
        .filter(client::Column::CreatedAt.lt(query.to))
        .group_by(month)
        .into_tuple()
        .all(core.db.reader())
        .await?;
    let total: i64 = by_status.iter().map(|g| g.1).sum();
    let new: i64 = by_month.iter().map(|g| g.1).sum();
    let counted: BTreeMap<String, i64> = by_month.into_iter().collect();
    let new_by_month: Vec<Value> = months(query.from, query.to)
        .into_iter()
        .map(|m| json!({"month": m, "count": counted.get(&m).copied().unwrap_or(0)}))
        .collect();
    Ok(json!({
        "total": total,
        "by_status": counts_object(by_status),
        "new": new,
        "new_by_month": new_by_month,
    }))
}

/// `{"total", "events_by_day", "top_actors"}` over the audit events of the period in scope.
pub async fn activity_section(core: &Core, query: &MetricsQuery) -> Result<Value, Error> {
    let backend = core.db.backend();
    let day = bucket(backend, "at", false);
    let by_day: Vec<(String, i64)> = audit::Entity::find()
        .select_only()
        .column_as(day.clone(), "day")
        .column_as(Expr::from(Func::count(Expr::col(Asterisk))), "n")
        .filter(events_in_scope(query).condition())
        .group_by(day)
        .into_tuple()
        .all(core.db.reader())
        .await?;
    let count = Expr::from(Func::count(Expr::col(Asterisk)));
    let actors: Vec<(String, i64)> = audit::Entity::find()
        .select_only()
        .column(audit::Column::ActorEmail)
        .column_as(count.clone(), "n")
        .filter(events_in_scope(query).condition())
        .filter(audit::Column::ActorEmail.is_not_null())
        .group_by(audit::Column::ActorEmail)
        .order_by(count, Order::Desc)
        .order_by_asc(audit::Column::ActorEmail)
        .limit(TOP_ACTORS)
        .into_tuple()
        .all(core.db.reader())
        .await?;
    let total: i64 = by_day.iter().map(|g| g.1).sum();
    let counted: BTreeMap<String, i64> = by_day.into_iter().collect();
    let events_by_day: Vec<Value> = days(query.from, query.to)
        .into_iter()
        .map(|d| json!({"day": d, "count": counted.get(&d).copied().unwrap_or(0)}))
        .collect();
    Ok(json!({
        "total": total,
        "events_by_day": events_by_day,
        "top_actors": actors
            .into_iter()
            .map(|(actor, count)| json!({"actor": actor, "count": count}))
            .collect::<Vec<_>>(),
    }))
}

/// The whole overview.
pub async fn overview(
    core: &Core,
    providers: &MetricsProviders,
    query: &MetricsQuery,
) -> Result<Value, Error> {
    let mut out = Map::new();
    out.insert("period".into(), json!({"from": query.from, "to": query.to}));
    out.insert("clients".into(), clients_section(core, query).await?);
    for provider in providers.iter() {
        out.insert(
            provider.section().into(),
            provider.overview(core, query).await?,
        );
    }
    out.insert("activity".into(), activity_section(core, query).await?);
    Ok(Value::Object(out))
}

/// The UTC months `YYYY-MM` that `[from, to)` touches.
pub fn months(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
    let mut out = Vec::new();
    let last = to - Duration::nanoseconds(1);
    let (mut year, mut month) = (from.year(), from.month());
    while (year, month) <= (last.year(), last.month()) && from < to {
        out.push(format!("{year:04}-{month:02}"));
        (year, month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
    }
    out
}

/// The UTC days `YYYY-MM-DD` that `[from, to)` touches.
pub fn days(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
    let mut out = Vec::new();
    if from >= to {
        return out;
    }
    let last: NaiveDate = (to - Duration::nanoseconds(1)).date_naive();
    let mut day = from.date_naive();
    while day <= last {
        out.push(day.format("%Y-%m-%d").to_string());
        match day.succ_opt() {
            Some(next) => day = next,
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn buckets_cover_the_period_and_nothing_past_it() {
        assert_eq!(
            months(at("2025-11-15T00:00:00Z"), at("2026-02-01T00:00:00Z")),
            ["2025-11", "2025-12", "2026-01"]
        );
        assert_eq!(
            days(at("2026-02-27T10:00:00Z"), at("2026-03-02T00:00:00Z")),
            ["2026-02-27", "2026-02-28", "2026-03-01"]
        );
        assert!(days(at("2026-02-27T10:00:00Z"), at("2026-02-27T10:00:00Z")).is_empty());
        assert!(months(at("2026-02-27T10:00:00Z"), at("2026-02-27T10:00:00Z")).is_empty());
    }
}
