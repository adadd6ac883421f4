//! Full-text search that agents share (document pages, transcript segments): the normalisation
//! shared by the index and the queries, the query builders for FTS5 and tsvector, the
//! highlighted snippet, and [`search`], the ranked query over any [`TextIndex`] in a caller's
//! client scope.
//!
//! Both indexes split text into words at spaces and punctuation, which leaves a run of Chinese
//! or Japanese characters as one long "word". The indexed text therefore separates those
//! characters, and a query's run of them becomes a phrase, so `見問` is found inside `常見問題`.

use agentdesk_core::pagination::{Page, split_page};
use agentdesk_core::services::permissions::ClientScope;
use agentdesk_core::{Core, Error};

/// Whether `c` is written without spaces between words (Han, kana, and their punctuation).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x20000..=0x2FA1F) // supplementary ideographs
}

/// The text the full-text index sees: words of letters and digits only (punctuation separates,
/// so `gnu.org/copyleft/gpl` holds `copyleft` on PostgreSQL as on SQLite), CJK characters
/// stand alone, and a word broken by a hyphen at a line end is joined (the page text keeps
/// the hyphen).
pub fn index_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '-'
            && i > 0
            && chars[i - 1].is_alphabetic()
            && chars.get(i + 1) == Some(&'\n')
            && chars.get(i + 2).is_some_and(|n| n.is_lowercase())
        {
            i += 2;
            continue;
        }
        if is_cjk(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else if c.is_alphanumeric() || c.is_whitespace() {
            out.push(c);
        } else {
            out.push(' ');
        }
        i += 1;
    }
    out
}

/// A query split into terms: each is a word, or a run of CJK characters to be found as a phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms(Vec<Vec<String>>);

impl Terms {
    /// Splits the user's query. Punctuation separates words, as in the index.
    pub fn parse(query: &str) -> Self {
        let mut terms: Vec<Vec<String>> = Vec::new();
        let mut word = String::new();
        let mut run: Vec<String> = Vec::new();
        let flush_word = |word: &mut String, terms: &mut Vec<Vec<String>>| {
            if !word.is_empty() {
                terms.push(vec![std::mem::take(word)]);
            }
        };
        let flush_run = |run: &mut Vec<String>, terms: &mut Vec<Vec<String>>| {
            if !run.is_empty() {
                terms.push(std::mem::take(run));
            }
        };
        for c in query.chars() {
            if is_cjk(c) {
                flush_word(&mut word, &mut terms);
                run.push(c.to_string());
            } else if c.is_alphanumeric() {
                flush_run(&mut run, &mut terms);
                word.push(c);
            } else {
                flush_word(&mut word, &mut terms);
                flush_run(&mut run, &mut terms);
            }
        }
        flush_word(&mut word, &mut terms);
        flush_run(&mut run, &mut terms);
        terms.truncate(32);
        Self(terms)
    }

    /// Whether the query had nothing to search for.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether term `i` is matched as a prefix: the last term, when it is a word (so that a
    /// query typed so far, or a word followed by digits such as `Liste1`, is found).
    fn is_prefix(&self, i: usize) -> bool {
        i + 1 == self.0.len() && self.0[i].len() == 1 && !self.0[i][0].chars().any(is_cjk)
    }

    /// An FTS5 MATCH expression: every term (a quoted phrase) must occur.
    pub fn fts5(&self) -> String {
        self.0
            .iter()
            .enumerate()
            .map(|(i, phrase)| {
                let quoted = format!("\"{}\"", phrase.join(" ").replace('"', "\"\""));
                if self.is_prefix(i) {
                    format!("{quoted} *")
                } else {
                    quoted
                }
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// A `to_tsquery('simple', ...)` text: terms joined by `&`, a CJK run as a `<->` phrase,
    /// the last word as a prefix. Terms hold only letters and digits, so nothing needs quoting;
    /// the text is still bound as a value, never spliced into SQL.
    pub fn tsquery(&self) -> String {
        self.0
            .iter()
            .enumerate()
            .map(|(i, phrase)| {
                let joined = phrase.join(" <-> ");
                if self.is_prefix(i) {
                    format!("{joined}:*")
                } else if phrase.len() > 1 {
                    format!("({joined})")
                } else {
                    joined
                }
            })
            .collect::<Vec<_>>()
            .join(" & ")
    }

    /// The strings to highlight in the original text.
    fn needles(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|phrase| phrase.concat().to_lowercase())
            .collect()
    }
}

/// Characters of context around the first hit.
const CONTEXT: usize = 80;

fn escape_html(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\n' | '\t' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
}

/// A short, HTML-escaped excerpt of `text` around the first hit, with every hit inside it
/// wrapped in `<mark>`...`</mark>`.
pub fn snippet(text: &str, terms: &Terms) -> String {
    let chars: Vec<char> = text.chars().collect();
    let lower: Vec<char> = chars
        .iter()
        .map(|c| c.to_lowercase().next().unwrap_or(*c))
        .collect();
    let needles: Vec<Vec<char>> = terms
        .needles()
        .iter()
        .map(|n| n.chars().collect())
        .filter(|n: &Vec<char>| !n.is_empty())
        .collect();
    let hit_at = |i: usize| -> Option<usize> {
        needles
            .iter()
            .filter(|n| lower[i..].starts_with(n))
            .map(Vec::len)
            .max()
    };
    let first = (0..lower.len()).find(|&i| hit_at(i).is_some()).unwrap_or(0);
    let start = first.saturating_sub(CONTEXT);
    let end = (first + CONTEXT).min(chars.len());
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    let mut i = start;
    while i < end {
        if let Some(len) = hit_at(i) {
            let stop = (i + len).min(chars.len());
            out.push_str("<mark>");
            escape_html(&chars[i..stop].iter().collect::<String>(), &mut out);
            out.push_str("</mark>");
            i = stop;
        } else {
            escape_html(&chars[i].to_string(), &mut out);
            i += 1;
        }
    }
    if end < chars.len() {
        out.push('…');
    }
    out
}

/// A table of indexed text that [`search`] can query. The table has `id`, `client_id`, `text` and
/// `search_text` (the text through [`index_text`]); on PostgreSQL a generated `tsv` column
/// (`to_tsvector('simple', search_text)`) with a GIN index, on SQLite an external-content FTS5
/// table over `search_text`, kept by triggers.
#[derive(Debug, Clone, Copy)]
pub struct TextIndex {
    /// The table of indexed rows.
    pub table: &'static str,
    /// Its FTS5 table (SQLite).
    pub fts_table: &'static str,
    /// Further columns of the table that each hit returns (the row's owner, its place in it).
    pub columns: &'static [&'static str],
}

/// One row found by [`search`].
#[derive(Debug)]
pub struct Hit {
    /// The row, with the index's `columns`.
    pub row: sea_orm::QueryResult,
    /// The client the row belongs to.
    pub client_id: uuid::Uuid,
    /// An HTML-escaped excerpt of its text with the hits in `<mark>`.
    pub snippet: String,
    /// Relevance; higher is better (BM25 on SQLite, `ts_rank_cd` over length on PostgreSQL).
    pub score: f64,
}

fn decode_offset(cursor: Option<&str>) -> Result<u64, Error> {
    match cursor.filter(|c| !c.is_empty()) {
        None => Ok(0),
        Some(c) => agentdesk_core::pagination::decode_number_cursor(c),
    }
}

/// The largest offset a search pages to: deep pages of a ranked search are never useful, and
/// each costs a scan of the hits before it.
const MAX_SEARCH_OFFSET: u64 = 10_000;

/// Ranked full-text search over the rows of `index` in `scope` (and of `client_id`, when given).
/// The scope is a condition of the SQL query, so pages are full and never leak.
pub async fn search(
    core: &Core,
    index: &TextIndex,
    scope: &ClientScope,
    client_id: Option<uuid::Uuid>,
    query: &str,
    limit: u64,
    cursor: Option<&str>,
) -> Result<Page<Hit>, Error> {
    use sea_orm::{ConnectionTrait, DatabaseBackend, Statement, Value as SqlValue};
    let terms = Terms::parse(query);
    if terms.is_empty() {
        return Err(Error::invalid(
            "q",
            "the query needs at least one word or character to search for",
        ));
    }
    let offset = decode_offset(cursor)?;
    if offset > MAX_SEARCH_OFFSET {
        // Past the deepest page a search serves: the end of the hits.
        return Ok(Page {
            items: Vec::new(),
            next_cursor: None,
        });
    }
    let backend = core.db.backend();
    let table = index.table;
    let fts = index.fts_table;
    let mut values: Vec<SqlValue> = Vec::new();
    let mut conditions: Vec<String> = Vec::new();
    let (from, score) = if backend == DatabaseBackend::Postgres {
        values.push(terms.tsquery().into());
        let tsquery = format!("to_tsquery('simple', ${})", values.len());
        conditions.push(format!("p.tsv @@ ({tsquery})"));
        (
            format!("{table} p"),
            // Normalised by length, as BM25 is, so a short row that is about the word ranks
            // above a long one that mentions it in passing.
            format!("ts_rank_cd(p.tsv, ({tsquery}), 2)"),
        )
    } else {
        values.push(terms.fts5().into());
        conditions.push(format!("{fts} MATCH ${}", values.len()));
        (
            format!("{fts} JOIN {table} p ON p.id = {fts}.rowid"),
            format!("-bm25({fts})"),
        )
    };
    if let ClientScope::Only(scoped) = scope {
        // The grants' rows in `grant_clients`, not a list of their client ids.
        let first = values.len() + 1;
        let placeholders: Vec<String> = (first..first + scoped.grants().len())
            .map(|i| format!("${i}"))
            .collect();
        values.extend(scoped.grants().iter().map(|id| SqlValue::from(*id)));
        conditions.push(format!(
            "p.client_id IN (SELECT client_id FROM grant_clients WHERE grant_id IN ({}))",
            placeholders.join(",")
        ));
    }
    if let Some(client) = client_id {
        values.push(client.into());
        conditions.push(format!("p.client_id = ${}", values.len()));
    }
    let columns: String = index.columns.iter().map(|c| format!("p.{c}, ")).collect();
    let sql = format!(
        "SELECT {columns}p.client_id, p.text, {score} AS score FROM {from} \
         WHERE {} ORDER BY score DESC, p.id LIMIT {} OFFSET {offset}",
        conditions.join(" AND "),
        limit + 1
    );
    let rows = core
        .db
        .reader()
        .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    let mut hits = Vec::with_capacity(rows.len());
    for row in rows {
        let text: String = row.try_get("", "text")?;
        let score: f64 = if backend == DatabaseBackend::Postgres {
            f64::from(row.try_get::<f32>("", "score")?)
        } else {
            row.try_get("", "score")?
        };
        hits.push(Hit {
            client_id: row.try_get("", "client_id")?,
            snippet: snippet(&text, &terms),
            score,
            row,
        });
    }
    let (items, more) = split_page(hits, limit, |_| ());
    let next_cursor =
        more.map(|()| agentdesk_core::pagination::encode_number_cursor(offset + limit));
    Ok(Page { items, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_is_split_and_hyphenation_joined_for_the_index() {
        assert_eq!(index_text("常見"), " 常  見 ");
        assert_eq!(index_text("infor-\nmation"), "information");
        assert_eq!(index_text("well-\nKnown"), "well \nKnown");
        assert_eq!(index_text("gnu.org/copyleft/gpl."), "gnu org copyleft gpl ");
    }

    #[test]
    fn queries_become_phrases() {
        let terms = Terms::parse("見問 report-2024 \"x");
        assert_eq!(
            terms.fts5(),
            "\"見 問\" AND \"report\" AND \"2024\" AND \"x\" *"
        );
        assert_eq!(terms.tsquery(), "(見 <-> 問) & report & 2024 & x:*");
        assert_eq!(Terms::parse("年度").tsquery(), "(年 <-> 度)");
        assert!(Terms::parse(" ,;-").is_empty());
    }

    #[test]
    fn snippets_mark_hits_and_escape() {
        let terms = Terms::parse("tax");
        let text = format!("{}<b>Tax</b> forms and taxes", "x".repeat(200));
        let s = snippet(&text, &terms);
        assert!(s.starts_with('…'));
        assert!(
            s.contains("&lt;b&gt;<mark>Tax</mark>&lt;/b&gt; forms and <mark>tax</mark>es"),
            "{s}"
        );
    }
}
