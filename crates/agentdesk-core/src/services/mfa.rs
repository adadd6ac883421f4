//! The second factor: TOTP (RFC 6238: HMAC-SHA-1, 6 digits, 30 s steps, one step of drift
//! either way) with ten one-time recovery codes.
//!
//! - A secret is encrypted at rest (ChaCha20-Poly1305, bound to its user) under a key derived
//!   from the instance's `jwt_secret` with HKDF; each sealed secret names its key. Rotation: set
//!   the new `jwt_secret` and the old one as `previous_jwt_secret`; the next start encrypts every
//!   secret again under the new key, after which the previous one may go.
//! - A code is accepted once: the time step of the last accepted code is kept, and only a later
//!   step passes, so a code seen by an onlooker cannot be replayed within its window.
//! - Recovery codes are 80 random bits each (so, like API keys, a fast hash suffices), stored as
//!   SHA-256 and marked used in the statement that accepts them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use chrono::Utc;
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set, sea_query::Expr,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, TOTP};
use uuid::Uuid;

use super::audit::{AuditRecord, Outcome};
use super::permissions::Permit;
use super::{Core, RequestMeta};
use crate::cache::AuthContext;
use crate::error::{Error, Result};
use crate::models::mfa::{self, recovery_code};
use crate::models::user;
use crate::security::hash_token;

/// Seconds per TOTP step.
pub const TOTP_STEP_SECS: u64 = 30;
/// Digits of a TOTP code.
pub const TOTP_DIGITS: usize = 6;
/// Recovery codes made at confirmation.
pub const RECOVERY_CODES: usize = 10;
/// The issuer an authenticator app shows.
const ISSUER: &str = "agentdesk";

/// What an enrolment returns: the secret three ways (for typing, for a link, for a camera).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TotpEnrolment {
    /// The secret in base32, to type into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/...`, the link authenticator apps take.
    pub otpauth_uri: String,
    /// The link as a QR code, an SVG document.
    pub qr_svg: String,
}

/// The ten recovery codes, shown once at confirmation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecoveryCodes {
    /// Each usable once in place of a TOTP code.
    pub recovery_codes: Vec<String>,
}

/// How a login's second factor was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecondFactor {
    /// The user has none.
    None,
    /// A TOTP code.
    Totp,
    /// A recovery code (now used up).
    RecoveryCode,
}

impl SecondFactor {
    /// The word the login's audit event records, if any.
    pub(crate) fn as_audit(self) -> Option<&'static str> {
        match self {
            SecondFactor::None => None,
            SecondFactor::Totp => Some("totp"),
            SecondFactor::RecoveryCode => Some("recovery_code"),
        }
    }
}

/// One encryption key, derived from an instance secret.
#[derive(Clone)]
struct SealKey {
    /// Names the key in what it sealed (a digest of it, never the key).
    id: String,
    cipher: ChaCha20Poly1305,
}

impl SealKey {
    fn derive(instance_secret: &str) -> Self {
        let hkdf = hkdf::Hkdf::<Sha256>::new(Some(b"agentdesk-mfa"), instance_secret.as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA-256's limit, so expanding cannot fail.
        let _ = hkdf.expand(b"totp-secret-encryption-v1", &mut key);
        let id = hex::encode(&Sha256::digest(key)[..4]);
        Self {
            id,
            cipher: ChaCha20Poly1305::new(&key.into()),
        }
    }
}

/// Encrypts second-factor secrets at rest, each bound to its user (a sealed secret copied to
/// another user's row does not open).
#[derive(Clone)]
pub struct SecretBox {
    current: SealKey,
    previous: Option<SealKey>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox")
            .field("key", &self.current.id)
            .field("previous", &self.previous.as_ref().map(|k| &k.id))
            .finish()
    }
}

impl SecretBox {
    /// Keys derived from the instance's secret and, during a rotation, the one before it.
    pub fn new(instance_secret: &str, previous: Option<&str>) -> Self {
        Self {
            current: SealKey::derive(instance_secret),
            previous: previous.map(SealKey::derive),
        }
    }

    /// `v1.<key id>.<base64 of nonce and ciphertext>`.
    fn seal(&self, user: Uuid, plain: &[u8]) -> Result<String> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .current
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: user.as_bytes(),
                },
            )
            .map_err(|_| Error::internal("could not encrypt a second-factor secret"))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!(
            "v1.{}.{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// The secret, and whether it was sealed under the previous key.
    fn open(&self, user: Uuid, sealed: &str) -> Result<(Vec<u8>, bool)> {
        let unreadable = || {
            Error::internal(
                "a second-factor secret could not be decrypted: was jwt_secret changed without \
                 setting the old one as previous_jwt_secret?",
            )
        };
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(unreadable());
        };
        let (key, previous) = if id == self.current.id {
            (&self.current, false)
        } else {
            match &self.previous {
                Some(p) if p.id == id => (p, true),
                _ => return Err(unreadable()),
            }
        };
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| unreadable())?;
        if bytes.len() < 12 {
            return Err(unreadable());
        }
        let (nonce, sealed) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| unreadable())?;
        let plain = key
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: user.as_bytes(),
                },
            )
            .map_err(|_| unreadable())?;
        Ok((plain, previous))
    }
}

/// The TOTP of a secret, labelled for `account` (colons are not allowed in a label).
fn totp_of(secret: Vec<u8>, account: &str) -> Result<TOTP> {
    TOTP::new(
        Algorithm::SHA1,
        TOTP_DIGITS,
        1,
        TOTP_STEP_SECS,
        secret,
        Some(ISSUER.to_owned()),
        account.replace(':', ""),
    )
    .map_err(|e| Error::internal(format!("TOTP: {e}")))
}

/// Equal without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The time step `code` belongs to, if it is the code of the step of `now` or of the one just
/// before or after (clock drift).
fn matching_step(totp: &TOTP, code: &str, now: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now / TOTP_STEP_SECS;
    let mut found = None;
    // Every candidate is computed, so the time taken does not tell which one matched.
    for step in [current.saturating_sub(1), current, current + 1] {
        if constant_time_eq(
            totp.generate(step * TOTP_STEP_SECS).as_bytes(),
            code.as_bytes(),
        ) && found.is_none()
        {
            found = Some(step);
        }
    }
    found
}

/// A new recovery code: 16 base32 characters (80 bits) in groups of four.
fn new_recovery_code() -> String {
    let mut bytes = [0u8; 10];
    rand::rng().fill_bytes(&mut bytes);
    let text = data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase();
    text.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// A recovery code as typed, reduced to what is hashed: no dashes or spaces, lowercase.
fn normalise_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Unix seconds now.
fn unix_now() -> u64 {
    Utc::now().timestamp().max(0) as u64
}

/// Removes a user's factor and recovery codes; whether there was a factor.
async fn delete_factor(conn: &impl ConnectionTrait, user_id: Uuid) -> Result<bool> {
    recovery_code::Entity::delete_many()
        .filter(recovery_code::Column::UserId.eq(user_id))
        .exec(conn)
        .await?;
    // An enrolment never confirmed goes too, but only a confirmed one counts as removed.
    let removed = mfa::Entity::delete_by_id(user_id)
        .exec_with_returning(conn)
        .await?;
    Ok(removed.is_some_and(|row| row.confirmed_at.is_some()))
}

impl Core {
    /// Starts (or restarts) the caller's TOTP enrolment: a new secret, not yet required at
    /// login. 409 while a confirmed factor exists (remove it first).
    pub async fn begin_totp(
        &self,
        caller: &AuthContext,
        meta: &RequestMeta,
    ) -> Result<TotpEnrolment> {
        caller.require_session()?;
        let user_id = caller.user.id;
        let existing = mfa::Entity::find_by_id(user_id)
            .one(self.db.reader())
            .await?;
        if existing.is_some_and(|row| row.confirmed_at.is_some()) {
            return Err(Error::Conflict(
                "a second factor is already active; remove it first".into(),
            ));
        }
        let mut secret = vec![0u8; 20];
        rand::rng().fill_bytes(&mut secret);
        let sealed = self.mfa_box.seal(user_id, &secret)?;
        let totp = totp_of(secret, &caller.user.email)?;
        let txn = self.db.begin().await?;
        mfa::Entity::delete_many()
            .filter(mfa::Column::UserId.eq(user_id))
            .filter(mfa::Column::ConfirmedAt.is_null())
            .exec(&txn)
            .await?;
        mfa::ActiveModel {
            user_id: Set(user_id),
            secret: Set(sealed),
            confirmed_at: Set(None),
            last_step: Set(None),
            created_at: Set(Utc::now()),
        }
        .insert(&txn)
        .await?;
        self.append(
            &txn,
            AuditRecord::new("auth.mfa_enrol", Outcome::Success, meta)
                .actor(&caller.user)
                .resource("user", user_id),
        )
        .await?;
        txn.commit().await?;
        let otpauth_uri = totp.get_url();
        let qr_svg = qrcode::QrCode::new(otpauth_uri.as_bytes())
            .map_err(|e| Error::internal(format!("QR code: {e}")))?
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .build();
        Ok(TotpEnrolment {
            secret: totp.get_secret_base32(),
            otpauth_uri,
            qr_svg,
        })
    }

    /// Confirms the caller's enrolment with a current code: from now on login needs a code.
    /// Returns ten new recovery codes (any earlier ones stop working).
    pub async fn confirm_totp(
        &self,
        caller: &AuthContext,
        code: &str,
        meta: &RequestMeta,
    ) -> Result<RecoveryCodes> {
        caller.require_session()?;
        let user_id = caller.user.id;
        let row = match mfa::Entity::find_by_id(user_id)
            .one(self.db.reader())
            .await?
        {
            None => {
                return Err(Error::Conflict(
                    "no enrolment to confirm: start one with POST /api/v1/auth/mfa/totp".into(),
                ));
            }
            Some(row) if row.confirmed_at.is_some() => {
                return Err(Error::Conflict(
                    "the second factor is already active".into(),
                ));
            }
            Some(row) => row,
        };
        let (secret, _) = self.mfa_box.open(user_id, &row.secret)?;
        let totp = totp_of(secret, &caller.user.email)?;
        let Some(step) = matching_step(&totp, code, unix_now()) else {
            return Err(Error::invalid(
                "code",
                "is not the authenticator's current code",
            ));
        };
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let confirmed = mfa::Entity::update_many()
            .col_expr(mfa::Column::ConfirmedAt, Expr::value(now))
            .col_expr(mfa::Column::LastStep, Expr::value(step as i64))
            .filter(mfa::Column::UserId.eq(user_id))
            .filter(mfa::Column::ConfirmedAt.is_null())
            .filter(mfa::Column::Secret.eq(row.secret.as_str()))
            .exec(&txn)
            .await?;
        if confirmed.rows_affected == 0 {
            return Err(Error::Conflict(
                "the enrolment changed meanwhile; start again".into(),
            ));
        }
        recovery_code::Entity::delete_many()
            .filter(recovery_code::Column::UserId.eq(user_id))
            .exec(&txn)
            .await?;
        recovery_code::Entity::insert_many(codes.iter().map(|code| recovery_code::ActiveModel {
            code_hash: Set(hash_token(&normalise_recovery_code(code))),
            user_id: Set(user_id),
            used_at: Set(None),
        }))
        .exec(&txn)
        .await?;
        self.append(
            &txn,
            AuditRecord::new("auth.mfa_enable", Outcome::Success, meta)
                .actor(&caller.user)
                .resource("user", user_id),
        )
        .await?;
        txn.commit().await?;
        Ok(RecoveryCodes {
            recovery_codes: codes,
        })
    }

    /// Removes the caller's second factor, given their password (a stolen session alone must
    /// not turn it off). Idempotent: without a factor it is a no-op, audited all the same.
    pub async fn remove_totp(
        &self,
        caller: &AuthContext,
        password: &str,
        meta: &RequestMeta,
    ) -> Result<()> {
        caller.require_session()?;
        let user = user::Entity::find_by_id(caller.user.id)
            .one(self.db.reader())
            .await?
            .ok_or(Error::NotFound("user"))?;
        if !self.hasher.verify(password, &user.password_hash).await? {
            let record = AuditRecord::new("auth.mfa_disable", Outcome::Denied, meta)
                .actor(&caller.user)
                .resource("user", user.id)
                .changes(serde_json::json!({"reason": "wrong password"}));
            self.audit_alone(record).await?;
            return Err(Error::invalid("password", "is not correct"));
        }
        let txn = self.db.begin().await?;
        let removed = delete_factor(&txn, user.id).await?;
        self.append(
            &txn,
            AuditRecord::new("auth.mfa_disable", Outcome::Success, meta)
                .actor(&caller.user)
                .resource("user", user.id)
                .changes(serde_json::json!({"removed": removed})),
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// An administrator removes a user's second factor (a lost phone and lost codes), audited
    /// as theirs. Idempotent; 404 for no such user.
    pub async fn remove_user_totp(&self, permit: &Permit, user_id: Uuid) -> Result<()> {
        permit.require("users", "write")?;
        if user::Entity::find_by_id(user_id)
            .one(self.db.reader())
            .await?
            .is_none()
        {
            return Err(Error::NotFound("user"));
        }
        let txn = self.db.begin().await?;
        let removed = delete_factor(&txn, user_id).await?;
        self.append(
            &txn,
            permit
                .audit("user.mfa_remove", Outcome::Success)
                .resource("user", user_id)
                .changes(serde_json::json!({"removed": removed})),
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// At login, after the password: whether the user has a factor and, if so, whether `code`
    /// (a TOTP code or a recovery code) passes. An accepted code is used up in the same
    /// statement that accepts it, so two logins cannot both use one.
    pub(crate) async fn check_second_factor(
        &self,
        user: &user::Model,
        code: Option<&str>,
    ) -> Result<SecondFactor> {
        let row = mfa::Entity::find_by_id(user.id)
            .filter(mfa::Column::ConfirmedAt.is_not_null())
            .one(self.db.reader())
            .await?;
        let Some(row) = row else {
            return Ok(SecondFactor::None);
        };
        let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
            return Err(Error::MfaRequired);
        };
        if code.len() == TOTP_DIGITS && code.bytes().all(|b| b.is_ascii_digit()) {
            let (secret, _) = self.mfa_box.open(user.id, &row.secret)?;
            let totp = totp_of(secret, &user.email)?;
            let Some(step) = matching_step(&totp, code, unix_now()) else {
                return Err(Error::InvalidMfaCode);
            };
            let step = step as i64;
            let taken = mfa::Entity::update_many()
                .col_expr(mfa::Column::LastStep, Expr::value(step))
                .filter(mfa::Column::UserId.eq(user.id))
                .filter(
                    sea_orm::Condition::any()
                        .add(mfa::Column::LastStep.is_null())
                        .add(mfa::Column::LastStep.lt(step)),
                )
                .exec(self.db.writer())
                .await?;
            return if taken.rows_affected == 1 {
                Ok(SecondFactor::Totp)
            } else {
                // This step's code (or a later one) was already accepted: a replay.
                Err(Error::InvalidMfaCode)
            };
        }
        let used = recovery_code::Entity::update_many()
            .col_expr(recovery_code::Column::UsedAt, Expr::value(Utc::now()))
            .filter(recovery_code::Column::CodeHash.eq(hash_token(&normalise_recovery_code(code))))
            .filter(recovery_code::Column::UserId.eq(user.id))
            .filter(recovery_code::Column::UsedAt.is_null())
            .exec(self.db.writer())
            .await?;
        if used.rows_affected == 1 {
            Ok(SecondFactor::RecoveryCode)
        } else {
            Err(Error::InvalidMfaCode)
        }
    }

    /// After a rotation of `jwt_secret`: encrypts every second-factor secret still sealed under
    /// the previous key again under the current one. Returns how many it re-encrypted.
    pub async fn reseal_mfa_secrets(&self) -> Result<usize> {
        if self.mfa_box.previous.is_none() {
            return Ok(0);
        }
        let rows = mfa::Entity::find().all(self.db.reader()).await?;
        let mut resealed = 0;
        for row in rows {
            let (secret, previous) = self.mfa_box.open(row.user_id, &row.secret)?;
            if !previous {
                continue;
            }
            let sealed = self.mfa_box.seal(row.user_id, &secret)?;
            mfa::Entity::update_many()
                .col_expr(mfa::Column::Secret, Expr::value(sealed))
                .filter(mfa::Column::UserId.eq(row.user_id))
                .filter(mfa::Column::Secret.eq(row.secret.as_str()))
                .exec(self.db.writer())
                .await?;
            resealed += 1;
        }
        Ok(resealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, appendix B: the SHA-1 test vectors (8 digits there; the last 6 here).
    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        let totp = totp_of(b"12345678901234567890".to_vec(), "rfc").unwrap();
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(totp.generate(time), code, "at {time}");
        }
    }

    #[test]
    fn a_code_matches_its_step_and_the_steps_beside_it_only() {
        let totp = totp_of(b"12345678901234567890".to_vec(), "rfc").unwrap();
        let now = 1_111_111_111;
        let step = now / TOTP_STEP_SECS;
        let code_at = |s: u64| totp.generate(s * TOTP_STEP_SECS);
        assert_eq!(matching_step(&totp, &code_at(step), now), Some(step));
        assert_eq!(
            matching_step(&totp, &code_at(step - 1), now),
            Some(step - 1)
        );
        assert_eq!(
            matching_step(&totp, &code_at(step + 1), now),
            Some(step + 1)
        );
        assert_eq!(matching_step(&totp, &code_at(step + 2), now), None);
        assert_eq!(matching_step(&totp, &code_at(step - 2), now), None);
        for bad in ["", "12345", "1234567", "abcdef", "12 456"] {
            assert_eq!(matching_step(&totp, bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn sealed_secrets_open_only_for_their_user_and_survive_a_rotation() {
        let user = Uuid::now_v7();
        let old = SecretBox::new(&"o".repeat(40), None);
        let sealed = old.seal(user, b"secret-bytes").unwrap();
        assert!(!sealed.contains("secret-bytes"));
        assert_eq!(
            old.open(user, &sealed).unwrap(),
            (b"secret-bytes".to_vec(), false)
        );
        assert!(
            old.open(Uuid::now_v7(), &sealed).is_err(),
            "bound to its user"
        );
        let rotated = SecretBox::new(&"n".repeat(40), Some(&"o".repeat(40)));
        assert_eq!(
            rotated.open(user, &sealed).unwrap(),
            (b"secret-bytes".to_vec(), true)
        );
        let resealed = rotated.seal(user, b"secret-bytes").unwrap();
        assert_eq!(
            SecretBox::new(&"n".repeat(40), None)
                .open(user, &resealed)
                .unwrap()
                .0,
            b"secret-bytes"
        );
        assert!(
            SecretBox::new(&"n".repeat(40), None)
                .open(user, &sealed)
                .is_err()
        );
        for garbage in ["", "v1", "v1.x.y", "v2.a.b", &sealed.replace("v1.", "v1.0")] {
            assert!(old.open(user, garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn recovery_codes_are_80_bits_and_typed_forgivingly() {
        let code = new_recovery_code();
        assert_eq!(code.len(), 19, "{code}");
        assert_eq!(normalise_recovery_code(&code).len(), 16);
        assert_eq!(
            normalise_recovery_code(&format!(" {} ", code.to_uppercase().replace('-', " "))),
            normalise_recovery_code(&code)
        );
        assert_ne!(code, new_recovery_code());
    }
}
