//! S3-compatible storage (moto's server in tests and CI; any S3-compatible store in production).
//! Needs `AGENTDESK_TEST_S3_ENDPOINT` (`.ci/run` starts moto and sets it); each test is skipped
//! with a message without it. A binary of its own: the store reads its endpoint and credentials
//! from the process's AWS variables, as an operator sets them, and these tests set them.

mod backup;
mod storage;

/// The S3 endpoint under test, with the process's AWS variables set for it; `None` (and a
/// message) when `AGENTDESK_TEST_S3_ENDPOINT` is not set.
fn s3_endpoint() -> Option<String> {
    let Some(endpoint) = std::env::var("AGENTDESK_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    else {
        eprintln!(
            "skipped: set AGENTDESK_TEST_S3_ENDPOINT to an S3-compatible endpoint (e.g. moto_server)"
        );
        return None;
    };
    static AWS_VARIABLES: std::sync::Once = std::sync::Once::new();
    AWS_VARIABLES.call_once(|| {
        for (k, v) in [
            ("AWS_ENDPOINT", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ] {
            // SAFETY: every test of this binary calls this first, before it starts anything that
            // reads the environment, and the others wait on the `Once` until the values are set.
            unsafe { std::env::set_var(k, v) };
        }
    });
    Some(endpoint)
}

/// A new, empty bucket at `endpoint`.
async fn make_bucket(endpoint: &str) -> String {
    let bucket = format!("agentdesk-{}", uuid::Uuid::now_v7().simple());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "bucket created: {}",
        created.status()
    );
    bucket
}
