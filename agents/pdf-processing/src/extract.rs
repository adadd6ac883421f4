//! Text and metadata extraction from PDF bytes, in the calling process.
//!
//! This is the parser-facing part. The agent never calls it in the server process: it runs in a
//! child process with resource limits (see [`crate::isolate`]), so that a hostile file can at
//! worst kill that child. The fuzz target and the benchmarks call it directly.

use std::panic::{AssertUnwindSafe, catch_unwind};

use pdf_oxide::PdfDocument;
use pdf_oxide::object::Object;
use serde::{Deserialize, Serialize};

use crate::fields::{Fields, find_fields};

/// Bounds on one extraction; the child process adds memory and CPU-time limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Documents with more pages fail with `pdf_limit_exceeded`.
    pub max_pages: usize,
    /// Text kept per page (characters); the rest is cut.
    pub max_page_chars: usize,
    /// Text kept per document (characters); later pages keep no text.
    pub max_total_chars: usize,
    /// Run OCR on pages without a text layer (when built with the `ocr` feature).
    pub ocr: bool,
    /// Images larger than this (width × height) are not OCRed.
    pub ocr_max_pixels: u64,
    /// Tesseract languages (`eng`, `eng+fra`).
    pub ocr_languages: String,
    /// Threads that read pages at once (0: one per CPU, at most 4).
    pub threads: usize,
    /// Stack of each of those threads, in MiB.
    pub thread_stack_mb: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pages: 20_000,
            max_page_chars: 1_000_000,
            max_total_chars: 50_000_000,
            ocr: true,
            ocr_max_pixels: 40_000_000,
            ocr_languages: "eng".into(),
            threads: 0,
            thread_stack_mb: 64,
        }
    }
}

/// Why a document could not be processed (or only in part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExtractError {
    /// `pdf_corrupt`, `pdf_encrypted` or `pdf_limit_exceeded`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ExtractError {
    /// A corrupt or unreadable file.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self {
            code: CORRUPT.into(),
            message: message.into(),
        }
    }

    /// A file that needs a password.
    pub fn encrypted(message: impl Into<String>) -> Self {
        Self {
            code: ENCRYPTED.into(),
            message: message.into(),
        }
    }

    /// A file over a processing limit.
    pub fn limit(message: impl Into<String>) -> Self {
        Self {
            code: LIMIT.into(),
            message: message.into(),
        }
    }
}

/// Error code of corrupt, truncated or unparseable files.
pub const CORRUPT: &str = "pdf_corrupt";
/// Error code of files that need a user password.
pub const ENCRYPTED: &str = "pdf_encrypted";
/// Error code of files over a memory, time, page or output limit.
pub const LIMIT: &str = "pdf_limit_exceeded";

/// The document information dictionary and file facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Metadata {
    /// `/Title`.
    pub title: Option<String>,
    /// `/Author`.
    pub author: Option<String>,
    /// `/Subject`.
    pub subject: Option<String>,
    /// `/Creator`.
    pub creator: Option<String>,
    /// `/Producer`.
    pub producer: Option<String>,
    /// `/CreationDate`, as RFC 3339 when it parses, else as written.
    pub created: Option<String>,
    /// `/ModDate`, as RFC 3339 when it parses, else as written.
    pub modified: Option<String>,
    /// The header's version (`1.7`).
    pub pdf_version: Option<String>,
    /// Whether the file is encrypted (opened with the empty user password if so).
    pub encrypted: bool,
}

/// The text of one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageText {
    /// 1-based.
    pub number: u32,
    /// The text in reading order.
    pub text: String,
    /// Whether the page has a text layer (else its text, if any, came from OCR).
    pub text_layer: bool,
    /// Whether the text came from OCR.
    pub ocr: bool,
    /// Why the page has no text when it could not be read.
    pub error: Option<String>,
}

/// What the extraction produced: whatever could be read, and the error if it did not all go well.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extraction {
    /// Pages in the document (0 when it could not be opened).
    pub page_count: u32,
    /// The pages read, in order.
    pub pages: Vec<PageText>,
    /// Metadata.
    pub metadata: Metadata,
    /// Fields found in the text.
    pub fields: Fields,
    /// Set when the document failed; `pages` keeps what could be read.
    pub error: Option<ExtractError>,
    /// Whether OCR was available to this extraction.
    pub ocr_available: bool,
}

impl Extraction {
    fn failed(error: ExtractError) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }
}

/// Where a PDF header may start: readers accept up to 1024 bytes of junk before it.
const HEADER_WINDOW: usize = 1024;

/// Whether the bytes start like a PDF: `%PDF-` within the first 1024 bytes.
pub fn looks_like_pdf(first_bytes: &[u8]) -> bool {
    header_offset(first_bytes).is_some()
}

fn header_offset(bytes: &[u8]) -> Option<usize> {
    let window = &bytes[..bytes.len().min(HEADER_WINDOW + 5)];
    window.windows(5).position(|w| w == b"%PDF-")
}

fn header_version(bytes: &[u8]) -> Option<String> {
    let start = header_offset(bytes)? + 5;
    let version: String = bytes[start..]
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|b| char::from(*b))
        .collect();
    (!version.is_empty()).then_some(version)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Extracts text, metadata and fields. Never panics: a parser panic becomes `pdf_corrupt`.
pub fn extract(bytes: Vec<u8>, limits: &Limits) -> Extraction {
    match catch_unwind(AssertUnwindSafe(|| extract_inner(bytes, limits))) {
        Ok(extraction) => extraction,
        Err(panic) => Extraction::failed(ExtractError::corrupt(format!(
            "the PDF parser gave up on this file: {}",
            panic_message(&*panic)
        ))),
    }
}

fn extract_inner(bytes: Vec<u8>, limits: &Limits) -> Extraction {
    let Some(offset) = header_offset(&bytes) else {
        return Extraction::failed(ExtractError::corrupt("the file has no PDF header"));
    };
    let pdf_version = header_version(&bytes);
    // Junk before the header shifts every offset; the parser expects the header at 0.
    let mut bytes = bytes;
    bytes.drain(..offset);
    // Page threads beyond the first read their own copy of the document: pdf_oxide shares one
    // file cursor among a document's threads, and some of its reads (an XObject's subtype peek)
    // move it while another thread's object load reads on from where it left it, which lost a
    // page now and then on a busy machine.
    let threads = page_threads(limits.threads);
    let copy = (threads > 1).then(|| bytes.clone());
    let doc = match PdfDocument::from_bytes(bytes) {
        Ok(doc) => doc,
        Err(e) => {
            let message = e.to_string();
            if is_encryption_error(&message) {
                return Extraction::failed(ExtractError::encrypted(format!(
                    "the PDF is encrypted and cannot be opened: {message}"
                )));
            }
            return Extraction::failed(ExtractError::corrupt(format!(
                "the PDF could not be opened: {message}"
            )));
        }
    };
    let encrypted = doc.is_encrypted();
    let mut out = Extraction {
        metadata: Metadata {
            pdf_version,
            encrypted,
            ..Metadata::default()
        },
        ocr_available: limits.ocr && crate::ocr::available(&limits.ocr_languages),
        ..Extraction::default()
    };
    if encrypted {
        let opened = matches!(doc.authenticate(b""), Ok(true)) && doc.is_authenticated();
        if !opened {
            out.error = Some(ExtractError::encrypted(
                "the PDF needs a password to open; upload it without the password",
            ));
            return out;
        }
    }
    read_metadata(&doc, &mut out.metadata);
    // The parser rescues what it can from a damaged file, down to a page dictionary cut off
    // mid-way when the page tree itself is gone; such a document has no page we can vouch for.
    if !page_tree_readable(&doc) {
        out.error = Some(ExtractError::corrupt(
            "the PDF has no readable page tree (the file is damaged or truncated)",
        ));
        return out;
    }
    let count = match doc.page_count() {
        Ok(0) => {
            out.error = Some(ExtractError::corrupt("the PDF has no pages"));
            return out;
        }
        Ok(n) => n,
        Err(e) => {
            out.error = Some(ExtractError::corrupt(format!(
                "the page tree could not be read: {e}"
            )));
            return out;
        }
    };
    out.page_count = u32::try_from(count).unwrap_or(u32::MAX);
    if count > limits.max_pages {
        out.error = Some(ExtractError::limit(format!(
            "the PDF has {count} pages; the limit is {}",
            limits.max_pages
        )));
        return out;
    }
    let mut total_chars = 0usize;
    let mut unreadable = 0usize;
    let mut missing = 0usize;
    let open_copy = || {
        let copy = PdfDocument::from_bytes(copy.clone()?).ok()?;
        if encrypted && !matches!(copy.authenticate(b""), Ok(true)) {
            return None;
        }
        Some(copy)
    };
    let texts = read_pages(&doc, &open_copy, count, threads, limits.thread_stack_mb);
    for (index, page) in texts.into_iter().enumerate() {
        let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
        // A page the tree lists but the file does not hold is not reported as a page.
        let (raw, error) = match page {
            PageRead::Missing => {
                missing += 1;
                continue;
            }
            PageRead::Text(raw) => (raw, None),
            PageRead::Failed(why) => (String::new(), Some(why)),
        };
        if error.is_some() {
            unreadable += 1;
        }
        let mut text = clean_text(&raw);
        let text_layer = !text.trim().is_empty();
        let mut ocr = false;
        if !text_layer
            && error.is_none()
            && out.ocr_available
            && let Some(found) = crate::ocr::page_text(&doc, index, limits)
        {
            text = clean_text(&found);
            ocr = !text.trim().is_empty();
        }
        let budget = limits
            .max_page_chars
            .min(limits.max_total_chars.saturating_sub(total_chars));
        truncate_chars(&mut text, budget);
        total_chars += text.chars().count();
        out.pages.push(PageText {
            number,
            text,
            text_layer,
            ocr,
            error,
        });
    }
    out.fields = find_fields(out.pages.iter().map(|p| (p.number, p.text.as_str())));
    out.page_count = u32::try_from(out.pages.len()).unwrap_or(u32::MAX);
    if out.pages.is_empty() {
        out.error = Some(ExtractError::corrupt(format!(
            "the page tree lists {count} pages, but none of them is in the file (damaged or truncated)"
        )));
    } else if missing > 0 {
        out.error = Some(ExtractError::corrupt(format!(
            "the page tree lists {count} pages, but {missing} of them are not in the file; the {} found were kept",
            out.pages.len()
        )));
    } else if unreadable > 0 {
        out.error = Some(ExtractError::corrupt(format!(
            "{unreadable} of {count} pages could not be read; the others were kept"
        )));
    }
    out
}

/// What reading one page gave.
enum PageRead {
    /// Its raw text.
    Text(String),
    /// The page is in the file but could not be read: why.
    Failed(String),
    /// The page tree names it, but the file does not hold such a page.
    Missing,
}

/// Threads that read a document's pages: `configured`, or one per CPU (at most 4) for 0.
fn page_threads(configured: usize) -> usize {
    if configured == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    } else {
        configured.min(16)
    }
}

/// The raw text of every page, or why a page could not be read, in page order. Pages are
/// shared among `threads` threads: the first reads `doc`, each other one a document of its own
/// from `open_copy` (none is shared between threads; one that cannot open leaves its pages to
/// the others). A panic on a page is caught and costs only that page.
fn read_pages(
    doc: &PdfDocument,
    open_copy: &(dyn Fn() -> Option<PdfDocument> + Sync),
    count: usize,
    threads: usize,
    stack_mb: usize,
) -> Vec<PageRead> {
    let read = |doc: &PdfDocument, index: usize| match catch_unwind(AssertUnwindSafe(|| {
        page_found(doc, index)?;
        doc.extract_text(index)
            .map(PageRead::Text)
            .map_err(|e| PageRead::Failed(e.to_string()))
    })) {
        Ok(Ok(page)) | Ok(Err(page)) => page,
        Err(panic) => PageRead::Failed(panic_message(&*panic)),
    };
    let threads = threads.min(count.max(1));
    if threads <= 1 {
        return (0..count).map(|index| read(doc, index)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut pages: Vec<(usize, PageRead)> = std::thread::scope(|scope| {
        let work = |doc: &PdfDocument| {
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if index >= count {
                    return done;
                }
                done.push((index, read(doc, index)));
            }
        };
        // The parser recurses on nested objects: a deep stack lets legitimate deep documents
        // through (a hostile one still overflows it, which kills only the child process).
        let job = |worker: usize| {
            move || {
                if worker == 0 {
                    work(doc)
                } else {
                    open_copy().map(|copy| work(&copy)).unwrap_or_default()
                }
            }
        };
        let workers: Vec<_> = (0..threads)
            .filter_map(|worker| {
                std::thread::Builder::new()
                    .stack_size(stack_mb.max(2) * 1024 * 1024)
                    .spawn_scoped(scope, job(worker))
                    .ok()
            })
            .collect();
        if workers.is_empty() {
            return work(doc);
        }
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    pages.sort_by_key(|(index, _)| *index);
    // A worker that died (it cannot: panics are caught per page) would leave gaps; fill them.
    let mut out: Vec<PageRead> = Vec::with_capacity(count);
    let mut it = pages.into_iter().peekable();
    for index in 0..count {
        match it.next_if(|(i, _)| *i == index) {
            Some((_, page)) => out.push(page),
            None => out.push(PageRead::Failed("the page was not read".into())),
        }
    }
    out
}

/// Whether the catalog's `/Pages` leads to a page-tree node that is really in the file (a
/// dictionary of type `/Pages`, or with `/Kids`). The parser's own catalog, rebuilt from a
/// surviving `/Pages` node of a file that lost its trailer, passes; a catalog whose tree was cut
/// off does not.
fn page_tree_readable(doc: &PdfDocument) -> bool {
    let Ok(catalog) = doc.catalog() else {
        return false;
    };
    let Some(pages) = catalog.as_dict().and_then(|c| c.get("Pages")).cloned() else {
        return false;
    };
    let Some(pages) = resolve(doc, pages) else {
        return false;
    };
    pages.as_dict().is_some_and(|node| {
        node.get("Type").and_then(Object::as_name) == Some("Pages") || node.contains_key("Kids")
    })
}

/// That page `index` is a page dictionary of the file and its content streams are there: a page
/// whose content was cut off is reported as unreadable, not as a blank page.
fn page_found(doc: &PdfDocument, index: usize) -> Result<(), PageRead> {
    let page = doc.get_page(index).map_err(|_| PageRead::Missing)?;
    // A page cut off mid-dictionary (by a truncation) has lost its `/Type /Page` with the rest.
    let Some(dict) = page
        .as_dict()
        .filter(|dict| dict.get("Type").and_then(Object::as_name) == Some("Page"))
    else {
        return Err(PageRead::Missing);
    };
    // `/Contents` is optional (a blank page has none); one that names objects the file does not
    // hold is what a truncation leaves.
    if let Some(contents) = dict.get("Contents")
        && content_missing(doc, contents, 0)
    {
        return Err(PageRead::Failed(
            "the page's content stream is missing (the file is damaged or truncated)".into(),
        ));
    }
    Ok(())
}

/// Whether `/Contents` (a stream, an array of streams, or a reference to either) refers to an
/// object the file does not hold: a reference to one reads as null (PDF 32000 7.3.10).
fn content_missing(doc: &PdfDocument, contents: &Object, depth: u8) -> bool {
    match contents {
        Object::Array(parts) if depth < 2 => parts
            .iter()
            .any(|part| content_missing(doc, part, depth + 1)),
        Object::Reference(reference) => match doc.load_object(*reference) {
            Ok(Object::Null) | Err(_) => true,
            Ok(resolved @ Object::Array(_)) if depth < 2 => {
                content_missing(doc, &resolved, depth + 1)
            }
            _ => false,
        },
        _ => false,
    }
}

fn is_encryption_error(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("encrypt") || lower.contains("password") || lower.contains("decrypt")
}

fn truncate_chars(text: &mut String, max: usize) {
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
    }
}

/// Expands typographic ligatures (the text layer of TeX and InDesign output is full of them)
/// and drops control characters other than line breaks and tabs. Hyphens stay as they are.
pub fn clean_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FB05}' | '\u{FB06}' => out.push_str("st"),
            '\n' | '\t' => out.push(c),
            '\r' => out.push('\n'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn read_metadata(doc: &PdfDocument, metadata: &mut Metadata) {
    let info = doc
        .trailer()
        .as_dict()
        .and_then(|d| d.get("Info"))
        .cloned()
        .and_then(|info| resolve(doc, info));
    let Some(Object::Dictionary(info)) = info else {
        return;
    };
    let text = |key: &str| -> Option<String> {
        let value = resolve(doc, info.get(key)?.clone())?;
        let decoded = decode_text_string(value.as_string()?);
        let trimmed = decoded.trim();
        (!trimmed.is_empty()).then(|| trimmed.to_owned())
    };
    metadata.title = text("Title");
    metadata.author = text("Author");
    metadata.subject = text("Subject");
    metadata.creator = text("Creator");
    metadata.producer = text("Producer");
    metadata.created = text("CreationDate").map(|d| pdf_date(&d).unwrap_or(d));
    metadata.modified = text("ModDate").map(|d| pdf_date(&d).unwrap_or(d));
}

fn resolve(doc: &PdfDocument, object: Object) -> Option<Object> {
    match object.as_reference() {
        Some(reference) => doc.load_object(reference).ok(),
        None => Some(object),
    }
}

/// A PDF text string: UTF-16BE or UTF-8 with a byte-order mark, else PDFDocEncoding (read as
/// Latin-1, which it equals for the printable range).
pub fn decode_text_string(bytes: &[u8]) -> String {
    let decoded = if let Some(utf16) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        let units: Vec<u16> = utf16
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else if let Some(utf8) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        String::from_utf8_lossy(utf8).into_owned()
    } else {
        bytes.iter().map(|&b| char::from(b)).collect()
    };
    // Control characters (NUL above all, which PostgreSQL refuses in text) carry nothing here.
    decoded.chars().filter(|c| !c.is_control()).collect()
}

/// `D:YYYYMMDDHHmmSSOHH'mm'` (every part after the year optional) as RFC 3339.
pub fn pdf_date(raw: &str) -> Option<String> {
    let s = raw.trim().strip_prefix("D:").unwrap_or(raw.trim());
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    if digits.len() < 4 {
        return None;
    }
    let part = |from: usize, len: usize, default: u32| -> Option<u32> {
        digits
            .get(from..from + len)
            .map_or(Some(default), |p| p.parse().ok())
    };
    let year: i32 = digits[..4].parse().ok()?;
    let (month, day) = (part(4, 2, 1)?, part(6, 2, 1)?);
    let (hour, minute, second) = (part(8, 2, 0)?, part(10, 2, 0)?, part(12, 2, 0)?);
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)?;
    let time = date.and_hms_opt(hour, minute, second.min(59))?;
    let rest = &s[digits.len()..];
    let offset_secs = match rest.chars().next() {
        Some(sign @ ('+' | '-')) => {
            let nums: Vec<i32> = rest[1..]
                .split(|c: char| !c.is_ascii_digit())
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.parse().ok())
                .collect();
            let secs =
                nums.first().copied().unwrap_or(0) * 3600 + nums.get(1).copied().unwrap_or(0) * 60;
            if sign == '-' { -secs } else { secs }
        }
        _ => 0,
    };
    let offset = chrono::FixedOffset::east_opt(offset_secs)?;
    let local = time.and_local_timezone(offset).single()?;
    Some(local.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_dates() {
        assert_eq!(
            pdf_date("D:20230115103000+01'00'").as_deref(),
            Some("2023-01-15T10:30:00+01:00")
        );
        assert_eq!(
            pdf_date("D:2019").as_deref(),
            Some("2019-01-01T00:00:00+00:00")
        );
        assert_eq!(pdf_date("D:20231315"), None);
        assert_eq!(pdf_date("yesterday"), None);
    }

    #[test]
    fn ligatures_expand_and_hyphens_stay() {
        assert_eq!(
            clean_text("ﬁne ﬂow eﬀect of-\nfice\u{0}"),
            "fine flow effect of-\nfice"
        );
    }

    #[test]
    fn header_within_the_first_kilobyte() {
        assert!(looks_like_pdf(b"%PDF-1.7\n"));
        let mut junk = vec![b'x'; 1000];
        junk.extend_from_slice(b"%PDF-1.4");
        assert!(looks_like_pdf(&junk));
        let mut far = vec![b'x'; 2048];
        far.extend_from_slice(b"%PDF-1.4");
        assert!(!looks_like_pdf(&far));
        assert!(!looks_like_pdf(b""));
        assert_eq!(header_version(b"%PDF-2.0\n").as_deref(), Some("2.0"));
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let out = extract(b"%PDF-1.4\n%%EOF".to_vec(), &Limits::default());
        assert_eq!(out.error.map(|e| e.code).as_deref(), Some(CORRUPT));
        let out = extract(Vec::new(), &Limits::default());
        assert_eq!(out.error.map(|e| e.code).as_deref(), Some(CORRUPT));
    }

    /// `bytes` cut just before the first occurrence of `marker`.
    fn cut_before(bytes: &[u8], marker: &str) -> Vec<u8> {
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
            .unwrap();
        bytes[..at].to_vec()
    }

    #[test]
    fn a_truncated_file_without_page_tree_is_corrupt_not_a_blank_page() {
        let limits = Limits {
            ocr: false,
            ..Limits::default()
        };
        let whole = crate::sample::pdf_with_pages(&["first page", "second page", "third page"]);
        assert!(extract(whole.clone(), &limits).error.is_none());
        // The catalog and half of the first page survive: no cross-reference table, no page tree.
        let mut head = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n".to_vec();
        head.extend_from_slice(b"4 0 obj\n<< /Type /Page /MediaBox [0 0 612 792] /Conte");
        for bytes in [
            head,
            cut_before(&whole, "2 0 obj"),
            cut_before(&whole, "3 0 obj"),
        ] {
            let out = extract(bytes, &limits);
            assert_eq!(out.error.as_ref().map(|e| e.code.as_str()), Some(CORRUPT));
            assert_eq!(out.page_count, 0, "{:?}", out.error);
            assert!(out.pages.is_empty(), "no page is invented");
        }
    }

    #[test]
    fn a_truncated_file_reports_only_the_pages_it_holds() {
        let limits = Limits {
            ocr: false,
            ..Limits::default()
        };
        let whole = crate::sample::pdf_with_pages(&["first page", "second page", "third page"]);
        // Pages 1 and 2 (objects 4-7) survive; page 3's object and everything after it are lost.
        let out = extract(cut_before(&whole, "8 0 obj"), &limits);
        let error = out.error.expect("the document is damaged");
        assert_eq!(error.code, CORRUPT);
        assert!(error.message.contains("lists 3 pages"), "{}", error.message);
        assert_eq!(out.page_count, 2);
        let numbers: Vec<u32> = out.pages.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2]);
        assert!(out.pages[0].text.contains("first page"));
        assert!(out.pages[1].text.contains("second page"));
        // Page 3's dictionary survives but its content stream does not: the page is there, and
        // unreadable rather than blank.
        let out = extract(cut_before(&whole, "9 0 obj"), &limits);
        assert_eq!(out.page_count, 3);
        assert!(out.pages[2].error.is_some(), "{:?}", out.pages[2]);
        assert_eq!(out.error.map(|e| e.code).as_deref(), Some(CORRUPT));
    }

    #[test]
    fn text_strings_decode() {
        assert_eq!(
            decode_text_string(&[0xFE, 0xFF, 0, b'H', 0, b'i', 0, 0]),
            "Hi"
        );
        assert_eq!(decode_text_string(b"caf\xe9"), "café");
    }
}
