//! `--identity jwt`: verifying the shop's tokens (SPEC section 10).
//!
//! - RS256, ES256 and EdDSA only, each key bound to its algorithm (`keys.rs`); HS* and
//!   `none` can never verify.
//! - `exp` is required, `nbf` honoured, both with [`LEEWAY_SECS`] of clock skew, against the
//!   service's own clock (the one the sale decides with; tests move it by hand).
//! - `iss` and `aud` must match `--jwt-issuer` / `--jwt-audience` when they are set (and be
//!   present); with no audience set, a token naming one is refused (it was meant elsewhere).
//! - The buyer id is `sub`, normalised and validated exactly like a guest's id.
//! - Keys live in memory behind a lock that is only held to clone an `Arc` (never across an
//!   await, never during a signature check). [`JwtVerifier::reload`] reads the file again and
//!   swaps the set whole; a reload that fails keeps the old keys. [`JwtVerifier::watch`]
//!   reloads on SIGHUP and when the file's modification time changes (polled off the request
//!   path every [`POLL_INTERVAL`]).

use super::IdentitySettings;
use super::keys::{ACCEPTED, KeySet};
use flashsale_core::UserId;
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thiserror::Error;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: f64 = 30.0;
/// How often the key file's modification time is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Why `--identity jwt` cannot start (or a reload failed).
#[derive(Debug, Error)]
pub enum JwtError {
    /// Neither key source was given.
    #[error(
        "--identity jwt needs the identity provider's keys: --jwt-jwks-file (FLASHSALE_JWT_JWKS_FILE) or --jwt-public-key-file (FLASHSALE_JWT_PUBLIC_KEY_FILE)"
    )]
    NoKeySource,
    /// The key file could not be read.
    #[error("cannot read the JWT key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file holds no usable key.
    #[error("the JWT key file {path} cannot be used: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// Why a token was refused (all are 401 `unauthenticated` to the client; the reason is for
/// the log and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenRejection {
    /// Not three base64url parts with a JSON header and claims, or an unknown `alg`
    /// (`none` included).
    #[error("malformed token")]
    Malformed,
    /// An algorithm other than RS256, ES256 or EdDSA (HS256 included).
    #[error("algorithm not accepted")]
    Algorithm,
    /// No key of the token's algorithm (and `kid`, if it names one).
    #[error("no key for this token")]
    UnknownKey,
    /// The signature does not verify with any candidate key.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is missing or not a number.
    #[error("exp missing or malformed")]
    NoExpiry,
    /// `exp` (plus the leeway) has passed.
    #[error("expired")]
    Expired,
    /// `nbf` (less the leeway) is still ahead.
    #[error("not yet valid")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` is missing or not the configured audience, or present when none is configured.
    #[error("wrong audience")]
    WrongAudience,
    /// `sub` is missing or not a valid buyer id.
    #[error("sub missing or not a valid buyer id")]
    BadSubject,
}

/// Where the keys come from.
#[derive(Debug, Clone)]
enum KeySource {
    Jwks(PathBuf),
    Pem(PathBuf),
}

impl KeySource {
    fn path(&self) -> &Path {
        match self {
            KeySource::Jwks(path) | KeySource::Pem(path) => path,
        }
    }

    fn load(&self) -> Result<KeySet, JwtError> {
        let path = self.path();
        let text = std::fs::read_to_string(path).map_err(|source| JwtError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parsed = match self {
            KeySource::Jwks(_) => KeySet::from_jwks(&text),
            KeySource::Pem(_) => KeySet::from_pem(&text),
        };
        parsed.map_err(|why| JwtError::Invalid {
            path: path.to_owned(),
            why,
        })
    }
}

/// The claims read from a verified token.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
}

/// Verifies the shop's tokens against the keys in force.
pub struct JwtVerifier {
    source: KeySource,
    keys: RwLock<Arc<KeySet>>,
    /// Signature, algorithm, `iss` and `aud` checks, one per [`ACCEPTED`] algorithm (the
    /// crate checks one family per call); time is checked here, on our clock.
    validations: [Validation; ACCEPTED.len()],
    /// The key file's modification time at the last load (for the poll).
    loaded_mtime: Mutex<Option<SystemTime>>,
}

impl JwtVerifier {
    /// Loads the keys the settings name; `Err` when there is no key source or the file is
    /// unreadable or holds no usable key.
    pub fn from_settings(settings: &IdentitySettings) -> Result<Self, JwtError> {
        let source = match (&settings.jwt_jwks_file, &settings.jwt_public_key_file) {
            (Some(path), _) => KeySource::Jwks(path.clone()),
            (None, Some(path)) => KeySource::Pem(path.clone()),
            (None, None) => return Err(JwtError::NoKeySource),
        };
        let mtime = modified(source.path());
        let keys = source.load()?;
        tracing::info!(
            path = %source.path().display(),
            keys = keys.keys.len(),
            "--identity jwt: verifying buyer tokens with these keys"
        );
        let mut validation = Validation::new(ACCEPTED[0]);
        // Time is ours to check (the service's clock, our leeway); presence of exp too, so
        // that its absence has its own reason.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.required_spec_claims.insert("sub".to_owned());
        if let Some(issuer) = &settings.jwt_issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &settings.jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            // Still validated: any `aud` in the token is then refused.
            None => validation.validate_aud = true,
        }
        Ok(Self {
            source,
            keys: RwLock::new(Arc::new(keys)),
            validations: ACCEPTED.map(|alg| Validation {
                algorithms: vec![alg],
                ..validation.clone()
            }),
            loaded_mtime: Mutex::new(mtime),
        })
    }

    /// The keys in force (a clone of an `Arc`: the lock is released at once).
    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read())
    }

    /// Verifies `token` at `now`; `Ok` with the buyer id of its `sub`.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<UserId, TokenRejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Malformed)?;
        let validation = ACCEPTED
            .iter()
            .position(|alg| *alg == header.alg)
            .map(|i| &self.validations[i])
            .ok_or(TokenRejection::Algorithm)?;
        let keys = self.current();
        let mut rejection = TokenRejection::UnknownKey;
        let mut verified = None;
        for candidate in keys.candidates(header.alg, header.kid.as_deref()) {
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, validation) {
                Ok(data) => {
                    verified = Some(data.claims);
                    break;
                }
                Err(e) => {
                    rejection = rejection_of(e.kind());
                    // Claims are checked only after the signature verified: another key
                    // cannot make them right.
                    if rejection != TokenRejection::BadSignature {
                        return Err(rejection);
                    }
                }
            }
        }
        let claims = verified.ok_or(rejection)?;
        check_time(&claims, now)?;
        let sub = claims.sub.as_deref().ok_or(TokenRejection::BadSubject)?;
        UserId::parse(sub).map_err(|_| TokenRejection::BadSubject)
    }

    /// Reads the key file again; on success new requests verify with the new keys, on
    /// failure the old ones stay.
    pub fn reload(&self) -> Result<(), JwtError> {
        let mtime = modified(self.source.path());
        let keys = self.source.load()?;
        *self.keys.write() = Arc::new(keys);
        *self.loaded_mtime.lock() = mtime;
        Ok(())
    }

    /// Reloads if the key file's modification time differs from the last load's; `None`
    /// when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), JwtError>> {
        let now = modified(self.source.path());
        if now == *self.loaded_mtime.lock() {
            return None;
        }
        let result = self.reload();
        if result.is_err() {
            // Do not retry the same broken file every poll; the next change (or SIGHUP) does.
            *self.loaded_mtime.lock() = now;
        }
        Some(result)
    }

    /// Reloads the keys on every SIGHUP and whenever the file changes, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangups = hangups();
        loop {
            let trigger = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = poll.tick() => "file changed",
                () = next_hangup(&mut hangups) => "SIGHUP",
            };
            let result = if trigger == "SIGHUP" {
                Some(self.reload())
            } else {
                // A blocking stat and read of a small file, every few seconds, off the
                // request path.
                let verifier = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || verifier.reload_if_changed()).await {
                    Ok(result) => result,
                    Err(e) => Some(Err(JwtError::Invalid {
                        path: self.source.path().to_owned(),
                        why: e.to_string(),
                    })),
                }
            };
            match result {
                None => {}
                Some(Ok(())) => tracing::info!(
                    trigger,
                    path = %self.source.path().display(),
                    "reloaded the JWT keys"
                ),
                Some(Err(e)) => tracing::warn!(
                    trigger,
                    error = %e,
                    "JWT key reload failed; still verifying with the previous keys"
                ),
            }
        }
    }
}

/// `exp` required and not past, `nbf` (if any) reached, both with the leeway.
fn check_time(claims: &Claims, now: OffsetDateTime) -> Result<(), TokenRejection> {
    let now = now.unix_timestamp_nanos() as f64 / 1e9;
    let exp = claims.exp.ok_or(TokenRejection::NoExpiry)?;
    if now >= exp + LEEWAY_SECS {
        return Err(TokenRejection::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
        return Err(TokenRejection::NotYetValid);
    }
    Ok(())
}

fn rejection_of(kind: &ErrorKind) -> TokenRejection {
    match kind {
        ErrorKind::InvalidSignature => TokenRejection::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenRejection::Algorithm,
        ErrorKind::InvalidIssuer => TokenRejection::WrongIssuer,
        ErrorKind::InvalidAudience => TokenRejection::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
            match claim.as_str() {
                "iss" => TokenRejection::WrongIssuer,
                "aud" => TokenRejection::WrongAudience,
                "sub" => TokenRejection::BadSubject,
                _ => TokenRejection::Malformed,
            }
        }
        // A key that cannot verify this token at all (e.g. malformed key material) counts
        // as a failed signature, so the next candidate is tried.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenRejection::BadSignature,
        _ => TokenRejection::Malformed,
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; JWT keys reload when the file changes");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

/// The next SIGHUP; never, without a handler.
async fn next_hangup(hangups: &mut Hangups) {
    #[cfg(unix)]
    if let Some(signals) = hangups
        && signals.recv().await.is_some()
    {
        return;
    }
    #[cfg(not(unix))]
    let _ = hangups;
    std::future::pending::<()>().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::identity::IdentityMode;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

    /// A P-256 pair: (signing key, JWKS with its public key under `kid`).
    fn p256(kid: &str) -> (EncodingKey, String) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let point = pair.public_key_raw();
        let b64 = |b: &[u8]| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        };
        let jwks = json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }]});
        (signing, jwks.to_string())
    }

    fn sign(key: &EncodingKey, kid: &str, sub: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let claims = json!({ "sub": sub, "exp": NOW.unix_timestamp() + 60 });
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn verifier(path: &Path) -> JwtVerifier {
        JwtVerifier::from_settings(&IdentitySettings {
            mode: IdentityMode::Jwt,
            jwt_jwks_file: Some(path.to_owned()),
            ..IdentitySettings::default()
        })
        .unwrap()
    }

    #[test]
    fn a_failed_reload_keeps_the_keys_and_a_good_one_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (old_key, old_jwks) = p256("old");
        let (new_key, new_jwks) = p256("new");
        std::fs::write(&path, &old_jwks).unwrap();
        let verifier = verifier(&path);
        let old = sign(&old_key, "old", "Alice@Example.com");
        let new = sign(&new_key, "new", "alice@example.com");
        assert_eq!(
            verifier.verify(&old, NOW).unwrap().as_str(),
            "alice@example.com"
        );
        assert_eq!(verifier.verify(&new, NOW), Err(TokenRejection::UnknownKey));

        for broken in [
            "",
            "{\"keys\": [",
            r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
        ] {
            std::fs::write(&path, broken).unwrap();
            assert!(verifier.reload().is_err(), "{broken}");
            assert!(verifier.verify(&old, NOW).is_ok(), "{broken}");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(verifier.reload(), Err(JwtError::Read { .. })));
        assert!(verifier.verify(&old, NOW).is_ok());

        std::fs::write(&path, &new_jwks).unwrap();
        verifier.reload().unwrap();
        assert!(verifier.verify(&new, NOW).is_ok());
        assert_eq!(verifier.verify(&old, NOW), Err(TokenRejection::UnknownKey));
    }

    #[test]
    fn a_changed_file_is_reloaded_once_and_an_unchanged_one_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (_, jwks) = p256("k");
        std::fs::write(&path, &jwks).unwrap();
        let verifier = verifier(&path);
        assert!(verifier.reload_if_changed().is_none());
        let later = std::fs::metadata(&path).unwrap().modified().unwrap() + Duration::from_secs(1);
        std::fs::write(&path, "broken").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(matches!(verifier.reload_if_changed(), Some(Err(_))));
        // The broken file is not retried every poll.
        assert!(verifier.reload_if_changed().is_none());
    }
}
