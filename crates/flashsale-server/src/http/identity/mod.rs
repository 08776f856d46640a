//! Who the buyer is (SPEC section 10, `--identity`): in `guest` mode the buyer names
//! themselves in the body or path, as they always did; in `accounts` mode they sign up and log
//! in with the service, and the buyer id is their account's id, carried by a session token the
//! service signs ([`sessions`]); in `jwt` mode the shop's identity provider signs a token and
//! the buyer id is its verified `sub`.
//!
//! [`Identity`] is chosen once at startup and holds everything a mode needs; handlers ask it
//! for the [`Caller`] of a request. Invariants:
//! - guest mode costs the purchase path nothing: no header is read, nothing is allocated;
//! - in a token mode every buyer route answers 401 `unauthenticated` (with `WWW-Authenticate`)
//!   without a valid token, and the buyer id comes from the token only;
//! - verifying a token does no I/O: the keys are in memory and replaced whole by a reload
//!   ([`jwt`]), or the session key and the set of ended sessions are ([`sessions`]), never
//!   behind a lock held across an await.

pub mod accounts;
pub mod jwt;
mod keys;
pub mod login_limits;
pub mod passwords;
pub mod sessions;

use crate::http::AppState;
use crate::http::error::{ApiError, Challenge};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use flashsale_core::UserId;
use std::path::PathBuf;
use std::sync::Arc;
use time::OffsetDateTime;

pub use accounts::{Accounts, AccountsError};
pub use jwt::{JwtError, JwtVerifier, TokenRejection};

/// The default session lifetime, in seconds (a day).
pub const DEFAULT_SESSION_TTL_SECS: u64 = 24 * 60 * 60;

/// How buyers are identified (`--identity`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentityMode {
    /// The self-reported buyer id of the body or path (the default).
    #[default]
    Guest,
    /// Accounts kept by the service: sign up, log in, log out; session tokens it signs.
    Accounts,
    /// Tokens signed by the shop's identity provider; the buyer id is their `sub`.
    Jwt,
}

impl IdentityMode {
    /// The mode's name as the flag spells it (and the page reads it).
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityMode::Guest => "guest",
            IdentityMode::Accounts => "accounts",
            IdentityMode::Jwt => "jwt",
        }
    }
}

/// The identity flags (and `FLASHSALE_*` variables).
#[derive(Clone, clap::Args)]
pub struct IdentitySettings {
    /// How buyers are identified: `guest` (the id they type), `accounts` (they sign up and
    /// log in here) or `jwt` (a bearer token signed by the shop's identity provider; needs a
    /// key file).
    #[arg(
        long = "identity",
        env = "FLASHSALE_IDENTITY",
        value_enum,
        default_value = "guest"
    )]
    pub mode: IdentityMode,

    /// With `--identity jwt`: a JWKS file (`{"keys": [...]}`) with the provider's public
    /// keys (RSA, P-256 or Ed25519). Reloaded on SIGHUP and when the file changes.
    #[arg(
        long,
        env = "FLASHSALE_JWT_JWKS_FILE",
        conflicts_with = "jwt_public_key_file"
    )]
    pub jwt_jwks_file: Option<PathBuf>,

    /// With `--identity jwt`: a PEM public key (RSA, P-256 or Ed25519) instead of a JWKS
    /// file. Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "FLASHSALE_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// With `--identity jwt`: the `iss` every token must carry (unchecked when unset).
    #[arg(long, env = "FLASHSALE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// With `--identity jwt`: an `aud` every token must carry (tokens with an `aud` are refused
    /// when unset: they were meant for another service).
    #[arg(long, env = "FLASHSALE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// With `--identity accounts`: the secret (at least 32 bytes) session tokens are signed
    /// with, the same on every instance. Unset with the embedded store: generated once into
    /// `<data-dir>/session-key`; required with the scale-out store.
    #[arg(long, env = "FLASHSALE_SESSION_KEY", hide_env_values = true)]
    pub session_key: Option<String>,

    /// With `--identity accounts`: how long a session lasts, in seconds.
    #[arg(long = "session-ttl", env = "FLASHSALE_SESSION_TTL", value_name = "SECONDS",
        default_value_t = DEFAULT_SESSION_TTL_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub session_ttl_secs: u64,

    /// With `--identity accounts`: password hashes computed at once (each takes 19 MiB and
    /// tens of milliseconds of a core); 0 means one per core.
    #[arg(long, env = "FLASHSALE_MAX_CONCURRENT_HASHES", default_value_t = 0)]
    pub max_concurrent_hashes: usize,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            mode: IdentityMode::Guest,
            jwt_jwks_file: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            session_key: None,
            session_ttl_secs: DEFAULT_SESSION_TTL_SECS,
            max_concurrent_hashes: 0,
        }
    }
}

/// The session key is a secret: never in the log.
impl std::fmt::Debug for IdentitySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySettings")
            .field("mode", &self.mode)
            .field("jwt_jwks_file", &self.jwt_jwks_file)
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field(
                "session_key",
                &self.session_key.as_ref().map(|_| "<redacted>"),
            )
            .field("session_ttl_secs", &self.session_ttl_secs)
            .field("max_concurrent_hashes", &self.max_concurrent_hashes)
            .finish()
    }
}

/// The chosen mode, ready to identify callers.
#[derive(Clone)]
pub enum Identity {
    /// Buyers name themselves.
    Guest,
    /// Buyers log in here and present the session tokens this service signs.
    Accounts(Arc<Accounts>),
    /// Buyers present the shop's signed tokens.
    Jwt(Arc<JwtVerifier>),
}

impl Identity {
    /// Builds the mode the settings choose; `Err` says in one line what is missing or wrong
    /// (no key file for `jwt`, an unreadable or invalid one). `Ok(None)` for `accounts`,
    /// which needs the store: [`Accounts::open`] builds it.
    pub fn from_settings(settings: &IdentitySettings) -> Result<Option<Self>, JwtError> {
        match settings.mode {
            IdentityMode::Guest => Ok(Some(Identity::Guest)),
            IdentityMode::Accounts => Ok(None),
            IdentityMode::Jwt => {
                JwtVerifier::from_settings(settings).map(|v| Some(Identity::Jwt(Arc::new(v))))
            }
        }
    }

    /// The mode.
    pub fn mode(&self) -> IdentityMode {
        match self {
            Identity::Guest => IdentityMode::Guest,
            Identity::Accounts(_) => IdentityMode::Accounts,
            Identity::Jwt(_) => IdentityMode::Jwt,
        }
    }

    /// Whether the buyer id comes from a token (and buyer routes need one).
    pub fn needs_token(&self) -> bool {
        !matches!(self, Identity::Guest)
    }

    /// The verified buyer behind `headers` at the instant `now` gives: `Ok(None)` in guest
    /// mode (nobody is verified; the body or path names the buyer, and the clock is not read),
    /// `Err(Unauthenticated)` in a token mode without a valid bearer token.
    pub fn caller(
        &self,
        headers: &HeaderMap,
        now: impl FnOnce() -> OffsetDateTime,
    ) -> Result<Option<UserId>, ApiError> {
        match self {
            Identity::Guest => Ok(None),
            Identity::Accounts(accounts) => {
                let token =
                    bearer_token(headers).ok_or(ApiError::Unauthenticated(Challenge::Missing))?;
                match accounts.sessions.verify(token, now()) {
                    Ok(session) => Ok(Some(session.buyer())),
                    Err(rejection) => {
                        tracing::debug!(reason = %rejection, "session token refused");
                        Err(ApiError::Unauthenticated(Challenge::InvalidToken))
                    }
                }
            }
            Identity::Jwt(verifier) => {
                let token =
                    bearer_token(headers).ok_or(ApiError::Unauthenticated(Challenge::Missing))?;
                match verifier.verify(token, now()) {
                    Ok(buyer) => Ok(Some(buyer)),
                    Err(rejection) => {
                        // Not a warning: expired tokens are routine. The token itself is a
                        // credential and never logged.
                        tracing::debug!(reason = %rejection, "bearer token refused");
                        Err(ApiError::Unauthenticated(Challenge::InvalidToken))
                    }
                }
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The verified caller of a request: `Caller(None)` in guest mode; in a token mode the
/// extractor answers 401 `unauthenticated` itself when the token is missing or invalid.
pub struct Caller(pub Option<UserId>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        app.identity
            .caller(&parts.headers, || app.store.now())
            .map(Caller)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_bearer_token_is_read_from_the_authorization_header_only() {
        assert_eq!(
            bearer_token(&with_authorization("Bearer a.b.c")),
            Some("a.b.c")
        );
        assert_eq!(
            bearer_token(&with_authorization("bearer  a.b.c ")),
            Some("a.b.c")
        );
        for refused in ["Basic dXNlcjpwdw==", "Bearer", "Bearer  ", "a.b.c"] {
            assert_eq!(
                bearer_token(&with_authorization(refused)),
                None,
                "{refused}"
            );
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn guest_mode_verifies_nobody_and_refuses_nothing() {
        let caller = Identity::Guest
            .caller(&with_authorization("Bearer junk"), || {
                unreachable!("guest mode reads no clock")
            })
            .unwrap();
        assert!(caller.is_none());
        assert!(!Identity::Guest.needs_token());
    }
}
