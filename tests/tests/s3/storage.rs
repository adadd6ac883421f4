//! S3-compatible storage: a CSV import whose upload lives in an S3 bucket (moto's server in
//! tests and CI; any S3-compatible store in production). Needs `AGENTDESK_TEST_S3_ENDPOINT`
//! (`.ci/run` starts moto and sets it).

use std::time::Duration;

use agentdesk_tests::TestApp;
use serde_json::json;

#[tokio::test]
async fn imports_read_their_upload_back_from_s3() {
    let Some(endpoint) = crate::s3_endpoint() else {
        return;
    };
    let bucket = crate::make_bucket(&endpoint).await;

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
    let listing = || bucket_query(&endpoint, &bucket, "list-type=2");
    let objects = listing().await;
    assert!(
        objects.contains("files/imports/"),
        "the upload is in the bucket: {objects}"
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
    assert!(
        agentdesk_tests::eventually(Duration::from_secs(10), || async {
            !listing().await.contains("files/imports/")
        })
        .await,
        "the processed upload was removed: {}",
        listing().await
    );

    // A file of several parts (12 MiB: parts of 5, 5 and 2 MiB) goes up as one multipart upload
    // and reads back whole; one over its limit is aborted and leaves nothing in the bucket.
    let storage = agentdesk_core::storage::Storage::open(&format!("s3://{bucket}/parts")).unwrap();
    let chunks =
        || futures::stream::iter((0..12u8).map(|i| Ok::<_, std::io::Error>(bytes_of(i, 1 << 20))));
    let stored = storage.put_stream("big", chunks(), 1 << 30).await.unwrap();
    assert_eq!(stored.size, 12 << 20);
    let mut back = Vec::new();
    let mut stream = std::pin::pin!(storage.get_stream(&stored.key).await.unwrap());
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        back.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(back.len(), 12 << 20);
    assert!(
        back.chunks(1 << 20)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| usize::from(*b) == i)),
        "the parts are in order"
    );
    let too_large = storage.put_stream("big", chunks(), 11 << 20).await;
    assert!(
        matches!(
            too_large,
            Err(agentdesk_core::storage::UploadError::TooLarge { .. })
        ),
        "{too_large:?}"
    );
    let keys: Vec<String> = storage
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec![stored.key.clone()],
        "only the whole file is in the bucket"
    );
    let uploads = bucket_query(&endpoint, &bucket, "uploads").await;
    assert!(
        !uploads.contains("<Upload>"),
        "no multipart upload is left open: {uploads}"
    );
}

/// The bucket's answer (S3 XML) to a GET with `query`: its objects, its open multipart uploads.
async fn bucket_query(endpoint: &str, bucket: &str, query: &str) -> String {
    reqwest::Client::new()
        .get(format!("{endpoint}/{bucket}?{query}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn bytes_of(value: u8, len: usize) -> bytes::Bytes {
    bytes::Bytes::from(vec![value; len])
}
