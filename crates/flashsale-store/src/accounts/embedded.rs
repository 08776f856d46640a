//! Accounts for the embedded store: a SQLite file of their own beside the sales database, so
//! the sales writer's group commits never wait behind a sign-up (and the reverse).
//!
//! One connection behind a mutex, used on the blocking pool only (SQLite calls block; sign-ups
//! are rare next to purchases, so one connection is plenty). `synchronous=FULL` in WAL mode:
//! a sign-up or logout is on disk before it is answered.

use super::{Account, AccountStore, Revocation, RevocationCursor, Revocations, SignUp};
use crate::StoreError;
use crate::instants::{from_micros, to_micros};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use std::path::Path;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// The file inside the data directory.
pub const FILE_NAME: &str = "accounts.sqlite3";

/// Accounts and revocations in SQLite.
pub struct SqliteAccounts {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteAccounts {
    /// Opens (creating if needed) the database at `path`. Blocking: call it off the async
    /// workers.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::unavailable_from(format!("open {}", path.display()), e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS accounts (
                 id            BLOB    PRIMARY KEY,
                 email         TEXT    NOT NULL UNIQUE,
                 password_hash TEXT    NOT NULL,
                 created_at_us INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS revoked_sessions (
                 seq           INTEGER PRIMARY KEY AUTOINCREMENT,
                 session_id    BLOB    NOT NULL UNIQUE,
                 expires_at_us INTEGER NOT NULL
             );",
        )
        .map_err(|e| StoreError::unavailable_from("migrate the accounts database", e))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` on the connection on the blocking pool; `what` names it in errors.
    async fn with_conn<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || work(&conn.lock()))
            .await
            .map_err(|e| StoreError::internal_from(what, e))?
            .map_err(|e| StoreError::unavailable_from(what, e))
    }
}

#[async_trait]
impl AccountStore for SqliteAccounts {
    async fn create_account(
        &self,
        email: &str,
        password_hash: &str,
        now: OffsetDateTime,
    ) -> Result<SignUp, StoreError> {
        let account = Account::new(email, password_hash);
        self.with_conn("insert an account", move |conn| {
            let inserted = conn.execute(
                "INSERT INTO accounts (id, email, password_hash, created_at_us)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    account.id.as_bytes().as_slice(),
                    account.email,
                    account.password_hash,
                    to_micros(now)
                ],
            );
            match inserted {
                Ok(_) => Ok(SignUp::Created(account)),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == ErrorCode::ConstraintViolation =>
                {
                    Ok(SignUp::EmailTaken)
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        let email = email.to_owned();
        self.with_conn("read an account", move |conn| {
            conn.query_row(
                "SELECT id, email, password_hash FROM accounts WHERE email = ?1",
                [&email],
                |row| {
                    let id: Vec<u8> = row.get(0)?;
                    Ok(Account {
                        id: Uuid::from_slice(&id).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                0,
                                rusqlite::types::Type::Blob,
                                Box::new(e),
                            )
                        })?,
                        email: row.get(1)?,
                        password_hash: row.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn revoke_session(&self, revocation: Revocation) -> Result<(), StoreError> {
        self.with_conn("record a logout", move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO revoked_sessions (session_id, expires_at_us)
                 VALUES (?1, ?2)",
                params![
                    revocation.session.as_bytes().as_slice(),
                    to_micros(revocation.expires_at)
                ],
            )
            .map(drop)
        })
        .await
    }

    async fn revocations_since(
        &self,
        cursor: RevocationCursor,
        now: OffsetDateTime,
    ) -> Result<Revocations, StoreError> {
        // One connection writes, so sequence numbers become visible in order: a cursor on
        // them misses nothing. A fresh reader (a start) drops expired rows first, so the file
        // stays as small as the live logouts; later reads write nothing.
        self.with_conn("read logouts", move |conn| {
            if cursor == RevocationCursor::default() {
                conn.execute(
                    "DELETE FROM revoked_sessions WHERE expires_at_us <= ?1",
                    [to_micros(now)],
                )?;
            }
            let mut statement = conn.prepare_cached(
                "SELECT seq, session_id, expires_at_us FROM revoked_sessions
                 WHERE seq > ?1 ORDER BY seq",
            )?;
            let mut next = cursor;
            let mut revoked = Vec::new();
            let now_us = to_micros(now);
            let rows = statement.query_map([cursor.0], |row| {
                let seq: i64 = row.get(0)?;
                let session: Vec<u8> = row.get(1)?;
                let expires_at_us: i64 = row.get(2)?;
                Ok((seq, session, expires_at_us))
            })?;
            for row in rows {
                let (seq, session, expires_at_us) = row?;
                next = RevocationCursor(seq.max(next.0));
                if expires_at_us <= now_us {
                    continue;
                }
                if let Ok(session) = Uuid::from_slice(&session) {
                    revoked.push(Revocation {
                        session,
                        expires_at: from_micros(expires_at_us),
                    });
                }
            }
            Ok(Revocations { revoked, next })
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use time::Duration;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

    #[tokio::test]
    async fn of_concurrent_signups_for_one_email_exactly_one_makes_an_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteAccounts::open(&dir.path().join(FILE_NAME)).unwrap());
        let attempts = (0..16).map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .create_account("race@example.com", &format!("hash{i}"), NOW)
                    .await
                    .unwrap()
            })
        });
        let mut created = 0;
        for attempt in attempts {
            if matches!(attempt.await.unwrap(), SignUp::Created(_)) {
                created += 1;
            }
        }
        assert_eq!(created, 1);
    }

    #[tokio::test]
    async fn accounts_and_logouts_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let store = SqliteAccounts::open(&path).unwrap();
        let SignUp::Created(account) = store
            .create_account("a@example.com", "h", NOW)
            .await
            .unwrap()
        else {
            panic!("not created")
        };
        let revocation = Revocation {
            session: Uuid::now_v7(),
            expires_at: NOW + Duration::hours(1),
        };
        store.revoke_session(revocation).await.unwrap();
        store.revoke_session(revocation).await.unwrap();
        drop(store);
        let store = SqliteAccounts::open(&path).unwrap();
        assert_eq!(
            store.account_by_email("a@example.com").await.unwrap(),
            Some(account)
        );
        assert_eq!(store.account_by_email("b@example.com").await.unwrap(), None);
        let read = store
            .revocations_since(RevocationCursor::default(), NOW)
            .await
            .unwrap();
        assert_eq!(read.revoked, [revocation]);
        let again = store.revocations_since(read.next, NOW).await.unwrap();
        assert!(again.revoked.is_empty());
        let later = store
            .revocations_since(RevocationCursor::default(), NOW + Duration::hours(2))
            .await
            .unwrap();
        assert!(later.revoked.is_empty(), "expired revocations are dropped");
    }
}
