//! Full-text search over page text: the normalisation shared by the index and the queries, the
//! query builders for FTS5 and tsvector, and the highlighted snippet.
//!
//! Both indexes split text into words at spaces and punctuation, which leaves a run of Chinese
//! or Japanese characters as one long "word". The indexed text therefore separates those
//! characters, and a query's run of them becomes a phrase, so `見問` is found inside `常見問題`.

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
