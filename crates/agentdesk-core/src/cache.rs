//! Caches, the invalidation bus and rate-limit counters.
//!
//! Authenticated sessions are cached per instance for a few seconds. A change that must take
//! effect at once (logout, password change, deactivation, role change) evicts the entry here
//! synchronously and publishes the eviction to every other instance: through Redis pub/sub
//! when Redis is configured, PostgreSQL `LISTEN/NOTIFY` on PostgreSQL without Redis, and not at
//! all on a single SQLite instance, which has no one to tell. The short TTL is the safety net
//! for a message lost while a connection was down; a reconnect clears everything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use moka::future::Cache;
use redis::AsyncCommands;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::database::Database;
use crate::error::{Error, Result};
use crate::models::user::User;
use crate::services::permissions::UserGrants;

const PG_CHANNEL: &str = "agentdesk_invalidate";

/// What changed, so that caches can drop what depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Invalidation {
    /// One session was revoked.
    Session(Uuid),
    /// One API key was revoked.
    ApiKey(Uuid),
    /// A user changed (role, activity, password, grants): drop all their sessions and grants.
    User(Uuid),
    /// Something that affects many users changed (a role's grants): drop everything.
    All,
}

/// A cached, verified credential (a session's access token or an API key): who the caller
/// is, as of when it was loaded.
#[derive(Debug, Clone)]
pub struct AuthContext {
    /// The user, as loaded with the credential.
    pub user: User,
    /// The session the access token belongs to; for an API key, the key's id.
    pub session_id: Uuid,
    /// Set when the caller authenticated with an API key rather than a session.
    pub api_key: Option<Arc<ApiKeyScope>>,
}

impl AuthContext {
    /// Fails for an API key: the account's own settings (sessions, keys, password, second
    /// factor) need a user's session.
    pub fn require_session(&self) -> Result<()> {
        match self.api_key {
            None => Ok(()),
            Some(_) => Err(Error::SessionRequired),
        }
    }
}

/// What an API key allows: its owner's grants, or only some of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyScope {
    /// The key's id.
    pub id: Uuid,
    /// The owner's grants the key is narrowed to, sorted; `None` for everything the owner may do.
    pub grant_ids: Option<Vec<Uuid>>,
    /// When the key stops working (checked on every use, cached or not).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How invalidations reach other instances.
#[derive(Clone)]
enum Remote {
    None,
    Redis {
        manager: redis::aio::ConnectionManager,
        client: redis::Client,
        channel: String,
    },
    Postgres(Database),
}

/// The per-instance caches plus the bus that keeps them honest across instances.
#[derive(Clone)]
pub struct Caches {
    sessions: Cache<Uuid, AuthContext>,
    /// Verified API keys, by the key's hash.
    api_keys: Cache<String, AuthContext>,
    grants: Cache<Uuid, Arc<UserGrants>>,
    remote: Remote,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("sessions", &self.sessions.entry_count())
            .finish_non_exhaustive()
    }
}

impl Caches {
    /// Builds the caches; `redis` takes precedence over PostgreSQL for the bus.
    pub fn new(
        session_ttl: Duration,
        redis: Option<(redis::aio::ConnectionManager, redis::Client)>,
        redis_prefix: &str,
        db: &Database,
    ) -> Self {
        let remote = match redis {
            Some((manager, client)) => Remote::Redis {
                manager,
                client,
                channel: format!("{redis_prefix}:invalidate"),
            },
            None if db.backend() == DatabaseBackend::Postgres => Remote::Postgres(db.clone()),
            None => Remote::None,
        };
        let sessions = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(session_ttl)
            .support_invalidation_closures()
            .build();
        let api_keys = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(session_ttl)
            .support_invalidation_closures()
            .build();
        let grants = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(30))
            .build();
        Self {
            sessions,
            api_keys,
            grants,
            remote,
        }
    }

    /// A cached session, if present and fresh.
    pub async fn session(&self, id: Uuid) -> Option<AuthContext> {
        self.sessions.get(&id).await
    }

    /// Caches a verified session.
    pub async fn put_session(&self, ctx: AuthContext) {
        self.sessions.insert(ctx.session_id, ctx).await;
    }

    /// A cached API key, by the key's hash.
    pub async fn api_key(&self, key_hash: &str) -> Option<AuthContext> {
        self.api_keys.get(key_hash).await
    }

    /// Caches a verified API key under its hash.
    pub async fn put_api_key(&self, key_hash: String, ctx: AuthContext) {
        self.api_keys.insert(key_hash, ctx).await;
    }

    /// A user's cached effective grants.
    pub async fn grants(&self, user_id: Uuid) -> Option<Arc<UserGrants>> {
        self.grants.get(&user_id).await
    }

    /// Caches a user's effective grants.
    pub async fn put_grants(&self, user_id: Uuid, grants: Arc<UserGrants>) {
        self.grants.insert(user_id, grants).await;
    }

    /// Applies an invalidation here, now, then tells the other instances.
    pub async fn invalidate(&self, what: Invalidation) {
        self.apply(&what).await;
        let payload = match serde_json::to_string(&what) {
            Ok(p) => p,
            Err(_) => return,
        };
        let sent = match &self.remote {
            Remote::None => Ok(()),
            Remote::Redis {
                manager, channel, ..
            } => {
                let mut conn = manager.clone();
                within_redis_timeout(conn.publish::<_, _, i64>(channel.as_str(), payload))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Remote::Postgres(db) => db
                .writer()
                .execute_raw(Statement::from_sql_and_values(
                    DatabaseBackend::Postgres,
                    "SELECT pg_notify($1, $2)",
                    [PG_CHANNEL.into(), payload.into()],
                ))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = sent {
            // Other instances fall back to the TTL; say so loudly.
            tracing::error!(error = %e, "could not publish a cache invalidation");
        }
    }

    async fn apply(&self, what: &Invalidation) {
        match what {
            Invalidation::Session(id) => self.sessions.invalidate(id).await,
            Invalidation::ApiKey(id) => {
                let id = *id;
                let _ = self
                    .api_keys
                    .invalidate_entries_if(move |_, ctx| ctx.session_id == id);
            }
            Invalidation::User(user_id) => {
                let user_id = *user_id;
                let _ = self
                    .sessions
                    .invalidate_entries_if(move |_, ctx| ctx.user.id == user_id);
                let _ = self
                    .api_keys
                    .invalidate_entries_if(move |_, ctx| ctx.user.id == user_id);
                self.grants.invalidate(&user_id).await;
            }
            Invalidation::All => {
                self.sessions.invalidate_all();
                self.api_keys.invalidate_all();
                self.grants.invalidate_all();
            }
        }
    }

    /// Starts the task that applies other instances' invalidations here. Returns at once.
    pub fn spawn_listener(&self) {
        match self.remote.clone() {
            Remote::None => {}
            Remote::Redis {
                client, channel, ..
            } => {
                let this = self.clone();
                tokio::spawn(async move { this.listen_redis(client, channel).await });
            }
            Remote::Postgres(db) => {
                let this = self.clone();
                tokio::spawn(async move { this.listen_postgres(db).await });
            }
        }
    }

    async fn listen_redis(self, client: redis::Client, channel: String) {
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if let Err(e) = pubsub.subscribe(channel.as_str()).await {
                        tracing::warn!(error = %e, "redis subscribe failed");
                    } else {
                        // Anything may have changed while we were not listening.
                        self.apply(&Invalidation::All).await;
                        let mut messages = pubsub.on_message();
                        while let Some(msg) = messages.next().await {
                            if let Ok(payload) = msg.get_payload::<String>()
                                && let Ok(what) = serde_json::from_str::<Invalidation>(&payload)
                            {
                                self.apply(&what).await;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "redis pub/sub connection failed"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn listen_postgres(self, db: Database) {
        use sea_orm::sqlx::postgres::PgListener;
        loop {
            let pool = db.writer().get_postgres_connection_pool().clone();
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => {
                    if let Err(e) = listener.listen(PG_CHANNEL).await {
                        tracing::warn!(error = %e, "LISTEN failed");
                    } else {
                        self.apply(&Invalidation::All).await;
                        loop {
                            match listener.recv().await {
                                Ok(note) => {
                                    if let Ok(what) =
                                        serde_json::from_str::<Invalidation>(note.payload())
                                    {
                                        self.apply(&what).await;
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "LISTEN connection lost");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "LISTEN connection failed"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Counts events in fixed windows (for login rate limits), in process or in Redis so that all
/// instances share one quota. While Redis does not answer, the counts fall back to this
/// process's own (each instance then enforces the quota on its own: the limit per client is at
/// most the quota times the number of instances) and go back to Redis when it answers again.
#[derive(Clone)]
pub struct RateLimiter {
    backend: LimiterBackend,
}

type LocalCounters = Cache<String, Arc<std::sync::Mutex<(u32, Instant)>>>;

#[derive(Clone)]
enum LimiterBackend {
    Local(LocalCounters),
    Redis(RedisCounters),
}

/// Counters in Redis, and this process's own for while Redis does not answer.
#[derive(Clone)]
struct RedisCounters {
    manager: redis::aio::ConnectionManager,
    prefix: String,
    fallback: LocalCounters,
    /// Set while Redis does not answer, so that the fall-back is logged once per outage, not
    /// once per request (per limiter: two limiters on two Redis servers do not mix their states).
    fell_back: Arc<std::sync::atomic::AtomicBool>,
}

impl RedisCounters {
    /// Runs `pipe` on `key`'s counter in Redis; `None` (logged once per outage) when Redis does not
    /// answer within [`REDIS_WAIT`], and the caller counts in `fallback` instead.
    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: impl FnOnce(&str) -> redis::Pipeline,
        key: &str,
    ) -> Option<T> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut conn = self.manager.clone();
        let pipeline = pipe(&format!("{}{key}", self.prefix));
        match within_redis_timeout(pipeline.query_async(&mut conn)).await {
            Ok(answer) => {
                if self.fell_back.swap(false, Relaxed) {
                    tracing::warn!("redis answers again: rate limits are shared again");
                }
                Some(answer)
            }
            Err(e) => {
                if !self.fell_back.swap(true, Relaxed) {
                    tracing::error!(error = %e, "redis does not answer: rate limits are counted per instance until it does");
                }
                None
            }
        }
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            LimiterBackend::Local(_) => "RateLimiter(local)",
            LimiterBackend::Redis(_) => "RateLimiter(redis)",
        })
    }
}

fn local_counters(window: Duration) -> LocalCounters {
    Cache::builder()
        .max_capacity(1_000_000)
        .time_to_live(window)
        .build()
}

/// How long a request waits for Redis before going on without it. The connection manager
/// reconnects in the background, and a command sent meanwhile may wait for that reconnection.
const REDIS_WAIT: Duration = Duration::from_millis(500);

async fn within_redis_timeout<T>(
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(REDIS_WAIT, command)
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no answer from redis within 500 ms",
            )))
        })
}

async fn local_current(cache: &LocalCounters, key: &str, window: Duration) -> Result<(u32, u64)> {
    Ok(match cache.get(key).await {
        Some(entry) => {
            let (count, started) = *entry
                .lock()
                .map_err(|_| Error::internal("poisoned limiter"))?;
            let left = window.saturating_sub(started.elapsed());
            if left.is_zero() {
                (0, 0)
            } else {
                (count, left.as_secs().max(1))
            }
        }
        None => (0, 0),
    })
}

async fn local_hit(cache: &LocalCounters, key: &str, window: Duration) -> Result<u32> {
    let entry = cache
        .get_with(key.to_owned(), async {
            Arc::new(std::sync::Mutex::new((0, Instant::now())))
        })
        .await;
    let mut guard = entry
        .lock()
        .map_err(|_| Error::internal("poisoned limiter"))?;
    if guard.1.elapsed() >= window {
        *guard = (0, Instant::now());
    }
    guard.0 += 1;
    Ok(guard.0)
}

impl RateLimiter {
    /// A limiter in this process.
    pub fn local(window: Duration) -> Self {
        Self {
            backend: LimiterBackend::Local(local_counters(window)),
        }
    }

    /// A limiter whose counters live in Redis, under `<prefix>:rl:`, with counters of windows of
    /// `window` in this process for while Redis does not answer.
    pub fn redis(manager: redis::aio::ConnectionManager, prefix: &str, window: Duration) -> Self {
        Self {
            backend: LimiterBackend::Redis(RedisCounters {
                manager,
                prefix: format!("{prefix}:rl:"),
                fallback: local_counters(window),
                fell_back: Arc::default(),
            }),
        }
    }

    /// The current count of `key` and the seconds until its window ends.
    pub async fn current(&self, key: &str, window: Duration) -> Result<(u32, u64)> {
        match &self.backend {
            LimiterBackend::Local(cache) => local_current(cache, key, window).await,
            LimiterBackend::Redis(redis) => {
                let answer: Option<(Option<u32>, i64)> = redis
                    .query(
                        |k| {
                            let mut pipe = redis::pipe();
                            pipe.get(k).ttl(k);
                            pipe
                        },
                        key,
                    )
                    .await;
                match answer {
                    Some((count, ttl)) => Ok((count.unwrap_or(0), ttl.max(1) as u64)),
                    None => local_current(&redis.fallback, key, window).await,
                }
            }
        }
    }

    /// Adds one to `key` (starting a window if none is open) and returns the new count.
    pub async fn hit(&self, key: &str, window: Duration) -> Result<u32> {
        match &self.backend {
            LimiterBackend::Local(cache) => local_hit(cache, key, window).await,
            LimiterBackend::Redis(redis) => {
                let answer: Option<(u32,)> = redis
                    .query(
                        |k| {
                            let mut pipe = redis::pipe();
                            pipe.incr(k, 1u32)
                                .cmd("EXPIRE")
                                .arg(k)
                                .arg(window.as_secs().max(1))
                                .arg("NX")
                                .ignore();
                            pipe
                        },
                        key,
                    )
                    .await;
                match answer {
                    Some((count,)) => Ok(count),
                    None => local_hit(&redis.fallback, key, window).await,
                }
            }
        }
    }

    /// Clears `key` (after a successful login).
    pub async fn reset(&self, key: &str) -> Result<()> {
        match &self.backend {
            LimiterBackend::Local(cache) => cache.invalidate(key).await,
            LimiterBackend::Redis(redis) => {
                redis.fallback.invalidate(key).await;
                let _: Option<()> = redis
                    .query(
                        |k| {
                            let mut pipe = redis::pipe();
                            pipe.del(k).ignore();
                            pipe
                        },
                        key,
                    )
                    .await;
            }
        }
        Ok(())
    }
}

/// Connects to Redis: a connection manager (reconnects by itself) and the client for pub/sub.
pub async fn connect_redis(url: &str) -> Result<(redis::aio::ConnectionManager, redis::Client)> {
    let client = redis::Client::open(url).map_err(|e| Error::Config {
        key: "redis_url".into(),
        message: e.to_string(),
    })?;
    let manager = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
        .await
        .map_err(|_| Error::Unavailable("redis did not answer within 5 s".into()))?
        .map_err(redis_error)?;
    Ok((manager, client))
}

/// Pings Redis (for `/readyz`).
pub async fn ping_redis(manager: &redis::aio::ConnectionManager) -> Result<()> {
    let mut conn = manager.clone();
    tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await
    .map_err(|_| Error::Unavailable("redis did not answer within 2 s".into()))?
    .map(|_| ())
    .map_err(redis_error)
}

fn redis_error(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {e}"))
}
