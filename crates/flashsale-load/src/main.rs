//! `flashsale-load`: drives a flashsale service over HTTP only and checks it kept its
//! promises (T-7..T-10, NF-1, NF-2, NF-5 in docs/requirements.md).
//!
//! A run: with `--identity accounts`, sign up and log in every buyer first ([`accounts`]);
//! open and warm every connection ([`scenario::open_connections`]), create the sale
//! through the admin API (or read the one given), release all workers at the sale's start
//! instant, log every answer ([`outcome`]), then read the server's own figures back and judge
//! the invariants ([`verify`]), and print the T-10 report ([`report`]). The exit status is
//! non-zero when an invariant fails.
//!
//! Many connections need many file descriptors: raise the limit in the calling shell
//! (`ulimit -n 20000`, as `scripts/bench.sh` does).

mod accounts;
mod api;
mod cli;
mod client;
mod hold;
mod outcome;
mod report;
mod scenario;
mod verify;

use accounts::Prepared;
use anyhow::{Context, bail};
use clap::Parser;
use cli::{Cli, Identity, Scenario};
use client::{Conn, Target};
use outcome::Log;
use report::{Report, Tally};
use scenario::Plan;
use scenario::timed::Mix;
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the whole thing; `Ok(false)` when an invariant failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    if cli.scenario == Scenario::Hold {
        return hold::run(&cli).await;
    }
    let targets = parse_targets(&cli)?;
    let prefix = match &cli.user_prefix {
        Some(p) => p.clone(),
        None => default_prefix(),
    };
    let connections = cli.connection_count();
    // Before the sale is created: its start must not pass while the accounts are made.
    let prepared = prepare_accounts(&cli, &targets, &prefix).await?;
    let (conns, cold) = warm_connections(&targets, connections, cli.timeout()).await;
    let mut admin = Conn::new(Arc::clone(&targets[0]), cli.timeout());
    if let Some(token) = &cli.admin_token {
        admin = admin.with_bearer(token);
    }
    let sale = obtain_sale(&cli, &mut admin, &prefix).await?;
    let mut plan = release_plan(&sale.status, prefix, connections);
    plan.pool = cli.pool();
    plan.accounts = prepared.clone();
    let load = drive_load(&cli, &plan, conns).await?;

    let tally = Tally::of(&load.log);
    let mut report = first_report(&cli, &targets, &sale, connections, cold, &load, &tally);
    report.preparation = prepared.as_deref().map(report::Preparation::of);
    if !cli.no_verify {
        let books = read_books(&cli, &mut admin, sale.status.sale_id).await?;
        report.final_stock = Some(books.status.stock_remaining);
        if books.status.stock_remaining == 0 {
            report.time_to_sell_out_s = tally.last_confirmation_micros.map(|m| m as f64 / 1e6);
        }
        let observed = observe(&cli, &targets, &plan, &sale, books, load, &tally).await;
        report.checks = verify::evaluate(&observed);
        report.passed = report.checks.iter().all(|c| c.passed);
    } else if !cli.allow_errors && tally.not_decided() > 0 {
        report.passed = false;
    }
    print_report(&report, cli.json)?;
    Ok(report.passed)
}

/// The sale under load, and whether this run created it (then nobody else buys in it, and
/// the server's figures must match what the clients saw).
struct SaleUnderLoad {
    status: api::SaleStatus,
    own: bool,
}

/// What the load left behind: every answer, how long it took, and the buyers it sent.
struct Load {
    log: Log,
    elapsed: Duration,
    /// Every buyer id that attempted a purchase (the ones left unconfirmed are read back).
    buyers: Vec<String>,
}

/// The server's own figures after the load.
struct Books {
    status: api::SaleStatus,
    /// Only with the admin token.
    summary: Option<api::Summary>,
}

/// The `--target` URLs, each to be reached from the `--source-ips` loopback addresses.
fn parse_targets(cli: &Cli) -> anyhow::Result<Vec<Arc<Target>>> {
    let targets: Vec<Arc<Target>> = cli
        .targets
        .iter()
        .map(|t| {
            Target::parse(t).map(|mut target| {
                target.sources = client::loopback_sources(cli.source_ips).into();
                Arc::new(target)
            })
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!targets.is_empty(), "no --target given");
    Ok(targets)
}

/// With `--identity accounts`, signs up and logs in every buyer the run will use.
async fn prepare_accounts(
    cli: &Cli,
    targets: &[Arc<Target>],
    prefix: &str,
) -> anyhow::Result<Option<Arc<Prepared>>> {
    if cli.identity == Identity::Guest {
        return Ok(None);
    }
    let count = cli.accounts_needed();
    eprintln!(
        "preparing {count} accounts ({} at a time)",
        cli.prepare_concurrency
    );
    let users = (0..count).map(|n| format!("{prefix}-{n}")).collect();
    let prepared = accounts::prepare(targets, cli.timeout(), users, cli.prepare_concurrency)
        .await
        .context("preparing the accounts (is the server running with --identity accounts?)")?;
    eprintln!(
        "prepared {count} accounts in {:.3} s",
        prepared.elapsed.as_secs_f64()
    );
    Ok(Some(Arc::new(prepared)))
}

/// Opens and warms every connection before the measurement, saying how many could not be.
async fn warm_connections(
    targets: &[Arc<Target>],
    connections: usize,
    timeout: Duration,
) -> (Vec<Conn>, usize) {
    eprintln!(
        "opening {connections} connections to {} target(s)",
        targets.len()
    );
    let (conns, cold) = scenario::open_connections(targets, connections, timeout).await;
    if cold > 0 {
        eprintln!(
            "warning: {cold} of {connections} connections could not be warmed \
             (server down, or out of file descriptors: raise `ulimit -n`)"
        );
    }
    (conns, cold)
}

/// Reads the sale given by `--sale-id`, or creates one through the admin API.
async fn obtain_sale(cli: &Cli, admin: &mut Conn, prefix: &str) -> anyhow::Result<SaleUnderLoad> {
    if let Some(id) = cli.sale_id {
        return Ok(SaleUnderLoad {
            status: api::sale_status(admin, id).await?,
            own: false,
        });
    }
    if cli.admin_token.is_none() {
        bail!(
            "--admin-token (FLASHSALE_ADMIN_TOKEN) is needed to create a sale; or give --sale-id"
        );
    }
    let name = format!("load {} {prefix}", cli.scenario.to_possible_value_name());
    let sale = api::NewSale {
        name,
        start_in: cli.start_in,
        length_secs: cli.sale_length,
        stock: cli.stock,
        limit: cli.limit,
        hold: None,
    };
    let status = api::create_sale(admin, &sale).await?;
    Ok(SaleUnderLoad { status, own: true })
}

/// The plan every worker follows: which sale, which buyer ids, and when to start.
fn release_plan(sale: &api::SaleStatus, user_prefix: String, connections: usize) -> Plan {
    let release_at = release_instant(sale, connections);
    eprintln!(
        "sale {} ({}, stock {}, limit {}); release in {:.3} s",
        sale.sale_id,
        sale.state,
        sale.stock_remaining,
        sale.per_user_limit,
        release_at
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    );
    Plan {
        sale_id: sale.sale_id,
        user_prefix,
        release_at,
        pool: None,
        accounts: None,
    }
}

/// Runs the chosen scenario on the warmed connections.
async fn drive_load(cli: &Cli, plan: &Plan, conns: Vec<Conn>) -> anyhow::Result<Load> {
    let each = cli.attempts_each();
    let (log, elapsed, buyers) = match cli.scenario {
        Scenario::Herd | Scenario::Duplicates => {
            let attempts = Arc::new(scenario::burst::attempts(plan, cli.buyers, each));
            let (log, took) = scenario::burst::run(plan, conns, Arc::clone(&attempts)).await?;
            let all: Vec<String> = (0..cli.buyers).map(|b| plan.user(b)).collect();
            (log, took, all)
        }
        Scenario::Sustained | Scenario::Status | Scenario::Mixed => {
            let mix = match cli.scenario {
                Scenario::Status => Mix::Status,
                Scenario::Mixed => Mix::Mixed(cli.status_share),
                _ => Mix::Buy,
            };
            let (log, took) =
                scenario::timed::run(plan, conns, mix, cli.duration(), cli.rate).await?;
            let sent = log.samples.len() as u64;
            let buyers: Vec<String> = (0..sent)
                .filter(|i| mix.op(*i) == outcome::Op::Buy)
                .map(|i| plan.user(plan.buyer_of(i)))
                .collect();
            (log, took, buyers)
        }
        Scenario::Hold => bail!("the hold scenario has its own run (hold::run)"),
    };
    Ok(Load {
        log,
        elapsed,
        buyers,
    })
}

/// The report of what the clients saw, before anything is read back from the server.
fn first_report(
    cli: &Cli,
    targets: &[Arc<Target>],
    sale: &SaleUnderLoad,
    connections: usize,
    cold: usize,
    load: &Load,
    tally: &Tally,
) -> Report {
    let elapsed = load.elapsed;
    Report {
        scenario: cli.scenario.to_possible_value_name(),
        identity: match cli.identity {
            Identity::Guest => "guest",
            Identity::Accounts => "accounts",
        }
        .to_owned(),
        preparation: None,
        targets: targets.iter().map(|t| t.url.clone()).collect(),
        sale_id: sale.status.sale_id,
        connections,
        cold_connections: cold,
        elapsed_s: elapsed.as_secs_f64(),
        attempts: tally.attempts,
        confirmed: tally.confirmed,
        rejections: tally.rejections.clone(),
        shed: tally.shed.clone(),
        errors: tally.errors.clone(),
        final_stock: None,
        time_to_sell_out_s: None,
        throughput: load.log.samples.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: report::Latency::of(load.log.samples.iter().map(|s| s.micros)),
        by_op: report::by_op(&load.log, elapsed),
        checks: Vec::new(),
        passed: true,
    }
}

/// The sale's status and (with the admin token) its summary once they agree, or as they stand
/// after `--settle`.
async fn read_books(cli: &Cli, admin: &mut Conn, sale_id: u64) -> anyhow::Result<Books> {
    let (status, summary, settled_in) =
        settle(admin, sale_id, cli.admin_token.is_some(), cli.settle()).await?;
    if settled_in > Duration::ZERO {
        eprintln!(
            "status and summary agreed {:.3} s after the load",
            settled_in.as_secs_f64()
        );
    }
    Ok(Books { status, summary })
}

/// Everything the checks judge: the server's figures, what the clients saw, and a sample of
/// buyers' own order lists read back.
async fn observe(
    cli: &Cli,
    targets: &[Arc<Target>],
    plan: &Plan,
    sale: &SaleUnderLoad,
    books: Books,
    load: Load,
    tally: &Tally,
) -> verify::Observed {
    let Books { status, summary } = books;
    let confirmed_users: BTreeSet<&str> = load
        .log
        .confirmations
        .iter()
        .map(|c| c.user_id.as_str())
        .collect();
    // A pool lists its buyers many times; each is read back once.
    let unconfirmed: Vec<String> = load
        .buyers
        .iter()
        .filter(|u| !confirmed_users.contains(u.as_str()))
        .cloned()
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect();
    let wanted = plan
        .pool
        .map(|_| verify::wanted_within_limit(&load.buyers, status.per_user_limit));
    let auth = plan
        .accounts
        .as_ref()
        .map(|a| Arc::new(a.by_buyer(|n| plan.user(n))));
    let read = verify::ReadBack {
        targets,
        timeout: cli.timeout(),
        sale_id: sale.status.sale_id,
        limit: status.per_user_limit,
        auth,
    };
    let buyers_read = verify::gather(
        read,
        &load.log.confirmations,
        verify::spread(&unconfirmed, cli.verify_sample),
        cli.verify_max,
    )
    .await;
    let each = cli.attempts_each();
    verify::Observed {
        stock_total: status.stock_total,
        stock_remaining: status.stock_remaining,
        per_user_limit: status.per_user_limit,
        summary,
        confirmed_seen: tally.confirmed,
        confirmed_per_buyer: verify::per_buyer(&load.log.confirmations),
        own_sale: sale.own,
        not_decided: tally.not_decided(),
        allow_errors: cli.allow_errors,
        buyers: tally.attempts / each,
        demand_each: each,
        wanted,
        buyers_read,
    }
}

/// Prints the report as text or (`--json`) as JSON.
fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    let text = if json {
        serde_json::to_string_pretty(report).context("writing the report")? + "\n"
    } else {
        report.to_text()
    };
    // A closed pipe (`| head`) is not worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    Ok(())
}

/// Reads the status and the summary until their stock figures agree (remaining = total -
/// confirmed units) or `within` has passed, and returns the last reading with the time it
/// took. A store may serve the status from a snapshot or settle abandoned reservations in the
/// background; a disagreement that outlasts `within` is left for the checks to report.
async fn settle(
    admin: &mut Conn,
    sale_id: u64,
    with_summary: bool,
    within: Duration,
) -> anyhow::Result<(api::SaleStatus, Option<api::Summary>, Duration)> {
    let start = Instant::now();
    loop {
        let status = api::sale_status(admin, sale_id).await?;
        let summary = match with_summary {
            true => Some(api::summary(admin, sale_id).await?),
            false => None,
        };
        let agree = summary.as_ref().is_none_or(|s| {
            status.stock_total.checked_sub(s.confirmed_units) == Some(status.stock_remaining)
        });
        if agree || start.elapsed() >= within {
            let waited = if agree {
                start.elapsed()
            } else {
                Duration::ZERO
            };
            return Ok((status, summary, waited));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When to release the workers: at the sale's start (by the server's clock, so a skewed
/// client clock cannot make the herd early) or, for a sale already open, once every worker
/// task has been spawned and is waiting.
fn release_instant(sale: &api::SaleStatus, connections: usize) -> Instant {
    let settle = Duration::from_millis(100) + Duration::from_micros(20 * connections as u64);
    let until_start = sale.starts_at - sale.server_time;
    let now = Instant::now();
    if sale.state == "upcoming" && until_start.is_positive() {
        // A few ms after the start: the answer that carried `server_time` took a moment to
        // arrive, so this errs on the late side; never early.
        let wait = Duration::try_from(until_start).unwrap_or_default() + Duration::from_millis(5);
        now + wait.max(settle)
    } else {
        now + settle
    }
}

/// A buyer-id prefix unique to this run, so repeated runs on one sale use new buyers.
fn default_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("load{}-{}", nanos % 1_000_000_000_000, std::process::id())
}

/// The clap name of a scenario.
trait ValueName {
    fn to_possible_value_name(&self) -> String;
}

impl ValueName for Scenario {
    fn to_possible_value_name(&self) -> String {
        clap::ValueEnum::to_possible_value(self)
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }
}
