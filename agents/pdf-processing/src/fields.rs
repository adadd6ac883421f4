//! Fields found in page text: emails, phone numbers, dates, money amounts, IBANs and URLs, each
//! with the page it was found on.
//!
//! Detection is conservative: a false field is worse than a missed one, so phone numbers need a
//! plausible shape and digit count, dates a real calendar day, IBANs a valid ISO 13616 checksum.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// At most this many values of one kind are kept per document.
pub const MAX_PER_KIND: usize = 500;

/// A found value and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Found {
    /// The value, normalised (emails lower-cased, IBANs without spaces, dates as ISO 8601).
    pub value: String,
    /// The text as it appears in the document.
    pub raw: String,
    /// The page (1-based).
    pub page: u32,
}

/// A money amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Amount {
    /// The amount as a decimal string (`1234.50`).
    pub value: String,
    /// ISO 4217 currency code.
    pub currency: String,
    /// The text as it appears in the document.
    pub raw: String,
    /// The page (1-based).
    pub page: u32,
}

/// Everything found in a document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Fields {
    /// Email addresses.
    pub emails: Vec<Found>,
    /// Phone numbers (`value` keeps `+` and digits only).
    pub phones: Vec<Found>,
    /// Calendar dates (`value` is `YYYY-MM-DD`).
    pub dates: Vec<Found>,
    /// Money amounts with their currency.
    pub amounts: Vec<Amount>,
    /// IBANs with a valid checksum.
    pub ibans: Vec<Found>,
    /// http(s) and www URLs.
    pub urls: Vec<Found>,
}

// The patterns are ASCII (`(?-u)`) and avoid long bounded repetitions: Unicode classes and
// `{2,2000}` compile into automata hundreds of times larger, which cost each extraction process
// ~20 ms at start. Lengths are checked in code instead.
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i-u)\b[a-z0-9][a-z0-9._%+-]*@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,24}\b")
        .expect("static regex")
});
static URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(?-u:\b)(?:https?://|www\.)[^\s<>"'()\[\]{}]+"#).expect("static regex")
});
static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u)\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b").expect("static regex")
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u)(?:\+|\b00)?\(?[0-9]{1,4}\)?(?:[ .\-/]?\(?[0-9]{1,5}\)?){2,6}\b")
        .expect("static regex")
});
static ISO_DATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u)\b([0-9]{4})-([0-9]{2})-([0-9]{2})\b").expect("static regex")
});
static NUMERIC_DATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u)\b([0-9]{1,2})([./])([0-9]{1,2})([./])([0-9]{4})\b").expect("static regex")
});
static US_SLASH_DATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u)\b([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})\b").expect("static regex")
});
static NAMED_DATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i-u)\b(?:([0-9]{1,2})(?:st|nd|rd|th)?\.? (jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?,? ([0-9]{4})|(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.? ([0-9]{1,2})(?:st|nd|rd|th)?,? ([0-9]{4}))\b")
        .expect("static regex")
});
// A currency (symbol or code) before or after a number with optional thousands separators.
static AMOUNT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?x)
        (?P<pre>\$|€|£|¥|₹|(?-u:\b)(?:USD|EUR|GBP|CHF|JPY|CAD|AUD|SEK|NOK|DKK|PLN|CZK|INR|CNY)(?-u:\b))\x20?
        (?P<n1>-?[0-9]{1,3}(?:(?:,|\.|\x{a0}|\x{202f}|'|\x20)[0-9]{3})*(?:[.,][0-9]{1,2})?|-?[0-9]+(?:[.,][0-9]{1,2})?)(?-u:\b)
      |
        (?-u:\b)(?P<n2>-?[0-9]{1,3}(?:(?:,|\.|\x{a0}|\x{202f}|'|\x20)[0-9]{3})*(?:[.,][0-9]{1,2})?|-?[0-9]+(?:[.,][0-9]{1,2})?)\x20?
        (?P<post>\$|€|£|¥|₹|(?-u:\b)(?:USD|EUR|GBP|CHF|JPY|CAD|AUD|SEK|NOK|DKK|PLN|CZK|INR|CNY)(?-u:\b))
    ").expect("static regex")
});

/// Finds every field in the pages (`(page number, text)`).
pub fn find_fields<'a>(pages: impl IntoIterator<Item = (u32, &'a str)>) -> Fields {
    let mut out = Fields::default();
    let mut seen: HashSet<(&'static str, String, u32)> = HashSet::new();
    for (page, text) in pages {
        let mut keep =
            |kind: &'static str, value: &str| seen.insert((kind, value.to_owned(), page));
        for m in EMAIL.find_iter(text).filter(|m| m.len() <= 254) {
            let value = m.as_str().to_lowercase();
            if out.emails.len() < MAX_PER_KIND && keep("email", &value) {
                out.emails.push(found(value, m.as_str(), page));
            }
        }
        for m in URL.find_iter(text).filter(|m| m.len() <= 2048) {
            let raw = m.as_str().trim_end_matches(['.', ',', ';', ':', '!', '?']);
            if out.urls.len() < MAX_PER_KIND && keep("url", raw) {
                out.urls.push(found(raw.to_owned(), raw, page));
            }
        }
        for m in IBAN.find_iter(text) {
            let value: String = m.as_str().chars().filter(|c| *c != ' ').collect();
            if iban_valid(&value) && out.ibans.len() < MAX_PER_KIND && keep("iban", &value) {
                out.ibans.push(found(value, m.as_str(), page));
            }
        }
        for (value, raw) in dates(text) {
            if out.dates.len() < MAX_PER_KIND && keep("date", &value) {
                out.dates.push(found(value, &raw, page));
            }
        }
        for amount in amounts(text, page) {
            let key = format!("{} {}", amount.currency, amount.value);
            if out.amounts.len() < MAX_PER_KIND && keep("amount", &key) {
                out.amounts.push(amount);
            }
        }
        for (value, raw) in phones(text) {
            if out.phones.len() < MAX_PER_KIND && keep("phone", &value) {
                out.phones.push(found(value, &raw, page));
            }
        }
    }
    out
}

fn found(value: String, raw: &str, page: u32) -> Found {
    Found {
        value,
        raw: raw.to_owned(),
        page,
    }
}

/// ISO 13616 mod-97 check, with the country's length where known.
pub fn iban_valid(iban: &str) -> bool {
    let bytes = iban.as_bytes();
    if !(15..=34).contains(&bytes.len())
        || !bytes[..2].iter().all(u8::is_ascii_uppercase)
        || !bytes[2..4].iter().all(u8::is_ascii_digit)
        || !bytes.iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    if let Some(len) = iban_length(&iban[..2])
        && len != bytes.len()
    {
        return false;
    }
    let mut remainder: u32 = 0;
    for &b in bytes[4..].iter().chain(&bytes[..4]) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "AD" => 24,
        "AT" => 20,
        "BE" => 16,
        "BG" => 22,
        "CH" => 21,
        "CY" => 28,
        "CZ" => 24,
        "DE" => 22,
        "DK" => 18,
        "EE" => 20,
        "ES" => 24,
        "FI" => 18,
        "FR" => 27,
        "GB" => 22,
        "GR" => 27,
        "HR" => 21,
        "HU" => 28,
        "IE" => 22,
        "IS" => 26,
        "IT" => 27,
        "LI" => 21,
        "LT" => 20,
        "LU" => 20,
        "LV" => 21,
        "MC" => 27,
        "MT" => 31,
        "NL" => 18,
        "NO" => 15,
        "PL" => 28,
        "PT" => 25,
        "RO" => 24,
        "SE" => 24,
        "SI" => 19,
        "SK" => 24,
        "SM" => 27,
        _ => return None,
    })
}

fn month_number(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let months = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    months
        .iter()
        .position(|m| lower.starts_with(m))
        .map(|i| i as u32 + 1)
}

fn iso(year: i32, month: u32, day: u32) -> Option<String> {
    chrono::NaiveDate::from_ymd_opt(year, month, day)
        .filter(|_| (1000..=2999).contains(&year))
        .map(|d| d.format("%Y-%m-%d").to_string())
}

/// Dates as `(ISO value, raw)`. `d.m.yyyy` and `d/m/yyyy` are read day first unless the first
/// number cannot be a day-of-month-first date (then month first, as in US forms).
fn dates(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let num = |s: &str| s.parse::<u32>().ok();
    for c in ISO_DATE.captures_iter(text) {
        if let (Some(y), Some(m), Some(d)) = (num(&c[1]), num(&c[2]), num(&c[3]))
            && let Some(v) = iso(y as i32, m, d)
        {
            out.push((v, c[0].to_owned()));
        }
    }
    for c in NUMERIC_DATE.captures_iter(text) {
        if c[2] != c[4] {
            continue;
        }
        if let (Some(a), Some(b), Some(y)) = (num(&c[1]), num(&c[3]), num(&c[5])) {
            let us = &c[2] == "/" && US_SLASH_DATE.is_match(&c[0]) && a <= 12 && b > 12;
            let value = if us {
                iso(y as i32, a, b)
            } else {
                iso(y as i32, b, a)
            };
            if let Some(v) = value {
                out.push((v, c[0].to_owned()));
            }
        }
    }
    for c in NAMED_DATE.captures_iter(text) {
        let (day, month, year) = match (c.get(1), c.get(2), c.get(3)) {
            (Some(d), Some(m), Some(y)) => (d.as_str(), m.as_str(), y.as_str()),
            _ => match (c.get(5), c.get(4), c.get(6)) {
                (Some(d), Some(m), Some(y)) => (d.as_str(), m.as_str(), y.as_str()),
                _ => continue,
            },
        };
        if let (Some(d), Some(m), Some(y)) = (num(day), month_number(month), num(year))
            && let Some(v) = iso(y as i32, m, d)
        {
            out.push((v, c[0].to_owned()));
        }
    }
    out
}

fn currency_code(token: &str) -> &str {
    match token {
        "$" => "USD",
        "€" => "EUR",
        "£" => "GBP",
        "¥" => "JPY",
        "₹" => "INR",
        code => code,
    }
}

/// Reads `1,234.56`, `1.234,56`, `1 234,56` and `1234` as a decimal string.
fn decimal(number: &str) -> Option<String> {
    let cleaned: String = number
        .chars()
        .filter(|c| !matches!(c, ' ' | '\'' | '\u{a0}' | '\u{202f}'))
        .collect();
    let last_sep = cleaned.rfind(['.', ',']);
    let (int_part, frac) = match last_sep {
        Some(i) if cleaned.len() - i - 1 <= 2 => (&cleaned[..i], &cleaned[i + 1..]),
        _ => (cleaned.as_str(), ""),
    };
    let int_digits: String = int_part
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    if int_digits.is_empty() || int_digits == "-" {
        return None;
    }
    Some(if frac.is_empty() {
        int_digits
    } else {
        format!("{int_digits}.{frac}")
    })
}

fn amounts(text: &str, page: u32) -> Vec<Amount> {
    AMOUNT
        .captures_iter(text)
        .filter_map(|c| {
            let (currency, number) =
                match (c.name("pre"), c.name("n1"), c.name("n2"), c.name("post")) {
                    (Some(cur), Some(n), _, _) | (_, _, Some(n), Some(cur)) => {
                        (cur.as_str(), n.as_str())
                    }
                    _ => return None,
                };
            Some(Amount {
                value: decimal(number)?,
                currency: currency_code(currency).to_owned(),
                raw: c[0].trim().to_owned(),
                page,
            })
        })
        .collect()
}

/// Phone numbers: 7 to 15 digits (E.164), written with separators or a leading `+`/`00`, and
/// not a date, an amount or a bare run of digits (a reference number).
fn phones(text: &str) -> Vec<(String, String)> {
    PHONE
        .find_iter(text)
        .filter_map(|m| {
            let raw = m.as_str().trim();
            let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
            let international = raw.starts_with('+') || raw.starts_with("00");
            let separated = raw
                .chars()
                .any(|c| matches!(c, ' ' | '-' | '.' | '(' | '/'));
            if !(7..=15).contains(&digits.len()) || !(international || separated) {
                return None;
            }
            // Dates, decimals and version numbers look alike; real numbers rarely use dots and
            // slashes together, or a dot-separated group of 4 digits at the end (a year).
            if raw.contains('/') && !international
                || NUMERIC_DATE.is_match(raw)
                || ISO_DATE.is_match(raw)
                || raw.split(['.', ' ']).count() == 2
            {
                return None;
            }
            let value = if raw.starts_with('+') {
                format!("+{digits}")
            } else if let Some(rest) = digits.strip_prefix("00").filter(|_| raw.starts_with("00")) {
                format!("+{rest}")
            } else {
                digits
            };
            Some((value, raw.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(found: &[Found]) -> Vec<&str> {
        found.iter().map(|f| f.value.as_str()).collect()
    }

    #[test]
    fn finds_each_kind_with_its_page() {
        let page1 =
            "Contact Jane.Doe@Example.org or +44 20 7946 0958. Visit https://example.org/path.";
        let page2 = "Pay EUR 1.234,56 or $99.95 to DE89 3704 0044 0532 0130 00 by 31 March 2024 (due 2024-04-15).";
        let f = find_fields([(1, page1), (2, page2)]);
        assert_eq!(values(&f.emails), ["jane.doe@example.org"]);
        assert_eq!(f.emails[0].page, 1);
        assert_eq!(values(&f.phones), ["+442079460958"]);
        assert_eq!(values(&f.urls), ["https://example.org/path"]);
        assert_eq!(values(&f.ibans), ["DE89370400440532013000"]);
        assert_eq!(f.ibans[0].page, 2);
        assert_eq!(values(&f.dates), ["2024-04-15", "2024-03-31"]);
        let amounts: Vec<(&str, &str)> = f
            .amounts
            .iter()
            .map(|a| (a.currency.as_str(), a.value.as_str()))
            .collect();
        assert_eq!(amounts, [("EUR", "1234.56"), ("USD", "99.95")]);
    }

    #[test]
    fn rejects_lookalikes() {
        // A wrong IBAN checksum, an impossible date, a bare reference number, a version.
        let f = find_fields([(
            1,
            "DE89 3704 0044 0532 0130 01, 31.02.2024, ref 1234567890, v1.2.3",
        )]);
        assert!(f.ibans.is_empty(), "{:?}", f.ibans);
        assert!(f.dates.is_empty(), "{:?}", f.dates);
        assert!(f.phones.is_empty(), "{:?}", f.phones);
    }

    #[test]
    fn reads_day_first_and_us_dates() {
        let f = find_fields([(3, "13/01/2025 and 01/13/2025 and 5.6.2023 and Jan 2, 2020")]);
        // Both spellings of 13 January are one value on one page.
        assert_eq!(values(&f.dates), ["2025-01-13", "2023-06-05", "2020-01-02"]);
    }

    #[test]
    fn iban_checksum() {
        assert!(iban_valid("GB82WEST12345698765432"));
        assert!(iban_valid("NL91ABNA0417164300"));
        assert!(!iban_valid("GB82WEST12345698765431"));
        assert!(!iban_valid("XX"));
    }
}
