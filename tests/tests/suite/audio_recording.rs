//! The audio_recording agent end to end, with the real tiny.en model on the corpus speech:
//! uploads in every container, transcripts in every format with WER limits, search, download,
//! delete, audit, client scope, bad and hostile audio, a missing model, merges, and live capture
//! over WebSocket.

use std::path::PathBuf;
use std::time::Duration;

use agentdesk_tests::{TestApp, speech_model_available};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(180);

fn corpus(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/audio")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The reference transcript of a corpus file.
fn reference(name: &str) -> String {
    let index = String::from_utf8(
        std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/audio_index.tsv"),
        )
        .unwrap(),
    )
    .unwrap();
    index
        .lines()
        .find_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            (cols[0] == name).then(|| cols[2].to_owned())
        })
        .unwrap_or_else(|| panic!("{name} in the index"))
}

/// Words for WER: lower case, punctuation and hyphens as spaces, a few spellings evened out
/// (`Mr.` is read "mister"; digits the model writes for spoken numbers count as errors).
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .map(|w| match w {
            "mr" => "mister".to_owned(),
            other => other.trim_matches('\'').to_owned(),
        })
        .collect()
}

/// Word error rate of `hypothesis` against `reference` (edit distance over reference words).
fn wer(reference: &str, hypothesis: &str) -> f64 {
    let r = words(reference);
    let h = words(hypothesis);
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let cost = usize::from(rw != hw);
            let next = (row[j] + 1).min(row[j + 1] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[h.len()] as f64 / r.len().max(1) as f64
}

async fn upload(
    app: &TestApp,
    token: &str,
    client: &str,
    name: &str,
    bytes: Vec<u8>,
) -> agentdesk_tests::Reply {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned());
    let response = app
        .client
        .post(format!("{}/api/v1/clients/{client}/recordings", app.base))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    TestApp::read(response).await
}

/// Polls a recording until it is `ready` or `failed`.
async fn settled(app: &TestApp, token: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = app.get(&format!("/api/v1/recordings/{id}"), token).await;
        r.expect(200, None);
        if ["ready", "failed"].contains(&r.json["status"].as_str().unwrap_or("")) {
            return r.json;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled: {}",
            r.json
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn new_client(app: &TestApp, token: &str, name: &str) -> String {
    let r = app
        .post("/api/v1/clients", token, json!({"name": name}))
        .await;
    r.expect(201, None);
    r.json["id"].as_str().unwrap().to_owned()
}

async fn text_of(app: &TestApp, token: &str, id: &str, format: &str) -> agentdesk_tests::Reply {
    app.get(
        &format!("/api/v1/recordings/{id}/transcript?format={format}"),
        token,
    )
    .await
}

/// Checks SubRip's shape: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, times that move on.
fn check_srt(srt: &str, cues: usize) {
    let blocks: Vec<&str> = srt.split("\n\n").filter(|b| !b.trim().is_empty()).collect();
    assert_eq!(blocks.len(), cues, "{srt}");
    let mut last_end = 0.0;
    for (i, block) in blocks.iter().enumerate() {
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines[0], (i + 1).to_string(), "{srt}");
        let (start, end) = lines[1].split_once(" --> ").expect("a time line");
        let seconds = |t: &str| {
            assert_eq!(t.len(), 12, "{t}");
            assert_eq!(&t[8..9], ",", "{t}");
            let h: f64 = t[0..2].parse().unwrap();
            let m: f64 = t[3..5].parse().unwrap();
            let s: f64 = t[6..8].parse().unwrap();
            let ms: f64 = t[9..12].parse().unwrap();
            h * 3600.0 + m * 60.0 + s + ms / 1000.0
        };
        let (start, end) = (seconds(start), seconds(end));
        assert!(start <= end && start >= last_end - 0.001, "{srt}");
        last_end = end;
        assert!(lines.len() >= 3 && !lines[2].is_empty(), "{srt}");
    }
}

fn check_vtt(vtt: &str, cues: usize) {
    assert!(vtt.starts_with("WEBVTT\n\n"), "{vtt}");
    let blocks: Vec<&str> = vtt["WEBVTT\n\n".len()..]
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    assert_eq!(blocks.len(), cues, "{vtt}");
    for block in blocks {
        let time = block.lines().next().unwrap();
        let (start, end) = time.split_once(" --> ").expect("a time line");
        for t in [start, end] {
            assert_eq!(t.len(), 12, "{t}");
            assert_eq!(&t[8..9], ".", "{t}");
        }
    }
}

#[tokio::test]
async fn uploads_are_transcribed_searched_downloaded_and_deleted() {
    if !speech_model_available() {
        return;
    }
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let client = new_client(&app, &admin, "Dashwood & Co").await;

    // Every container, and a 44.1 kHz stereo file (the resampler's test).
    let files = [
        ("librivox_ss01_concat.wav", 0.10),
        ("librivox_ss01_0870.mp3", 0.15),
        ("librivox_ss01_0870.ogg", 0.15),
        ("librivox_ss01_0870.flac", 0.15),
        ("librivox_ss01_0920_44k_stereo.wav", 0.15),
        ("espeak_en-us_meeting.wav", 0.30),
    ];
    let mut ids = Vec::new();
    for (name, _) in files {
        let r = upload(&app, &admin, &client, name, corpus(name)).await;
        r.expect(202, None);
        assert_eq!(r.json["status"], "queued");
        assert_eq!(
            r.header("location"),
            Some(format!("/api/v1/recordings/{}", r.json["id"].as_str().unwrap()).as_str())
        );
        ids.push(r.json["id"].as_str().unwrap().to_owned());
    }
    let mut pooled = (0.0, 0usize);
    for ((name, limit), id) in files.iter().zip(&ids) {
        let recording = settled(&app, &admin, id).await;
        assert_eq!(recording["status"], "ready", "{name}: {recording}");
        assert_eq!(recording["language"], "en");
        assert_eq!(recording["model"], "tiny.en");
        // The job reported its progress to the end. It is marked succeeded just after it made
        // the recording ready, so it may still read `running` for a moment.
        let job_path = format!("/api/v1/jobs/{}", recording["job_id"].as_str().unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let job = loop {
            let job = app.get(&job_path, &admin).await;
            if job.json["status"] != "running" || std::time::Instant::now() > deadline {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(job.json["status"], "succeeded", "{}", job.json);
        assert_eq!(job.json["progress"], 100, "{}", job.json);
        let (rate, channels) = if name.contains("44k_stereo") {
            (44_100, 2)
        } else {
            (16_000, 1)
        };
        assert_eq!(recording["sample_rate"], rate, "{name}");
        assert_eq!(recording["channels"], channels, "{name}");
        let transcript = text_of(&app, &admin, id, "json").await;
        transcript.expect(200, None);
        let segments = transcript.json["segments"].as_array().unwrap();
        let duration = recording["duration_s"].as_f64().unwrap();
        let mut last = 0.0;
        for s in segments {
            let (start, end) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
            assert!(
                start >= last - 0.001 && start <= end && end <= duration + 0.5,
                "{transcript:?}"
            );
            last = end;
        }
        let said: Vec<&str> = segments
            .iter()
            .map(|s| s["text"].as_str().unwrap())
            .collect();
        let hypothesis = said.join(" ");
        let error = wer(&reference(name), &hypothesis);
        eprintln!("{name}: WER {error:.3}: {hypothesis}");
        assert!(
            error <= *limit,
            "{name}: WER {error:.3} over {limit}: {hypothesis}"
        );
        pooled.0 += error * words(&reference(name)).len() as f64;
        pooled.1 += words(&reference(name)).len();
        // The other formats hold the same segments.
        let txt = text_of(&app, &admin, id, "txt").await;
        txt.expect(200, None);
        assert!(
            txt.header("content-type")
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(txt.text, format!("{}\n", said.join("\n")));
        let srt = text_of(&app, &admin, id, "srt").await;
        assert!(
            srt.header("content-type")
                .unwrap()
                .starts_with("application/x-subrip")
        );
        check_srt(&srt.text, segments.len());
        let vtt = text_of(&app, &admin, id, "vtt").await;
        assert!(vtt.header("content-type").unwrap().starts_with("text/vtt"));
        check_vtt(&vtt.text, segments.len());
    }
    let pooled_wer = pooled.0 / pooled.1 as f64;
    eprintln!("pooled WER {pooled_wer:.3}");
    assert!(pooled_wer <= 0.15, "pooled WER {pooled_wer:.3}");
    text_of(&app, &admin, &ids[0], "docx")
        .await
        .expect(422, Some("validation_failed"));
    // Durations are the files'.
    let concat = app
        .get(&format!("/api/v1/recordings/{}", ids[0]), &admin)
        .await;
    assert!(
        (concat.json["duration_s"].as_f64().unwrap() - 26.73).abs() < 0.05,
        "{}",
        concat.json
    );

    // Search finds the time span where the word was said, in every container.
    let hits = app
        .get("/api/v1/recordings/search?q=dashwood", &admin)
        .await;
    hits.expect(200, None);
    let items = hits.json["items"].as_array().unwrap();
    assert!(items.len() >= 4, "{}", hits.json);
    for hit in items {
        assert_eq!(hit["client_id"], client.as_str());
        assert!(
            hit["snippet"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("<mark>dashwood</mark>"),
            "{hit}"
        );
        assert!(hit["start"].as_f64().unwrap() < 1.0, "{hit}");
    }
    let quarterly = app
        .get(
            &format!("/api/v1/recordings/search?q=quarterly+report&client_id={client}"),
            &admin,
        )
        .await;
    assert_eq!(
        quarterly.json["items"][0]["recording_id"],
        ids[5].as_str(),
        "{}",
        quarterly.json
    );
    let start = quarterly.json["items"][0]["start"].as_f64().unwrap();
    assert!(start > 5.0 && start < 20.0, "{}", quarterly.json);
    app.get("/api/v1/recordings/search?q=%20", &admin)
        .await
        .expect(422, Some("validation_failed"));

    // The original comes back byte for byte.
    let audio = app
        .client
        .get(format!("{}/api/v1/recordings/{}/audio", app.base, ids[1]))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(audio.status(), 200);
    assert_eq!(audio.headers()["content-type"], "audio/mpeg");
    assert_eq!(
        audio.bytes().await.unwrap().to_vec(),
        corpus("librivox_ss01_0870.mp3")
    );

    // The list, newest first.
    let list = app
        .get(
            &format!("/api/v1/clients/{client}/recordings?limit=2"),
            &admin,
        )
        .await;
    assert_eq!(list.json["items"][0]["id"], ids[5].as_str());
    assert!(list.json["next_cursor"].is_string());

    // Delete: the row, the transcript, its search entries and the file.
    app.delete(&format!("/api/v1/recordings/{}", ids[5]), &admin)
        .await
        .expect(204, None);
    app.get(&format!("/api/v1/recordings/{}", ids[5]), &admin)
        .await
        .expect(404, Some("not_found"));
    let gone = app
        .get("/api/v1/recordings/search?q=quarterly", &admin)
        .await;
    assert!(
        gone.json["items"].as_array().unwrap().is_empty(),
        "{}",
        gone.json
    );
    app.delete(&format!("/api/v1/recordings/{}", ids[5]), &admin)
        .await
        .expect(404, Some("not_found"));

    // Audited: upload, transcription, download, delete.
    app.assert_audited(
        &admin,
        &[
            "recording.upload",
            "recording.transcribe",
            "recording.download",
            "recording.delete",
        ],
    )
    .await;
}

/// A WAV header that claims `claimed` data bytes over `data`.
fn wav_claiming(data: &[u8], claimed: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + claimed).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&claimed.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The PCM of a 16-bit WAV file (the bytes after its `data` chunk header).
fn pcm_of(wav: &[u8]) -> &[u8] {
    let at = wav
        .windows(4)
        .position(|w| w == b"data")
        .expect("a data chunk");
    &wav[at + 8..]
}

#[tokio::test]
async fn bad_audio_is_refused_or_fails_clearly() {
    if !speech_model_available() {
        return;
    }
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let client = new_client(&app, &admin, "Bad files").await;

    // No audio at all: refused at the door, whatever the name says.
    let wav = corpus("librivox_ss01_0930.wav");
    let mut wrong_magic = wav.clone();
    wrong_magic[..4].copy_from_slice(b"RIFX");
    wrong_magic[8..12].copy_from_slice(b"WAVX");
    for (name, bytes) in [
        ("zero_bytes.wav", Vec::new()),
        ("headerless_pcm.wav", corpus("bad/headerless_pcm.wav")),
        ("wrong_magic.wav", wrong_magic),
        ("notes.wav", b"minutes of the meeting\n".to_vec()),
        ("scan.mp3", b"%PDF-1.7\n%%EOF\n".to_vec()),
    ] {
        upload(&app, &admin, &client, name, bytes)
            .await
            .expect(415, Some("unsupported_media_type"));
    }
    let none = app
        .get(&format!("/api/v1/clients/{client}/recordings"), &admin)
        .await;
    assert!(
        none.json["items"].as_array().unwrap().is_empty(),
        "nothing kept of refused uploads"
    );
    // No file field.
    let r = app
        .client
        .post(format!("{}/api/v1/clients/{client}/recordings", app.base))
        .bearer_auth(&admin)
        .multipart(reqwest::multipart::Form::new().text("other", "x"))
        .send()
        .await
        .unwrap();
    TestApp::read(r)
        .await
        .expect(422, Some("validation_failed"));

    // Damaged files: a clear failure with a code, or what could be decoded.
    let mp3 = corpus("librivox_ss01_0870.mp3");
    let pcm = pcm_of(&wav);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated_in_header.wav", wav[..30].to_vec(), "failed"),
        // The header claims 7.1 s; only 1.4 s follow.
        (
            "truncated_header_claims_7s.wav",
            wav_claiming(&pcm[..44_954], 227_200),
            "ready",
        ),
        ("truncated.mp3", mp3[..20_000].to_vec(), "ready"),
        ("mp3_named.wav", corpus("bad/mp3_named.wav"), "ready"),
        ("silence_30s.wav", corpus("bad/silence_30s.wav"), "ready"),
    ];
    let mut ids = Vec::new();
    for (name, bytes, _) in &cases {
        let r = upload(&app, &admin, &client, name, bytes.clone()).await;
        r.expect(202, None);
        ids.push(r.json["id"].as_str().unwrap().to_owned());
    }
    for ((name, _, expected), id) in cases.iter().zip(&ids) {
        let recording = settled(&app, &admin, id).await;
        assert_eq!(recording["status"], *expected, "{name}: {recording}");
        match *name {
            "truncated_in_header.wav" => {
                assert_eq!(recording["error"]["code"], "audio_corrupt", "{recording}");
                text_of(&app, &admin, id, "json")
                    .await
                    .expect(409, Some("conflict"));
            }
            "truncated_header_claims_7s.wav" => {
                let d = recording["duration_s"].as_f64().unwrap();
                assert!((d - 1.405).abs() < 0.05, "only what is there: {recording}");
            }
            "truncated.mp3" => {
                let d = recording["duration_s"].as_f64().unwrap();
                assert!(d > 1.5 && d < 4.0, "only what decodes: {recording}");
            }
            "mp3_named.wav" => {
                assert_eq!(recording["content_type"], "audio/mpeg");
                let t = text_of(&app, &admin, id, "txt").await;
                assert!(
                    wer(&reference("librivox_ss01_0870.mp3"), &t.text) < 0.15,
                    "{}",
                    t.text
                );
            }
            "silence_30s.wav" => {
                // Silence gives no words, never invented ones.
                let t = text_of(&app, &admin, id, "json").await;
                assert_eq!(t.json["segments"], json!([]), "{}", t.json);
                assert_eq!(text_of(&app, &admin, id, "txt").await.text, "");
                assert_eq!(text_of(&app, &admin, id, "srt").await.text, "");
                assert_eq!(recording["duration_s"], 30.0);
            }
            _ => unreachable!(),
        }
    }
    // Noise is no speech either.
    let noise: Vec<u8> = (0..16_000 * 8)
        .flat_map(|i: u32| {
            let x = i.wrapping_mul(2_654_435_761).rotate_left(7) as i32;
            (((x >> 20) % 3000) as i16).to_le_bytes()
        })
        .collect();
    let r = upload(
        &app,
        &admin,
        &client,
        "noise.wav",
        wav_claiming(&noise, noise.len() as u32),
    )
    .await;
    let noisy = settled(&app, &admin, r.json["id"].as_str().unwrap()).await;
    assert_eq!(noisy["status"], "ready", "{noisy}");
    let t = text_of(&app, &admin, noisy["id"].as_str().unwrap(), "json").await;
    assert!(
        t.json["segments"].as_array().unwrap().len() <= 1,
        "noise: {}",
        t.json
    );
    // The server is well after all of it.
    app.get("/healthz", &admin).await.expect(200, None);
}

#[tokio::test]
async fn recordings_stay_within_the_callers_clients() {
    if !speech_model_available() {
        return;
    }
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mine = new_client(&app, &admin, "Mine").await;
    let theirs = new_client(&app, &admin, "Theirs").await;
    let member = app
        .persona(
            &admin,
            "member",
            &[json!({"resource": "agent:audio_recording", "actions": ["read", "record"], "client_ids": [mine]})],
        )
        .await;
    let outsider = app.persona(&admin, "member", &[]).await;
    let wav = corpus("librivox_ss01_0880.wav");
    let r = upload(&app, &member.token, &mine, "mine.wav", wav.clone()).await;
    r.expect(202, None);
    let my_id = r.json["id"].as_str().unwrap().to_owned();
    upload(&app, &member.token, &theirs, "theirs.wav", wav.clone())
        .await
        .expect(404, Some("not_found"));
    upload(&app, &outsider.token, &mine, "x.wav", wav.clone())
        .await
        .expect(403, Some("forbidden"));
    let r = upload(&app, &admin, &theirs, "theirs.wav", wav).await;
    let their_id = r.json["id"].as_str().unwrap().to_owned();
    settled(&app, &admin, &my_id).await;
    settled(&app, &admin, &their_id).await;
    for path in [
        format!("/api/v1/recordings/{their_id}"),
        format!("/api/v1/recordings/{their_id}/transcript"),
        format!("/api/v1/recordings/{their_id}/audio"),
        format!("/api/v1/clients/{theirs}/recordings"),
        format!("/api/v1/recordings/search?q=young&client_id={theirs}"),
    ] {
        app.get(&path, &member.token)
            .await
            .expect(404, Some("not_found"));
    }
    app.get(&format!("/api/v1/recordings/{my_id}"), &member.token)
        .await
        .expect(200, None);
    let hits = app
        .get("/api/v1/recordings/search?q=young+man", &member.token)
        .await;
    let found: Vec<&str> = hits.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["recording_id"].as_str().unwrap())
        .collect();
    assert_eq!(found, [my_id.as_str()], "{}", hits.json);
    // Reading is not deleting.
    app.delete(&format!("/api/v1/recordings/{my_id}"), &member.token)
        .await
        .expect(403, Some("forbidden"));

    // A merge moves the recordings (and their transcript) to the surviving client.
    let merged = app
        .post(
            "/api/v1/clients/merge",
            &admin,
            json!({"target_id": mine, "source_ids": [theirs]}),
        )
        .await;
    assert!(merged.status.is_success(), "{}", merged.text);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let moved = app
            .get(&format!("/api/v1/recordings/{their_id}"), &admin)
            .await;
        if moved.json["client_id"] == mine.as_str() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", moved.json);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits = app
        .get("/api/v1/recordings/search?q=young+man", &member.token)
        .await;
    assert_eq!(
        hits.json["items"].as_array().unwrap().len(),
        2,
        "{}",
        hits.json
    );
}

#[tokio::test]
async fn without_a_model_the_agent_is_unhealthy_and_jobs_fail_clearly() {
    let empty = tempfile::tempdir().unwrap();
    let app =
        TestApp::spawn_with(&[("models_dir", json!(empty.path().display().to_string()))]).await;
    let admin = app.admin_token().await;
    let agents = app.get("/api/v1/agents", &admin).await;
    let audio = agents
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "audio_recording")
        .unwrap()
        .clone();
    assert_eq!(audio["healthy"], false, "{audio}");
    assert!(
        audio["problem"]
            .as_str()
            .unwrap()
            .contains("models install"),
        "{audio}"
    );
    let pdf = agents
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "pdf_processing")
        .unwrap()
        .clone();
    assert!(pdf.get("problem").is_none(), "{pdf}");
    let client = new_client(&app, &admin, "No model").await;
    let r = upload(&app, &admin, &client, "x.wav", corpus("ps_cards_001.wav")).await;
    r.expect(202, None);
    let recording = settled(&app, &admin, r.json["id"].as_str().unwrap()).await;
    assert_eq!(recording["status"], "failed");
    assert_eq!(recording["error"]["code"], "model_missing", "{recording}");
    app.get("/healthz", &admin).await.expect(200, None);
}

/// Opens a live capture socket.
async fn live_socket(
    app: &TestApp,
    client: &str,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!(
        "ws://{}/api/v1/clients/{client}/recordings/live?access_token={token}",
        app.addr
    );
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the socket opens");
    socket
}

/// The next text message as JSON (skipping pings), or `None` when the socket closed.
async fn next_json<S>(socket: &mut S) -> Option<(Value, Option<u16>)>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("an answer in time")?
        {
            Ok(Message::Text(text)) => return Some((serde_json::from_str(&text).unwrap(), None)),
            Ok(Message::Close(frame)) => {
                return Some((Value::Null, frame.map(|f| u16::from(f.code))));
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn live_capture_streams_results_and_keeps_the_recording() {
    if !speech_model_available() {
        return;
    }
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let client = new_client(&app, &admin, "Live").await;

    // Not a WebSocket request.
    app.get(&format!("/api/v1/clients/{client}/recordings/live"), &admin)
        .await
        .expect(426, Some("upgrade_required"));
    // A bad token: an error message, then close code 1008.
    let mut socket = live_socket(&app, &client, "not-a-token").await;
    let (error, _) = next_json(&mut socket).await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "unauthenticated");
    let (_, code) = next_json(&mut socket).await.unwrap();
    assert_eq!(code, Some(1008));
    // A bad header frame: close code 1003.
    let mut socket = live_socket(&app, &client, &admin).await;
    socket
        .send(Message::Text(
            r#"{"sample_rate":16000,"format":"mu-law","channels":1}"#.into(),
        ))
        .await
        .unwrap();
    let (error, _) = next_json(&mut socket).await.unwrap();
    assert_eq!(error["code"], "bad_header", "{error}");
    let (_, code) = next_json(&mut socket).await.unwrap();
    assert_eq!(code, Some(1003));

    // A file streamed in 100 ms frames at 2x real time (faster than real time is slowed, not
    // refused): partial results as it goes, a final one per utterance, then the recording.
    let pcm = pcm_of(&corpus("librivox_ss01_concat.wav")).to_vec();
    let mut socket = live_socket(&app, &client, &admin).await;
    socket
        .send(Message::Text(
            r#"{"sample_rate":16000,"format":"s16le","channels":1}"#.into(),
        ))
        .await
        .unwrap();
    let (mut sink, mut stream) = socket.split();
    let sender = tokio::spawn(async move {
        for frame in pcm.chunks(3_200) {
            sink.send(Message::Binary(frame.to_vec().into()))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sink.send(Message::Text(r#"{"type":"end"}"#.into()))
            .await
            .unwrap();
        sink
    });
    let mut partials = 0;
    let mut finals: Vec<Value> = Vec::new();
    let recording_id = loop {
        let (message, code) = next_json(&mut stream).await.expect("the socket stays open");
        assert!(code.is_none(), "closed early: {code:?}");
        match message["type"].as_str() {
            Some("partial") => partials += 1,
            Some("final") => finals.push(message),
            Some("recording") => break message["id"].as_str().unwrap().to_owned(),
            other => panic!("unexpected {other:?}: {message}"),
        }
    };
    let _sink = sender.await.unwrap();
    assert!(partials >= 1, "partial results arrive");
    assert!(finals.len() >= 2, "one final per utterance: {finals:?}");
    let live_text: Vec<&str> = finals.iter().map(|f| f["text"].as_str().unwrap()).collect();
    let live_wer = wer(&reference("librivox_ss01_concat.wav"), &live_text.join(" "));
    eprintln!("live WER {live_wer:.3}: {}", live_text.join(" | "));
    assert!(live_wer < 0.25, "{live_wer}: {live_text:?}");
    let mut last_end = 0.0;
    for f in &finals {
        let (start, end) = (f["start"].as_f64().unwrap(), f["end"].as_f64().unwrap());
        assert!(
            start >= last_end - 0.001 && start < end && end <= 26.8,
            "{finals:?}"
        );
        last_end = end;
    }
    // The capture is a recording of the client, kept as 16 kHz mono WAV, transcribed as an upload.
    let recording = settled(&app, &admin, &recording_id).await;
    assert_eq!(recording["status"], "ready", "{recording}");
    assert_eq!(recording["source"], "live");
    assert_eq!(recording["content_type"], "audio/wav");
    assert_eq!(
        (
            recording["sample_rate"].as_i64(),
            recording["channels"].as_i64()
        ),
        (Some(16_000), Some(1))
    );
    assert!(
        (recording["duration_s"].as_f64().unwrap() - 26.73).abs() < 0.05,
        "{recording}"
    );
    let t = text_of(&app, &admin, &recording_id, "txt").await;
    assert!(
        wer(&reference("librivox_ss01_concat.wav"), &t.text) < 0.10,
        "{}",
        t.text
    );
    let events = app
        .get("/api/v1/audit/events?action=recording.live", &admin)
        .await;
    assert_eq!(events.json["items"].as_array().unwrap().len(), 1);

    // A connection that ends without a close frame keeps what arrived; 48 kHz stereo float
    // input.
    let pcm16 = pcm_of(&corpus("librivox_ss01_0890.wav")).to_vec();
    let mut f32_stereo = Vec::new();
    for s in pcm16.chunks_exact(2) {
        let v = f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0;
        // 16 kHz to 48 kHz by repeating each sample three times (a crude but real 48 kHz stream).
        for _ in 0..3 {
            f32_stereo.extend_from_slice(&v.to_le_bytes());
            f32_stereo.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut socket = live_socket(&app, &client, &admin).await;
    socket
        .send(Message::Text(
            r#"{"sample_rate":48000,"format":"f32le","channels":2}"#.into(),
        ))
        .await
        .unwrap();
    for frame in f32_stereo.chunks(48_000 * 8 / 10) {
        socket
            .send(Message::Binary(frame.to_vec().into()))
            .await
            .unwrap();
    }
    // The TCP connection ends under the WebSocket: a FIN after the last byte. (Closing the socket
    // outright would make the kernel answer with a reset, discarding whatever it had not sent
    // yet, as soon as a partial result is waiting unread in the test's own receive buffer.)
    tokio::io::AsyncWriteExt::shutdown(socket.get_mut())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let dropped = loop {
        let list = app
            .get(&format!("/api/v1/clients/{client}/recordings"), &admin)
            .await;
        let found = list.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] != recording_id.as_str())
            .cloned();
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped capture is kept"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(socket);
    let dropped = settled(&app, &admin, dropped["id"].as_str().unwrap()).await;
    assert_eq!(dropped["status"], "ready", "{dropped}");
    assert!(
        (dropped["duration_s"].as_f64().unwrap() - 5.3).abs() < 0.1,
        "{dropped}"
    );
    let t = text_of(&app, &admin, dropped["id"].as_str().unwrap(), "txt").await;
    assert!(
        wer(&reference("librivox_ss01_0890.wav"), &t.text) < 0.2,
        "{}",
        t.text
    );
}

#[tokio::test]
async fn live_capture_limits_end_the_session_and_keep_the_audio() {
    if !speech_model_available() {
        return;
    }
    let app = TestApp::spawn_with(&[("audio_live_max_secs", json!(2))]).await;
    let admin = app.admin_token().await;
    let client = new_client(&app, &admin, "Limits").await;
    let pcm = pcm_of(&corpus("librivox_ss01_0870.wav")).to_vec();

    // A frame over 1 MiB: an error, close code 1009.
    let mut socket = live_socket(&app, &client, &admin).await;
    socket
        .send(Message::Text(
            r#"{"sample_rate":16000,"format":"s16le","channels":1}"#.into(),
        ))
        .await
        .unwrap();
    socket
        .send(Message::Binary(vec![0u8; 1_100_000].into()))
        .await
        .unwrap();
    let (error, _) = next_json(&mut socket).await.unwrap();
    assert_eq!(error["code"], "frame_too_large", "{error}");
    let (_, code) = next_json(&mut socket).await.unwrap();
    assert_eq!(code, Some(1009));

    // Longer than the session limit (2 s here): an error, close code 1008, and what arrived is
    // kept as a recording.
    let mut socket = live_socket(&app, &client, &admin).await;
    socket
        .send(Message::Text(
            r#"{"sample_rate":16000,"format":"s16le","channels":1}"#.into(),
        ))
        .await
        .unwrap();
    let mut closed = None;
    for frame in pcm.chunks(3_200) {
        if socket
            .send(Message::Binary(frame.to_vec().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    while let Some((message, code)) = next_json(&mut socket).await {
        if let Some(code) = code {
            closed = Some(code);
            break;
        }
        if message["type"] == "error" {
            assert_eq!(message["code"], "session_too_long", "{message}");
        }
    }
    assert_eq!(closed, Some(1008));
    let deadline = std::time::Instant::now() + WAIT;
    let kept = loop {
        let list = app
            .get(&format!("/api/v1/clients/{client}/recordings"), &admin)
            .await;
        if let Some(found) = list.json["items"].as_array().unwrap().first() {
            break found.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the capture is kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kept = settled(&app, &admin, kept["id"].as_str().unwrap()).await;
    let duration = kept["duration_s"].as_f64().unwrap();
    assert!(duration > 1.9 && duration < 2.3, "{kept}");
    // The frame that was too large was not kept: only the second session made a recording.
    let list = app
        .get(&format!("/api/v1/clients/{client}/recordings"), &admin)
        .await;
    assert_eq!(
        list.json["items"].as_array().unwrap().len(),
        1,
        "{}",
        list.json
    );
}
