//! Parse, don't validate: types that can only hold a valid value.

use std::collections::HashSet;
use std::sync::OnceLock;

use crate::error::{Error, FieldError, Result};

/// A syntactically valid email address, trimmed; compare with [`Email::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses an email address (RFC 5322 addr-spec as `garde` checks it, at most 254 bytes).
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("is required".into());
        }
        if trimmed.len() > 254 {
            return Err("is longer than 254 characters".into());
        }
        if garde::rules::email::parse_email(trimmed).is_err() {
            return Err("is not a valid email address".into());
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The address as entered (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-insensitive key that makes emails unique.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// The shortest password we accept, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest password we accept, in bytes (hashing cost must stay bounded).
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn common_passwords() -> &'static HashSet<&'static str> {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    // Django's list of 20,000 common passwords, cut to those of 12 characters or more (the
    // shorter ones fail the length rule anyway), lowercased.
    LIST.get_or_init(|| {
        include_str!("../data/common-passwords.txt")
            .lines()
            .map(str::trim)
            .collect()
    })
}

/// A password that meets the policy: at least 12 characters, not a common password, not
/// one character repeated.
#[derive(Clone, PartialEq, Eq)]
pub struct NewPassword(String);

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword(********)")
    }
}

impl NewPassword {
    /// Checks a password against the policy.
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        let chars = raw.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(format!("must be at least {MIN_PASSWORD_CHARS} characters"));
        }
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(format!("must be at most {MAX_PASSWORD_BYTES} bytes"));
        }
        let lower = raw.to_lowercase();
        if common_passwords().contains(lower.as_str()) {
            return Err("is too common".into());
        }
        let mut distinct = lower.chars().collect::<Vec<_>>();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 4 {
            return Err("has too few different characters".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The password itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A role name: `admin`, `member`, or another name of 1..=64 of `a-z 0-9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    /// Parses a role name.
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err("must be 1 to 64 of a-z, 0-9, _ and -".into())
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: trimmed, 1..=200 characters, no control characters.
pub fn parse_full_name(raw: &str) -> std::result::Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("is required".into());
    }
    if name.chars().count() > 200 {
        return Err("must be at most 200 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(name.to_owned())
}

/// Why a string with U+0000 is refused: PostgreSQL cannot store it in text (SQLite would, and
/// the two backends must answer alike).
pub const NUL_MESSAGE: &str = "must not contain the NUL character (U+0000)";

/// Whether raw JSON text may hold a NUL character: JSON can only spell one as the escape
/// `\u0000` (a raw control character is a syntax error). A cheap scan that keeps the walk of
/// [`nul_path`] off the common path; it may say yes for an escaped backslash followed by
/// `u0000`, which the walk then clears.
pub fn json_may_hold_nul(raw: &[u8]) -> bool {
    memchr::memmem::find(raw, b"\\u0000").is_some()
}

/// The path of the first key or string value in `value` that holds U+0000, as `field`,
/// `metadata.key` or `tags[2]`; `None` when none does.
pub fn nul_path(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(map) => map.iter().any(|(key, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                // A key with a NUL is named without it, so the answer itself stays printable.
                path.push_str(&key.replace('\0', ""));
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then_some(path)
}

/// The first `name=value` pair of a URL-encoded string (a query string or a form body) whose
/// name or value decodes to text with U+0000; its name (without the NUL) is returned.
pub fn urlencoded_nul_field(raw: &[u8]) -> Option<String> {
    // `%00` is the only way to spell a NUL there; most strings have none.
    memchr::memmem::find(raw, b"%00")?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(raw).ok()?;
    pairs
        .into_iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        .map(|(k, _)| k.replace('\0', ""))
}

/// Collects field errors while parsing several fields, then fails with all of them at once.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the value, or records the error under `field`.
    pub fn check<T>(&mut self, field: &str, result: std::result::Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.0.push(FieldError::new(field, message));
                None
            }
        }
    }

    /// `Ok` when nothing was recorded.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_found_with_their_path() {
        let doc: serde_json::Value = serde_json::from_str(
            r#"{"name":"ok","tags":["a","b\u0000"],"z":{"k":{"deep":"x\u0000y"}}}"#,
        )
        .unwrap();
        assert_eq!(nul_path(&doc).as_deref(), Some("tags[1]"));
        let doc: serde_json::Value =
            serde_json::from_str(r#"{"metadata":{"k":{"deep":"x\u0000y"}}}"#).unwrap();
        assert_eq!(nul_path(&doc).as_deref(), Some("metadata.k.deep"));
        let doc: serde_json::Value = serde_json::from_str(r#"{"ke\u0000y":1}"#).unwrap();
        assert_eq!(nul_path(&doc).as_deref(), Some("key"));
        let doc: serde_json::Value = serde_json::from_str(r#"{"a":["\\u0000"]}"#).unwrap();
        assert_eq!(nul_path(&doc), None, "an escaped backslash is no NUL");
        assert!(json_may_hold_nul(br#"{"a":"\u0000"}"#));
        assert!(!json_may_hold_nul(br#"{"a":"u0000"}"#));
        assert_eq!(
            urlencoded_nul_field(b"limit=5&q=ac%00me").as_deref(),
            Some("q")
        );
        assert_eq!(urlencoded_nul_field(b"q=acme%2500"), None);
    }

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse("  Ann@Example.COM ").unwrap().key(),
            "ann@example.com"
        );
        for bad in [
            "",
            "plain",
            "a@",
            "@b.c",
            "a b@c.d",
            &format!("{}@x.io", "a".repeat(250)),
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn passwords() {
        assert!(NewPassword::parse("short").is_err());
        assert!(
            NewPassword::parse("Password1234").is_err(),
            "common passwords are refused case-insensitively"
        );
        assert!(NewPassword::parse("aaaaaaaaaaaaaaaa").is_err());
        assert!(NewPassword::parse(&"x".repeat(2000)).is_err());
        assert!(NewPassword::parse("tomato-bicycle-42").is_ok());
        assert!(
            !format!("{:?}", NewPassword::parse("tomato-bicycle-42").unwrap()).contains("tomato")
        );
    }

    #[test]
    fn roles_and_names() {
        assert!(RoleName::parse("billing-team_2").is_ok());
        assert!(RoleName::parse("Admin").is_err());
        assert!(RoleName::parse("").is_err());
        assert_eq!(parse_full_name("  Ann Lee ").unwrap(), "Ann Lee");
        assert!(parse_full_name("\u{0007}bell").is_err());
        assert!(parse_full_name("   ").is_err());
    }
}
