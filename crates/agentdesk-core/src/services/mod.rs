//! The business rules. Services take plain arguments and return domain types; they know nothing
//! of HTTP.

pub mod account;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod clients;
pub mod jobs;
pub mod mfa;
pub mod permissions;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Caches, RateLimiter};
use crate::config::Settings;
use crate::database::Database;
use crate::error::{Error, Result};
use crate::security::{PasswordHasherPool, TokenSigner};
use permissions::Catalog;

/// Who made a request, from where: stored with sessions (and audit events).
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// The request's `X-Request-Id`.
    pub request_id: String,
    /// The client's IP address.
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
}

impl RequestMeta {
    /// Meta for work that no HTTP request started (the command line, start-up).
    pub fn system(origin: &str) -> Self {
        Self {
            request_id: origin.to_owned(),
            ip: None,
            user_agent: None,
        }
    }
}

/// Everything the services need, built once at start and shared: a handle, so a clone (every
/// request takes a few, through axum's state) is two reference counts, not a copy of each part.
#[derive(Clone, Debug)]
pub struct Core {
    parts: Arc<CoreParts>,
    /// The permission catalog: core resources plus the agents'.
    pub catalog: Arc<Catalog>,
}

impl std::ops::Deref for Core {
    type Target = CoreParts;

    fn deref(&self) -> &CoreParts {
        &self.parts
    }
}

/// The parts of a [`Core`], reached through it.
#[derive(Debug)]
pub struct CoreParts {
    /// The validated settings.
    pub settings: Arc<Settings>,
    /// The database.
    pub db: Database,
    /// Password hashing off the runtime.
    pub hasher: PasswordHasherPool,
    /// Access-token signing.
    pub signer: TokenSigner,
    /// Session cache and the invalidation bus.
    pub caches: Caches,
    /// Login rate-limit counters.
    pub limiter: RateLimiter,
    /// Redis, when configured.
    pub redis: Option<redis::aio::ConnectionManager>,
    /// This process's view of the audit chain's last event.
    pub audit_head: audit::ChainHead,
    /// Wakes this process's job workers.
    pub job_signal: jobs::JobSignal,
    /// File storage.
    pub storage: crate::storage::Storage,
    /// When sessions and API keys were last used, written in batches.
    pub last_used: account::LastUsed,
    /// Encrypts second-factor secrets at rest.
    pub mfa_box: mfa::SecretBox,
    /// Keeps SQLite's search index of clients up to date while this process runs.
    pub search_index: crate::search_index::SearchIndexer,
}

impl Core {
    /// Connects to everything the settings name and migrates the database.
    pub async fn start(settings: Settings) -> Result<Self> {
        let db = Database::connect(&settings).await?;
        db.migrate().await?;
        let redis = match &settings.redis_url {
            Some(url) => Some(crate::cache::connect_redis(url.expose()).await?),
            None => None,
        };
        let secret = jwt_secret(&settings)?;
        let storage = crate::storage::Storage::open(&settings.storage_url())?;
        let window = Duration::from_secs(settings.login_window_secs);
        let limiter = match &redis {
            Some((manager, _)) => {
                RateLimiter::redis(manager.clone(), &settings.redis_prefix, window)
            }
            None => RateLimiter::local(window),
        };
        let caches = Caches::new(
            Duration::from_secs(settings.session_cache_ttl_secs.max(1)),
            redis.clone(),
            &settings.redis_prefix,
            &db,
        );
        caches.spawn_listener();
        let audit_head = audit::ChainHead::default();
        audit::spawn_sequencer(db.clone(), &audit_head);
        let last_used = account::LastUsed::default();
        last_used.spawn_flusher(db.clone());
        let search_index = crate::search_index::SearchIndexer::start(&db);
        let mfa_box = mfa::SecretBox::new(
            &secret,
            settings.previous_jwt_secret.as_ref().map(|s| s.expose()),
        );
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let parts = CoreParts {
            signer: TokenSigner::new(secret.as_bytes(), settings.access_token_ttl_secs),
            hasher: PasswordHasherPool::new(cpus),
            redis: redis.map(|(manager, _)| manager),
            settings: Arc::new(settings),
            db,
            caches,
            limiter,
            audit_head,
            job_signal: jobs::JobSignal::default(),
            storage,
            last_used,
            mfa_box,
            search_index,
        };
        let core = Self {
            parts: Arc::new(parts),
            catalog: Arc::new(Catalog::default()),
        };
        let resealed = core.reseal_mfa_secrets().await?;
        if resealed > 0 {
            tracing::info!(
                resealed,
                "second-factor secrets encrypted under the new jwt_secret; previous_jwt_secret may now be removed"
            );
        }
        Ok(core)
    }

    /// Replaces the permission catalog (the API adds the agents' resources at start).
    pub fn with_catalog(mut self, catalog: Catalog) -> Self {
        self.catalog = Arc::new(catalog);
        self
    }

    /// Checks the database and Redis; the error names the failed check.
    pub async fn ready(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.db.is_down() {
            return Err(("database", "out of reach; a probe retries it".into()));
        }
        // Within a load balancer's usual probe timeout, so that a slow database reads as
        // "not ready" rather than as a probe that never answered.
        const PING_WAIT: Duration = Duration::from_secs(2);
        match tokio::time::timeout(PING_WAIT, self.db.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if matches!(e, Error::DatabaseUnavailable(_)) {
                    self.db.report_unreachable();
                }
                return Err(("database", e.to_string()));
            }
            // Slow is not down (a long write may hold SQLite's writer): not ready, no breaker.
            Err(_) => {
                return Err((
                    "database",
                    format!("no answer within {} s", PING_WAIT.as_secs()),
                ));
            }
        }
        if let Some(redis) = &self.redis {
            crate::cache::ping_redis(redis)
                .await
                .map_err(|e| ("redis", e.to_string()))?;
        }
        Ok(())
    }
}

/// One value per row in a multi-row UPDATE: pushes each `(id, value)` onto `values` and
/// returns `CASE id WHEN $i THEN $v … END` and the ids' placeholders (`$i, …`), numbered after
/// the values already there.
pub(crate) fn case_by_id<V: Into<sea_orm::Value>>(
    values: &mut Vec<sea_orm::Value>,
    rows: impl IntoIterator<Item = (uuid::Uuid, V)>,
) -> (String, String) {
    let mut cases = String::from("CASE id");
    let mut ids = Vec::new();
    for (id, value) in rows {
        values.push(id.into());
        values.push(value.into());
        let (id_at, value_at) = (values.len() - 1, values.len());
        cases.push_str(&format!(" WHEN ${id_at} THEN ${value_at}"));
        ids.push(format!("${id_at}"));
    }
    cases.push_str(" END");
    (cases, ids.join(", "))
}

/// The JWT secret: configured, or generated once into the data directory (mode 0600).
fn jwt_secret(settings: &Settings) -> Result<String> {
    if let Some(secret) = &settings.jwt_secret {
        return Ok(secret.expose().to_owned());
    }
    let path = settings.data_dir.join("jwt_secret");
    let config_error = |e: std::io::Error| Error::Config {
        key: "data_dir".into(),
        message: format!("{}: {e}", path.display()),
    };
    match std::fs::read_to_string(&path) {
        Ok(secret) if secret.trim().len() >= 32 => Ok(secret.trim().to_owned()),
        Ok(_) => Err(Error::Config {
            key: "jwt_secret".into(),
            message: format!("{} holds a secret that is too short", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&settings.data_dir).map_err(config_error)?;
            let secret = crate::security::random_hex(32);
            match write_private(&path, &secret) {
                Ok(()) => Ok(secret),
                // Another instance sharing the data directory won the race: use its secret.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => jwt_secret(settings),
                Err(e) => Err(config_error(e)),
            }
        }
        Err(e) => Err(config_error(e)),
    }
}

fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())
}
