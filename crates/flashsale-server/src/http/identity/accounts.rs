//! `--identity accounts`: everything the mode holds, built once at start. The buyer signs up
//! and logs in with the service itself (handlers in `http/accounts.rs`); the buyer id of a
//! session is its account's id ([`sessions::buyer_of`](super::sessions::buyer_of)).
//!
//! The session key: `--session-key` (`FLASHSALE_SESSION_KEY`, at least 32 bytes, the same on
//! every instance); unset with the embedded store, 32 random bytes generated once into
//! `<data-dir>/session-key` (mode 0600) and read at every later start; unset with the
//! scale-out store, the service refuses to start (each instance would sign with its own key).

use super::IdentitySettings;
use super::login_limits::LoginLimits;
use super::passwords::{Passwords, random_bytes};
use super::sessions::{MIN_KEY_BYTES, Sessions};
use crate::http::error::ApiError;
use flashsale_core::UserId;
use flashsale_store::accounts::AccountStore;
use flashsale_store::{StoreConfig, StoreError};
use std::borrow::Cow;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The generated session key's file inside the data directory.
pub const KEY_FILE: &str = "session-key";
/// Longest email accepted, in characters (RFC 5321's path limit less the brackets).
pub const MAX_EMAIL_CHARS: usize = 254;

/// Why `--identity accounts` cannot start.
#[derive(Debug, Error)]
pub enum AccountsError {
    /// The scale-out store without a shared key.
    #[error(
        "--identity accounts with --store redis needs FLASHSALE_SESSION_KEY (--session-key), the same secret on every instance"
    )]
    NoSessionKey,
    /// A key too short to be a secret.
    #[error("--session-key (FLASHSALE_SESSION_KEY) must be at least {MIN_KEY_BYTES} bytes")]
    ShortSessionKey,
    /// The generated key's file could not be read or written.
    #[error("session key file {}: {source}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The account store could not be opened.
    #[error("cannot open the account store: {}", .0.report())]
    Store(#[from] StoreError),
    /// The dummy password hash could not be made.
    #[error("cannot set up password hashing: {0}")]
    Hashing(argon2::password_hash::Error),
}

/// `--identity accounts`, ready.
pub struct Accounts {
    /// Where accounts and logouts are kept.
    pub store: Arc<dyn AccountStore>,
    /// Session tokens and logouts in memory.
    pub sessions: Arc<Sessions>,
    /// Hashing within a bound.
    pub passwords: Passwords,
    /// Log-in and sign-up rate limits.
    pub limits: LoginLimits,
}

impl Accounts {
    /// Checks what can be checked before binding: a given key's length, or a key at all for a
    /// store without a data directory.
    pub fn check_settings(
        settings: &IdentitySettings,
        store: &StoreConfig,
    ) -> Result<(), AccountsError> {
        match (&settings.session_key, store.local_dir()) {
            (Some(key), _) if key.len() < MIN_KEY_BYTES => Err(AccountsError::ShortSessionKey),
            (None, None) => Err(AccountsError::NoSessionKey),
            _ => Ok(()),
        }
    }

    /// Opens the account store, resolves the session key, makes the dummy hash and reads the
    /// logouts recorded so far (so a restart does not bring a logged-out token back).
    pub async fn open(
        settings: &IdentitySettings,
        store: &StoreConfig,
        rate_limits: bool,
        now: time::OffsetDateTime,
    ) -> Result<Self, AccountsError> {
        Self::check_settings(settings, store)?;
        let key = match (&settings.session_key, store.local_dir()) {
            (Some(key), _) => key.as_bytes().to_vec(),
            (None, Some(dir)) => load_or_create_key(dir)?,
            (None, None) => return Err(AccountsError::NoSessionKey),
        };
        let sessions = Arc::new(Sessions::new(
            &key,
            Duration::from_secs(settings.session_ttl_secs),
        ));
        let account_store = flashsale_store::accounts::open(store).await?;
        sessions.catch_up(account_store.as_ref(), now).await?;
        let slots = match settings.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let passwords = Passwords::new(slots)
            .await
            .map_err(AccountsError::Hashing)?;
        Ok(Self {
            store: account_store,
            sessions,
            passwords,
            limits: LoginLimits::new(rate_limits),
        })
    }
}

/// The session key in `dir`, generated (64 hex digits, mode 0600, created exclusively) at the
/// first start.
fn load_or_create_key(dir: &Path) -> Result<Vec<u8>, AccountsError> {
    let path = dir.join(KEY_FILE);
    let fail = |source| AccountsError::KeyFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(key) if key.trim().len() >= MIN_KEY_BYTES => return Ok(key.trim().as_bytes().to_vec()),
        Ok(_) => {
            return Err(fail(io::Error::new(
                io::ErrorKind::InvalidData,
                "the key is too short (delete the file to generate a new key; every session ends)",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let bytes = random_bytes::<32>().map_err(|e| fail(io::Error::other(e.to_string())))?;
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(fail)?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(fail)?;
    Ok(key.into_bytes())
}

/// An email as sent, normalised (trimmed, NFC, lower-cased: one account per address whatever
/// its case) and checked for a plausible shape: `local@domain.tld`, no spaces, at most
/// [`MAX_EMAIL_CHARS`]. 400 `invalid_request` otherwise.
pub fn normalise_email(raw: &str) -> Result<String, ApiError> {
    let invalid = |why: &'static str| ApiError::InvalidRequest(Cow::Borrowed(why));
    // The buyer-id rules normalise exactly this way (and lower-case what has an `@`).
    let id = UserId::parse(raw).map_err(|_| invalid("email: not a valid email address"))?;
    let email = id.as_str().to_lowercase();
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(invalid("email: longer than 254 characters"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(invalid("email: not a valid email address"));
    };
    let plausible = !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace);
    if !plausible {
        return Err(invalid("email: not a valid email address"));
    }
    Ok(email)
}

/// 400 unless `password` is [`MIN_PASSWORD_BYTES`](super::passwords::MIN_PASSWORD_BYTES) to
/// [`MAX_PASSWORD_BYTES`](super::passwords::MAX_PASSWORD_BYTES) bytes long.
pub fn check_password(password: &str) -> Result<(), ApiError> {
    use super::passwords::{MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES};
    if (MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&password.len()) {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(Cow::Borrowed(
            "password: must be 8 to 1024 bytes long",
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lower_cased_and_checked() {
        assert_eq!(
            normalise_email("  Ann.Lee@Example.COM ").unwrap(),
            "ann.lee@example.com"
        );
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "ann@example",
            "ann@@example.com",
            "a b@example.com",
            "ann@.com",
            "ann@example.com.",
            "ann@exa\u{7}mple.com",
            &format!("{}@example.com", "a".repeat(65)),
            &format!("a@{}.com", "b".repeat(260)),
        ] {
            assert!(normalise_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_must_be_8_to_1024_bytes() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"x".repeat(1024)).is_ok());
        assert!(check_password(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn a_short_key_is_refused_and_a_shared_store_needs_one() {
        let embedded = StoreConfig::Embedded {
            data_dir: PathBuf::from("d"),
        };
        let shared = StoreConfig::RedisPg(flashsale_store::redis_pg::RedisPgConfig::new(
            "redis://r",
            "postgres://p",
        ));
        let mut settings = IdentitySettings::default();
        assert!(Accounts::check_settings(&settings, &embedded).is_ok());
        assert!(matches!(
            Accounts::check_settings(&settings, &shared),
            Err(AccountsError::NoSessionKey)
        ));
        settings.session_key = Some("too short".into());
        assert!(matches!(
            Accounts::check_settings(&settings, &embedded),
            Err(AccountsError::ShortSessionKey)
        ));
        settings.session_key = Some("k".repeat(MIN_KEY_BYTES));
        assert!(Accounts::check_settings(&settings, &shared).is_ok());
    }

    #[test]
    fn the_generated_session_key_is_kept_and_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_key(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_key(dir.path()).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
