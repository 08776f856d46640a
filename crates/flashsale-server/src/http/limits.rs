//! Rate limiting (NF-5, NF-10): token buckets (GCRA, `governor`) keyed by client address and by
//! buyer id, answering 429 `rate_limited` with `Retry-After`.
//!
//! Three buckets, each with a steady rate and a burst:
//! - purchases per client address: stops one script hammering `POST .../orders` with made-up
//!   buyer ids. Its burst is large because many real buyers can share one address (an office
//!   or a carrier-grade NAT) and they all press "Buy Now" in the same second;
//! - purchases per buyer id: a person clicks a few times, a script hundreds;
//! - reads per client address (status, buyer orders, events, page, OpenAPI): looser, since
//!   the page polls when its event stream drops.
//!
//! Health, readiness and metrics are never limited (monitoring must see an overloaded
//! service). The client address comes from [`client_ip`](super::client_ip): `X-Forwarded-For`
//! counts only from `--trusted-proxies`. Idle buckets are dropped by [`Limiter::retain_recent`],
//! which the startup's upkeep task calls every few seconds, so memory follows the set of
//! recently active clients, not every client ever seen.

use crate::http::client_ip::TrustedProxies;
use crate::http::error::ApiError;
use crate::http::{AppState, routes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flashsale_core::UserId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

/// The rate-limit settings (flags and `FLASHSALE_*` variables).
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimits {
    /// Per-address and per-buyer rate limits (429 `rate_limited`); off for load tests.
    #[arg(
        long = "rate-limit",
        env = "FLASHSALE_RATE_LIMIT",
        default_value = "on",
        value_parser = crate::config::switch(),
        value_name = "ON|OFF",
        action = clap::ArgAction::Set,
    )]
    pub enabled: bool,

    /// Proxies whose `X-Forwarded-For` is believed: addresses and CIDRs, comma-separated.
    #[arg(long, env = "FLASHSALE_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,

    /// Purchases per second per client address (steady rate).
    #[arg(long, env = "FLASHSALE_PURCHASE_RATE_PER_IP", default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub purchase_rate_per_ip: u32,

    /// Purchases per client address allowed at once (burst).
    #[arg(long, env = "FLASHSALE_PURCHASE_BURST_PER_IP", default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub purchase_burst_per_ip: u32,

    /// Purchases per second per buyer id (steady rate).
    #[arg(long, env = "FLASHSALE_PURCHASE_RATE_PER_USER", default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub purchase_rate_per_user: u32,

    /// Purchases per buyer id allowed at once (burst).
    #[arg(long, env = "FLASHSALE_PURCHASE_BURST_PER_USER", default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub purchase_burst_per_user: u32,

    /// Reads (status, orders, events, page) per second per client address.
    #[arg(long, env = "FLASHSALE_READ_RATE_PER_IP", default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub read_rate_per_ip: u32,

    /// Reads per client address allowed at once (burst).
    #[arg(long, env = "FLASHSALE_READ_BURST_PER_IP", default_value_t = 400,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub read_burst_per_ip: u32,
}

impl RateLimits {
    /// The defaults with limiting switched off (tests, benchmarks).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

impl Default for RateLimits {
    /// The production defaults (limiting on, no trusted proxy).
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_proxies: TrustedProxies::default(),
            purchase_rate_per_ip: 20,
            purchase_burst_per_ip: 100,
            purchase_rate_per_user: 2,
            purchase_burst_per_user: 5,
            read_rate_per_ip: 100,
            read_burst_per_ip: 400,
        }
    }
}

/// The live limiters built from [`RateLimits`].
pub struct Limiter {
    enabled: bool,
    trusted: TrustedProxies,
    purchases_by_ip: DefaultKeyedRateLimiter<IpAddr>,
    purchases_by_user: DefaultKeyedRateLimiter<UserId>,
    reads_by_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

/// What a request is charged against.
enum Class {
    Purchase,
    Read,
    Exempt,
}

impl Limiter {
    /// Builds the limiters.
    pub fn new(settings: &RateLimits) -> Self {
        Self {
            enabled: settings.enabled,
            trusted: settings.trusted_proxies.clone(),
            purchases_by_ip: RateLimiter::keyed(quota(
                settings.purchase_rate_per_ip,
                settings.purchase_burst_per_ip,
            )),
            purchases_by_user: RateLimiter::keyed(quota(
                settings.purchase_rate_per_user,
                settings.purchase_burst_per_user,
            )),
            reads_by_ip: RateLimiter::keyed(quota(
                settings.read_rate_per_ip,
                settings.read_burst_per_ip,
            )),
            clock: DefaultClock::default(),
        }
    }

    /// Charges one purchase attempt to `user`; `Err(RateLimited)` when their bucket is empty.
    pub fn check_buyer(&self, user: &UserId) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        self.check(&self.purchases_by_user, user)
    }

    /// Forgets buckets that have refilled completely (their clients have been quiet).
    pub fn retain_recent(&self) {
        for limiter in [&self.purchases_by_ip, &self.reads_by_ip] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.purchases_by_user.retain_recent();
        self.purchases_by_user.shrink_to_fit();
    }

    /// Buckets currently held (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.purchases_by_ip.len() + self.reads_by_ip.len() + self.purchases_by_user.len()
    }

    fn check<K: Clone + Hash + Eq>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
    ) -> Result<(), ApiError> {
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            // Round up: a client that waits the advertised time finds a token.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::RateLimited {
                retry_after_secs: secs.max(1),
            }
        })
    }

    fn check_address(&self, class: Class, client: IpAddr) -> Result<(), ApiError> {
        match class {
            Class::Purchase => self.check(&self.purchases_by_ip, &client),
            Class::Read => self.check(&self.reads_by_ip, &client),
            Class::Exempt => Ok(()),
        }
    }
}

fn quota(per_second: u32, burst: u32) -> Quota {
    // clap refuses 0 for both; `MIN` keeps this total for values built in code.
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// Route middleware: charges the request to its client address (per route class).
pub async fn limit_by_address(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !app.limiter.enabled {
        return next.run(request).await;
    }
    let class = match request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
    {
        Some(routes::HEALTHZ | routes::READYZ | routes::METRICS) => Class::Exempt,
        Some(routes::ORDERS) => Class::Purchase,
        _ => Class::Read,
    };
    // Without a peer address (a router called in-process) there is nobody to charge.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer {
        let client = app.limiter.trusted.client_ip(peer, request.headers());
        if let Err(e) = app.limiter.check_address(class, client) {
            return e.into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_buyer_gets_the_burst_then_429_with_retry_after() {
        let limiter = Limiter::new(&RateLimits {
            purchase_rate_per_user: 1,
            purchase_burst_per_user: 3,
            ..RateLimits::default()
        });
        let alice = UserId::parse("alice").unwrap();
        for _ in 0..3 {
            assert!(limiter.check_buyer(&alice).is_ok());
        }
        match limiter.check_buyer(&alice) {
            Err(ApiError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 1),
            other => panic!("expected rate_limited, got {other:?}"),
        }
        // Another buyer has their own bucket.
        assert!(limiter.check_buyer(&UserId::parse("bob").unwrap()).is_ok());
    }

    #[test]
    fn disabled_limits_never_refuse() {
        let limiter = Limiter::new(&RateLimits {
            purchase_burst_per_user: 1,
            ..RateLimits::disabled()
        });
        let alice = UserId::parse("alice").unwrap();
        for _ in 0..100 {
            assert!(limiter.check_buyer(&alice).is_ok());
        }
    }

    #[test]
    fn addresses_have_separate_purchase_and_read_buckets() {
        let limiter = Limiter::new(&RateLimits {
            purchase_burst_per_ip: 1,
            read_burst_per_ip: 2,
            ..RateLimits::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.check_address(Class::Purchase, ip).is_ok());
        assert!(limiter.check_address(Class::Purchase, ip).is_err());
        assert!(limiter.check_address(Class::Read, ip).is_ok());
        assert!(limiter.check_address(Class::Read, ip).is_ok());
        assert!(limiter.check_address(Class::Read, ip).is_err());
        assert!(limiter.check_address(Class::Exempt, ip).is_ok());
    }
}
