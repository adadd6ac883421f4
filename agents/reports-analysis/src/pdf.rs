//! The PDF of a report, typeset by Typst in the process: a title page with the report's facts
//! (kind, period, client, who asked, when, the instance), key figures, vector charts drawn by
//! the template from data (their labels are text), and the rows as a table whose header repeats
//! on every page. Fonts (Inter, OFL) are embedded in the binary; no system font, browser or
//! network is used. Compiles run on the blocking pool, one at a time, and Typst's memo cache is
//! evicted after each, so memory stays bounded; a table holds at most [`MAX_ROWS`] rows.

use std::sync::LazyLock;

use chrono::{DateTime, Timelike, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use typst::foundations::{Dict, IntoValue};
use typst::layout::PagedDocument;
use typst_as_lib::{TypstEngine, TypstTemplateMainFile};

use agentdesk_agent_sdk::metrics::Column;

use crate::reports::kind;

/// Most rows a PDF's table holds; the JSON and CSV formats hold them all.
pub const MAX_ROWS: usize = 1_000;
/// Longest cell text in a PDF table, in characters.
const MAX_CELL_CHARS: usize = 160;

static TEMPLATE: &str = include_str!("../templates/report.typ");
static INTER_REGULAR: &[u8] = include_bytes!("../fonts/Inter-Regular.otf");
static INTER_BOLD: &[u8] = include_bytes!("../fonts/Inter-Bold.otf");

static ENGINE: LazyLock<TypstEngine<TypstTemplateMainFile>> = LazyLock::new(|| {
    TypstEngine::builder()
        .main_file(TEMPLATE)
        .fonts([INTER_REGULAR, INTER_BOLD])
        .build()
});

/// One compile at a time per process: a compile uses a core and its memory until it ends.
static COMPILES: Semaphore = Semaphore::const_new(1);

/// A report's PDF while its rows arrive.
#[derive(Debug)]
pub struct PdfDraft {
    input: Map<String, Value>,
    columns: Vec<Column>,
    rows: Vec<Value>,
    total_rows: u64,
}

impl PdfDraft {
    /// Starts a PDF from the report's facts (`header`, as the JSON format writes it), its
    /// summary and its columns.
    pub fn new(header: &Value, summary: &Value, columns: &[Column], instance: &str) -> Self {
        let kind = header["kind"].as_str().unwrap_or_default();
        let title = title_of(kind);
        let period = period_text(&header["period"]["from"], &header["period"]["to"]);
        let client = header["client_name"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| "Every client in scope".into());
        let generated = instant_text(&header["generated_at"]);
        let facts = vec![
            ["Report", title],
            ["Period", &period],
            ["Clients", &client],
            [
                "Requested by",
                header["generated_by"].as_str().unwrap_or_default(),
            ],
            ["Generated", &generated],
            ["Instance", instance],
            ["Report id", header["id"].as_str().unwrap_or_default()],
        ];
        let (figures, charts) = figures_and_charts(kind, summary);
        let shown: Vec<Column> = columns
            .iter()
            .filter(|c| !["id", "client_id", "resource_id"].contains(&c.key))
            .copied()
            .collect();
        let mut input = Map::new();
        input.insert("title".into(), json!(title));
        input.insert("instance".into(), json!(instance));
        input.insert("period".into(), json!(period));
        input.insert(
            "generated_at".into(),
            json!(instant_text(&header["generated_at"])),
        );
        input.insert("facts".into(), json!(facts));
        input.insert("figures".into(), json!(figures));
        input.insert("charts".into(), Value::Array(charts));
        input.insert(
            "columns".into(),
            json!(shown.iter().map(|c| c.title).collect::<Vec<_>>()),
        );
        input.insert("table_title".into(), json!(table_title(kind)));
        input.insert(
            "notice".into(),
            json!(format!(
                "Made by {instance} for {} from the records they could see when it was made. Times are UTC.",
                header["generated_by"].as_str().unwrap_or("its requester")
            )),
        );
        Self {
            input,
            columns: shown,
            rows: Vec::new(),
            total_rows: 0,
        }
    }

    /// Adds a row (past [`MAX_ROWS`] it is only counted).
    pub fn row(&mut self, cells: &Map<String, Value>) {
        self.total_rows += 1;
        if self.rows.len() >= MAX_ROWS {
            return;
        }
        let row: Vec<Value> = self
            .columns
            .iter()
            .map(|c| Value::String(cell_text(c.key, cells.get(c.key).unwrap_or(&Value::Null))))
            .collect();
        self.rows.push(Value::Array(row));
    }

    /// Typesets the PDF.
    pub async fn compile(mut self) -> Result<Vec<u8>, String> {
        let shown = self.rows.len() as u64;
        let note = if shown < self.total_rows {
            format!(
                "The first {shown} of {} rows; the JSON and CSV formats of this report hold them all.",
                self.total_rows
            )
        } else {
            format!("{} rows.", self.total_rows)
        };
        self.input.insert("table_note".into(), json!(note));
        self.input.insert("rows".into(), Value::Array(self.rows));
        let data = Value::Object(self.input).to_string();
        let _turn = COMPILES
            .acquire()
            .await
            .map_err(|_| "the PDF compiler is shutting down".to_owned())?;
        tokio::task::spawn_blocking(move || typeset(&data))
            .await
            .map_err(|e| format!("the PDF compile stopped: {e}"))?
    }
}

/// Compiles the template over `data` (the JSON input) to PDF bytes.
fn typeset(data: &str) -> Result<Vec<u8>, String> {
    let mut inputs = Dict::new();
    inputs.insert("data".into(), data.into_value());
    let document: PagedDocument = ENGINE
        .compile_with_input(inputs)
        .output
        .map_err(|e| format!("the report template did not compile: {e}"))?;
    typst_pdf::pdf(&document, &typst_pdf::PdfOptions::default())
        .map_err(|e| format!("the PDF could not be written: {e:?}"))
}

fn title_of(kind: &str) -> &'static str {
    match kind {
        kind::CLIENT_SUMMARY => "Client summary",
        kind::ACTIVITY => "Activity",
        kind::DOCUMENTS => "Documents",
        kind::RECORDINGS => "Recordings",
        _ => "Report",
    }
}

fn table_title(kind: &str) -> &'static str {
    match kind {
        kind::CLIENT_SUMMARY => "Clients",
        kind::ACTIVITY => "Events",
        kind::DOCUMENTS => "Documents uploaded in the period",
        kind::RECORDINGS => "Recordings made in the period",
        _ => "Rows",
    }
}

fn parse_instant(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn instant_text(value: &Value) -> String {
    parse_instant(value)
        .map(|t| t.format("%-d %b %Y, %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// `1 Nov 2026 – 30 Nov 2026` for whole days (the end is exclusive), else with times.
pub fn period_text(from: &Value, to: &Value) -> String {
    let (Some(from), Some(to)) = (parse_instant(from), parse_instant(to)) else {
        return String::new();
    };
    let midnight = |t: &DateTime<Utc>| t.num_seconds_from_midnight() == 0 && t.nanosecond() == 0;
    if midnight(&from) && midnight(&to) {
        let last = to - chrono::Duration::days(1);
        format!(
            "{} – {}",
            from.format("%-d %b %Y"),
            last.max(from).format("%-d %b %Y")
        )
    } else {
        format!(
            "{} – {}",
            from.format("%-d %b %Y %H:%M"),
            to.format("%-d %b %Y %H:%M UTC")
        )
    }
}

/// A cell as the table prints it: times to the minute, lists joined, long text cut.
fn cell_text(key: &str, value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(s) if key.ends_with("_at") || key == "at" => parse_instant(value)
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_else(|| s.clone()),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|v| cell_text("", v))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Number(n) if key == "duration_s" => n
            .as_f64()
            .map(|s| format!("{}:{:02}", (s / 60.0).floor(), (s % 60.0).round() as u64))
            .unwrap_or_default(),
        other => other.to_string(),
    };
    if text.chars().count() > MAX_CELL_CHARS {
        let mut cut: String = text.chars().take(MAX_CELL_CHARS - 1).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

fn count_items(object: &Value) -> Vec<Value> {
    object
        .as_object()
        .map(|m| {
            let mut items: Vec<(&String, i64)> = m
                .iter()
                .map(|(k, v)| (k, v.as_i64().unwrap_or(0)))
                .collect();
            items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            items.into_iter().map(|(k, v)| json!([k, v])).collect()
        })
        .unwrap_or_default()
}

fn series(list: &Value, key: &str, label: impl Fn(&str) -> String) -> (Vec<Value>, usize) {
    let items: Vec<Value> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    json!([
                        label(e[key].as_str().unwrap_or_default()),
                        e["count"].as_i64().unwrap_or(0)
                    ])
                })
                .collect()
        })
        .unwrap_or_default();
    // About eight labels under a chart, whatever its length.
    let every = items.len().div_ceil(8).max(1);
    (items, every)
}

/// Past this many days, activity is charted per month: a column per day would be too thin to
/// see.
const MAX_DAY_COLUMNS: usize = 92;

/// `[{"day", "count"}]` summed into `[{"month", "count"}]`, in order.
fn by_month(days: &Value) -> Value {
    let mut months: Vec<(String, i64)> = Vec::new();
    for day in days.as_array().into_iter().flatten() {
        let month: String = day["day"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(7)
            .collect();
        let count = day["count"].as_i64().unwrap_or(0);
        match months.last_mut() {
            Some((m, n)) if *m == month => *n += count,
            _ => months.push((month, count)),
        }
    }
    Value::Array(
        months
            .into_iter()
            .map(|(month, count)| json!({"month": month, "count": count}))
            .collect(),
    )
}

fn hbars(title: &str, items: Vec<Value>) -> Value {
    json!({"type": "bars", "title": title, "items": items})
}

fn columns_chart(title: &str, (items, every): (Vec<Value>, usize)) -> Value {
    json!({"type": "columns", "title": title, "items": items, "every": every})
}

fn month_label(m: &str) -> String {
    chrono::NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d")
        .map(|d| d.format("%b %Y").to_string())
        .unwrap_or_else(|_| m.to_owned())
}

fn day_label(d: &str) -> String {
    chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
        .map(|d| d.format("%-d %b").to_string())
        .unwrap_or_else(|_| d.to_owned())
}

fn number(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        _ => "0".into(),
    }
}

/// The key figures and the charts of each kind.
fn figures_and_charts(kind: &str, summary: &Value) -> (Vec<[String; 2]>, Vec<Value>) {
    let clients = &summary["clients"];
    let documents = &summary["documents"];
    let recordings = &summary["recordings"];
    let activity = &summary["activity"];
    match kind {
        kind::CLIENT_SUMMARY => (
            vec![
                ["Clients".into(), number(&clients["total"])],
                ["New in the period".into(), number(&clients["new"])],
                [
                    "Documents in the period".into(),
                    number(&documents["total"]),
                ],
                [
                    "Recordings in the period".into(),
                    number(&recordings["total"]),
                ],
            ],
            vec![
                hbars("Clients by status", count_items(&clients["by_status"])),
                columns_chart(
                    "New clients by month",
                    series(&clients["new_by_month"], "month", month_label),
                ),
                hbars("Documents by status", count_items(&documents["by_status"])),
                hbars(
                    "Pages by status",
                    count_items(&documents["pages_by_status"]),
                ),
                hbars(
                    "Recordings by status",
                    count_items(&recordings["by_status"]),
                ),
            ],
        ),
        kind::ACTIVITY => (
            vec![
                ["Events".into(), number(&activity["total"])],
                [
                    "People active".into(),
                    activity["top_actors"]
                        .as_array()
                        .map(|a| a.len().to_string())
                        .unwrap_or_default(),
                ],
            ],
            vec![
                if activity["events_by_day"].as_array().map_or(0, Vec::len) > MAX_DAY_COLUMNS {
                    columns_chart(
                        "Activity per month",
                        series(&by_month(&activity["events_by_day"]), "month", month_label),
                    )
                } else {
                    columns_chart(
                        "Activity per day",
                        series(&activity["events_by_day"], "day", day_label),
                    )
                },
                hbars(
                    "Most active people",
                    activity["top_actors"]
                        .as_array()
                        .map(|a| a.iter().map(|e| json!([e["actor"], e["count"]])).collect())
                        .unwrap_or_default(),
                ),
            ],
        ),
        kind::DOCUMENTS => (
            vec![
                ["Documents".into(), number(&documents["total"])],
                ["Pages".into(), number(&documents["pages"])],
            ],
            vec![
                hbars("Documents by status", count_items(&documents["by_status"])),
                hbars(
                    "Pages by status",
                    count_items(&documents["pages_by_status"]),
                ),
            ],
        ),
        _ => (
            vec![
                ["Recordings".into(), number(&recordings["total"])],
                ["Minutes".into(), number(&recordings["minutes"])],
            ],
            vec![hbars(
                "Recordings by status",
                count_items(&recordings["by_status"]),
            )],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_read_as_people_write_them() {
        assert_eq!(
            period_text(
                &json!("2026-11-01T00:00:00Z"),
                &json!("2026-12-01T00:00:00Z")
            ),
            "1 Nov 2026 – 30 Nov 2026"
        );
        assert_eq!(
            period_text(
                &json!("2026-11-01T08:30:00Z"),
                &json!("2026-11-02T09:00:00Z")
            ),
            "1 Nov 2026 08:30 – 2 Nov 2026 09:00 UTC"
        );
    }

    #[test]
    fn a_template_failure_is_an_error_not_a_panic() {
        let error = typeset("not json").unwrap_err();
        assert!(error.contains("did not compile"), "{error}");
        let error = typeset(r#"{"title": "no other fields"}"#).unwrap_err();
        assert!(error.contains("did not compile"), "{error}");
    }

    #[test]
    fn a_draft_typesets_to_a_pdf() {
        let header = json!({"id": "r1", "kind": "documents", "generated_by": "a@b.test",
            "generated_at": "2026-11-01T08:30:00Z",
            "period": {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}});
        let summary = json!({"documents": {"total": 1, "pages": 2, "by_status": {"ready": 1}}});
        let columns = [Column {
            key: "filename",
            title: "File",
        }];
        let mut draft = PdfDraft::new(&header, &summary, &columns, "Firm");
        draft.row(json!({"filename": "a.pdf"}).as_object().unwrap());
        let pdf = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(draft.compile())
            .unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
    }

    #[test]
    fn cells_are_short_and_readable() {
        assert_eq!(
            cell_text("created_at", &json!("2026-11-01T08:30:12.5Z")),
            "2026-11-01 08:30"
        );
        assert_eq!(cell_text("tags", &json!(["a", "b"])), "a, b");
        assert_eq!(cell_text("duration_s", &json!(125.4)), "2:05");
        assert_eq!(
            cell_text("name", &json!("x".repeat(500))).chars().count(),
            MAX_CELL_CHARS
        );
    }
}
