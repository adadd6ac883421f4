//! Settings from the environment (`AGENTDESK_*`) and an optional `agentdesk.toml`; the
//! environment wins. Everything is validated at start, and an error names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Result};

/// A secret string: never printed by `Debug`, masked when serialised.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"********\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str("********")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The raw settings as read; [`Settings::load`] validates them into this same type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address of the HTTP API.
    pub bind: SocketAddr,
    /// Address of a standalone worker's health and metrics endpoints.
    pub worker_bind: SocketAddr,
    /// SQLite database, stored files and generated secrets live here.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; defaults to SQLite in the data directory.
    pub database_url: Option<Secret>,
    /// Connections in the database pool (PostgreSQL) or reader pool (SQLite).
    pub database_max_connections: u32,
    /// `redis://...`; unset means in-process cache, rate limits and invalidation.
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key and channel, so that several deployments can share one Redis.
    pub redis_prefix: String,
    /// `file://...` or `s3://bucket/prefix`.
    pub storage_url: Option<String>,
    /// Signing key for access tokens; generated once into the data directory when unset. The
    /// key that encrypts second-factor secrets at rest is derived from it.
    pub jwt_secret: Option<Secret>,
    /// The `jwt_secret` before a rotation: at start, second-factor secrets still encrypted
    /// under it are encrypted again under the current one (then it may be removed).
    pub previous_jwt_secret: Option<Secret>,
    /// Create this admin at start if no user has that email.
    pub admin_email: Option<String>,
    /// The password of `admin_email`.
    pub admin_password: Option<Secret>,
    /// `all`, `none`, or a comma list of agent names whose workers run in this process.
    pub agents: String,
    /// Jobs that may run at once per agent in one process: `name=n,name=n` (others: the agent's default).
    pub agent_concurrency: String,
    /// Longest wait between looks at the job queue, in milliseconds (workers are also woken).
    pub job_poll_ms: u64,
    /// How long a claimed job is held without a heartbeat before another worker may take it.
    pub job_lease_secs: u64,
    /// Upload limit for documents and recordings, in MiB.
    pub max_upload_mb: u64,
    /// Limit for JSON and form request bodies, in KiB.
    pub max_json_kb: u64,
    /// Tracing filter (`info`, `agentdesk=debug,tower_http=info`, ...).
    pub log: String,
    /// `pretty` or `json`; defaults to pretty on a terminal and json otherwise.
    pub log_format: Option<LogFormat>,
    /// Lifetime of an access token, in seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token (and its session, sliding), in seconds.
    pub refresh_token_ttl_secs: u64,
    /// Failed logins per email within the window before 429.
    pub login_max_failures_per_email: u32,
    /// Failed logins per client IP within the window before 429.
    pub login_max_failures_per_ip: u32,
    /// The window of the login rate limits, in seconds.
    pub login_window_secs: u64,
    /// Comma list of origins allowed by CORS (`*` for any); empty disables CORS.
    pub cors_origins: String,
    /// Trust `X-Forwarded-For` for the client IP (only behind a proxy you run).
    pub trust_forwarded_for: bool,
    /// Time limit of a request, in seconds.
    pub request_timeout_secs: u64,
    /// How long a graceful shutdown waits for in-flight work, in seconds.
    pub shutdown_timeout_secs: u64,
    /// How long an authenticated session stays cached in an instance before it is checked again.
    pub session_cache_ttl_secs: u64,
    /// Wall-clock limit of one PDF's extraction (its child process is killed after it), in seconds.
    pub pdf_timeout_secs: u64,
    /// Address-space limit of the PDF extraction child process, in MiB.
    pub pdf_max_memory_mb: u64,
    /// Documents with more pages fail with `pdf_limit_exceeded`.
    pub pdf_max_pages: u64,
    /// OCR pages without a text layer (when the binary is built with the `ocr` feature).
    pub pdf_ocr: bool,
    /// Tesseract languages for OCR (`eng`, `eng+fra`).
    pub pdf_ocr_languages: String,
    /// Where speech models live (`agentdesk models install`); defaults to `models` in the data
    /// directory.
    pub models_dir: Option<PathBuf>,
    /// The speech model to transcribe with (`tiny.en`, `base`, ...); unset: `base` when it is
    /// installed, else `tiny.en`, else the first installed.
    pub audio_model: Option<String>,
    /// Spoken language of recordings (`en`, `es`, ...) or `auto` to detect it (multilingual
    /// models only).
    pub audio_language: String,
    /// Threads of one transcription (0: one per CPU, at most 8).
    pub audio_threads: u32,
    /// Recordings longer than this fail with `audio_too_long`, in seconds.
    pub audio_max_duration_secs: u64,
    /// Longest live capture session, in seconds.
    pub audio_live_max_secs: u64,
    /// The name this deployment goes by on reports it makes (the firm or the customer
    /// organisation); default `agentdesk`.
    pub instance_name: String,
    /// Where mail goes out: `smtp://host:port` (plain, or `?tls=required` for STARTTLS),
    /// `smtps://host:465` (TLS), with `user:password@` when the relay wants a login. Unset: no
    /// mail (schedules cannot deliver by e-mail).
    pub smtp_url: Option<Secret>,
    /// The sender of mail (`Reports <reports@example.com>`); required with `smtp_url`.
    pub mail_from: Option<String>,
    /// Attempts of a report delivery (one mail or webhook) before it is marked failed.
    pub delivery_max_attempts: u32,
    /// First wait before a delivery is tried again, in milliseconds; it doubles each attempt.
    pub delivery_backoff_ms: u64,
    /// On SIGTERM, how long `/readyz` answers 503 `draining` before the listener closes, so that
    /// a proxy's health check notices, in seconds.
    pub drain_grace_secs: u64,
    /// When the server backs itself up: a five-field cron expression in UTC (`0 3 * * *`);
    /// unset: no scheduled backups. One instance takes each backup.
    pub backup_cron: Option<String>,
    /// Where scheduled backups go: a folder or `s3://bucket/prefix`; required with `backup_cron`.
    pub backup_dest: Option<String>,
    /// How many scheduled backups to keep at the destination (0: all).
    pub backup_keep: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            worker_bind: SocketAddr::from(([127, 0, 0, 1], 8081)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_max_connections: 10,
            redis_url: None,
            redis_prefix: "agentdesk".into(),
            storage_url: None,
            jwt_secret: None,
            previous_jwt_secret: None,
            admin_email: None,
            admin_password: None,
            agents: "all".into(),
            agent_concurrency: String::new(),
            job_poll_ms: 1000,
            job_lease_secs: 30,
            max_upload_mb: 50,
            max_json_kb: 1024,
            log: "info".into(),
            log_format: None,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 14 * 24 * 3600,
            login_max_failures_per_email: 5,
            pdf_timeout_secs: 120,
            pdf_max_memory_mb: 2048,
            pdf_max_pages: 20_000,
            pdf_ocr: true,
            pdf_ocr_languages: "eng".into(),
            models_dir: None,
            audio_model: None,
            audio_language: "auto".into(),
            instance_name: "agentdesk".into(),
            smtp_url: None,
            mail_from: None,
            delivery_max_attempts: 8,
            delivery_backoff_ms: 30_000,
            drain_grace_secs: 5,
            backup_cron: None,
            backup_dest: None,
            backup_keep: 7,
            audio_threads: 0,
            audio_max_duration_secs: 4 * 3600,
            audio_live_max_secs: 2 * 3600,
            login_max_failures_per_ip: 50,
            login_window_secs: 15 * 60,
            cors_origins: String::new(),
            trust_forwarded_for: false,
            request_timeout_secs: 30,
            shutdown_timeout_secs: 30,
            session_cache_ttl_secs: 5,
        }
    }
}

/// Parses `backup_cron`: exactly five fields (minute to weekday), evaluated in UTC.
pub fn parse_backup_cron(text: &str) -> std::result::Result<croner::Cron, String> {
    if text.split_whitespace().count() != 5 {
        return Err("must have five fields: minute hour day-of-month month day-of-week".into());
    }
    croner::parser::CronParser::builder()
        .build()
        .parse(text)
        .map_err(|e| e.to_string())
}

/// A speech model's name: safe as part of a file name.
pub fn is_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `AGENTDESK_*` variables that the binary reads but that are not settings.
const NON_SETTING_VARIABLES: &[&str] = &[
    "config",
    "new_password",
    "database_url_file",
    "redis_url_file",
    "jwt_secret_file",
    "previous_jwt_secret_file",
    "admin_password_file",
    "smtp_url_file",
];

/// Settings that may instead be read from a file named by `AGENTDESK_<KEY>_FILE` (systemd's
/// `LoadCredential=`, Docker and compose secrets), so that secrets stay out of the environment.
pub const SECRET_FILE_KEYS: &[&str] = &[
    "database_url",
    "redis_url",
    "jwt_secret",
    "previous_jwt_secret",
    "admin_password",
    "smtp_url",
];

/// Which database the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Settings {
    /// Reads `agentdesk.toml` (or the file named by `AGENTDESK_CONFIG`) and the environment,
    /// then validates.
    pub fn load() -> Result<Self> {
        let path = std::env::var("AGENTDESK_CONFIG").unwrap_or_else(|_| "agentdesk.toml".into());
        let explicit = std::env::var_os("AGENTDESK_CONFIG").is_some();
        if explicit && !Path::new(&path).exists() {
            return Err(Error::Config {
                key: "config".into(),
                message: format!("file {path} does not exist"),
            });
        }
        let known = Self::known_keys();
        let secret_files = Self::secret_files(|name| std::env::var_os(name))?;
        Self::from_figment(
            Figment::from(Serialized::defaults(Settings::default()))
                .merge(Toml::file(&path))
                .merge(secret_files)
                // Only keys that name a setting: an orchestrator injects variables of its own
                // under our prefix (Kubernetes: `AGENTDESK_PORT`, `AGENTDESK_SERVICE_HOST`, ... for
                // a Service named agentdesk), and those must not stop the server. They are
                // reported by [`Settings::unknown_env_keys`] instead.
                .merge(
                    Env::prefixed("AGENTDESK_").filter(move |key| {
                        known.iter().any(|k| key.as_str().eq_ignore_ascii_case(k))
                    }),
                ),
        )
    }

    /// The secrets given as files (`AGENTDESK_<KEY>_FILE`), read; `var` looks a variable up. A
    /// key set both ways, or a file that cannot be read, is an error naming the key.
    pub fn secret_files(
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Serialized<std::collections::BTreeMap<String, String>>> {
        let mut values = std::collections::BTreeMap::new();
        for key in SECRET_FILE_KEYS {
            let upper = key.to_ascii_uppercase();
            let Some(path) = var(&format!("AGENTDESK_{upper}_FILE")) else {
                continue;
            };
            if var(&format!("AGENTDESK_{upper}")).is_some() {
                return Err(Error::Config {
                    key: (*key).into(),
                    message: format!("set AGENTDESK_{upper} or AGENTDESK_{upper}_FILE, not both"),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Config {
                key: format!("{key}_file"),
                message: format!("cannot read {}: {e}", Path::new(&path).display()),
            })?;
            // Files usually end in a newline that is not part of the secret.
            values.insert(
                (*key).to_owned(),
                text.trim_end_matches(['\n', '\r']).to_owned(),
            );
        }
        Ok(Serialized::globals(values))
    }

    /// Variables named `AGENTDESK_*` in the process environment that are neither a setting nor
    /// one of the binary's own variables (`AGENTDESK_CONFIG`, ...). They are ignored; the binary
    /// warns about them, since a misspelt setting would otherwise go unnoticed.
    pub fn unknown_env_keys() -> Vec<String> {
        Self::unknown_keys_in(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
    }

    /// [`Settings::unknown_env_keys`] over a given list of variable names.
    pub fn unknown_keys_in(names: impl IntoIterator<Item = String>) -> Vec<String> {
        let known = Self::known_keys();
        let mut unknown: Vec<String> = names
            .into_iter()
            .filter(|name| {
                name.strip_prefix("AGENTDESK_").is_some_and(|rest| {
                    !known.iter().any(|k| rest.eq_ignore_ascii_case(k))
                        && !NON_SETTING_VARIABLES
                            .iter()
                            .any(|k| rest.eq_ignore_ascii_case(k))
                })
            })
            .collect();
        unknown.sort();
        unknown
    }

    /// The names of every setting, as in `agentdesk.toml`.
    fn known_keys() -> Vec<String> {
        match serde_json::to_value(Settings::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Builds settings from a figment (tests use this to avoid the process environment).
    pub fn from_figment(figment: Figment) -> Result<Self> {
        let settings: Settings = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            let key = if key.is_empty() {
                e.metadata
                    .as_ref()
                    .map(|m| m.name.to_string())
                    .unwrap_or_default()
            } else {
                key
            };
            Error::Config {
                key,
                message: e.kind.to_string(),
            }
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(Error::Config {
                key: key.into(),
                message,
            })
        };
        match self.database_url() {
            u if u.starts_with("sqlite:")
                || u.starts_with("postgres://")
                || u.starts_with("postgresql://") => {}
            _ => {
                return bad(
                    "database_url",
                    "must start with sqlite: or postgres://".into(),
                );
            }
        }
        if let Some(redis) = &self.redis_url
            && !(redis.expose().starts_with("redis://") || redis.expose().starts_with("rediss://"))
        {
            return bad("redis_url", "must start with redis:// or rediss://".into());
        }
        if self.redis_prefix.is_empty()
            || self.redis_prefix.len() > 64
            || self.redis_prefix.contains(char::is_whitespace)
        {
            return bad(
                "redis_prefix",
                "must be 1 to 64 characters without spaces".into(),
            );
        }
        let storage = self.storage_url();
        if !(storage.starts_with("file://") || storage.starts_with("s3://")) {
            return bad("storage_url", "must start with file:// or s3://".into());
        }
        if !(1..=10_240).contains(&self.max_upload_mb) {
            return bad(
                "max_upload_mb",
                format!("{} is out of range 1..=10240", self.max_upload_mb),
            );
        }
        if !(1..=65_536).contains(&self.max_json_kb) {
            return bad(
                "max_json_kb",
                format!("{} is out of range 1..=65536", self.max_json_kb),
            );
        }
        if !(1..=200).contains(&self.database_max_connections) {
            return bad(
                "database_max_connections",
                "must be between 1 and 200".into(),
            );
        }
        if !(30..=86_400).contains(&self.access_token_ttl_secs) {
            return bad(
                "access_token_ttl_secs",
                "must be between 30 and 86400".into(),
            );
        }
        if self.refresh_token_ttl_secs < self.access_token_ttl_secs {
            return bad(
                "refresh_token_ttl_secs",
                "must not be shorter than access_token_ttl_secs".into(),
            );
        }
        if self.login_max_failures_per_email == 0
            || self.login_max_failures_per_ip == 0
            || self.login_window_secs == 0
        {
            return bad(
                "login_max_failures_per_email",
                "login limits and window must be positive".into(),
            );
        }
        if !(10..=60_000).contains(&self.job_poll_ms) {
            return bad("job_poll_ms", "must be between 10 and 60000".into());
        }
        if !(1..=3600).contains(&self.job_lease_secs) {
            return bad("job_lease_secs", "must be between 1 and 3600".into());
        }
        if let Err(message) = self.agent_concurrency() {
            return bad("agent_concurrency", message);
        }
        if !(1..=3600).contains(&self.pdf_timeout_secs) {
            return bad("pdf_timeout_secs", "must be between 1 and 3600".into());
        }
        if !(64..=65_536).contains(&self.pdf_max_memory_mb) {
            return bad("pdf_max_memory_mb", "must be between 64 and 65536".into());
        }
        if self.pdf_max_pages == 0 {
            return bad("pdf_max_pages", "must be positive".into());
        }
        if let Some(model) = &self.audio_model
            && !is_model_name(model)
        {
            return bad(
                "audio_model",
                "must be 1 to 64 of a-z, A-Z, 0-9, `.`, `_` and `-`".into(),
            );
        }
        if !(self.audio_language == "auto"
            || (2..=3).contains(&self.audio_language.len())
                && self.audio_language.chars().all(|c| c.is_ascii_lowercase()))
        {
            return bad(
                "audio_language",
                "must be `auto` or a language code such as `en`".into(),
            );
        }
        if self.instance_name.trim().is_empty()
            || self.instance_name.chars().count() > 200
            || self.instance_name.chars().any(char::is_control)
        {
            return bad(
                "instance_name",
                "must be 1 to 200 printable characters".into(),
            );
        }
        if let Some(url) = &self.smtp_url {
            let url = url.expose();
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                return bad("smtp_url", "must start with smtp:// or smtps://".into());
            }
            if self
                .mail_from
                .as_deref()
                .is_none_or(|f| f.trim().is_empty())
            {
                return bad(
                    "mail_from",
                    "is required with smtp_url (the sender of mail)".into(),
                );
            }
        }
        if !(1..=50).contains(&self.delivery_max_attempts) {
            return bad("delivery_max_attempts", "must be between 1 and 50".into());
        }
        if !(10..=3_600_000).contains(&self.delivery_backoff_ms) {
            return bad(
                "delivery_backoff_ms",
                "must be between 10 and 3600000".into(),
            );
        }
        if self.audio_threads > 64 {
            return bad("audio_threads", "must be between 0 and 64".into());
        }
        if !(1..=24 * 3600).contains(&self.audio_max_duration_secs) {
            return bad(
                "audio_max_duration_secs",
                "must be between 1 and 86400".into(),
            );
        }
        if !(1..=24 * 3600).contains(&self.audio_live_max_secs) {
            return bad("audio_live_max_secs", "must be between 1 and 86400".into());
        }
        if self.pdf_ocr_languages.is_empty()
            || !self
                .pdf_ocr_languages
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '_')
        {
            return bad(
                "pdf_ocr_languages",
                "Tesseract language codes joined by `+`, such as `eng+fra`".into(),
            );
        }
        if self.request_timeout_secs == 0 {
            return bad("request_timeout_secs", "must be positive".into());
        }
        if self.session_cache_ttl_secs > 60 {
            return bad(
                "session_cache_ttl_secs",
                "must be at most 60 so that revocations take effect".into(),
            );
        }
        if let Some(secret) = &self.jwt_secret
            && secret.expose().len() < 32
        {
            return bad("jwt_secret", "must be at least 32 characters".into());
        }
        match (&self.admin_email, &self.admin_password) {
            (Some(_), None) => {
                return bad(
                    "admin_password",
                    "is required when admin_email is set".into(),
                );
            }
            (None, Some(_)) => {
                return bad(
                    "admin_email",
                    "is required when admin_password is set".into(),
                );
            }
            _ => {}
        }
        if let Err(e) = tracing_filter_check(&self.log) {
            return bad("log", e);
        }
        if let Some(cron) = &self.backup_cron {
            if let Err(e) = parse_backup_cron(cron) {
                return bad("backup_cron", e);
            }
            if self.backup_dest.is_none() {
                return bad(
                    "backup_dest",
                    "is required with backup_cron (a folder or s3://bucket/prefix)".into(),
                );
            }
        }
        if let Some(dest) = &self.backup_dest
            && (dest.trim().is_empty() || dest.starts_with("s3:///"))
        {
            return bad(
                "backup_dest",
                "must be a folder or s3://bucket/prefix".into(),
            );
        }
        Ok(())
    }

    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}/agentdesk.db", self.data_dir.display()),
        }
    }

    /// Which database the URL names.
    pub fn database_kind(&self) -> DatabaseKind {
        if self.database_url().starts_with("sqlite:") {
            DatabaseKind::Sqlite
        } else {
            DatabaseKind::Postgres
        }
    }

    /// The storage URL, defaulting to a `files` folder in the data directory.
    pub fn storage_url(&self) -> String {
        self.storage_url
            .clone()
            .unwrap_or_else(|| format!("file://{}/files", self.data_dir.display()))
    }

    /// Where speech models live: `models_dir`, or `models` in the data directory.
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("models"))
    }

    /// The CORS origins, parsed from the comma list.
    pub fn cors_origins(&self) -> Vec<String> {
        self.cors_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The agents whose workers run in this process, from `agents` (`all`, `none` or a list);
    /// `known` names every agent the binary has.
    pub fn selected_agents(&self, known: &[&str]) -> Result<Vec<String>> {
        parse_agent_list(&self.agents, known).map_err(|message| Error::Config {
            key: "agents".into(),
            message,
        })
    }

    /// Per-agent concurrency from `agent_concurrency`.
    pub fn agent_concurrency(
        &self,
    ) -> std::result::Result<std::collections::HashMap<String, usize>, String> {
        let mut out = std::collections::HashMap::new();
        for pair in self
            .agent_concurrency
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (name, n) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not name=number"))?;
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| format!("`{pair}`: the number is not valid"))?;
            if !(1..=64).contains(&n) {
                return Err(format!("`{pair}`: between 1 and 64"));
            }
            out.insert(name.trim().to_owned(), n);
        }
        Ok(out)
    }

    /// The request time limit.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The graceful-shutdown deadline.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The configuration as JSON, with every secret masked (for `agentdesk config check`).
    pub fn masked(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "database_url".into(),
                serde_json::Value::String(mask_url(&self.database_url())),
            );
            if let Some(redis) = &self.redis_url {
                obj.insert(
                    "redis_url".into(),
                    serde_json::Value::String(mask_url(redis.expose())),
                );
            }
            obj.insert(
                "storage_url".into(),
                serde_json::Value::String(self.storage_url()),
            );
        }
        value
    }
}

/// Parses `all`, `none` or a comma list of agent names, checking each against `known`.
pub fn parse_agent_list(raw: &str, known: &[&str]) -> std::result::Result<Vec<String>, String> {
    match raw.trim() {
        "all" | "" => Ok(known.iter().map(|s| (*s).to_owned()).collect()),
        "none" => Ok(Vec::new()),
        list => list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|name| {
                if known.contains(&name) {
                    Ok(name.to_owned())
                } else {
                    Err(format!(
                        "unknown agent `{name}` (known: {})",
                        known.join(", ")
                    ))
                }
            })
            .collect(),
    }
}

/// Hides the password of a URL such as `postgres://user:pw@host/db`.
pub fn mask_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("********"));
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}

/// A light syntax check of a tracing filter, so that a typo stops the start instead of
/// silently logging nothing. Directives are `target=level` or `level`, comma separated.
fn tracing_filter_check(filter: &str) -> std::result::Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_target = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '-')
    };
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = match directive.split_once('=') {
            Some((target, level)) => {
                is_target(target) && LEVELS.contains(&level.to_ascii_lowercase().as_str())
            }
            // A bare word is a level, or a target enabled at every level.
            None => is_target(directive),
        };
        if !ok {
            return Err(format!("`{directive}` is not a valid filter directive"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Settings> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        for (k, v) in pairs {
            figment = figment.merge((k.to_string(), v.to_string()));
        }
        Settings::from_figment(figment)
    }

    #[test]
    fn defaults_are_valid() {
        let s = with(&[]).unwrap();
        assert_eq!(s.database_kind(), DatabaseKind::Sqlite);
        assert_eq!(s.database_url(), "sqlite://./data/agentdesk.db");
        assert_eq!(s.storage_url(), "file://./data/files");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = with(&[("max_upload_mb", "0")]).unwrap_err();
        assert!(
            matches!(err, Error::Config { ref key, .. } if key == "max_upload_mb"),
            "{err}"
        );
        let err = with(&[("database_url", "mysql://x")]).unwrap_err();
        assert!(
            matches!(err, Error::Config { ref key, .. } if key == "database_url"),
            "{err}"
        );
        let err = with(&[("jwt_secret", "short")]).unwrap_err();
        assert!(
            matches!(err, Error::Config { ref key, .. } if key == "jwt_secret"),
            "{err}"
        );
        let err = with(&[("log", "info,sqlx=loud")]).unwrap_err();
        assert!(
            matches!(err, Error::Config { ref key, .. } if key == "log"),
            "{err}"
        );
        assert!(with(&[("log", "info,agentdesk_api=debug")]).is_ok());
        let err = with(&[("admin_email", "a@b.c")]).unwrap_err();
        assert!(
            matches!(err, Error::Config { ref key, .. } if key == "admin_password"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_masked() {
        let s = with(&[
            ("database_url", "postgres://u:hunter2@h/db"),
            ("jwt_secret", "x".repeat(40).as_str()),
        ])
        .unwrap();
        let text = s.masked().to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(&"x".repeat(40)), "{text}");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn secrets_can_come_from_files_but_not_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwt_secret");
        std::fs::write(&file, format!("{}\n", "s".repeat(40))).unwrap();
        let path = file.clone();
        let vars = move |name: &str| {
            (name == "AGENTDESK_JWT_SECRET_FILE").then(|| path.clone().into_os_string())
        };
        let provider = Settings::secret_files(vars).unwrap();
        let settings = Settings::from_figment(
            Figment::from(Serialized::defaults(Settings::default())).merge(provider),
        )
        .unwrap();
        assert_eq!(
            settings.jwt_secret.as_ref().map(Secret::expose),
            Some("s".repeat(40).as_str()),
            "read without its newline"
        );
        let both = Settings::secret_files(|name: &str| {
            matches!(name, "AGENTDESK_JWT_SECRET_FILE" | "AGENTDESK_JWT_SECRET")
                .then(|| std::ffi::OsString::from("x"))
        });
        assert!(matches!(both, Err(Error::Config { ref key, .. }) if key == "jwt_secret"));
        let missing = Settings::secret_files(|name: &str| {
            (name == "AGENTDESK_SMTP_URL_FILE").then(|| std::ffi::OsString::from("/nonexistent/x"))
        });
        assert!(matches!(missing, Err(Error::Config { ref key, .. }) if key == "smtp_url_file"));
        assert!(Settings::unknown_keys_in(["AGENTDESK_JWT_SECRET_FILE".to_owned()]).is_empty());
    }

    #[test]
    fn a_backup_schedule_needs_a_valid_cron_and_a_destination() {
        assert!(
            with(&[
                ("backup_cron", "0 3 * * *"),
                ("backup_dest", "/var/backups")
            ])
            .is_ok()
        );
        for (cron, dest) in [("0 3 * *", "/b"), ("61 3 * * *", "/b"), ("0 3 * * *", "")] {
            let mut pairs = vec![("backup_cron", cron)];
            if !dest.is_empty() {
                pairs.push(("backup_dest", dest));
            }
            let err = with(&pairs).unwrap_err();
            assert!(
                matches!(err, Error::Config { ref key, .. } if key == "backup_cron" || key == "backup_dest"),
                "{cron:?} {dest:?}: {err}"
            );
        }
    }
}
