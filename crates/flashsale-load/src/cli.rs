//! Command line: which scenario, against which targets, on which sale, how hard.
//!
//! Every flag has a default so `flashsale-load herd --admin-token T` is a complete run: it
//! creates a 100-unit sale two seconds ahead, connects 1,000 buyers and releases them at the
//! start instant (the T-7..T-10 seed scenario).

use clap::{Parser, ValueEnum};
use std::time::Duration;

/// Accounts prepared for a timed run in accounts mode without `--buyer-pool`: each takes two
/// password hashes on the server, so one per purchase is out of reach.
pub const DEFAULT_ACCOUNTS_POOL: u64 = 1000;

/// What kind of load to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// N distinct buyers, all connected first and released together at the start instant.
    Herd,
    /// N buyers each sending K concurrent attempts, released together.
    Duplicates,
    /// Distinct buyers for D seconds at C connections (open loop with `--rate`).
    Sustained,
    /// A storm of `GET /api/sales/{id}` for D seconds at C connections.
    Status,
    /// Status reads and purchases interleaved for D seconds (see `--status-share`).
    Mixed,
    /// Checkout in hold mode: N buyers race for S units as reservations, a share of the
    /// holders pays (signed webhook), the rest let their hold expire, the buyers who found
    /// nothing join the waitlist and take or release the offers (issue 12).
    Hold,
}

impl Scenario {
    /// Whether the scenario is a one-shot burst (herd, duplicates) rather than a timed run.
    pub fn is_burst(self) -> bool {
        matches!(self, Scenario::Herd | Scenario::Duplicates | Scenario::Hold)
    }
}

/// How buyers identify themselves to the service (the server's `--identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    /// Buyers name themselves in the body (`user_id`).
    Guest,
    /// Buyers are signed up and logged in before the release; every purchase and order read
    /// carries the buyer's session token.
    Accounts,
}

/// flashsale load and stress tool: drives the service over HTTP, then checks its invariants.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Cli {
    /// The scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// Base URL of a service instance (`http://host:port`); repeat to spread load over several.
    #[arg(
        long = "target",
        default_value = "http://127.0.0.1:8080",
        env = "FLASHSALE_TARGETS",
        value_delimiter = ','
    )]
    pub targets: Vec<String>,

    /// Admin token, used to create the sale and read its summary.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Target an existing sale instead of creating one.
    #[arg(long)]
    pub sale_id: Option<u64>,

    /// Stock of the sale the tool creates.
    #[arg(long, default_value_t = 100)]
    pub stock: u64,

    /// Per-user limit of the sale the tool creates.
    #[arg(long, default_value_t = 1)]
    pub limit: u32,

    /// Seconds from creation to the start of the sale the tool creates.
    #[arg(long, default_value_t = 2.0)]
    pub start_in: f64,

    /// Length in seconds of the sale the tool creates.
    #[arg(long, default_value_t = 3600)]
    pub sale_length: u64,

    /// Distinct buyers (herd, duplicates).
    #[arg(long, default_value_t = 1000)]
    pub buyers: u64,

    /// Concurrent attempts per buyer (duplicates).
    #[arg(long, default_value_t = 5)]
    pub attempts_per_buyer: u64,

    /// Keep-alive connections. Bursts default to one per attempt.
    #[arg(long, short = 'c')]
    pub connections: Option<usize>,

    /// Seconds of load (sustained, status, mixed).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,

    /// Total requests per second to schedule (open loop, latency from the scheduled start).
    /// Without it the timed scenarios run closed loop, as fast as the server answers.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Share of status reads in `mixed` (0..=1).
    #[arg(long, default_value_t = 0.9)]
    pub status_share: f64,

    /// Prefix of the generated buyer ids; defaults to one unique to this run.
    #[arg(long)]
    pub user_prefix: Option<String>,

    /// How buyers identify themselves: `accounts` signs up and logs in every buyer before the
    /// release (outside every timing) and sends their tokens; the server must run with
    /// `--identity accounts` (and `--rate-limit off`: every log-in comes from this address).
    #[arg(long, value_enum, default_value_t = Identity::Guest)]
    pub identity: Identity,

    /// Timed runs: cycle through this many buyers (request `i` is buyer `i mod N`) instead of
    /// a new buyer per purchase; with `--identity accounts` it is how many accounts are
    /// prepared (default 1,000 there). Give the sale a `--limit` that covers each buyer's share.
    #[arg(long)]
    pub buyer_pool: Option<u64>,

    /// `--identity accounts`: sign-ups and log-ins in flight at once while preparing.
    #[arg(long, default_value_t = 8)]
    pub prepare_concurrency: usize,

    /// Connect from this many loopback addresses (127.0.0.2 on), round robin, so a server or
    /// proxy on loopback sees that many clients (per-address rate limits); 0: the default.
    #[arg(long, default_value_t = 0, env = "FLASHSALE_LOAD_SOURCE_IPS")]
    pub source_ips: u16,

    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,

    /// Skip the invariant checks (e.g. against the ceiling server).
    #[arg(long)]
    pub no_verify: bool,

    /// Most confirmed buyers whose orders are fetched back; above it a sample of that size.
    #[arg(long, default_value_t = 100_000)]
    pub verify_max: usize,

    /// Buyers without a confirmation whose orders are fetched back (must be absent or within
    /// the limit).
    #[arg(long, default_value_t = 100)]
    pub verify_sample: usize,

    /// Seconds to wait after the load for the status and the summary to agree on the stock
    /// (a status snapshot may lag by milliseconds; reservations abandoned by shed attempts
    /// are released by the scale-out store's reconciler after about 10 s).
    #[arg(long, default_value_t = 15.0)]
    pub settle: f64,

    /// Do not fail the run on transport errors, timeouts or shed (429/503) answers.
    #[arg(long)]
    pub allow_errors: bool,

    /// `hold`: the share (0..=1) of reservations paid, holders' and offers' alike; the other
    /// holders let their hold expire, the other offers are released at once (offering again).
    #[arg(long, default_value_t = 0.5)]
    pub pay_share: f64,

    /// `hold`: the payment window of the sale the tool creates, in seconds (60..=86,400): the
    /// run lasts at least this long, waiting for the unpaid holds to expire.
    #[arg(long, default_value_t = 60)]
    pub payment_window: u64,

    /// `hold`: pay through `POST /api/payments/webhook` signed with this secret (the server's
    /// `--payment-webhook-secret`); without it, through the demo route.
    #[arg(long, env = "FLASHSALE_PAYMENT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Print the report as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout.max(0.001))
    }

    /// How long the invariant reads may wait for the figures to settle.
    pub fn settle(&self) -> Duration {
        Duration::from_secs_f64(self.settle.max(0.0))
    }

    /// The length of a timed run.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.0))
    }

    /// Attempts each buyer makes in this scenario.
    pub fn attempts_each(&self) -> u64 {
        match self.scenario {
            Scenario::Duplicates => self.attempts_per_buyer.max(1),
            _ => 1,
        }
    }

    /// Buyers cycled through in a timed run, or `None` for a new buyer per purchase. Bursts
    /// always use `--buyers` distinct buyers.
    pub fn pool(&self) -> Option<u64> {
        if self.scenario.is_burst() {
            return None;
        }
        match (self.buyer_pool, self.identity) {
            (Some(n), _) => Some(n.max(1)),
            (None, Identity::Accounts) => Some(DEFAULT_ACCOUNTS_POOL),
            (None, Identity::Guest) => None,
        }
    }

    /// How many accounts to sign up and log in before the release (0 in guest mode).
    pub fn accounts_needed(&self) -> u64 {
        match (self.identity, self.pool()) {
            (Identity::Guest, _) => 0,
            (Identity::Accounts, Some(pool)) => pool,
            (Identity::Accounts, None) => self.buyers,
        }
    }

    /// Connections to open: as given, else one per attempt for bursts and 256 for timed runs.
    pub fn connection_count(&self) -> usize {
        let burst =
            usize::try_from(self.buyers.saturating_mul(self.attempts_each())).unwrap_or(usize::MAX);
        match (self.connections, self.scenario.is_burst()) {
            (Some(c), true) => c.clamp(1, burst.max(1)),
            (Some(c), false) => c.max(1),
            (None, true) => burst.max(1),
            (None, false) => 256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("flashsale-load").chain(args.iter().copied()))
            .expect("valid arguments")
    }

    #[test]
    fn identity_defaults_to_guest_and_needs_no_accounts() {
        let cli = parse(&["herd"]);
        assert_eq!(cli.identity, Identity::Guest);
        assert_eq!(cli.accounts_needed(), 0);
        assert_eq!(parse(&["sustained"]).pool(), None);
    }

    #[test]
    fn accounts_bursts_prepare_one_account_per_buyer() {
        let cli = parse(&["herd", "--identity", "accounts", "--buyers", "300"]);
        assert_eq!(cli.identity, Identity::Accounts);
        assert_eq!(cli.pool(), None);
        assert_eq!(cli.accounts_needed(), 300);
    }

    #[test]
    fn accounts_timed_runs_prepare_the_pool() {
        let cli = parse(&["sustained", "--identity", "accounts"]);
        assert_eq!(cli.pool(), Some(DEFAULT_ACCOUNTS_POOL));
        assert_eq!(cli.accounts_needed(), DEFAULT_ACCOUNTS_POOL);
        let cli = parse(&["mixed", "--identity", "accounts", "--buyer-pool", "50"]);
        assert_eq!(cli.accounts_needed(), 50);
        assert_eq!(parse(&["sustained", "--buyer-pool", "7"]).pool(), Some(7));
    }

    #[test]
    fn an_unknown_identity_is_refused() {
        assert!(Cli::try_parse_from(["flashsale-load", "herd", "--identity", "jwt"]).is_err());
    }
}
