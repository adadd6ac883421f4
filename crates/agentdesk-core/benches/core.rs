//! In-process costs: a cached permission check, access-token verification, authentication of
//! a cached session, and what the audit append adds to a write transaction.
//!
//! `cargo bench -p agentdesk-core --bench core` (SQLite in a temp dir; set
//! `AGENTDESK_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/DB` to add PostgreSQL).

use std::hint::black_box;

use agentdesk_core::config::Settings;
use agentdesk_core::services::audit::{AuditRecord, Outcome};
use agentdesk_core::services::permissions::{Actor, Need, NewGrant};
use agentdesk_core::{Core, RequestMeta};
use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use figment::Figment;
use figment::providers::Serialized;
use sea_orm::{ConnectionTrait, Statement};
use uuid::Uuid;

async fn core(dir: &std::path::Path, database_url: Option<String>) -> Core {
    let mut figment = Figment::from(Serialized::defaults(Settings::default()))
        .merge(("data_dir", dir.display().to_string()))
        .merge(("jwt_secret", "bench-secret-bench-secret-bench-secret!"))
        .merge(("log", "warn"));
    if let Some(url) = database_url {
        figment = figment.merge(("database_url", url));
    }
    Core::start(Settings::from_figment(figment).unwrap())
        .await
        .unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let core = rt.block_on(core(dir.path(), None));
    let client = Uuid::now_v7();
    let (member, token) = rt.block_on(async {
        let admin = core
            .upsert_user(
                "admin@bench.local",
                "bench-admin-password",
                "Admin",
                "admin",
            )
            .await
            .unwrap();
        let member = core
            .upsert_user(
                "member@bench.local",
                "bench-member-password",
                "Member",
                "member",
            )
            .await
            .unwrap();
        let actor = Actor::system(admin, RequestMeta::system("bench"));
        let permit = core
            .authorize(actor, "permissions", "write", Need::AllClients)
            .await
            .unwrap();
        // A realistic member: a handful of grants, one of them limited to some clients.
        for (resource, actions, clients) in [
            ("users", vec!["read"], None),
            ("audit", vec!["read"], None),
            (
                "clients",
                vec!["read", "write"],
                Some(vec![client, Uuid::now_v7()]),
            ),
            (
                "agent:pdf_processing",
                vec!["read", "upload"],
                Some(vec![client]),
            ),
        ] {
            let new = NewGrant {
                user_id: Some(member.id),
                resource: resource.into(),
                actions: actions.into_iter().map(str::to_owned).collect(),
                client_ids: clients,
                ..Default::default()
            };
            // The default catalog has no agents; add the grant only where the resource exists.
            let _ = core.create_grant(&permit, new).await;
        }
        let pair = core
            .login(
                "member@bench.local",
                "bench-member-password",
                None,
                &RequestMeta::default(),
            )
            .await
            .unwrap();
        (member, pair.access_token)
    });

    let mut group = c.benchmark_group("permissions");
    group.bench_function("check_cached_client_grant", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                core.check(&member, "clients", "write", Some(client))
                    .await
                    .unwrap(),
            )
        })
    });
    group.bench_function("check_cached_denied", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                core.check(&member, "permissions", "write", None)
                    .await
                    .unwrap(),
            )
        })
    });
    group.bench_function("client_scope_cached", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(core.client_scope(&member, "clients", "read").await.unwrap())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("tokens");
    group.bench_function("verify_access_token", |b| {
        b.iter(|| black_box(core.signer.verify(&token).unwrap()))
    });
    group.bench_function("authenticate_cached_session", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(core.authenticate(&token).await.unwrap()) })
    });
    // The same member's API key: its check must cost no more than the session's.
    let api_key = rt.block_on(async {
        let session = core.authenticate(&token).await.unwrap();
        let new = agentdesk_core::services::api_keys::NewApiKey {
            name: "bench".into(),
            ..Default::default()
        };
        core.create_api_key(&session, new, &RequestMeta::default())
            .await
            .unwrap()
            .key
    });
    group.bench_function("authenticate_cached_api_key", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(core.authenticate(&api_key).await.unwrap()) })
    });
    group.finish();

    let mut targets = vec![("sqlite", core.clone())];
    if let Ok(url) = std::env::var("AGENTDESK_BENCH_POSTGRES_URL") {
        let pg_dir = tempfile::tempdir().unwrap();
        let pg = rt.block_on(core_pg(pg_dir.path(), url));
        targets.push(("postgres", pg));
    }
    let mut group = c.benchmark_group("write");
    for (name, core) in targets {
        let id = rt.block_on(async {
            core.upsert_user("writer@bench.local", "bench-writer-password", "W", "member")
                .await
                .unwrap()
                .id
        });
        // The write the clients routes make: with audit, the event goes with the change
        // (`execute_audited`: one call; on PostgreSQL the event is queued in the change's
        // statement and this process's sequencer chains it in the background, so its share
        // of the cost is in the time of later iterations).
        let update = move |core: Core, audited: bool| async move {
            let txn = core.db.begin().await.unwrap();
            let change = Statement::from_sql_and_values(
                core.db.backend(),
                "UPDATE users SET full_name = $1, updated_at = $2 WHERE id = $3",
                [
                    Uuid::now_v7().to_string().into(),
                    Utc::now().into(),
                    id.into(),
                ],
            );
            if audited {
                let record = AuditRecord::new(
                    "user.update",
                    Outcome::Success,
                    &RequestMeta::default(),
                )
                .resource("user", id)
                .changes(
                    serde_json::json!({"before": {"full_name": "a"}, "after": {"full_name": "b"}}),
                );
                core.execute_audited(&txn, change, record).await.unwrap();
            } else {
                txn.execute_raw(change).await.unwrap();
            }
            txn.commit().await.unwrap();
        };
        group.bench_function(format!("{name}_empty_transaction"), |b| {
            b.to_async(&rt).iter(|| async {
                let txn = core.db.begin().await.unwrap();
                txn.commit().await.unwrap();
            })
        });
        group.bench_function(format!("{name}_select_one"), |b| {
            b.to_async(&rt).iter(|| async {
                core.db
                    .writer()
                    .execute_raw(Statement::from_string(core.db.backend(), "SELECT 1"))
                    .await
                    .unwrap();
            })
        });
        group.bench_function(format!("{name}_update_without_audit"), |b| {
            b.to_async(&rt).iter(|| update(core.clone(), false))
        });
        group.bench_function(format!("{name}_update_with_audit"), |b| {
            b.to_async(&rt).iter(|| update(core.clone(), true))
        });
    }
    group.finish();
}

async fn core_pg(dir: &std::path::Path, url: String) -> Core {
    core(dir, Some(url)).await
}

criterion_group!(core_benches, benches);
criterion_main!(core_benches);
