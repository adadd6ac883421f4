//! Backup and restore: a backup taken while clients are being written holds every write that was
//! acknowledged before it began; it restores into an empty database and data folder, and the
//! restored instance serves the same data (clients, stored files) and passes `audit verify`. A
//! damaged backup is refused whole and leaves the target as empty as it was. Runs on SQLite and
//! on PostgreSQL (with `pg_dump`) alike.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentdesk_core::backup;
use agentdesk_core::migration::known_migrations;
use agentdesk_tests::{Backend, TestEnv, backend, tiny_pdf};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;

async fn client_names(core: &agentdesk_core::Core) -> Vec<String> {
    core.db
        .reader()
        .query_all_raw(Statement::from_string(
            core.db.backend(),
            "SELECT name FROM clients",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.try_get::<String>("", "name").unwrap())
        .collect()
}

/// Whether the restore target is as empty as before: no database file (or no tables), no files.
async fn assert_still_empty(env: &TestEnv) {
    match backend() {
        Backend::Sqlite => {
            assert!(
                !env.data_dir().join("agentdesk.db").exists(),
                "no database was left behind"
            );
        }
        Backend::Postgres => {
            let settings = env.settings(&[]);
            let db = agentdesk_core::database::Database::connect(&settings)
                .await
                .unwrap();
            assert!(
                db.applied_migrations().await.unwrap().is_empty(),
                "no table was left behind"
            );
            db.close().await;
        }
    }
    let files = env.data_dir().join("files");
    let left: Vec<_> = walk(&files);
    assert!(left.is_empty(), "no stored file was left behind: {left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_backup_taken_under_writes_restores_every_acknowledged_write() {
    let source = TestEnv::new().await;
    let app = source.spawn(&[]).await;
    let admin = app.admin_token().await;
    let owner = app
        .post("/api/v1/clients", &admin, json!({"name": "Owner of files"}))
        .await;
    owner.expect(201, None);
    let owner_id = owner.json["id"].as_str().unwrap().to_owned();
    let mut documents = Vec::new();
    for pages in [&["one page"][..], &["first", "second", "third"][..]] {
        let bytes = tiny_pdf(pages);
        let r = app
            .upload_document(
                &admin,
                &owner_id,
                &format!("p{}.pdf", pages.len()),
                bytes.clone(),
            )
            .await;
        r.expect(202, None);
        documents.push((r.json["id"].as_str().unwrap().to_owned(), bytes));
    }

    // Writers keep creating clients through the API, before, during and after the backup.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for writer in 0..3 {
        let client = app.client.clone();
        let base = app.base.clone();
        let token = admin.clone();
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let name = format!("Writer {writer} client {n}");
                let r = client
                    .post(format!("{base}/api/v1/clients"))
                    .bearer_auth(&token)
                    .json(&json!({"name": name}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201, "a write failed during the backup");
                acknowledged.lock().unwrap().push(name);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before: Vec<String> = acknowledged.lock().unwrap().clone();
    assert!(!before.is_empty());
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("live.backup");
    let manifest = backup::backup(&source.settings(&[]), &file).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    for w in writers {
        w.await.unwrap();
    }
    let during = acknowledged.lock().unwrap().len();
    assert!(
        during > before.len(),
        "writes went on while the backup was taken"
    );
    assert_eq!(manifest.files.count, 2, "both uploads are in the backup");
    assert_eq!(
        manifest.database.schema_version(),
        known_migrations().last().map(String::as_str)
    );
    assert!(manifest.database.tables["clients"] > before.len() as u64);
    // verify reads the file back and agrees with what backup said.
    assert_eq!(backup::verify(&file).await.unwrap(), manifest);

    // Restore into an empty database and data folder, then serve it.
    let target = TestEnv::empty().await;
    let restored = backup::restore(&target.settings(&[]), &file, &known_migrations())
        .await
        .unwrap();
    assert_eq!(restored, manifest);
    let again = backup::restore(&target.settings(&[]), &file, &known_migrations()).await;
    assert!(
        again
            .as_ref()
            .is_err_and(|e| e.to_string().contains("empty")),
        "a second restore into the now full target is refused: {again:?}"
    );
    let copy = target.spawn(&[]).await;
    let names = client_names(&copy.core).await;
    let missing: Vec<&String> = before.iter().filter(|n| !names.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup began but not restored: {missing:?}"
    );
    assert_eq!(
        names.len() as u64,
        manifest.database.tables["clients"],
        "the restore holds exactly the snapshot"
    );
    let admin_copy = copy.admin_token().await;
    for (id, bytes) in &documents {
        let r = copy
            .client
            .get(format!("{}/api/v1/documents/{id}/file", copy.base))
            .bearer_auth(&admin_copy)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            &r.bytes().await.unwrap()[..],
            &bytes[..],
            "file {id} restored"
        );
    }
    let verification = copy.core.verify_audit().await.unwrap();
    assert!(verification.valid, "the restored audit chain verifies");
    // The restored instance keeps working: a new write lands and chains.
    copy.post(
        "/api/v1/clients",
        &admin_copy,
        json!({"name": "After restore"}),
    )
    .await
    .expect(201, None);
    assert!(copy.core.verify_audit().await.unwrap().valid);
    copy.stop().await;
    app.stop().await;
}

/// Byte ranges of each entry's data in a backup file.
fn entry_offsets(file: &std::path::Path) -> Vec<(String, u64, u64)> {
    let mut archive = tar::Archive::new(std::fs::File::open(file).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.raw_file_position(),
                e.size(),
            )
        })
        .collect()
}

fn damaged(original: &[u8], dir: &std::path::Path, name: &str, at: u64) -> std::path::PathBuf {
    let mut bytes = original.to_vec();
    bytes[at as usize] ^= 0x01;
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn a_damaged_backup_is_refused_whole_and_the_target_stays_empty() {
    let source = TestEnv::new().await;
    let app = source.spawn(&[]).await;
    let admin = app.admin_token().await;
    let owner = app
        .post("/api/v1/clients", &admin, json!({"name": "Owner"}))
        .await;
    let owner_id = owner.json["id"].as_str().unwrap().to_owned();
    app.upload_document(&admin, &owner_id, "a.pdf", tiny_pdf(&["a", "b"]))
        .await
        .expect(202, None);
    let out = tempfile::tempdir().unwrap();
    let good = out.path().join("good.backup");
    backup::backup(&source.settings(&[]), &good).await.unwrap();
    app.stop().await;
    let original = std::fs::read(&good).unwrap();
    let offsets = entry_offsets(&good);
    let data_of = |prefix: &str| {
        offsets
            .iter()
            .find(|(name, _, size)| name.starts_with(prefix) && *size > 0)
            .map(|(_, at, size)| at + size / 2)
            .unwrap()
    };

    let mut cases = vec![
        (
            "database",
            damaged(&original, out.path(), "db.backup", data_of("database/")),
        ),
        (
            "stored file",
            damaged(&original, out.path(), "file.backup", data_of("files/")),
        ),
        (
            "manifest",
            damaged(
                &original,
                out.path(),
                "manifest.backup",
                data_of("manifest.json"),
            ),
        ),
        // A tar header (the first entry's), whose own checksum catches it.
        (
            "header",
            damaged(&original, out.path(), "header.backup", 10),
        ),
    ];
    let truncated = out.path().join("truncated.backup");
    std::fs::write(&truncated, &original[..original.len() * 2 / 3]).unwrap();
    cases.push(("truncated", truncated));
    let garbage = out.path().join("garbage.backup");
    std::fs::write(&garbage, b"this is not a backup at all").unwrap();
    cases.push(("not a backup", garbage));

    for (what, file) in cases {
        let verified = backup::verify(&file).await;
        assert!(verified.is_err(), "{what}: verify refuses it");
        let target = TestEnv::empty().await;
        let restored = backup::restore(&target.settings(&[]), &file, &known_migrations()).await;
        let message = restored.expect_err(what).to_string();
        assert!(!message.is_empty());
        assert_still_empty(&target).await;
    }

    // A backup of a newer schema is refused before anything is written.
    let target = TestEnv::empty().await;
    let mut older_build = known_migrations();
    older_build.pop();
    let newer = backup::restore(&target.settings(&[]), &good, &older_build).await;
    assert!(
        newer.is_err_and(|e| e.to_string().contains("newer")),
        "a backup from a newer schema is refused"
    );
    assert_still_empty(&target).await;
    // And the good one restores.
    backup::restore(&target.settings(&[]), &good, &known_migrations())
        .await
        .unwrap();
}

#[tokio::test]
async fn backups_to_a_destination_keep_the_newest() {
    let source = TestEnv::new().await;
    let app = source.spawn(&[]).await;
    let dest = tempfile::tempdir().unwrap();
    let settings = source.settings(&[]);
    let mut names = Vec::new();
    for _ in 0..3 {
        let stored = backup::backup_to(&settings, &dest.path().display().to_string(), 2)
            .await
            .unwrap();
        assert!(stored.size > 0);
        names.push(stored.location);
        // Names are stamped to the second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let mut left: Vec<String> = std::fs::read_dir(dest.path())
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    left.sort();
    assert_eq!(left, names[1..].to_vec(), "the oldest was removed");
    for file in &left {
        backup::verify(std::path::Path::new(file)).await.unwrap();
    }
    app.stop().await;
}

#[tokio::test]
async fn the_server_backs_itself_up_on_its_schedule() {
    let source = TestEnv::new().await;
    let dest = tempfile::tempdir().unwrap();
    // Every minute; the test waits for the next minute's tick.
    let app = source
        .spawn(&[
            ("backup_cron", json!("* * * * *")),
            ("backup_dest", json!(dest.path().display().to_string())),
            ("backup_keep", json!(3)),
        ])
        .await;
    let found = agentdesk_tests::eventually(Duration::from_secs(75), || async {
        std::fs::read_dir(dest.path())
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".backup"))
            })
            .unwrap_or(false)
    })
    .await;
    assert!(
        found,
        "a scheduled backup appeared within a minute and a bit"
    );
    let file = std::fs::read_dir(dest.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".backup"))
        .unwrap()
        .path();
    backup::verify(&file).await.unwrap();
    app.stop().await;
}
