//! Cursor pagination: `limit` 1..=200 (default 50) and an opaque cursor from the previous page.
//! Lists are ordered by UUID v7 (creation order), so a cursor is the last id seen and a page
//! never skips or repeats a row while rows are inserted.

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, Result};

/// The default page size.
pub const DEFAULT_LIMIT: u64 = 50;
/// The largest page size.
pub const MAX_LIMIT: u64 = 200;

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Rows per page.
    pub limit: u64,
    /// Rows after (older than) this id, when given.
    pub after: Option<Uuid>,
}

impl PageRequest {
    /// Validates the raw query values.
    pub fn parse(limit: Option<i64>, cursor: Option<&str>) -> Result<Self> {
        let limit = parse_limit(limit)?;
        let after = match cursor.filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(decode_cursor(c)?),
        };
        Ok(Self { limit, after })
    }
}

/// Validates `limit`: 1..=[`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub fn parse_limit(limit: Option<i64>) -> Result<u64> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => Ok(n as u64),
        Some(n) => Err(Error::BadRequest(format!(
            "limit {n} is out of range 1..={MAX_LIMIT}"
        ))),
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Cuts `limit + 1` fetched rows to a page: the extra row only says there is more, and then
/// the last kept row's key is where the next page starts.
pub fn split_page<T, K>(
    mut rows: Vec<T>,
    limit: u64,
    key_of: impl Fn(&T) -> K,
) -> (Vec<T>, Option<K>) {
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(key_of) } else { None };
    (rows, next)
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only says there is more.
    pub fn from_rows(rows: Vec<T>, request: PageRequest, id_of: impl Fn(&T) -> Uuid) -> Self {
        let (items, next) = split_page(rows, request.limit, id_of);
        Self {
            items,
            next_cursor: next.map(encode_cursor),
        }
    }

    /// Maps the rows, keeping the cursor.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// The encoding of every cursor: base64url without padding, lenient about the unused low bits of
/// the last character, so that every string of a cursor's documented pattern decodes to a
/// position (a fuzzer or a generated client that follows the document is never refused).
const CURSOR_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// The pattern of an id cursor ([`encode_cursor`]): 16 bytes.
/// An empty cursor is the first page, as no cursor is.
pub const ID_CURSOR_PATTERN: &str = "^(?:[A-Za-z0-9_-]{22})?$";
/// The pattern of a number cursor ([`encode_number_cursor`]): 8 bytes.
pub const NUMBER_CURSOR_PATTERN: &str = "^(?:[A-Za-z0-9_-]{11})?$";
/// The pattern of a keyed cursor ([`encode_keyed_cursor`]): 16 bytes of id, then the key's bytes.
/// (A base64 text whose length leaves 1 over a multiple of 4 is no encoding of any bytes.)
pub const KEYED_CURSOR_PATTERN: &str =
    "^(?:[A-Za-z0-9_-]{22}(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{1,2})?)?$";

fn cursor_schema(pattern: &str) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some("The `next_cursor` of the previous page"))
        .build()
}

/// The OpenAPI schema of an id cursor parameter (`#[param(schema_with = ...)]`).
pub fn id_cursor_schema() -> utoipa::openapi::Object {
    cursor_schema(ID_CURSOR_PATTERN)
}

/// The OpenAPI schema of a number cursor parameter.
pub fn number_cursor_schema() -> utoipa::openapi::Object {
    cursor_schema(NUMBER_CURSOR_PATTERN)
}

/// The OpenAPI schema of a keyed cursor parameter.
pub fn keyed_cursor_schema() -> utoipa::openapi::Object {
    cursor_schema(KEYED_CURSOR_PATTERN)
}

fn invalid_cursor() -> Error {
    Error::BadRequest("cursor is not valid".into())
}

fn cursor_bytes(cursor: &str) -> Result<Vec<u8>> {
    CURSOR_ENGINE.decode(cursor).map_err(|_| invalid_cursor())
}

/// Encodes a row id as an opaque cursor.
pub fn encode_cursor(id: Uuid) -> String {
    CURSOR_ENGINE.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<Uuid> {
    Uuid::from_slice(&cursor_bytes(cursor)?).map_err(|_| invalid_cursor())
}

/// Encodes a position that is a number (a sequence number, an offset) as an opaque cursor.
pub fn encode_number_cursor(n: u64) -> String {
    CURSOR_ENGINE.encode(n.to_be_bytes())
}

/// Decodes an [`encode_number_cursor`] cursor.
pub fn decode_number_cursor(cursor: &str) -> Result<u64> {
    let bytes: [u8; 8] = cursor_bytes(cursor)?
        .try_into()
        .map_err(|_| invalid_cursor())?;
    Ok(u64::from_be_bytes(bytes))
}

/// Encodes a keyset position, a row id and the bytes of its sort key, as an opaque cursor.
pub fn encode_keyed_cursor(id: Uuid, key: &[u8]) -> String {
    let mut bytes = id.as_bytes().to_vec();
    bytes.extend_from_slice(key);
    CURSOR_ENGINE.encode(bytes)
}

/// Decodes an [`encode_keyed_cursor`] cursor into the id and the key's bytes.
pub fn decode_keyed_cursor(cursor: &str) -> Result<(Uuid, Vec<u8>)> {
    let mut bytes = cursor_bytes(cursor)?;
    if bytes.len() < 16 {
        return Err(invalid_cursor());
    }
    let key = bytes.split_off(16);
    let id = Uuid::from_slice(&bytes).map_err(|_| invalid_cursor())?;
    Ok((id, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors() {
        assert_eq!(PageRequest::parse(None, None).unwrap().limit, 50);
        assert!(PageRequest::parse(Some(0), None).is_err());
        assert!(PageRequest::parse(Some(201), None).is_err());
        assert!(PageRequest::parse(None, Some("!!")).is_err());
        let id = Uuid::now_v7();
        assert_eq!(
            PageRequest::parse(Some(5), Some(&encode_cursor(id)))
                .unwrap()
                .after,
            Some(id)
        );
        let page = Page::from_rows(
            vec![1, 2, 3],
            PageRequest {
                limit: 2,
                after: None,
            },
            |_| id,
        );
        assert_eq!(page.items, vec![1, 2]);
        assert!(page.next_cursor.is_some());
    }

    /// Every text of a documented cursor pattern decodes (so the document promises nothing the
    /// server refuses), and what the server mints decodes to what it encoded.
    #[test]
    fn every_text_of_a_cursor_pattern_decodes() {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut text = |len: usize| -> String {
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ALPHABET[(seed % 64) as usize] as char
                })
                .collect()
        };
        let id_pattern = regex::Regex::new(ID_CURSOR_PATTERN).unwrap();
        let number_pattern = regex::Regex::new(NUMBER_CURSOR_PATTERN).unwrap();
        let keyed_pattern = regex::Regex::new(KEYED_CURSOR_PATTERN).unwrap();
        for _ in 0..500 {
            let id = text(22);
            assert!(id_pattern.is_match(&id));
            assert!(decode_cursor(&id).is_ok(), "{id}");
            let number = text(11);
            assert!(number_pattern.is_match(&number));
            assert!(decode_number_cursor(&number).is_ok(), "{number}");
        }
        for len in 22..80 {
            let keyed = text(len);
            assert_eq!(keyed_pattern.is_match(&keyed), len % 4 != 1, "{keyed}");
            if len % 4 != 1 {
                let (_, key) = decode_keyed_cursor(&keyed).unwrap();
                assert_eq!(key.len(), len * 6 / 8 - 16);
            }
        }
        assert!(!id_pattern.is_match("AAAA"));
        assert!(
            id_pattern.is_match("") && number_pattern.is_match("") && keyed_pattern.is_match("")
        );
        assert!(decode_keyed_cursor("AAAA").is_err());
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        assert_eq!(
            decode_number_cursor(&encode_number_cursor(u64::MAX - 3)).unwrap(),
            u64::MAX - 3
        );
        assert_eq!(
            decode_keyed_cursor(&encode_keyed_cursor(id, "Zoë".as_bytes())).unwrap(),
            (id, "Zoë".as_bytes().to_vec())
        );
    }
}
