//! Where buyer accounts and ended sessions live (`--identity accounts`, SPEC section 10).
//! [`AccountStore`] is its own contract, beside [`SaleStore`](crate::SaleStore) and not part of
//! it: accounts are read at sign-up, log-in and log-out only, never on the purchase path.
//!
//! - [`embedded`]: a SQLite file of its own (`accounts.sqlite3`) in the embedded store's data
//!   directory, written with `synchronous=FULL` before any answer.
//! - [`postgres`]: tables in the scale-out store's schema (migration 0004); the email is unique
//!   on `lower(email)`, so a signup race for one address makes exactly one account.
//!
//! Emails arrive normalised (trimmed, lower-cased) by the caller; the stores keep them as
//! given and compare them exactly. Only argon2id hashes are kept, never a password.
//!
//! Ended sessions ([`Revocation`]) are kept until their token would have expired anyway, so
//! every instance can learn of a logout ([`AccountStore::revocations_since`]) and a restart
//! does not bring a logged-out token back.

pub mod embedded;
pub mod postgres;

use crate::{StoreConfig, StoreError};
use async_trait::async_trait;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// A buyer's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account's id (the buyer id of its orders).
    pub id: Uuid,
    /// The normalised email address.
    pub email: String,
    /// The argon2id hash of the password, in PHC string form.
    pub password_hash: String,
}

impl Account {
    /// A new account (a fresh time-ordered id) for a normalised email and a password hash.
    pub fn new(email: &str, password_hash: &str) -> Self {
        Self {
            id: Uuid::now_v7(),
            email: email.to_owned(),
            password_hash: password_hash.to_owned(),
        }
    }
}

/// The answer to a sign-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignUp {
    /// The account was made and is durable.
    Created(Account),
    /// An account with this email exists already; nothing was written.
    EmailTaken,
}

/// A session ended before its expiry (logged out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Revocation {
    /// The session's id.
    pub session: Uuid,
    /// When the session's token expires (the revocation is needed until then).
    pub expires_at: OffsetDateTime,
}

/// Where a reader of revocations got to; opaque to callers (each store has its own meaning).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevocationCursor(i64);

/// Revocations read since a cursor.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    /// The revocations (possibly some read before: callers keep a set).
    pub revoked: Vec<Revocation>,
    /// Where the next read starts.
    pub next: RevocationCursor,
}

/// The account contract shared by both backends.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Makes an account for `email` (normalised) with `password_hash`; returns only once the
    /// account is durable. Of concurrent sign-ups for one email exactly one is `Created`.
    async fn create_account(
        &self,
        email: &str,
        password_hash: &str,
        now: OffsetDateTime,
    ) -> Result<SignUp, StoreError>;

    /// The account of `email` (normalised), if there is one.
    async fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError>;

    /// Records that a session ended; returns once that is durable. Revoking twice is fine.
    async fn revoke_session(&self, revocation: Revocation) -> Result<(), StoreError>;

    /// Revocations recorded since `cursor` (all of them from the default cursor) that expire
    /// after `now`, and the cursor to read on from.
    async fn revocations_since(
        &self,
        cursor: RevocationCursor,
        now: OffsetDateTime,
    ) -> Result<Revocations, StoreError>;
}

/// Opens the account store that goes with the sale store `config` names: a SQLite file in
/// the embedded store's directory, or the scale-out store's PostgreSQL schema (migrated).
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn AccountStore>, StoreError> {
    match config {
        StoreConfig::Embedded { data_dir } => {
            let data_dir = data_dir.clone();
            let store = tokio::task::spawn_blocking(move || {
                embedded::SqliteAccounts::open(&data_dir.join(embedded::FILE_NAME))
            })
            .await
            .map_err(|e| StoreError::internal_from("account store open task failed", e))??;
            Ok(Arc::new(store))
        }
        StoreConfig::RedisPg(config) => Ok(Arc::new(postgres::PgAccounts::connect(config).await?)),
    }
}
