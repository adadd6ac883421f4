//! HTTP for agents and the API alike: problem+json errors, the extractors every handler uses
//! (authentication, the `Authorized<R>` permission gate, JSON/query/form wrappers), and the
//! request id. An agent contributes routes as a `utoipa_axum` router over any state `S` from
//! which the [`Core`](agentdesk_core::Core) can be had (`Core: FromRef<S>`); the API mounts them.

pub mod extractors;
pub mod problem;

use std::future::Future;

use axum::http::HeaderName;

/// The request's id, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The header that carries it.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT_REQUEST_ID: String;
}

/// The id of the request being handled (empty outside a request).
pub fn current_request_id() -> String {
    CURRENT_REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_default()
}

/// Runs `f` with `id` as the current request id (what problem bodies report).
pub async fn with_request_id<F: Future>(id: String, f: F) -> F::Output {
    CURRENT_REQUEST_ID.scope(id, f).await
}

/// The formats of a streamed export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// `text/csv`.
    Csv,
    /// JSON Lines, `application/x-ndjson`.
    Jsonl,
}

impl ExportFormat {
    /// The values of `?format=`.
    pub const NAMES: [&'static str; 2] = ["csv", "jsonl"];

    /// The OpenAPI schema of `?format=` (for `#[param(schema_with = ExportFormat::schema)]`).
    pub fn schema() -> utoipa::openapi::Object {
        choice_schema(&Self::NAMES)
    }

    /// Parses `?format=`: `csv` or `jsonl`, `default` when absent; anything else is a 400.
    pub fn parse(raw: Option<&str>, default: Self) -> Result<Self, problem::ApiError> {
        match raw {
            None => Ok(default),
            Some("csv") => Ok(Self::Csv),
            Some("jsonl") => Ok(Self::Jsonl),
            Some(other) => Err(problem::ApiError::http(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_parameter",
                format!("format `{other}` is not csv or jsonl"),
            )),
        }
    }

    /// A download response: the body with its content type and `attachment; filename=<stem>.<ext>`.
    pub fn attachment(self, body: axum::body::Body, stem: &str) -> axum::response::Response {
        use axum::http::{HeaderValue, header};
        use axum::response::IntoResponse;
        let (content_type, ext) = match self {
            Self::Csv => ("text/csv; charset=utf-8", "csv"),
            Self::Jsonl => ("application/x-ndjson", "jsonl"),
        };
        let mut response = body.into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{stem}.{ext}\""))
        {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, value);
        }
        response
    }
}

/// The OpenAPI schema of a string parameter that takes one of `values`: for `#[param(schema_with
/// = ...)]`, fed from the same list the handler checks, so the document and the check agree.
pub fn choice_schema(values: &[&str]) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

/// [`choice_schema`] for an optional body field: one of `values`, or null.
pub fn nullable_choice_schema(values: &[&str]) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let mut choices: Vec<serde_json::Value> = values.iter().map(|v| (*v).into()).collect();
    choices.push(serde_json::Value::Null);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(choices))
        .build()
}

/// `deserialize_with` for a field that is a struct: only a JSON object reads as one (serde would
/// also take an array of the fields in order, which the document rules out).
pub fn object_only<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::Deserialize;
    use serde::de::Error;
    match serde_json::Value::deserialize(deserializer)? {
        value @ serde_json::Value::Object(_) => {
            serde_json::from_value(value).map_err(D::Error::custom)
        }
        _ => Err(D::Error::custom("must be a JSON object")),
    }
}

/// [`object_only`] for an optional field: null or an object.
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::Deserialize;
    use serde::de::Error;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(None),
        value if value.is_object() => object_only(value).map(Some).map_err(D::Error::custom),
        _ => Err(D::Error::custom("must be a JSON object or null")),
    }
}

/// The multipart body of an upload: one part named `file`.
#[derive(utoipa::ToSchema)]
pub struct FileUpload {
    /// The file's bytes (the part's own `Content-Type` and file name are kept when given).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// An uploaded file's name, safe to keep and to send back in `Content-Disposition`: its last path
/// part, without control characters or quotes, at most 255 characters; `fallback` when nothing
/// is left of it.
pub fn clean_filename(raw: Option<&str>, fallback: &str) -> String {
    let base = raw
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(255)
        .collect::<String>();
    let trimmed = base.trim();
    if trimmed.is_empty() {
        fallback.to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// A multipart body that cannot be read: 400 `bad_request`.
pub fn bad_multipart(e: impl std::fmt::Display) -> problem::ApiError {
    problem::ApiError::http(
        axum::http::StatusCode::BAD_REQUEST,
        "bad_request",
        e.to_string(),
    )
}

/// Reads the start of an upload, `n` bytes or the whole body when it is shorter, to judge the
/// file by its bytes; [`with_head`] puts it back in front of the rest.
pub async fn read_head<S>(body: &mut S, n: usize) -> Result<Vec<u8>, problem::ApiError>
where
    S: futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Unpin,
{
    use futures::StreamExt;
    let mut head: Vec<u8> = Vec::with_capacity(n);
    while head.len() < n {
        match body.next().await {
            Some(chunk) => head.extend_from_slice(&chunk.map_err(bad_multipart)?),
            None => break,
        }
    }
    Ok(head)
}

/// The whole upload again: the `head` read by [`read_head`], then the rest of `body`.
pub fn with_head<S>(
    head: Vec<u8>,
    body: S,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + Unpin
where
    S: futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + Unpin,
{
    use futures::StreamExt;
    futures::stream::once(futures::future::ready(Ok(axum::body::Bytes::from(head)))).chain(body)
}

/// A stored original as a download: its bytes streamed with their type, length and
/// `attachment; filename=` (the name in ASCII, anything else as `_`).
pub fn attachment_response<S>(
    stream: S,
    content_type: &str,
    size_bytes: i64,
    filename: &str,
) -> axum::response::Response
where
    S: futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static,
{
    use axum::http::{HeaderValue, header};
    use axum::response::IntoResponse;
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(size_bytes.max(0) as u64),
    );
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// One CSV cell: quoted when needed, and defused when a spreadsheet would take it for a formula.
pub fn csv_cell(value: &str) -> String {
    let defused = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

/// Streams an upload into storage under `folder`, enforcing `limit` bytes while it streams:
/// 413 `payload_too_large` past the limit, 400 when the client stops sending midway.
pub async fn store_upload<B>(
    core: &agentdesk_core::Core,
    folder: &str,
    body: B,
    limit: u64,
) -> Result<agentdesk_core::storage::StoredFile, problem::ApiError>
where
    B: futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + Unpin,
{
    use agentdesk_core::storage::UploadError;
    use axum::http::StatusCode;
    core.storage
        .put_stream(folder, body, limit)
        .await
        .map_err(|e| match e {
            UploadError::TooLarge { limit } => problem::ApiError::http(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the file is larger than {} MiB", limit / 1024 / 1024),
            ),
            UploadError::Interrupted(m) => {
                problem::ApiError::http(StatusCode::BAD_REQUEST, "bad_request", m)
            }
            UploadError::Store(e) => e.into(),
        })
}

/// 415 `unsupported_media_type` with `detail`.
pub fn unsupported_media_type(detail: &str) -> problem::ApiError {
    problem::ApiError::http(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        detail,
    )
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
        assert_eq!(csv_cell("-1,2"), "\"'-1,2\"");
    }
}
