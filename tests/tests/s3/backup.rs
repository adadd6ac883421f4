//! Backup and restore with S3-compatible storage (moto's server in tests and CI): the objects go
//! into the backup and come back into an empty bucket, byte for byte; a restore into a bucket
//! that is not empty is refused. Needs `AGENTDESK_TEST_S3_ENDPOINT` (`.ci/run` starts moto and
//! sets it).

use agentdesk_core::backup;
use agentdesk_core::migration::known_migrations;
use agentdesk_tests::{TestEnv, tiny_pdf};
use serde_json::json;

#[tokio::test]
async fn backups_carry_s3_objects_into_an_empty_bucket() {
    let Some(endpoint) = crate::s3_endpoint() else {
        return;
    };
    let source_bucket = crate::make_bucket(&endpoint).await;
    let storage = json!(format!("s3://{source_bucket}/files"));
    let source = TestEnv::new().await;
    let app = source.spawn(&[("storage_url", storage.clone())]).await;
    let admin = app.admin_token().await;
    let owner = app
        .post("/api/v1/clients", &admin, json!({"name": "S3 owner"}))
        .await;
    let owner_id = owner.json["id"].as_str().unwrap().to_owned();
    let bytes = tiny_pdf(&["stored in a bucket"]);
    let doc = app
        .upload_document(&admin, &owner_id, "s3.pdf", bytes.clone())
        .await;
    doc.expect(202, None);
    let doc_id = doc.json["id"].as_str().unwrap().to_owned();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("s3.backup");
    let manifest = backup::backup(&source.settings(&[("storage_url", storage.clone())]), &file)
        .await
        .unwrap();
    assert_eq!(manifest.files.count, 1);
    app.stop().await;

    // Scheduled backups can go to a bucket too, and keep the newest.
    let dest_bucket = crate::make_bucket(&endpoint).await;
    let stored = backup::backup_to(
        &source.settings(&[("storage_url", storage.clone())]),
        &format!("s3://{dest_bucket}/backups"),
        1,
    )
    .await
    .unwrap();
    assert!(
        stored
            .location
            .starts_with(&format!("s3://{dest_bucket}/backups/agentdesk-"))
    );
    assert!(stored.size > 0);

    // A bucket that already holds objects is refused; an empty one is restored into.
    let target = TestEnv::empty().await;
    let full = backup::restore(
        &target.settings(&[("storage_url", storage.clone())]),
        &file,
        &known_migrations(),
    )
    .await;
    assert!(full.is_err_and(|e| e.to_string().contains("not empty")));
    let empty_bucket = crate::make_bucket(&endpoint).await;
    let restored_storage = json!(format!("s3://{empty_bucket}/restored"));
    backup::restore(
        &target.settings(&[("storage_url", restored_storage.clone())]),
        &file,
        &known_migrations(),
    )
    .await
    .unwrap();
    let copy = target.spawn(&[("storage_url", restored_storage)]).await;
    let admin = copy.admin_token().await;
    let r = copy
        .client
        .get(format!("{}/api/v1/documents/{doc_id}/file", copy.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &bytes[..]);
    copy.stop().await;
}
