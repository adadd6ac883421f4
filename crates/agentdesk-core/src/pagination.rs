//! Cursor pagination: `limit` 1..=200 (default 50) and an opaque cursor from the previous page.
//! Lists are ordered by UUID v7 (creation order), so a cursor is the last id seen and a page
//! never skips or repeats a row while rows are inserted.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => n as u64,
            Some(n) => {
                return Err(Error::BadRequest(format!(
                    "limit {n} is out of range 1..={MAX_LIMIT}"
                )));
            }
        };
        let after = match cursor.filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(decode_cursor(c)?),
        };
        Ok(Self { limit, after })
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

/// Encodes a row id as an opaque cursor.
pub fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<Uuid> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| Error::BadRequest("cursor is not valid".into()))
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
}
