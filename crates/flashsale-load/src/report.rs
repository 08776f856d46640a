//! The T-10 report: attempts, confirmed, rejections by reason, final stock, throughput and
//! latency percentiles, plus the invariant checks; as text for people and JSON for scripts.

use crate::outcome::{Log, Op, Outcome};
use crate::verify::Check;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `micros` (empty input gives zeros).
    pub fn of(micros: impl IntoIterator<Item = u64>) -> Self {
        // 1 µs .. 1 h at 3 significant digits: 0.1% error, fine for p99 of a few ms.
        let Ok(mut h) = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3) else {
            return Self::default();
        };
        for m in micros {
            h.saturating_record(m.max(1));
        }
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// Figures for one kind of request.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Requests sent.
    pub requests: u64,
    /// Requests per second over the run.
    pub throughput: f64,
    /// Count per outcome name.
    pub outcomes: BTreeMap<String, u64>,
    /// Latency of all of them.
    pub latency: Latency,
}

/// `--identity accounts`: the sign-ups and log-ins made before the release.
#[derive(Debug, Clone, Serialize)]
pub struct Preparation {
    /// Accounts signed up and logged in.
    pub accounts: usize,
    /// Seconds the whole preparation took (outside the measured window).
    pub elapsed_s: f64,
    /// Time of one log-in (`POST /api/sessions`) as the client saw it.
    pub login: Latency,
}

impl Preparation {
    /// The figures of a preparation.
    pub fn of(prepared: &crate::accounts::Prepared) -> Self {
        Self {
            accounts: prepared.authorization.len(),
            elapsed_s: prepared.elapsed.as_secs_f64(),
            login: Latency::of(prepared.login_micros.iter().copied()),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// `guest` or `accounts`.
    pub identity: String,
    /// `--identity accounts`: the accounts prepared before the release.
    pub preparation: Option<Preparation>,
    /// Target URLs.
    pub targets: Vec<String>,
    /// The sale.
    pub sale_id: u64,
    /// Connections used.
    pub connections: usize,
    /// Connections that could not be warmed before the release.
    pub cold_connections: usize,
    /// Seconds from the release to the last answer.
    pub elapsed_s: f64,
    /// Purchase attempts sent.
    pub attempts: u64,
    /// Units confirmed to the tool's buyers.
    pub confirmed: u64,
    /// Purchase rejections by reason (business answers only).
    pub rejections: BTreeMap<String, u64>,
    /// Shed answers (429/503) by code.
    pub shed: BTreeMap<String, u64>,
    /// Errors (no answer, or an answer outside the contract) by kind.
    pub errors: BTreeMap<String, u64>,
    /// Stock left after the run, as the server reports it.
    pub final_stock: Option<u64>,
    /// Seconds from the release to the last confirmation, when the sale sold out.
    pub time_to_sell_out_s: Option<f64>,
    /// Requests per second, all kinds.
    pub throughput: f64,
    /// Latency of every request.
    pub latency: Latency,
    /// Per kind of request.
    pub by_op: BTreeMap<String, OpReport>,
    /// The invariant checks (empty with `--no-verify`).
    pub checks: Vec<Check>,
    /// Whether every check passed.
    pub passed: bool,
}

/// Headline figures drawn from the log alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Purchase attempts.
    pub attempts: u64,
    /// Confirmed units.
    pub confirmed: u64,
    /// Business rejections by reason.
    pub rejections: BTreeMap<String, u64>,
    /// Shed answers by code.
    pub shed: BTreeMap<String, u64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Microseconds from the release to the slowest confirmation.
    pub last_confirmation_micros: Option<u64>,
}

impl Tally {
    /// Counts a log.
    pub fn of(log: &Log) -> Self {
        let mut t = Tally::default();
        for s in &log.samples {
            if s.op == Op::Buy {
                t.attempts += 1;
            }
            let name = s.outcome.name();
            match s.outcome {
                Outcome::Confirmed => {
                    t.last_confirmation_micros = t.last_confirmation_micros.max(Some(s.micros));
                }
                o if o.is_rejection() => *t.rejections.entry(name).or_default() += 1,
                o if o.is_shed() => *t.shed.entry(name).or_default() += 1,
                o if o.is_decided() => {}
                _ => *t.errors.entry(name).or_default() += 1,
            }
        }
        t.confirmed = log
            .confirmations
            .iter()
            .map(|c| u64::from(c.quantity))
            .sum();
        t
    }

    /// Requests without a contract answer, plus shed ones.
    pub fn not_decided(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.shed.values().sum::<u64>()
    }
}

/// Builds the per-op sections of the report.
pub fn by_op(log: &Log, elapsed: Duration) -> BTreeMap<String, OpReport> {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut out = BTreeMap::new();
    for op in [Op::Buy, Op::Status] {
        let samples: Vec<_> = log.samples.iter().filter(|s| s.op == op).collect();
        if samples.is_empty() {
            continue;
        }
        let mut outcomes = BTreeMap::new();
        for s in &samples {
            *outcomes.entry(s.outcome.name()).or_insert(0) += 1;
        }
        out.insert(
            op.name().to_owned(),
            OpReport {
                requests: samples.len() as u64,
                throughput: samples.len() as f64 / secs,
                outcomes,
                latency: Latency::of(samples.iter().map(|s| s.micros)),
            },
        );
    }
    out
}

impl Report {
    /// The report as people read it.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario      {} on sale {} via {}",
            self.scenario,
            self.sale_id,
            self.targets.join(", ")
        );
        match &self.preparation {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "identity      {}: {} accounts prepared in {:.3} s (before the release)",
                    self.identity, p.accounts, p.elapsed_s
                );
                let _ = writeln!(
                    s,
                    "login         p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                    p.login.p50_ms, p.login.p99_ms, p.login.max_ms
                );
            }
            None => {
                let _ = writeln!(s, "identity      {}", self.identity);
            }
        }
        let _ = writeln!(
            s,
            "connections   {} ({} could not be warmed)",
            self.connections, self.cold_connections
        );
        let _ = writeln!(s, "elapsed       {:.3} s", self.elapsed_s);
        let _ = writeln!(s, "attempts      {}", self.attempts);
        let _ = writeln!(s, "confirmed     {}", self.confirmed);
        let _ = writeln!(s, "rejections    {}", fmt_map(&self.rejections));
        let _ = writeln!(s, "shed          {}", fmt_map(&self.shed));
        let _ = writeln!(s, "errors        {}", fmt_map(&self.errors));
        let stock = self.final_stock.map_or("unknown".into(), |v| v.to_string());
        let _ = writeln!(s, "final stock   {stock}");
        if let Some(t) = self.time_to_sell_out_s {
            let _ = writeln!(s, "sold out in   {:.3} s (release to last confirmation)", t);
        }
        let _ = writeln!(s, "throughput    {:.0} req/s", self.throughput);
        let l = self.latency;
        let _ = writeln!(
            s,
            "latency       p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        );
        for (name, op) in &self.by_op {
            let l = op.latency;
            let _ = writeln!(
                s,
                "  {name:<11} {} req, {:.0} req/s, p50 {:.2} ms p99 {:.2} ms; {}",
                op.requests,
                op.throughput,
                l.p50_ms,
                l.p99_ms,
                fmt_map(&op.outcomes)
            );
        }
        if !self.checks.is_empty() {
            let _ = writeln!(s, "invariants");
            for c in &self.checks {
                let mark = if c.passed { "ok  " } else { "FAIL" };
                let _ = writeln!(s, "  {mark} {}: {}", c.name, c.detail);
            }
        }
        let _ = writeln!(
            s,
            "result        {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        s
    }
}

fn fmt_map(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::TransportError;
    use crate::outcome::{Confirmation, Sample};

    #[test]
    fn percentiles_of_one_to_a_hundred_ms() {
        let l = Latency::of((1..=100).map(|ms| ms * 1000));
        assert!((l.p50_ms - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p90_ms - 90.0).abs() < 0.1, "{l:?}");
        assert!((l.p99_ms - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.max_ms - 100.0).abs() < 0.1, "{l:?}");
    }

    #[test]
    fn empty_latency_is_zero() {
        assert_eq!(Latency::of([]), Latency::default());
    }

    #[test]
    fn tally_sorts_outcomes_into_rejections_shed_and_errors() {
        let sample = |outcome, micros| Sample {
            op: Op::Buy,
            outcome,
            micros,
        };
        let log = Log {
            samples: vec![
                sample(Outcome::Confirmed, 10),
                sample(Outcome::Confirmed, 30),
                sample(Outcome::SoldOut, 5),
                sample(Outcome::Overloaded, 5),
                sample(Outcome::Transport(TransportError::Timeout), 5),
            ],
            confirmations: vec![
                Confirmation {
                    user_id: "a".into(),
                    order_id: "1".into(),
                    quantity: 1,
                },
                Confirmation {
                    user_id: "b".into(),
                    order_id: "2".into(),
                    quantity: 1,
                },
            ],
        };
        let t = Tally::of(&log);
        assert_eq!(t.attempts, 5);
        assert_eq!(t.confirmed, 2);
        assert_eq!(t.rejections.get("sold_out"), Some(&1));
        assert_eq!(t.shed.get("overloaded"), Some(&1));
        assert_eq!(t.errors.get("timeout"), Some(&1));
        assert_eq!(t.last_confirmation_micros, Some(30));
        assert_eq!(t.not_decided(), 2);
    }
}
