//! Accounts for the scale-out store: tables of migration 0004 in the store's PostgreSQL schema,
//! shared by every instance, through a small pool of their own (sign-ups and log-ins never take
//! a connection the purchase path is waiting for).
//!
//! Revocations are read by the time they were recorded (`revoked_at`, PostgreSQL's clock),
//! re-reading [`OVERLAP`] before the last read: a logout is one autocommit insert bounded by
//! the PostgreSQL timeout, so no row can become visible with a `revoked_at` older than that.

use super::{Account, AccountStore, Revocation, RevocationCursor, Revocations, SignUp};
use crate::StoreError;
use crate::instants::{from_micros, to_micros};
use crate::redis_pg::RedisPgConfig;
use crate::redis_pg::connections::Postgres;
use crate::redis_pg::schema;
use async_trait::async_trait;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;

/// How far before the previous read each read of revocations starts again.
pub const OVERLAP: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections of the account pool.
const POOL_SIZE: usize = 4;

/// Accounts and revocations in PostgreSQL.
pub struct PgAccounts {
    pg: Postgres,
}

impl PgAccounts {
    /// Connects to the scale-out store's database and applies the migrations (idempotent:
    /// the sale store has usually applied them already).
    pub async fn connect(config: &RedisPgConfig) -> Result<Self, StoreError> {
        if !schema::valid_schema(&config.pg_schema) {
            return Err(StoreError::internal(format!(
                "invalid PostgreSQL schema name {:?}",
                config.pg_schema
            )));
        }
        let mut config = config.clone();
        config.pg_pool_size = POOL_SIZE;
        let pg = Postgres::new(&config)?;
        schema::apply(&pg, &config.pg_schema).await?;
        Ok(Self { pg })
    }
}

#[async_trait]
impl AccountStore for PgAccounts {
    async fn create_account(
        &self,
        email: &str,
        password_hash: &str,
        now: OffsetDateTime,
    ) -> Result<SignUp, StoreError> {
        let account = Account::new(email, password_hash);
        let client = self.pg.client().await?;
        let inserted = tokio::time::timeout(
            self.pg.timeout(),
            client.execute(
                "INSERT INTO accounts (id, email, password_hash, created_at)
                 VALUES ($1, $2, $3, $4)",
                &[&account.id, &account.email, &account.password_hash, &now],
            ),
        )
        .await
        .map_err(|_| StoreError::timeout("postgres insert an account"))?;
        match inserted {
            Ok(_) => Ok(SignUp::Created(account)),
            // The unique index on lower(email) decides a race: the loser is told, not failed.
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(SignUp::EmailTaken),
            Err(e) => Err(StoreError::unavailable_from(
                "postgres insert an account",
                e,
            )),
        }
    }

    async fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        let client = self.pg.client().await?;
        let row = self
            .pg
            .call(
                "read an account",
                client.query_opt(
                    "SELECT id, email, password_hash FROM accounts WHERE lower(email) = lower($1)",
                    &[&email],
                ),
            )
            .await?;
        Ok(row.map(|row| Account {
            id: row.get(0),
            email: row.get(1),
            password_hash: row.get(2),
        }))
    }

    async fn revoke_session(&self, revocation: Revocation) -> Result<(), StoreError> {
        let client = self.pg.client().await?;
        self.pg
            .call(
                "record a logout",
                client.execute(
                    "INSERT INTO revoked_sessions (session_id, expires_at) VALUES ($1, $2)
                     ON CONFLICT (session_id) DO NOTHING",
                    &[&revocation.session, &revocation.expires_at],
                ),
            )
            .await
            .map(drop)
    }

    async fn revocations_since(
        &self,
        cursor: RevocationCursor,
        now: OffsetDateTime,
    ) -> Result<Revocations, StoreError> {
        let client = self.pg.client().await?;
        if cursor == RevocationCursor::default() {
            // A fresh reader (an instance starting): a good moment to drop expired rows.
            self.pg
                .call(
                    "drop expired logouts",
                    client.execute(
                        "DELETE FROM revoked_sessions WHERE expires_at <= $1",
                        &[&now],
                    ),
                )
                .await?;
        }
        let read_at: OffsetDateTime = self
            .pg
            .call(
                "read the clock",
                client.query_one("SELECT clock_timestamp()", &[]),
            )
            .await?
            .get(0);
        let overlap = i64::try_from(OVERLAP.as_micros()).unwrap_or(i64::MAX);
        let since = from_micros(cursor.0.saturating_sub(overlap).max(0));
        let rows = self
            .pg
            .call(
                "read logouts",
                client.query(
                    "SELECT session_id, expires_at FROM revoked_sessions
                     WHERE revoked_at >= $1 AND expires_at > $2",
                    &[&since, &now],
                ),
            )
            .await?;
        let revoked = rows
            .iter()
            .map(|row| Revocation {
                session: row.get(0),
                expires_at: row.get(1),
            })
            .collect();
        Ok(Revocations {
            revoked,
            next: RevocationCursor(to_micros(read_at).max(1)),
        })
    }
}
