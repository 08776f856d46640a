//! `--identity accounts`: signs up and logs in every buyer of the run before the release, so
//! the password hashing (tens of ms of server CPU each) stays outside the measured window,
//! and keeps each buyer's session token for the purchases and the order reads.
//!
//! The server bounds concurrent hashes and answers 503 `overloaded` past its queue (and 429
//! `rate_limited` if its log-in limits are on): those are retried after a short backoff, any
//! other refusal ends the run. Each log-in is timed on the client (the issue's "time one
//! login takes").

use crate::client::{Conn, Target};
use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Every generated account's password (the accounts exist only for the run).
const PASSWORD: &str = "flashsale-load-password";
/// Tries of one sign-up or log-in answered `overloaded` or `rate_limited` before giving up.
const MAX_TRIES: u32 = 200;
/// First backoff after a shed answer; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Longest backoff between two tries.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The signed-in buyers of a run.
#[derive(Debug, Default)]
pub struct Prepared {
    /// `Bearer <token>` per buyer number (index `n` is buyer `n` of the plan).
    pub authorization: Vec<Arc<str>>,
    /// Wall time of the whole preparation.
    pub elapsed: Duration,
    /// Microseconds each successful log-in took on the client (its last try, retries apart).
    pub login_micros: Vec<u64>,
}

impl Prepared {
    /// The `Authorization` value of buyer number `n`.
    pub fn authorization_of(&self, n: u64) -> Option<&str> {
        usize::try_from(n)
            .ok()
            .and_then(|i| self.authorization.get(i))
            .map(|a| a.as_ref())
    }

    /// Buyer id to `Authorization` value, for reading orders back.
    pub fn by_buyer(&self, users: impl Fn(u64) -> String) -> HashMap<String, Arc<str>> {
        self.authorization
            .iter()
            .enumerate()
            .map(|(n, a)| (users(n as u64), Arc::clone(a)))
            .collect()
    }
}

/// The email of a generated buyer id (ids are made of `[a-z0-9-]`, already normalised).
pub fn email_of(user_id: &str) -> String {
    format!("{}@load.flashsale.test", user_id.to_ascii_lowercase())
}

#[derive(Deserialize)]
struct Session {
    token: String,
}

/// Signs up and logs in `users` (buyer number `n` is `users[n]`), `concurrency` at a time,
/// spread round robin over `targets`.
pub async fn prepare(
    targets: &[Arc<Target>],
    timeout: Duration,
    users: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<Prepared> {
    let start = Instant::now();
    let count = users.len();
    let users = Arc::new(users);
    let next = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for k in 0..concurrency.clamp(1, count.max(1)) {
        let (users, next, finished) =
            (Arc::clone(&users), Arc::clone(&next), Arc::clone(&finished));
        let mut conn = Conn::new(Arc::clone(&targets[k % targets.len()]), timeout);
        workers.spawn(async move {
            let mut done: Vec<(usize, String, u64)> = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(user) = users.get(n) else {
                    break;
                };
                let (token, micros) = sign_up_and_log_in(&mut conn, user).await?;
                done.push((n, token, micros));
                finished.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(done)
        });
    }
    let printer = tokio::spawn(async move {
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(5), Duration::from_secs(5));
        loop {
            tick.tick().await;
            let done = finished.load(Ordering::Relaxed);
            eprintln!("prepared {done}/{count} accounts");
        }
    });
    let mut authorization: Vec<Option<Arc<str>>> = vec![None; count];
    let mut login_micros = Vec::with_capacity(count);
    let mut failure = None;
    while let Some(part) = workers.join_next().await {
        match part.context("a preparation task failed").and_then(|r| r) {
            Ok(done) => {
                for (n, token, micros) in done {
                    authorization[n] = Some(format!("Bearer {token}").into());
                    login_micros.push(micros);
                }
            }
            Err(e) => {
                // The first failure ends the run; the other workers stop with it.
                workers.abort_all();
                failure.get_or_insert(e);
            }
        }
    }
    printer.abort();
    if let Some(e) = failure {
        return Err(e);
    }
    let authorization = authorization
        .into_iter()
        .enumerate()
        .map(|(n, a)| a.ok_or_else(|| anyhow::anyhow!("buyer {n} was not prepared")))
        .collect::<anyhow::Result<_>>()?;
    Ok(Prepared {
        authorization,
        elapsed: start.elapsed(),
        login_micros,
    })
}

/// Signs one buyer up (an existing account, from a reused `--user-prefix`, is fine) and logs
/// them in; returns the token and the log-in's time in microseconds.
async fn sign_up_and_log_in(conn: &mut Conn, user: &str) -> anyhow::Result<(String, u64)> {
    let body = Bytes::from(
        serde_json::json!({ "email": email_of(user), "password": PASSWORD }).to_string(),
    );
    let (status, answer, _) = with_retries(conn, "/api/accounts", &body).await?;
    if status != StatusCode::CREATED && status != StatusCode::CONFLICT {
        bail!(
            "signing up {user}: HTTP {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let (status, answer, took) = with_retries(conn, "/api/sessions", &body).await?;
    if status != StatusCode::CREATED {
        bail!(
            "logging in {user}: HTTP {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let session: Session = serde_json::from_slice(&answer)
        .with_context(|| format!("reading the session of {user}"))?;
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
    Ok((session.token, micros))
}

/// Posts `body` to `path` until the answer is not shed (503 or 429), with a doubling backoff;
/// returns the status, the body and how long the last try took.
async fn with_retries(
    conn: &mut Conn,
    path: &str,
    body: &Bytes,
) -> anyhow::Result<(StatusCode, Bytes, Duration)> {
    let mut backoff = FIRST_BACKOFF;
    for _ in 0..MAX_TRIES {
        let sent = Instant::now();
        let answer = conn
            .send(Method::POST, path, Some(body.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("POST {path}: {e}"))?;
        let took = sent.elapsed();
        if !is_shed(answer.status) {
            return Ok((answer.status, answer.body, took));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    bail!("POST {path}: still shed after {MAX_TRIES} tries")
}

/// Answers that mean "not now" rather than "no".
fn is_shed(status: StatusCode) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lower_case_and_valid_looking() {
        assert_eq!(email_of("Load12-3-7"), "load12-3-7@load.flashsale.test");
    }

    #[test]
    fn only_overloaded_and_rate_limited_are_retried() {
        assert!(is_shed(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_shed(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_shed(StatusCode::CONFLICT));
        assert!(!is_shed(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn authorization_is_found_by_buyer_number() {
        let p = Prepared {
            authorization: vec!["Bearer a".into(), "Bearer b".into()],
            ..Default::default()
        };
        assert_eq!(p.authorization_of(1), Some("Bearer b"));
        assert_eq!(p.authorization_of(2), None);
        let map = p.by_buyer(|n| format!("u-{n}"));
        assert_eq!(map.get("u-0").map(|a| a.as_ref()), Some("Bearer a"));
    }
}
