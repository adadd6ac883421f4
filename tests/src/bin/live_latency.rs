//! Live capture latency against a running server (bench/live_latency.sh): streams a 16 kHz mono
//! WAV in 100 ms frames at real time and, for each `final` message, measures how long after the
//! end of its phrase (the moment the phrase's last audio was sent) it arrived.
//!
//! usage: live_latency BASE_URL EMAIL PASSWORD FILE.wav

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, email, password, file] = args.as_slice() else {
        anyhow::bail!("usage: live_latency BASE_URL EMAIL PASSWORD FILE.wav");
    };
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let client: Value = http
        .post(format!("{base}/api/v1/clients"))
        .bearer_auth(&token)
        .json(&json!({"name": "Latency bench"}))
        .send()
        .await?
        .json()
        .await?;
    let client = client["id"].as_str().unwrap_or_default().to_owned();
    let wav = std::fs::read(file)?;
    let at = wav
        .windows(4)
        .position(|w| w == b"data")
        .ok_or_else(|| anyhow::anyhow!("{file} has no data chunk"))?;
    let pcm = wav[at + 8..].to_vec();
    let ws = base.replacen("http", "ws", 1);
    let (socket, _) = tokio_tungstenite::connect_async(format!(
        "{ws}/api/v1/clients/{client}/recordings/live?access_token={token}"
    ))
    .await?;
    let (mut sink, mut stream) = socket.split();
    sink.send(Message::Text(
        r#"{"sample_rate":16000,"format":"s16le","channels":1}"#.into(),
    ))
    .await?;
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for (i, frame) in pcm.chunks(3_200).enumerate() {
            // Real time: frame i is sent 100 ms after frame i-1.
            let due = started + Duration::from_millis(100 * i as u64);
            tokio::time::sleep_until(due.into()).await;
            if sink
                .send(Message::Binary(frame.to_vec().into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = sink.send(Message::Text(r#"{"type":"end"}"#.into())).await;
    });
    let mut latencies = Vec::new();
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(&text)?;
        match value["type"].as_str() {
            Some("final") => {
                let end = value["end"].as_f64().unwrap_or_default();
                let latency = started.elapsed().as_secs_f64() - end;
                println!("final {end:6.2} s  +{latency:.2} s  {}", value["text"]);
                latencies.push(latency);
            }
            Some("recording") | Some("error") => {
                println!("{value}");
                break;
            }
            _ => {}
        }
    }
    sender.await?;
    latencies.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (latencies.first(), latencies.last()) {
        println!(
            "{} finals; delay after the end of a phrase: median {:.2} s, min {first:.2} s, max {last:.2} s",
            latencies.len(),
            latencies[latencies.len() / 2]
        );
    }
    Ok(())
}
