//! `--identity accounts`: password hashes (argon2id, RustCrypto `argon2`).
//!
//! Parameters: m = 19 MiB, t = 2, p = 1 (the OWASP password storage cheat sheet's first
//! argon2id choice), a 16-byte random salt, the PHC string stored. Each hash takes tens of
//! milliseconds of one core and 19 MiB, so hashing runs on the blocking pool, at most
//! `--max-concurrent-hashes` at once, with at most [`QUEUE_PER_SLOT`] per slot running or
//! waiting; past that a sign-up or log-in is 503 `overloaded` at once (a login flood cannot take the
//! runtime, the memory, or the purchase path's cores).
//!
//! A log-in for an unknown email verifies against a dummy hash made at start with the same
//! parameters, so it costs what a wrong password costs and the two cannot be told apart by
//! their timing.

use crate::http::error::ApiError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Memory cost, KiB (19 MiB).
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Passes over the memory.
pub const ITERATIONS: u32 = 2;
/// Lanes.
pub const PARALLELISM: u32 = 1;
/// Hashes that may be running or waiting, per slot.
pub const QUEUE_PER_SLOT: usize = 16;
/// Shortest password accepted, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Longest password accepted, in bytes (a bound on the work one request can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Hashes and verifies passwords within a bound on concurrent hashes.
pub struct Passwords {
    slots: Arc<Semaphore>,
    queue: Arc<Semaphore>,
    /// A hash of a random password nobody knows, verified against when the email is unknown.
    dummy: Arc<str>,
}

impl Passwords {
    /// Up to `slots` hashes at once. Makes the dummy hash (one hash's time): call it at start.
    pub async fn new(slots: usize) -> Result<Self, argon2::password_hash::Error> {
        let slots = slots.max(1);
        let unguessable = random_bytes::<32>().map_err(|_| argon2::password_hash::Error::Crypto)?;
        let dummy = tokio::task::spawn_blocking(move || hash_now(&unguessable))
            .await
            .map_err(|_| argon2::password_hash::Error::Crypto)??;
        Ok(Self {
            slots: Arc::new(Semaphore::new(slots)),
            queue: Arc::new(Semaphore::new(slots.saturating_mul(QUEUE_PER_SLOT))),
            dummy: Arc::from(dummy),
        })
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || {
            hash_now(password.as_bytes())
                .map_err(|e| ApiError::Internal(format!("cannot hash a password: {e}")))
        })
        .await?
    }

    /// Whether `password` matches `stored`; with no stored hash (an unknown email), verifies
    /// against the dummy hash and answers `false`, taking the same time.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let known = stored.is_some();
        let hash: Arc<str> = stored.map_or_else(|| Arc::clone(&self.dummy), Arc::from);
        let matches = self
            .run(move || {
                PasswordHash::new(&hash)
                    .map(|parsed| {
                        argon2()
                            .verify_password(password.as_bytes(), &parsed)
                            .is_ok()
                    })
                    .unwrap_or(false)
            })
            .await?;
        Ok(known && matches)
    }

    /// Runs `work` on the blocking pool once a slot is free; 503 `overloaded` when too many
    /// are waiting already.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let Ok(_queued) = Arc::clone(&self.queue).try_acquire_owned() else {
            return Err(ApiError::Overloaded);
        };
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Overloaded)?;
        // The slot moves into the task: a client hanging up does not free it before the hash
        // is done.
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(slot);
            result
        })
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing task failed: {e}")))
    }
}

fn argon2() -> Argon2<'static> {
    // The parameters are constants within argon2's bounds.
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .unwrap_or_else(|_| unreachable!("constant argon2 parameters are valid"));
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_now(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let salt = random_bytes::<16>().map_err(|_| argon2::password_hash::Error::Crypto)?;
    let salt = SaltString::encode_b64(&salt)?;
    Ok(argon2().hash_password(password, &salt)?.to_string())
}

/// `N` bytes from the operating system's generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only_and_names_argon2id_with_the_chosen_cost() {
        let passwords = Passwords::new(1).await.unwrap();
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!passwords.verify("wrong".into(), Some(hash)).await.unwrap());
        assert!(!passwords.verify("anything".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn past_the_slots_and_their_queue_a_hash_is_refused_at_once_as_overloaded() {
        let passwords = Passwords::new(1).await.unwrap();
        let attempts = (0..QUEUE_PER_SLOT + 8).map(|_| passwords.hash("password".into()));
        let results = futures_util::future::join_all(attempts).await;
        let overloaded = results
            .iter()
            .filter(|r| matches!(r, Err(ApiError::Overloaded)))
            .count();
        assert_eq!(overloaded, 8);
        assert!(results.iter().filter(|r| r.is_ok()).count() == QUEUE_PER_SLOT);
    }
}
