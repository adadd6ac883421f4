//! S3-compatible storage: a CSV import whose upload lives in an S3 bucket (moto's server in
//! tests and CI; any S3-compatible store in production). Needs `AGENTDESK_TEST_S3_ENDPOINT`
//! (`.ci/run` starts moto and sets it); skipped with a message without it.

use std::time::Duration;

use agentdesk_tests::TestApp;
use serde_json::json;

#[tokio::test]
async fn imports_read_their_upload_back_from_s3() {
    let Some(endpoint) = std::env::var("AGENTDESK_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    else {
        eprintln!(
            "skipped: set AGENTDESK_TEST_S3_ENDPOINT to an S3-compatible endpoint (e.g. moto_server)"
        );
        return;
    };
    let bucket = format!("agentdesk-{}", uuid::Uuid::now_v7().simple());
    // Credentials and endpoint as an operator sets them: the usual AWS variables.
    // SAFETY-free: this test binary has this one test, so no other thread reads the environment.
    for (k, v) in [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        unsafe { std::env::set_var(k, v) };
    }
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

    let app = TestApp::spawn_with(&[("storage_url", json!(format!("s3://{bucket}/files")))]).await;
    let admin = app.admin_token().await;
    let r = TestApp::read(
        app.client
            .post(format!("{}/api/v1/clients/import", app.base))
            .bearer_auth(&admin)
            .header("content-type", "text/csv")
            .body("name,email\nStored In S3,s3@example.com\n")
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect(202, None);
    let listing = reqwest::Client::new()
        .get(format!("{endpoint}/{bucket}?list-type=2"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listing.contains("files/imports/"),
        "the upload is in the bucket: {listing}"
    );
    let url = format!("/api/v1/jobs/{}", r.json["id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        let job = app.get(&url, &admin).await.json;
        if ["succeeded", "failed"].contains(&job["status"].as_str().unwrap_or("")) {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["created"], 1);
    // The upload goes once the job's success is recorded (a moment after it reads succeeded).
    let listing = || async {
        reqwest::Client::new()
            .get(format!("{endpoint}/{bucket}?list-type=2"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert!(
        agentdesk_tests::eventually(Duration::from_secs(10), || async {
            !listing().await.contains("files/imports/")
        })
        .await,
        "the processed upload was removed: {}",
        listing().await
    );
}
