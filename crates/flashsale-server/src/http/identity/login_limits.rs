//! `--identity accounts`: rate limits on log-ins and sign-ups (credential stuffing, password
//! guessing), token buckets (`governor`) like the purchase limits, answering 429
//! `rate_limited` with `Retry-After`. On and off with `--rate-limit`.
//!
//! A log-in is charged, in order, to:
//! - its client address ([`PER_ADDRESS_PER_MINUTE`], burst [`ADDRESS_BURST`]): one machine
//!   trying many emails;
//! - the email *and* address ([`PER_PAIR_PER_MINUTE`], burst [`PAIR_BURST`]): one machine
//!   guessing one account's password;
//! - the email alone ([`PER_EMAIL_PER_MINUTE`], burst [`EMAIL_BURST`]): many machines
//!   guessing one account's password.
//!
//! A bucket refused earlier in the order charges none after it, and the email's own bucket is
//! larger than one address's share of it: whoever hammers an account from one address is
//! stopped after [`PAIR_BURST`] tries having spent only that much of the email's budget, so
//! its owner can still log in from their own address. Many addresses together can empty the
//! email's bucket and lock its owner out until it refills (a minute): the price of stopping a
//! distributed guesser. A sign-up is charged to its address only.

use crate::http::error::ApiError;
use crate::http::limits;
use governor::clock::DefaultClock;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

/// Log-ins and sign-ups per minute per client address.
pub const PER_ADDRESS_PER_MINUTE: u32 = 60;
/// ...allowed at once.
pub const ADDRESS_BURST: u32 = 30;
/// Log-ins per minute for one email from one address.
pub const PER_PAIR_PER_MINUTE: u32 = 5;
/// ...allowed at once.
pub const PAIR_BURST: u32 = 5;
/// Log-ins per minute for one email from anywhere.
pub const PER_EMAIL_PER_MINUTE: u32 = 20;
/// ...allowed at once.
pub const EMAIL_BURST: u32 = 20;

/// The log-in and sign-up buckets.
pub struct LoginLimits {
    enabled: bool,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    by_pair: DefaultKeyedRateLimiter<(Arc<str>, Option<IpAddr>)>,
    by_email: DefaultKeyedRateLimiter<Arc<str>>,
    clock: DefaultClock,
}

impl LoginLimits {
    /// The buckets; with `enabled` false every check passes.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            by_address: limits::keyed(per_minute(PER_ADDRESS_PER_MINUTE, ADDRESS_BURST)),
            by_pair: limits::keyed(per_minute(PER_PAIR_PER_MINUTE, PAIR_BURST)),
            by_email: limits::keyed(per_minute(PER_EMAIL_PER_MINUTE, EMAIL_BURST)),
            clock: DefaultClock::default(),
        }
    }

    /// Charges a sign-up to `client`.
    pub fn check_signup(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        match client {
            Some(client) if self.enabled => self.check(&self.by_address, &client),
            _ => Ok(()),
        }
    }

    /// Charges a log-in for `email` (normalised) from `client`.
    pub fn check_login(&self, email: &str, client: Option<IpAddr>) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(client) = client {
            self.check(&self.by_address, &client)?;
        }
        let email: Arc<str> = Arc::from(email);
        self.check(&self.by_pair, &(Arc::clone(&email), client))?;
        self.check(&self.by_email, &email)
    }

    /// Forgets buckets that have refilled completely.
    pub fn retain_recent(&self) {
        self.by_address.retain_recent();
        self.by_pair.retain_recent();
        self.by_email.retain_recent();
    }

    fn check<K: Clone + Hash + Eq>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
    ) -> Result<(), ApiError> {
        limits::check_key(limiter, key, &self.clock)
    }
}

fn per_minute(rate: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(rate).allow_burst(burst)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hammering_one_email_from_one_address_leaves_its_owner_room_elsewhere() {
        let limits = LoginLimits::new(true);
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        let owner: IpAddr = "203.0.113.9".parse().unwrap();
        let passed = (0..1_000)
            .filter(|_| {
                limits
                    .check_login("ann@example.com", Some(attacker))
                    .is_ok()
            })
            .count();
        assert_eq!(passed, PAIR_BURST as usize);
        assert!(limits.check_login("ann@example.com", Some(owner)).is_ok());
        assert!(
            LoginLimits::new(false)
                .check_login("x", Some(attacker))
                .is_ok()
        );
    }
}
