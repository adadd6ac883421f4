//! OCR of pages without a text layer, with Tesseract (Debian's libtesseract through leptess),
//! when the crate is built with the `ocr` feature. Without it every function reports "not
//! available" and such pages are marked as having no text layer.

use pdf_oxide::PdfDocument;

use crate::extract::Limits;

/// Whether OCR can run in this build and on this machine (Tesseract and its language data load).
pub fn available(languages: &str) -> bool {
    imp::available(languages)
}

/// The text Tesseract reads in the page's images, largest first, skipping images over
/// [`Limits::ocr_max_pixels`]. `None` when the page has no image it could read.
pub fn page_text(doc: &PdfDocument, index: usize, limits: &Limits) -> Option<String> {
    imp::page_text(doc, index, limits)
}

#[cfg(feature = "ocr")]
mod imp {
    use std::sync::OnceLock;

    use pdf_oxide::PdfDocument;

    use crate::extract::Limits;

    pub fn available(languages: &str) -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| leptess::LepTess::new(None, languages).is_ok())
    }

    pub fn page_text(doc: &PdfDocument, index: usize, limits: &Limits) -> Option<String> {
        let mut images = doc.extract_images(index).ok()?;
        images.retain(|i| {
            let pixels = u64::from(i.width()) * u64::from(i.height());
            pixels > 0 && pixels <= limits.ocr_max_pixels
        });
        images.sort_by_key(|i| std::cmp::Reverse(u64::from(i.width()) * u64::from(i.height())));
        let mut tesseract = leptess::LepTess::new(None, &limits.ocr_languages).ok()?;
        // Scans rarely say their resolution; 300 dpi is the common case and what Tesseract
        // is tuned for.
        tesseract.set_fallback_source_resolution(300);
        let mut text = String::new();
        for image in images {
            let Ok(png) = image.to_png_bytes() else {
                continue;
            };
            if tesseract.set_image_from_mem(&png).is_err() {
                continue;
            }
            tesseract.set_fallback_source_resolution(300);
            if let Ok(found) = tesseract.get_utf8_text() {
                text.push_str(found.trim_end());
                text.push('\n');
            }
        }
        (!text.trim().is_empty()).then_some(text)
    }
}

#[cfg(not(feature = "ocr"))]
mod imp {
    use pdf_oxide::PdfDocument;

    use crate::extract::Limits;

    pub fn available(_languages: &str) -> bool {
        false
    }

    pub fn page_text(_doc: &PdfDocument, _index: usize, _limits: &Limits) -> Option<String> {
        None
    }
}
