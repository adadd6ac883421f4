//! A transcript as plain text, SubRip (`.srt`) and WebVTT (`.vtt`).

use crate::transcribe::Transcript;

/// Plain text: one segment a line.
pub fn txt(transcript: &Transcript) -> String {
    let mut out = transcript.text();
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// `HH:MM:SS{sep}mmm`.
fn timestamp(seconds: f64, separator: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// A cue's text may not hold a blank line (it would end the cue) nor, in WebVTT, `-->`.
fn cue_text(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        .replace("-->", "->")
}

/// SubRip: numbered cues, `00:00:01,000 --> 00:00:02,500`.
pub fn srt(transcript: &Transcript) -> String {
    let mut out = String::new();
    for (i, segment) in transcript.segments.iter().enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            i + 1,
            timestamp(segment.start, ','),
            timestamp(segment.end, ','),
            cue_text(&segment.text)
        ));
    }
    out
}

/// WebVTT: the `WEBVTT` header, then cues `00:00:01.000 --> 00:00:02.500`; `&`, `<` and `>` are
/// escaped as the format requires.
pub fn vtt(transcript: &Transcript) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for segment in &transcript.segments {
        let text = cue_text(&segment.text)
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        out.push_str(&format!(
            "{} --> {}\n{text}\n\n",
            timestamp(segment.start, '.'),
            timestamp(segment.end, '.'),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcribe::Segment;

    fn sample() -> Transcript {
        Transcript {
            language: Some("en".into()),
            segments: vec![
                Segment {
                    start: 0.0,
                    end: 2.5,
                    text: "Hello there.".into(),
                },
                Segment {
                    start: 3661.042,
                    end: 3663.0,
                    text: "A <b> & --> c\n\nd".into(),
                },
            ],
        }
    }

    #[test]
    fn subrip_and_webvtt_follow_their_formats() {
        assert_eq!(
            srt(&sample()),
            "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n01:01:01,042 --> 01:01:03,000\nA <b> & -> c\nd\n\n"
        );
        assert_eq!(
            vtt(&sample()),
            "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n01:01:01.042 --> 01:01:03.000\nA &lt;b&gt; &amp; -&gt; c\nd\n\n"
        );
        assert_eq!(txt(&sample()), "Hello there.\nA <b> & --> c\n\nd\n");
        assert_eq!(txt(&Transcript::default()), "");
        assert_eq!(srt(&Transcript::default()), "");
        assert_eq!(vtt(&Transcript::default()), "WEBVTT\n\n");
    }
}
