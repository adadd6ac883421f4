//! Passwords, access tokens and refresh tokens.
//!
//! Passwords are hashed with argon2id (OWASP's minimum: 19 MiB, t=2, p=1) on a small pool of
//! dedicated threads, one per core, fed through a bounded queue: a burst of logins queues
//! instead of starving the async runtime. Each thread reuses its 19 MiB work area while busy
//! and frees it after two idle seconds. The area is reserved with a capacity above glibc's
//! 32 MiB dynamic mmap limit, so it is always its own mapping and freeing it returns the memory
//! to the system (hashing on Tokio's blocking pool with a fresh area each time let glibc's
//! per-thread arenas keep hundreds of MB after a burst of logins).
//! Access tokens are HS256 JWTs (the algorithm is pinned when verifying) that carry the session
//! id; refresh tokens are 32 random bytes of which only the SHA-256 is stored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::{Error, Result};

/// OWASP's minimum for argon2id: m = 19 MiB, t = 2, p = 1.
const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;
/// Stored hashes with a larger work area than this are refused rather than computed.
const MAX_M_COST_KIB: u32 = 256 * 1024;
/// Capacity of a work area, in 1 KiB blocks: above glibc's largest dynamic mmap threshold, so
/// the area is mapped on its own and unmapped when freed. Only the used part is ever touched.
const AREA_CAPACITY_BLOCKS: usize = 33 * 1024;
/// How long a hashing thread keeps its work area without a job.
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(2);

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Hashes and verifies passwords on dedicated threads, a bounded number at a time.
#[derive(Clone)]
pub struct PasswordHasherPool {
    /// One queue per thread, so that an idle thread can notice it is idle and free its area.
    queues: Arc<Vec<mpsc::SyncSender<Job>>>,
    next: Arc<AtomicUsize>,
    dummy_hash: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for PasswordHasherPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasherPool")
            .field("threads", &self.queues.len())
            .finish()
    }
}

fn params() -> Params {
    Params::new(M_COST_KIB, T_COST, P_COST, Some(32)).unwrap_or_default()
}

impl PasswordHasherPool {
    /// A pool of `threads` hashing threads (at least one).
    pub fn new(threads: usize) -> Self {
        let mut queues = Vec::new();
        for i in 0..threads.max(1) {
            let (jobs, queue) = mpsc::sync_channel::<Job>(256);
            queues.push(jobs);
            let spawned = std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    let mut memory: Vec<Block> = Vec::new();
                    loop {
                        match queue.recv_timeout(IDLE_RELEASE) {
                            Ok(job) => job(&mut memory),
                            Err(mpsc::RecvTimeoutError::Timeout) => memory = Vec::new(),
                            // Every sender is gone: the pool was dropped.
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self {
            queues: Arc::new(queues),
            next: Arc::new(AtomicUsize::new(0)),
            dummy_hash: Arc::new(OnceLock::new()),
        }
    }

    /// Hashes a password into a PHC string.
    pub async fn hash(&self, password: &str) -> Result<String> {
        let password = password.to_owned();
        self.run(move |memory| hash_with(memory, &password)).await?
    }

    /// Verifies a password against a stored PHC string. A malformed hash verifies as false.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool> {
        let (password, hash) = (password.to_owned(), hash.to_owned());
        self.run(move |memory| verify_with(memory, &password, &hash))
            .await
    }

    /// Spends the same work as [`verify`](Self::verify) for an email that has no user, so that
    /// the answer's timing does not reveal which emails exist.
    pub async fn verify_dummy(&self, password: &str) -> Result<()> {
        let dummy = self.dummy_hash.clone();
        let password = password.to_owned();
        self.run(move |memory| {
            if dummy.get().is_none() {
                let _ =
                    dummy.set(hash_with(memory, "agentdesk dummy password").unwrap_or_default());
            }
            let _ = verify_with(
                memory,
                &password,
                dummy.get().map(String::as_str).unwrap_or_default(),
            );
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let _ = tx.send(f(memory));
        });
        let gone = || Error::internal("the password hashing threads are gone");
        let n = self.queues.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut job = Some(job);
        for i in 0..n {
            let Some(pending) = job.take() else { break };
            match self.queues[(first + i) % n].try_send(pending) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(back)) => job = Some(back),
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(gone()),
            }
        }
        if let Some(job) = job {
            // Every queue is full: wait for room off the runtime.
            let queue = self.queues[first].clone();
            tokio::task::spawn_blocking(move || queue.send(job))
                .await
                .map_err(Error::internal)?
                .map_err(|_| gone())?;
        }
        rx.await
            .map_err(|_| Error::internal("a password hashing job was lost"))
    }
}

fn prepare_area(memory: &mut Vec<Block>, blocks: usize) {
    if memory.len() < blocks {
        if memory.capacity() < blocks {
            *memory = Vec::with_capacity(blocks.max(AREA_CAPACITY_BLOCKS));
        }
        memory.resize(blocks, Block::new());
    }
}

fn hash_with(memory: &mut Vec<Block>, password: &str) -> Result<String> {
    let params = params();
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt_string = SaltString::encode_b64(&salt).map_err(Error::internal)?;
    prepare_area(memory, params.block_count());
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut out,
            &mut memory[..params.block_count()],
        )
        .map_err(Error::internal)?;
    let output = Output::new(&out).map_err(Error::internal)?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        salt_string.as_str(),
        output
    ))
}

fn verify_with(memory: &mut Vec<Block>, password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST_KIB {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    prepare_area(memory, params.block_count());
    let mut out = vec![0u8; expected.len()];
    let computed = Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        &mut out,
        &mut memory[..params.block_count()],
    );
    // Output's equality is constant-time.
    computed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: Uuid,
    /// The session's id: the token is refused as soon as the session is revoked.
    pub sid: Uuid,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// Always `agentdesk`.
    pub iss: String,
}

const ISSUER: &str = "agentdesk";

/// Signs and verifies access tokens.
#[derive(Clone)]
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer with an HMAC secret and an access-token lifetime.
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    /// The lifetime of an access token, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Issues an access token for a user's session.
    pub fn issue(&self, user_id: Uuid, session_id: Uuid, now: DateTime<Utc>) -> Result<String> {
        let claims = Claims {
            sub: user_id,
            sid: session_id,
            iat: now.timestamp(),
            exp: now.timestamp() + self.ttl_secs as i64,
            iss: ISSUER.into(),
        };
        jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
        .map_err(Error::internal)
    }

    /// Verifies signature, algorithm, issuer and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Error::InvalidToken("the access token has expired")
                }
                _ => Error::InvalidToken("the access token is invalid"),
            })
    }
}

/// A new refresh token (URL-safe base64 of 32 random bytes) and the hash to store.
pub fn new_refresh_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

/// The SHA-256 (hex) under which a token is stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Random bytes as hex (for generated secrets and passwords).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let pool = PasswordHasherPool::new(2);
        let hash = pool.hash("correct horse battery").await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(pool.verify("correct horse battery", &hash).await.unwrap());
        assert!(!pool.verify("wrong", &hash).await.unwrap());
        assert!(!pool.verify("x", "not a hash").await.unwrap());
        pool.verify_dummy("anything").await.unwrap();
    }

    #[tokio::test]
    async fn verifies_hashes_made_by_the_argon2_crate() {
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"from elsewhere", &salt)
        .unwrap()
        .to_string();
        let pool = PasswordHasherPool::new(1);
        assert!(pool.verify("from elsewhere", &hash).await.unwrap());
        assert!(!pool.verify("from elsewhere!", &hash).await.unwrap());
        // Ours parse as standard PHC strings.
        let ours = pool.hash("round trip").await.unwrap();
        assert!(PasswordHash::new(&ours).is_ok());
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef", 900);
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let token = signer.issue(user, session, Utc::now()).unwrap();
        let claims = signer.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, session));
        let other = TokenSigner::new(b"another secret that is long enough!!", 900);
        assert!(other.verify(&token).is_err());
        let expired = signer
            .issue(user, session, Utc::now() - chrono::Duration::hours(1))
            .unwrap();
        assert!(
            matches!(signer.verify(&expired), Err(Error::InvalidToken(m)) if m.contains("expired"))
        );
        // An unsigned token ("alg": "none") is refused because the algorithm is pinned.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            token.split('.').nth(1).unwrap()
        );
        assert!(signer.verify(&none).is_err());
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, ha) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(hash_token(&a), ha);
        assert_eq!(ha.len(), 64);
    }
}
