//! Rate limiting (NF-5, NF-10): token buckets (GCRA, `governor`) keyed by client address and by
//! buyer id, answering 429 `rate_limited` with `Retry-After`.
//!
//! Three buckets, each with a steady rate and a burst:
//! - purchases per client address: stops one script hammering `POST .../orders` with made-up
//!   buyer ids. Its burst is large because many real buyers can share one address (an office
//!   or a carrier-grade NAT) and they all press "Buy Now" in the same second;
//! - purchases per buyer id *and* address: a person clicks a few times, a script hundreds.
//!   Charged only once the sale is known to exist and to be inside its window, and keyed by the
//!   address too, so nobody can spend someone else's budget by naming their id (issue 17);
//! - reads per client address (status, buyer orders, events, page, OpenAPI, metrics): looser,
//!   since the page polls when its event stream drops.
//!
//! Two bounds are not rates:
//! - a per-address share of each sale ([`AddressShares`]): one address holds at most
//!   `--purchase-share-per-ip` percent of a sale's stock (confirmed plus in flight), so no
//!   burst, however fast, empties a sale from one address;
//! - failed admin logins per address ([`AdminFailures`]): after ten in a minute, every admin
//!   request from that address is 429 until the minute is over.
//!
//! Health and readiness are never limited (monitoring must see an overloaded service). The
//! client address comes from [`client_ip`](super::client_ip): `X-Forwarded-For` counts only
//! from `--trusted-proxies`, and an IPv6 client counts as its /64. Idle buckets are dropped by
//! [`Limiter::retain_recent`], which the startup's upkeep task calls every few seconds, so
//! memory follows the set of recently active clients, not every client ever seen.
//!
//! Every keyed map here has [`SHARDS`] shards, each with its own lock ([`keyed`]). A hash map
//! grows, and the upkeep shrinks it, by moving all its entries while its lock is held, and a
//! tokio worker that meets that lock stops with every connection it serves. governor's
//! default is four shards per core, eight on two cores: a sale's first million buyers meant
//! one-eighth of them moved at once, tens of milliseconds during which most purchases waited
//! (`cargo run --release -p flashsale-server --example limiter_growth` measures it).

use crate::http::client_ip::{TrustedProxies, rate_key};
use crate::http::error::ApiError;
use crate::http::extract::MAX_BODY_BYTES;
use crate::http::{AppState, routes};
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{Extensions, HeaderMap, HeaderValue, header};
use axum::response::Response;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use flashsale_core::{Sale, SaleId, UserId};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a refused request's small body may take to arrive before the connection is closed
/// instead of kept alive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Shards of every keyed map of the limiters: a growth moves 1/256 of its entries.
pub const SHARDS: usize = 256;
/// Failed admin logins an address may make per [`ADMIN_FAILURE_WINDOW`].
pub const ADMIN_FAILURES_ALLOWED: u32 = 10;
/// The window over which failed admin logins are counted.
pub const ADMIN_FAILURE_WINDOW: Duration = Duration::from_secs(60);

// The defaults of [`RateLimits`], written once: the flags show them in `--help` and
// `RateLimits::default()` uses the same values.
const DEFAULT_PURCHASE_RATE_PER_IP: u32 = 20;
const DEFAULT_PURCHASE_BURST_PER_IP: u32 = 100;
const DEFAULT_PURCHASE_SHARE_PER_IP: u32 = 10;
const DEFAULT_PURCHASE_RATE_PER_USER: u32 = 2;
const DEFAULT_PURCHASE_BURST_PER_USER: u32 = 5;
const DEFAULT_READ_RATE_PER_IP: u32 = 100;
const DEFAULT_READ_BURST_PER_IP: u32 = 400;

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
    #[arg(long, env = "FLASHSALE_PURCHASE_RATE_PER_IP", default_value_t = DEFAULT_PURCHASE_RATE_PER_IP,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub purchase_rate_per_ip: u32,

    /// Purchases per client address allowed at once (burst).
    #[arg(long, env = "FLASHSALE_PURCHASE_BURST_PER_IP", default_value_t = DEFAULT_PURCHASE_BURST_PER_IP,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub purchase_burst_per_ip: u32,

    /// Percent of a sale's stock one client address may take (confirmed plus in flight);
    /// 100 switches the share off. At least the sale's per-user limit.
    #[arg(long, env = "FLASHSALE_PURCHASE_SHARE_PER_IP", default_value_t = DEFAULT_PURCHASE_SHARE_PER_IP,
        value_parser = clap::value_parser!(u32).range(1..=100))]
    pub purchase_share_per_ip: u32,

    /// Purchases per second per buyer id (steady rate).
    #[arg(long, env = "FLASHSALE_PURCHASE_RATE_PER_USER", default_value_t = DEFAULT_PURCHASE_RATE_PER_USER,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub purchase_rate_per_user: u32,

    /// Purchases per buyer id allowed at once (burst).
    #[arg(long, env = "FLASHSALE_PURCHASE_BURST_PER_USER", default_value_t = DEFAULT_PURCHASE_BURST_PER_USER,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub purchase_burst_per_user: u32,

    /// Reads (status, orders, events, page) per second per client address.
    #[arg(long, env = "FLASHSALE_READ_RATE_PER_IP", default_value_t = DEFAULT_READ_RATE_PER_IP,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub read_rate_per_ip: u32,

    /// Reads per client address allowed at once (burst).
    #[arg(long, env = "FLASHSALE_READ_BURST_PER_IP", default_value_t = DEFAULT_READ_BURST_PER_IP,
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
            purchase_rate_per_ip: DEFAULT_PURCHASE_RATE_PER_IP,
            purchase_burst_per_ip: DEFAULT_PURCHASE_BURST_PER_IP,
            purchase_share_per_ip: DEFAULT_PURCHASE_SHARE_PER_IP,
            purchase_rate_per_user: DEFAULT_PURCHASE_RATE_PER_USER,
            purchase_burst_per_user: DEFAULT_PURCHASE_BURST_PER_USER,
            read_rate_per_ip: DEFAULT_READ_RATE_PER_IP,
            read_burst_per_ip: DEFAULT_READ_BURST_PER_IP,
        }
    }
}

/// The live limiters built from [`RateLimits`].
pub struct Limiter {
    enabled: bool,
    trusted: TrustedProxies,
    purchases_by_ip: DefaultKeyedRateLimiter<IpAddr>,
    purchases_by_buyer: DefaultKeyedRateLimiter<(UserId, Option<IpAddr>)>,
    reads_by_ip: DefaultKeyedRateLimiter<IpAddr>,
    shares: Arc<AddressShares>,
    admin_failures: AdminFailures,
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
            purchases_by_ip: keyed(quota(
                settings.purchase_rate_per_ip,
                settings.purchase_burst_per_ip,
            )),
            purchases_by_buyer: keyed(quota(
                settings.purchase_rate_per_user,
                settings.purchase_burst_per_user,
            )),
            reads_by_ip: keyed(quota(settings.read_rate_per_ip, settings.read_burst_per_ip)),
            shares: Arc::new(AddressShares::new(settings.purchase_share_per_ip)),
            admin_failures: AdminFailures::default(),
            clock: DefaultClock::default(),
        }
    }

    /// Whether limiting is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The proxies whose `X-Forwarded-For` is believed.
    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// The limiting key of the client that sent a request from `peer` with `headers`.
    pub fn client_key(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        rate_key(self.trusted.client_ip(peer, headers))
    }

    /// The limiting key of a request's client; `None` for a router called in-process.
    pub fn client_of(&self, request: &Request) -> Option<IpAddr> {
        self.client_of_parts(request.extensions(), request.headers())
    }

    /// [`Limiter::client_of`] from a request's parts.
    pub fn client_of_parts(&self, extensions: &Extensions, headers: &HeaderMap) -> Option<IpAddr> {
        extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| self.client_key(addr.ip(), headers))
    }

    /// Charges one purchase attempt to `user` from `client`; `Err(RateLimited)` when their
    /// bucket is empty. Call it only for a sale that exists and is inside its window.
    pub fn check_buyer(&self, user: &UserId, client: Option<IpAddr>) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        // `UserId` is an `Arc`: the key costs an increment, not a copy of the id.
        self.check(&self.purchases_by_buyer, &(user.clone(), client))
    }

    /// Charges one purchase attempt to a buyer whose id a token proved: keyed by the id
    /// alone, so their budget follows them across addresses (nobody else can spend it
    /// without their token). Call it only for a sale that exists and is inside its window.
    pub fn check_verified_buyer(&self, user: &UserId) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        self.check(&self.purchases_by_buyer, &(user.clone(), None))
    }

    /// Reserves `units` of `sale` for `client`'s share; `Err(AddressShareTaken)` when the
    /// address already holds (or is buying) its share. Keep the reservation when the purchase
    /// is confirmed; dropping it gives the units back.
    pub fn reserve_share(
        &self,
        sale: &Sale,
        client: Option<IpAddr>,
        units: u32,
    ) -> Result<Option<ShareReservation>, ApiError> {
        match client {
            Some(client) if self.enabled => {
                AddressShares::reserve(&self.shares, sale, client, units).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Records a failed admin login from `client` (see [`Limiter::admin_locked`]).
    pub fn admin_failed(&self, client: Option<IpAddr>) {
        if let Some(client) = client.filter(|_| self.enabled) {
            self.admin_failures.record(client, Instant::now());
        }
    }

    /// `Err(RateLimited)` when `client` has failed admin logins too often recently: checked
    /// before the token is compared, so a locked-out address learns nothing from its guesses.
    pub fn admin_locked(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        match client {
            Some(client) if self.enabled => self.admin_failures.check(client, Instant::now()),
            _ => Ok(()),
        }
    }

    /// Forgets buckets that have refilled completely (their clients have been quiet).
    pub fn retain_recent(&self) {
        for limiter in [&self.purchases_by_ip, &self.reads_by_ip] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.purchases_by_buyer.retain_recent();
        self.purchases_by_buyer.shrink_to_fit();
        self.admin_failures.forget_before(Instant::now());
    }

    /// Buckets currently held (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.purchases_by_ip.len() + self.reads_by_ip.len() + self.purchases_by_buyer.len()
    }

    fn check<K: Clone + Hash + Eq>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
    ) -> Result<(), ApiError> {
        check_key(limiter, key, &self.clock)
    }

    fn check_address(&self, class: Class, client: IpAddr) -> Result<(), ApiError> {
        match class {
            Class::Purchase => self.check(&self.purchases_by_ip, &client),
            Class::Read => self.check(&self.reads_by_ip, &client),
            Class::Exempt => Ok(()),
        }
    }
}

/// Units of each sale held per address: confirmed, plus reserved by purchases in flight, so
/// that pipelined attempts cannot overshoot the share between the check and the commit.
///
/// Per instance and in memory, like the buckets: behind N instances without client affinity an
/// address can take up to N shares, and a restart forgets what was taken (the stock it sold is
/// gone either way). Entries are created by purchases that reserve units, so their number is
/// bounded by the orders confirmed; an entry going back to zero is removed.
pub struct AddressShares {
    percent: u32,
    held: DashMap<(SaleId, IpAddr), u32>,
}

/// Units reserved for one attempt; given back on drop unless [`ShareReservation::keep`] is
/// called.
pub struct ShareReservation {
    shares: Arc<AddressShares>,
    key: (SaleId, IpAddr),
    units: u32,
}

impl AddressShares {
    fn new(percent: u32) -> Self {
        Self {
            percent: percent.clamp(1, 100),
            held: DashMap::with_shard_amount(SHARDS),
        }
    }

    /// The units one address may hold in `sale`: `percent` of the stock rounded up, at least
    /// the per-user limit (one buyer can always buy what the sale allows them).
    pub fn share_of(percent: u32, sale: &Sale) -> u32 {
        let share = (u64::from(sale.stock) * u64::from(percent)).div_ceil(100);
        u32::try_from(share)
            .unwrap_or(u32::MAX)
            .max(sale.per_user_limit)
    }

    fn reserve(
        shares: &Arc<Self>,
        sale: &Sale,
        client: IpAddr,
        units: u32,
    ) -> Result<ShareReservation, ApiError> {
        if shares.percent >= 100 {
            // Switched off: reserve nothing, and never refuse.
            return Ok(ShareReservation {
                shares: Arc::clone(shares),
                key: (sale.id, client),
                units: 0,
            });
        }
        let share = Self::share_of(shares.percent, sale);
        let key = (sale.id, client);
        let taken = |current: u32| current.saturating_add(units) > share;
        match shares.held.entry(key) {
            Entry::Occupied(mut held) if !taken(*held.get()) => *held.get_mut() += units,
            Entry::Vacant(free) if !taken(0) => {
                free.insert(units);
            }
            _ => return Err(ApiError::AddressShareTaken { share }),
        }
        Ok(ShareReservation {
            shares: Arc::clone(shares),
            key,
            units,
        })
    }
}

impl ShareReservation {
    /// The purchase was confirmed: the units stay counted.
    pub fn keep(mut self) {
        self.units = 0;
    }
}

impl Drop for ShareReservation {
    fn drop(&mut self) {
        if self.units == 0 {
            return;
        }
        let units = self.units;
        self.shares.held.remove_if_mut(&self.key, |_, count| {
            *count = count.saturating_sub(units);
            *count == 0
        });
    }
}

/// Failed admin logins per address in a fixed window.
#[derive(Default)]
struct AdminFailures(Mutex<HashMap<IpAddr, (Instant, u32)>>);

impl AdminFailures {
    fn check(&self, client: IpAddr, now: Instant) -> Result<(), ApiError> {
        match self.0.lock().get(&client) {
            Some(&(since, count))
                if count >= ADMIN_FAILURES_ALLOWED && now < since + ADMIN_FAILURE_WINDOW =>
            {
                let wait = (since + ADMIN_FAILURE_WINDOW).saturating_duration_since(now);
                Err(ApiError::RateLimited {
                    retry_after_secs: wait.as_secs().max(1),
                })
            }
            _ => Ok(()),
        }
    }

    fn record(&self, client: IpAddr, now: Instant) {
        let mut failures = self.0.lock();
        let entry = failures.entry(client).or_insert((now, 0));
        if now >= entry.0 + ADMIN_FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    fn forget_before(&self, now: Instant) {
        self.0
            .lock()
            .retain(|_, (since, _)| now < *since + ADMIN_FAILURE_WINDOW);
    }
}

/// A keyed limiter of `quota` whose map has [`SHARDS`] shards (see the module's note).
pub fn keyed<K: Clone + Hash + Eq>(quota: Quota) -> DefaultKeyedRateLimiter<K> {
    RateLimiter::new(
        quota,
        DashMap::with_shard_amount(SHARDS),
        DefaultClock::default(),
    )
}

/// A quota of `per_second` steadily and `burst` at once (0 counts as 1).
pub fn quota(per_second: u32, burst: u32) -> Quota {
    // clap refuses 0 for both; `MIN` keeps this total for values built in code.
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// Charges the request to its client address (per route class): `Err` with the 429 when its
/// bucket is empty (called by [`crate::http::stack::RouteStack`] before the route runs).
pub fn charge_address(app: &AppState, request: &Request) -> Result<(), ApiError> {
    if !app.limiter.enabled {
        return Ok(());
    }
    let class = match request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
    {
        Some(routes::HEALTHZ | routes::READYZ) => Class::Exempt,
        Some(routes::ORDERS) => Class::Purchase,
        _ => Class::Read,
    };
    // Without a peer address (a router called in-process) there is nobody to charge.
    match app.limiter.client_of(request) {
        Some(client) => app.limiter.check_address(class, client),
        None => Ok(()),
    }
}

/// Answers `response` to a request whose body has not been read. A small declared body is read
/// and dropped first, so the connection stays usable for the client's next request (hyper
/// would otherwise close it without saying so, and a keep-alive client's next write would hit
/// a closed socket); any other body gets `Connection: close`, so the client knows.
pub async fn refuse_unread(request: Request, mut response: Response) -> Response {
    let headers = request.headers();
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let drained = match (chunked, declared) {
        (false, None | Some(0)) => true,
        (false, Some(len)) if len <= MAX_BODY_BYTES as u64 => {
            let body = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES);
            matches!(tokio::time::timeout(DRAIN_TIMEOUT, body).await, Ok(Ok(_)))
        }
        _ => false,
    };
    if !drained {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Takes one token of `key`'s bucket, or answers 429 `rate_limited` with the wait until the
/// next token (rounded up: a client that waits the advertised time finds one). Shared by every
/// keyed limiter of the service (addresses, buyers, log-ins).
pub fn check_key<K: Clone + Hash + Eq>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    clock: &DefaultClock,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(clock.now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::RateLimited {
            retry_after_secs: secs.max(1),
        }
    })
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
        let home: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        for _ in 0..3 {
            assert!(limiter.check_buyer(&alice, home).is_ok());
        }
        match limiter.check_buyer(&alice, home) {
            Err(ApiError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 1),
            other => panic!("expected rate_limited, got {other:?}"),
        }
        // Another buyer has their own bucket.
        assert!(
            limiter
                .check_buyer(&UserId::parse("bob").unwrap(), home)
                .is_ok()
        );
        // So has the same id sent from another address: naming alice elsewhere cannot spend
        // alice's budget.
        let elsewhere = Some("198.51.100.7".parse().unwrap());
        assert!(limiter.check_buyer(&alice, elsewhere).is_ok());
    }

    #[test]
    fn disabled_limits_never_refuse() {
        let limiter = Limiter::new(&RateLimits {
            purchase_burst_per_user: 1,
            ..RateLimits::disabled()
        });
        let alice = UserId::parse("alice").unwrap();
        for _ in 0..100 {
            assert!(limiter.check_buyer(&alice, None).is_ok());
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

    fn sale(stock: u32, per_user_limit: u32) -> Sale {
        let start = time::macros::datetime!(2026-11-22 12:00 UTC);
        flashsale_core::NewSale::parse(
            "Widget",
            start,
            start + time::Duration::minutes(10),
            i64::from(stock),
            i64::from(per_user_limit),
        )
        .unwrap()
        .with_id(SaleId(1))
    }

    #[test]
    fn the_share_is_a_percent_of_the_stock_and_at_least_the_per_user_limit() {
        assert_eq!(AddressShares::share_of(10, &sale(100, 1)), 10);
        assert_eq!(AddressShares::share_of(10, &sale(101, 1)), 11);
        assert_eq!(AddressShares::share_of(10, &sale(5, 1)), 1);
        assert_eq!(AddressShares::share_of(10, &sale(20, 5)), 5);
        assert_eq!(AddressShares::share_of(100, &sale(7, 1)), 7);
    }

    #[test]
    fn an_address_reserves_up_to_its_share_and_failed_attempts_give_units_back() {
        let limiter = Limiter::new(&RateLimits::default());
        let sale = sale(100, 1);
        let ip = Some("192.0.2.1".parse().unwrap());
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(limiter.reserve_share(&sale, ip, 1).unwrap().unwrap());
        }
        assert!(matches!(
            limiter.reserve_share(&sale, ip, 1),
            Err(ApiError::AddressShareTaken { share: 10 })
        ));
        // An attempt that was not confirmed gives its unit back; a confirmed one keeps it.
        held.pop();
        held.pop().unwrap().keep();
        let last = limiter.reserve_share(&sale, ip, 1).unwrap();
        assert!(last.is_some());
        assert!(limiter.reserve_share(&sale, ip, 1).is_err());
        // Another address has its own share.
        let other = Some("192.0.2.2".parse().unwrap());
        assert!(limiter.reserve_share(&sale, other, 1).is_ok());
    }

    #[test]
    fn an_address_whose_units_all_come_back_leaves_no_entry() {
        let limiter = Limiter::new(&RateLimits::default());
        let sale = sale(100, 1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = limiter.reserve_share(&sale, Some(ip), 1).unwrap();
        let second = limiter.reserve_share(&sale, Some(ip), 1).unwrap();
        // A refused reservation makes no entry either.
        let other = Some("192.0.2.9".parse().unwrap());
        assert!(limiter.reserve_share(&sale, other, 11).is_err());
        assert_eq!(limiter.shares.held.len(), 1);
        drop(first);
        assert_eq!(limiter.shares.held.get(&(sale.id, ip)).as_deref(), Some(&1));
        drop(second);
        assert!(limiter.shares.held.is_empty());
    }

    #[test]
    fn ten_failed_admin_logins_lock_the_address_for_the_window() {
        let failures = AdminFailures::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..ADMIN_FAILURES_ALLOWED {
            assert!(failures.check(ip, t0).is_ok());
            failures.record(ip, t0);
        }
        assert!(failures.check(ip, t0).is_err());
        assert!(failures.check("192.0.2.2".parse().unwrap(), t0).is_ok());
        let later = t0 + ADMIN_FAILURE_WINDOW;
        assert!(failures.check(ip, later).is_ok());
        failures.forget_before(later);
        assert!(failures.0.lock().is_empty());
    }
}
