//! `--identity accounts`: session tokens the purchase path verifies without I/O, and the
//! logouts that end them on every instance.
//!
//! A token is `<session id>.<account id>.<expiry>.<mac>`: two UUIDs as 32 hex digits, the
//! expiry in Unix seconds, and an HMAC-SHA256 (base64url, no padding) of the first three
//! parts under the session key every instance shares (`--session-key`). Verifying one is a
//! MAC (compared in constant time), a clock read and a look-up in the in-memory set of ended
//! sessions.
//!
//! A logout is written to the account store first, then to this instance's set; every
//! instance reads the store's new logouts every [`POLL_INTERVAL`] (the scale-out store reads
//! with a 10 s overlap, so a logout is seen everywhere within about one interval). Revoked
//! ids are kept only until their token would have expired anyway.

use super::passwords::random_bytes;
use flashsale_core::UserId;
use flashsale_store::StoreError;
use flashsale_store::accounts::{AccountStore, Revocation, RevocationCursor};
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::{Mutex, RwLock};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often each instance reads the logouts other instances recorded.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest session key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// What the MAC covers besides the token's parts, so a MAC made for something else under the
/// same key can never pass for a session.
const MAC_CONTEXT: &[u8] = b"flashsale-session-v1.";

type HmacSha256 = Hmac<Sha256>;

/// Why a session token was refused (all 401 `unauthenticated` to the client; the reason is
/// for the log and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SessionRejection {
    /// Not four parts of the right shapes.
    #[error("malformed session token")]
    Malformed,
    /// The MAC does not match (tampered, or made under another key).
    #[error("bad session token signature")]
    BadSignature,
    /// Past its expiry.
    #[error("session expired")]
    Expired,
    /// Logged out.
    #[error("session ended by a logout")]
    Revoked,
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's id (what a logout revokes).
    pub id: Uuid,
    /// The account's id.
    pub account: Uuid,
    /// When the token expires.
    pub expires_at: OffsetDateTime,
}

impl Session {
    /// The buyer id of the session's account: the account id, hyphenated (never the email,
    /// so orders, logs and metrics carry no address).
    pub fn buyer(&self) -> UserId {
        buyer_of(self.account)
    }
}

/// The buyer id of an account.
pub fn buyer_of(account: Uuid) -> UserId {
    // A hyphenated UUID is 36 ASCII characters without controls: always a valid id.
    UserId::parse(
        account
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer()),
    )
    .unwrap_or_else(|_| unreachable!("a hyphenated UUID is a valid buyer id"))
}

/// Signs and verifies session tokens, and knows which sessions ended early.
pub struct Sessions {
    key: HmacSha256,
    ttl: time::Duration,
    revoked: RwLock<HashMap<Uuid, OffsetDateTime>>,
    cursor: Mutex<RevocationCursor>,
}

impl Sessions {
    /// Sessions signed with `key` (at least [`MIN_KEY_BYTES`]) that last `ttl`.
    pub fn new(key: &[u8], ttl: Duration) -> Self {
        Self {
            // HMAC takes keys of any length; the caller checked the minimum.
            key: HmacSha256::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length")),
            ttl: time::Duration::try_from(ttl).unwrap_or(time::Duration::DAY),
            revoked: RwLock::default(),
            cursor: Mutex::default(),
        }
    }

    /// A new session for `account` starting at `now`: its token and expiry (`Err` only if
    /// the operating system's random generator fails).
    pub fn issue(
        &self,
        account: Uuid,
        now: OffsetDateTime,
    ) -> Result<(String, OffsetDateTime), getrandom::Error> {
        let expires_at = (now + self.ttl).replace_nanosecond(0).unwrap_or(now);
        let session = Uuid::from_bytes(random_bytes::<16>()?);
        let body = format!(
            "{}.{}.{}",
            session.simple(),
            account.simple(),
            expires_at.unix_timestamp()
        );
        let tag = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            self.mac(&body).finalize().into_bytes(),
        );
        Ok((format!("{body}.{tag}"), expires_at))
    }

    /// The session of `token` at `now`, or why it is refused. No I/O.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Session, SessionRejection> {
        let (body, tag) = token.rsplit_once('.').ok_or(SessionRejection::Malformed)?;
        let mut parts = body.split('.');
        let (Some(id), Some(account), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SessionRejection::Malformed);
        };
        let tag = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, tag)
            .map_err(|_| SessionRejection::Malformed)?;
        // Before parsing the parts: a forged token learns nothing from which part is wrong.
        self.mac(body)
            .verify_slice(&tag)
            .map_err(|_| SessionRejection::BadSignature)?;
        let id = parse_simple_uuid(id)?;
        let account = parse_simple_uuid(account)?;
        let expires_at = expiry
            .parse::<i64>()
            .ok()
            .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
            .ok_or(SessionRejection::Malformed)?;
        if now >= expires_at {
            return Err(SessionRejection::Expired);
        }
        if self.revoked.read().contains_key(&id) {
            return Err(SessionRejection::Revoked);
        }
        Ok(Session {
            id,
            account,
            expires_at,
        })
    }

    /// Ends `session` everywhere: durably in `store` first, then on this instance at once.
    pub async fn revoke(
        &self,
        store: &dyn AccountStore,
        session: &Session,
    ) -> Result<(), StoreError> {
        let revocation = Revocation {
            session: session.id,
            expires_at: session.expires_at,
        };
        store.revoke_session(revocation).await?;
        self.revoked.write().insert(session.id, session.expires_at);
        Ok(())
    }

    /// Reads the logouts recorded since the last read (every one at the first), and forgets
    /// those expired at `now`.
    pub async fn catch_up(
        &self,
        store: &dyn AccountStore,
        now: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let cursor = *self.cursor.lock();
        let read = store.revocations_since(cursor, now).await?;
        let mut revoked = self.revoked.write();
        revoked.retain(|_, expires_at| *expires_at > now);
        for revocation in &read.revoked {
            revoked.insert(revocation.session, revocation.expires_at);
        }
        *self.cursor.lock() = read.next;
        Ok(revoked.len())
    }

    /// Calls [`Sessions::catch_up`] every [`POLL_INTERVAL`] until `stop`; a failed read is
    /// logged and retried at the next tick (the cursor stays, so nothing is missed).
    pub async fn watch(
        self: Arc<Self>,
        store: Arc<dyn AccountStore>,
        now: impl Fn() -> OffsetDateTime + Send + 'static,
        every_tick: impl Fn() + Send + 'static,
        stop: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.catch_up(store.as_ref(), now()).await {
                tracing::warn!(error = %e.report(), "cannot read logouts; retrying");
            }
            every_tick();
        }
    }

    fn mac(&self, body: &str) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(MAC_CONTEXT);
        mac.update(body.as_bytes());
        mac
    }
}

/// A UUID written as exactly 32 lower-case hex digits (the only form tokens carry).
fn parse_simple_uuid(raw: &str) -> Result<Uuid, SessionRejection> {
    if raw.len() != 32 || !raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(SessionRejection::Malformed);
    }
    Uuid::try_parse(raw).map_err(|_| SessionRejection::Malformed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

    fn sessions() -> Sessions {
        Sessions::new(&[7; 32], Duration::from_secs(3600))
    }

    #[test]
    fn an_issued_token_verifies_until_its_expiry() {
        let sessions = sessions();
        let account = Uuid::now_v7();
        let (token, expires_at) = sessions.issue(account, NOW).unwrap();
        assert_eq!(expires_at, NOW + time::Duration::hours(1));
        let session = sessions.verify(&token, NOW).unwrap();
        assert_eq!(session.account, account);
        assert_eq!(session.buyer().as_str(), account.hyphenated().to_string());
        assert_eq!(
            sessions.verify(&token, expires_at),
            Err(SessionRejection::Expired)
        );
    }

    #[test]
    fn a_tampered_or_foreign_token_is_refused() {
        let sessions = sessions();
        let (token, _) = sessions.issue(Uuid::now_v7(), NOW).unwrap();
        let other = Uuid::now_v7().simple().to_string();
        let parts: Vec<&str> = token.split('.').collect();
        let swapped = format!("{}.{other}.{}.{}", parts[0], parts[2], parts[3]);
        assert_eq!(
            sessions.verify(&swapped, NOW),
            Err(SessionRejection::BadSignature)
        );
        let later = format!("{}.{}.{}.{}", parts[0], parts[1], i64::MAX, parts[3]);
        assert_eq!(
            sessions.verify(&later, NOW),
            Err(SessionRejection::BadSignature)
        );
        let foreign = Sessions::new(&[8; 32], Duration::from_secs(3600));
        assert_eq!(
            foreign.verify(&token, NOW),
            Err(SessionRejection::BadSignature)
        );
        for junk in ["", "a.b.c", "a.b.c.d.e", "....", &format!("{token}x!")] {
            assert!(sessions.verify(junk, NOW).is_err(), "{junk}");
        }
    }
}
