//! The hold scenario (issue 12 item 6; SPEC 9): checkout with a payment window and a waitlist,
//! driven over HTTP only and judged by [`verify`].
//!
//! A run: create a hold-mode sale (stock S, limit 1, `--payment-window`); release N buyers at
//! its start; each either reserves a unit or, told `sold_out` (every unit held), joins the
//! waitlist. A `--pay-share` of the holders pays (the signed webhook with `--webhook-secret`,
//! else the demo route); the others let their hold expire. Meanwhile a reader checks every
//! status body adds up. From the first deadline on, the head of the waitlist is asked for its
//! place until offers arrive; the same share of the offers is paid and the rest released at
//! once (which offers again), until nothing is held. Then the server's figures, summary, every
//! joiner's place and the buyers' orders are read back.

mod verify;

use crate::api::{self, encode_segment};
use crate::cli::{Cli, Identity};
use crate::client::{Answer, Conn};
use crate::report::Latency;
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use flashsale_core::WebhookSecret;
use flashsale_core::payment_signature::SIGNATURE_HEADER;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;
use verify::{Counters, Fate, Figures, Observed, Reservation};

/// The unit price of the sale the scenario creates: 19.99 EUR.
const PRICE_MINOR: i64 = 1999;

/// Connections for everything after the race (payments, places, read-backs).
const POOL: usize = 32;

/// How often the head of the waitlist is asked for its place once offers may come.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// How often the status reader reads.
const READ_EVERY: Duration = Duration::from_millis(20);

/// Tries of one waitlist join answered 503 before the run counts it an error.
const JOIN_TRIES: u32 = 30;

/// The pause before a join answered 503 is sent again.
const JOIN_PAUSE: Duration = Duration::from_millis(250);

/// Past the last deadline, how long offers may take to settle before the run gives up.
const SETTLE: Duration = Duration::from_secs(90);

/// What every request of the run shares.
struct Run {
    sale_id: u64,
    secret: Option<WebhookSecret>,
    /// Joins answered 503 and sent again.
    join_retries: AtomicU64,
    /// Latencies in microseconds by request kind.
    timings: Mutex<BTreeMap<&'static str, Vec<u64>>>,
}

impl Run {
    /// Sends one request on `conn`, timed under `op`.
    async fn send(
        &self,
        conn: &mut Conn,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        header: Option<(&'static str, &str)>,
    ) -> Result<(StatusCode, Value), String> {
        let started = Instant::now();
        let answer = conn.send_with(method, path, body, None, header).await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Ok(mut timings) = self.timings.lock() {
            timings.entry(op).or_default().push(micros);
        }
        let Answer { status, body } = answer.map_err(|e| format!("{op}: {e}"))?;
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Reserves one unit for `user`: `Some((order id, expires_at))`, or `None` when told
    /// `sold_out`.
    async fn reserve(
        &self,
        conn: &mut Conn,
        user: &str,
    ) -> Result<Option<(String, OffsetDateTime)>, String> {
        let path = format!("/api/sales/{}/orders", self.sale_id);
        let body = crate::scenario::buy_body(user);
        let (status, v) = self
            .send(conn, "reserve", Method::POST, &path, Some(body), None)
            .await?;
        match (status, code(&v)) {
            (StatusCode::CREATED, "reserved") => {
                let expires = v["order"]["expires_at"]
                    .as_str()
                    .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                    .ok_or_else(|| format!("reserve {user}: no expires_at in {v}"))?;
                Ok(Some((order_id(&v["order"])?, expires)))
            }
            (StatusCode::CONFLICT, "sold_out") => Ok(None),
            _ => Err(format!("reserve {user}: {status} {v}")),
        }
    }

    /// Puts `user` on the waitlist: their position. A 503 (nothing changed: the store had no
    /// room for the request in time) is sent again after a pause, as the page would, up to
    /// [`JOIN_TRIES`] times; each retry is counted.
    async fn join(&self, conn: &mut Conn, user: &str) -> Result<u64, String> {
        let path = format!("/api/sales/{}/waitlist", self.sale_id);
        let body = Bytes::from(serde_json::json!({ "user_id": user }).to_string());
        for _ in 1..JOIN_TRIES {
            let (status, v) = self
                .send(conn, "join", Method::POST, &path, Some(body.clone()), None)
                .await?;
            match (status, v["position"].as_u64()) {
                (StatusCode::CREATED, Some(position)) => return Ok(position),
                (StatusCode::SERVICE_UNAVAILABLE, _) => {
                    self.join_retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(JOIN_PAUSE).await;
                }
                _ => return Err(format!("join {user}: {status} {v}")),
            }
        }
        Err(format!("join {user}: 503 {JOIN_TRIES} times"))
    }

    /// Pays one unit of `order`: through the signed webhook, or the demo route.
    async fn pay(&self, conn: &mut Conn, order: &str) -> Fate {
        let result = match &self.secret {
            Some(secret) => {
                let body = serde_json::json!({
                    "order_id": order, "status": "succeeded", "payment_ref": format!("load-{order}"),
                    "amount_minor": PRICE_MINOR, "currency": "EUR",
                })
                .to_string();
                let signature =
                    secret.sign(OffsetDateTime::now_utc().unix_timestamp(), body.as_bytes());
                self.send(
                    conn,
                    "pay",
                    Method::POST,
                    "/api/payments/webhook",
                    Some(Bytes::from(body)),
                    Some((SIGNATURE_HEADER, &signature)),
                )
                .await
            }
            None => {
                let path = format!("/api/orders/{order}/pay");
                self.send(conn, "pay", Method::POST, &path, None, None)
                    .await
            }
        };
        settled(result, StatusCode::CREATED, "paid", Fate::Paid)
    }

    /// Releases `order`.
    async fn cancel(&self, conn: &mut Conn, order: &str) -> Fate {
        let path = format!("/api/orders/{order}");
        let result = self
            .send(conn, "cancel", Method::DELETE, &path, None, None)
            .await;
        settled(result, StatusCode::OK, "cancelled", Fate::Cancelled)
    }

    /// Where `user` stands on the waitlist.
    async fn place(&self, conn: &mut Conn, user: &str) -> Result<Place, String> {
        let path = format!(
            "/api/sales/{}/waitlist/{}",
            self.sale_id,
            encode_segment(user)
        );
        let (status, v) = self
            .send(conn, "place", Method::GET, &path, None, None)
            .await?;
        match (status, code(&v)) {
            (StatusCode::OK, "waitlisted") => v["position"]
                .as_u64()
                .map(Place::Waiting)
                .ok_or_else(|| format!("place {user}: {v}")),
            (StatusCode::OK, "offered") => Ok(Place::Offered {
                order_id: order_id(&v["order"])?,
                status: v["order"]["status"].as_str().unwrap_or("").to_owned(),
            }),
            (StatusCode::NOT_FOUND, "not_waitlisted") => Ok(Place::Not),
            _ => Err(format!("place {user}: {status} {v}")),
        }
    }

    /// The status of `order` now.
    async fn order_status(&self, conn: &mut Conn, order: &str) -> Result<String, String> {
        let path = format!("/api/orders/{order}");
        let (status, v) = self
            .send(conn, "order", Method::GET, &path, None, None)
            .await?;
        match v["order"]["status"].as_str() {
            Some(s) if status == StatusCode::OK => Ok(s.to_owned()),
            _ => Err(format!("order {order}: {status} {v}")),
        }
    }

    /// Units `user` holds now: reserved and paid.
    async fn holding(&self, conn: &mut Conn, user: &str) -> Result<u64, String> {
        let path = format!(
            "/api/sales/{}/orders/{}",
            self.sale_id,
            encode_segment(user)
        );
        let (status, v) = self
            .send(conn, "orders", Method::GET, &path, None, None)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(0);
        }
        let orders = v["orders"]
            .as_array()
            .ok_or_else(|| format!("orders of {user}: {status} {v}"))?;
        Ok(orders
            .iter()
            .filter(|o| matches!(o["status"].as_str(), Some("reserved" | "paid")))
            .map(|o| o["quantity"].as_u64().unwrap_or(0))
            .sum())
    }

    /// The sale's units now.
    async fn figures(&self, conn: &mut Conn) -> Result<Figures, String> {
        let path = format!("/api/sales/{}", self.sale_id);
        let (status, v) = self
            .send(conn, "status", Method::GET, &path, None, None)
            .await?;
        let n = |field: &str| v[field].as_u64();
        match (
            status,
            n("stock_total"),
            n("stock_available"),
            n("stock_held"),
            n("stock_sold"),
        ) {
            (StatusCode::OK, Some(total), Some(available), Some(held), Some(sold)) => Ok(Figures {
                total,
                available,
                held,
                sold,
                waiting: n("waitlist_length").unwrap_or(0),
            }),
            _ => Err(format!("status: {status} {v}")),
        }
    }
}

/// A buyer's place as the server tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Waiting(u64),
    Offered { order_id: String, status: String },
    Not,
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("")
}

fn order_id(order: &Value) -> Result<String, String> {
    order["order_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no order id in {order}"))
}

/// The fate of a payment or release: `fate` when answered `expected`, else unsettled.
fn settled(
    result: Result<(StatusCode, Value), String>,
    status: StatusCode,
    expected: &str,
    fate: Fate,
) -> Fate {
    match result {
        Ok((s, v)) if s == status && code(&v) == expected => fate,
        _ => Fate::Unsettled,
    }
}

/// Runs `f` over `items` on the pool's connections, each connection taking a contiguous
/// slice in turn; results in the items' order.
async fn each<T, R, F, Fut>(pool: &mut Vec<Conn>, items: Vec<T>, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Conn, T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = (Conn, R)> + Send,
{
    let chunk = items.len().div_ceil(pool.len().max(1)).max(1);
    let mut items = items.into_iter();
    let mut tasks = Vec::new();
    while let Some(first) = items.next() {
        let Some(conn) = pool.pop() else { break };
        let slice: Vec<T> = std::iter::once(first)
            .chain(items.by_ref().take(chunk - 1))
            .collect();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = conn;
            let mut out = Vec::with_capacity(slice.len());
            for item in slice {
                let (back, r) = f(conn, item).await;
                conn = back;
                out.push(r);
            }
            (conn, out)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        if let Ok((conn, out)) = task.await {
            pool.push(conn);
            results.extend(out);
        }
    }
    results
}

/// Each of `users`' places, asked on the pool's connections.
async fn places(
    pool: &mut Vec<Conn>,
    run: &Arc<Run>,
    users: Vec<String>,
) -> Vec<(String, Result<Place, String>)> {
    let run = Arc::clone(run);
    each(pool, users, move |mut conn, user| {
        let run = Arc::clone(&run);
        async move {
            let place = run.place(&mut conn, &user).await;
            (conn, (user, place))
        }
    })
    .await
}

/// Whether this many `paid` out of `n` handled keeps the share: pay the `n`-th when the
/// share's running total passes a whole number.
fn pays(n: u64, share: f64) -> bool {
    let before = ((n.saturating_sub(1)) as f64 * share).floor();
    (n as f64 * share).floor() > before
}

/// The figures the closing note asks for, and the verdicts.
#[derive(Debug, Serialize)]
struct HoldReport {
    scenario: &'static str,
    sale_id: u64,
    buyers: u64,
    units: u64,
    pay_share: f64,
    payment_window_secs: u64,
    paid_through: &'static str,
    reserved_in_race: usize,
    holders_paid: u64,
    holds_expired: u64,
    waitlist_joins: usize,
    /// Joins answered 503 (nothing changed) and sent again.
    join_retries: u64,
    offers_made: usize,
    offers_taken: u64,
    offers_released: u64,
    still_waiting: usize,
    status_reads: u64,
    final_figures: Figures,
    summary_checkout: Counters,
    duration_s: f64,
    latency: BTreeMap<&'static str, (usize, Latency)>,
    checks: Vec<crate::verify::Check>,
    passed: bool,
}

impl HoldReport {
    fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "hold: sale {}, {} buyers for {} units, window {} s, pay share {}, paid through {}",
            self.sale_id,
            self.buyers,
            self.units,
            self.payment_window_secs,
            self.pay_share,
            self.paid_through
        );
        let _ = writeln!(
            out,
            "race: {} reserved, {} joined the waitlist ({} joins answered 503 and sent again); holders: {} paid, {} expired",
            self.reserved_in_race,
            self.waitlist_joins,
            self.join_retries,
            self.holders_paid,
            self.holds_expired
        );
        let _ = writeln!(
            out,
            "offers: {} made, {} taken (paid), {} released; {} still waiting",
            self.offers_made, self.offers_taken, self.offers_released, self.still_waiting
        );
        let f = &self.final_figures;
        let _ = writeln!(
            out,
            "final: available {}, held {}, sold {} of {}; {} status reads; {:.1} s",
            f.available, f.held, f.sold, f.total, self.status_reads, self.duration_s
        );
        for (op, (n, l)) in &self.latency {
            let _ = writeln!(
                out,
                "  {op:<8} {n:>6} requests  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            );
        }
        for c in &self.checks {
            let _ = writeln!(
                out,
                "[{}] {}: {}",
                if c.passed { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        out
    }
}

/// Runs the scenario; `Ok(false)` when an invariant failed.
pub async fn run(cli: &Cli) -> anyhow::Result<bool> {
    if cli.identity != Identity::Guest {
        bail!("the hold scenario runs with guest buyers (--identity guest)");
    }
    if !(0.0..=1.0).contains(&cli.pay_share) {
        bail!("--pay-share must be within 0..=1");
    }
    let token = cli.admin_token.as_deref().ok_or_else(|| {
        anyhow!("--admin-token (FLASHSALE_ADMIN_TOKEN) is needed to create the sale")
    })?;
    let secret = cli
        .webhook_secret
        .as_deref()
        .map(|s| WebhookSecret::new(s.as_bytes()))
        .transpose()
        .map_err(|_| anyhow!("--webhook-secret must be at least 16 bytes"))?;
    let targets = crate::parse_targets(cli)?;
    let prefix = cli
        .user_prefix
        .clone()
        .unwrap_or_else(crate::default_prefix);
    let buyers = usize::try_from(cli.buyers).unwrap_or(usize::MAX).max(1);
    let (conns, _cold) = crate::warm_connections(&targets, buyers, cli.timeout()).await;
    let mut admin = Conn::new(Arc::clone(&targets[0]), cli.timeout()).with_bearer(token);
    let new_sale = api::NewSale {
        name: format!("load hold {prefix}"),
        start_in: cli.start_in,
        length_secs: cli.sale_length,
        stock: cli.stock,
        limit: 1,
        hold: Some((cli.payment_window, PRICE_MINOR)),
    };
    let sale = api::create_sale(&mut admin, &new_sale).await?;
    let release_at = crate::release_instant(&sale, buyers);
    let run = Arc::new(Run {
        sale_id: sale.sale_id,
        secret,
        join_retries: AtomicU64::new(0),
        timings: Mutex::new(BTreeMap::new()),
    });
    let mut errors = Vec::new();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_statuses(
        Arc::clone(&run),
        Conn::new(Arc::clone(&targets[0]), cli.timeout()),
        Arc::clone(&stop),
    ));
    let started = Instant::now();

    // The race: every buyer at the start instant; those told sold_out join the waitlist.
    let mut race = Vec::with_capacity(buyers);
    for (i, conn) in conns.into_iter().enumerate() {
        let run = Arc::clone(&run);
        let user = format!("{prefix}-{i}");
        race.push(tokio::spawn(async move {
            let mut conn = conn;
            tokio::time::sleep_until(release_at).await;
            let outcome = match run.reserve(&mut conn, &user).await {
                Ok(Some(held)) => Ok(Err(held)),
                Ok(None) => run.join(&mut conn, &user).await.map(Ok),
                Err(e) => Err(e),
            };
            (user, outcome)
        }));
    }
    let mut holders = Vec::new();
    let mut joins = Vec::new();
    for task in race {
        let (user, outcome) = task.await.context("a buyer task")?;
        match outcome {
            Ok(Err((order, expires_at))) => holders.push((user, order, expires_at)),
            Ok(Ok(position)) => joins.push((user, position)),
            Err(e) => errors.push(e),
        }
    }
    eprintln!(
        "race: {} reserved, {} joined the waitlist, {} errors",
        holders.len(),
        joins.len(),
        errors.len()
    );

    let (mut pool, _) = crate::scenario::open_connections(&targets, POOL, cli.timeout()).await;
    // Holders: the share pays, in the order their answers came; the others wait for expiry.
    let share = cli.pay_share;
    let paying: Vec<(usize, String)> = holders
        .iter()
        .enumerate()
        .filter(|(i, _)| pays(*i as u64 + 1, share))
        .map(|(i, (_, order, _))| (i, order.clone()))
        .collect();
    let paid = {
        let run = Arc::clone(&run);
        each(&mut pool, paying, move |mut conn, (i, order)| {
            let run = Arc::clone(&run);
            async move {
                let fate = run.pay(&mut conn, &order).await;
                (conn, (i, fate))
            }
        })
        .await
    };
    let mut fates: Vec<Fate> = vec![Fate::Unsettled; holders.len()];
    for (i, fate) in paid {
        fates[i] = fate;
    }
    let first_deadline = holders
        .iter()
        .zip(&fates)
        .filter(|(_, f)| **f == Fate::Unsettled)
        .map(|((_, _, at), _)| *at)
        .min();

    // Offers: from the first deadline on, ask the head of the list until nothing is held.
    let mut offers: Vec<Reservation> = Vec::new();
    if let Some(at) = first_deadline {
        let wait = (at - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
        tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    }
    let give_up = Instant::now() + SETTLE;
    let mut queue: Vec<(String, u64)> = joins.clone();
    queue.sort_by_key(|(_, p)| *p);
    let mut offered: HashSet<String> = HashSet::new();
    let probe = usize::try_from(cli.stock)
        .unwrap_or(usize::MAX)
        .saturating_add(16);
    let mut handled = 0u64;
    loop {
        let head: Vec<String> = queue
            .iter()
            .filter(|(u, _)| !offered.contains(u))
            .take(probe)
            .map(|(u, _)| u.clone())
            .collect();
        let places = places(&mut pool, &run, head).await;
        let mut actions = Vec::new();
        for (user, place) in places {
            match place {
                Ok(Place::Offered { order_id, status }) => {
                    offered.insert(user.clone());
                    if status == "reserved" {
                        handled += 1;
                        actions.push((user, order_id, pays(handled, share)));
                    } else {
                        errors.push(format!("offer {order_id} to {user} seen first as {status}"));
                        offers.push(Reservation {
                            user,
                            order_id,
                            fate: Fate::Unsettled,
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        let acted = {
            let run = Arc::clone(&run);
            each(&mut pool, actions, move |mut conn, (user, order, pay)| {
                let run = Arc::clone(&run);
                async move {
                    let fate = if pay {
                        run.pay(&mut conn, &order).await
                    } else {
                        run.cancel(&mut conn, &order).await
                    };
                    (conn, (user, order, fate))
                }
            })
            .await
        };
        let quiet = acted.is_empty();
        offers.extend(acted.into_iter().map(|(user, order_id, fate)| Reservation {
            user,
            order_id,
            fate,
        }));
        let now = match pool.last_mut() {
            Some(conn) => run.figures(conn).await,
            None => Err("no connection left".to_owned()),
        };
        match now {
            Ok(f) if f.held == 0 && quiet => break,
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        if Instant::now() > give_up {
            errors.push(format!(
                "units still held {} s after the first deadline",
                SETTLE.as_secs()
            ));
            break;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (status_reads, bad_reads) = reader.await.context("the status reader")?;
    let duration = started.elapsed();

    // Read back: the figures, the summary, every joiner's place, the unpaid holds, the limits.
    let mut check_conn = pool.pop().ok_or_else(|| anyhow!("no connection left"))?;
    let last = run.figures(&mut check_conn).await.map_err(|e| anyhow!(e))?;
    pool.push(check_conn);
    let counters = read_counters(&mut admin, sale.sale_id).await?;
    let joiners = joins.iter().map(|(user, _)| user.clone()).collect();
    let places = places(&mut pool, &run, joiners).await;
    let mut still_waiting = Vec::new();
    for (user, place) in places {
        match place {
            Ok(Place::Waiting(p)) => still_waiting.push((user, p)),
            Ok(Place::Offered { order_id, status }) if !offered.contains(&user) => {
                errors.push(format!(
                    "an offer the run never saw: {order_id} to {user}, {status}"
                ));
                offers.push(Reservation {
                    user,
                    order_id,
                    fate: Fate::Unsettled,
                });
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    let unpaid: Vec<(usize, String)> = holders
        .iter()
        .enumerate()
        .filter(|(i, _)| fates[*i] == Fate::Unsettled)
        .map(|(i, (_, order, _))| (i, order.clone()))
        .collect();
    let expired = {
        let run = Arc::clone(&run);
        each(&mut pool, unpaid, move |mut conn, (i, order)| {
            let run = Arc::clone(&run);
            async move {
                let status = run.order_status(&mut conn, &order).await;
                (conn, (i, status))
            }
        })
        .await
    };
    for (i, status) in expired {
        match status {
            Ok(s) if s == "expired" => fates[i] = Fate::Expired,
            Ok(s) => errors.push(format!("hold {} is {s}, not expired", holders[i].1)),
            Err(e) => errors.push(e),
        }
    }
    let mut buyers_to_check: Vec<String> = holders.iter().map(|(u, _, _)| u.clone()).collect();
    buyers_to_check.extend(offers.iter().map(|r| r.user.clone()));
    let holdings = {
        let run = Arc::clone(&run);
        each(&mut pool, buyers_to_check, move |mut conn, user| {
            let run = Arc::clone(&run);
            async move {
                let units = run.holding(&mut conn, &user).await;
                (conn, (user, units))
            }
        })
        .await
    };
    let mut over_limit = Vec::new();
    for (user, units) in holdings {
        match units {
            Ok(n) if n > 1 => over_limit.push((user, n)),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }

    let holders: Vec<Reservation> = holders
        .into_iter()
        .zip(fates)
        .map(|((user, order_id, _), fate)| Reservation {
            user,
            order_id,
            fate,
        })
        .collect();
    let observed = Observed {
        stock: cli.stock,
        holders,
        joins,
        offers,
        still_waiting,
        status_reads,
        bad_reads,
        last,
        counters,
        over_limit,
        errors,
    };
    let checks = verify::evaluate(&observed);
    let passed = checks.iter().all(|c| c.passed);
    let count =
        |list: &[Reservation], fate: Fate| list.iter().filter(|r| r.fate == fate).count() as u64;
    let latency = run
        .timings
        .lock()
        .map(|t| {
            t.iter()
                .map(|(op, micros)| (*op, (micros.len(), Latency::of(micros.iter().copied()))))
                .collect()
        })
        .unwrap_or_default();
    let report = HoldReport {
        scenario: "hold",
        sale_id: sale.sale_id,
        buyers: cli.buyers,
        units: cli.stock,
        pay_share: share,
        payment_window_secs: cli.payment_window,
        paid_through: if run.secret.is_some() {
            "webhook"
        } else {
            "demo route"
        },
        reserved_in_race: observed.holders.len(),
        holders_paid: count(&observed.holders, Fate::Paid),
        holds_expired: count(&observed.holders, Fate::Expired),
        waitlist_joins: observed.joins.len(),
        join_retries: run.join_retries.load(Ordering::Relaxed),
        offers_made: observed.offers.len(),
        offers_taken: count(&observed.offers, Fate::Paid),
        offers_released: count(&observed.offers, Fate::Cancelled),
        still_waiting: observed.still_waiting.len(),
        status_reads: observed.status_reads,
        final_figures: observed.last,
        summary_checkout: observed.counters,
        duration_s: duration.as_secs_f64(),
        latency,
        checks,
        passed,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(passed)
}

/// Reads status bodies until `stop`: how many, and the ones whose units did not add up.
async fn read_statuses(
    run: Arc<Run>,
    mut conn: Conn,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<Figures>) {
    let mut reads = 0;
    let mut bad = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(f) = run.figures(&mut conn).await {
            reads += 1;
            if !f.adds_up() {
                bad.push(f);
            }
        }
        tokio::time::sleep(READ_EVERY).await;
    }
    (reads, bad)
}

/// The summary's `checkout` counters.
async fn read_counters(admin: &mut Conn, sale_id: u64) -> anyhow::Result<Counters> {
    let answer = admin
        .send(
            Method::GET,
            &format!("/api/admin/sales/{sale_id}/summary"),
            None,
        )
        .await
        .context("reading the summary")?;
    if answer.status != StatusCode::OK {
        bail!("reading the summary: HTTP {}", answer.status);
    }
    let v: Value = serde_json::from_slice(&answer.body).context("parsing the summary")?;
    serde_json::from_value(v["checkout"].clone()).context("the summary's checkout counters")
}

#[cfg(test)]
mod tests {
    use super::pays;

    #[test]
    fn the_pay_share_is_kept_over_any_count() {
        for (share, n, expected) in [(0.5, 10, 5), (0.0, 10, 0), (1.0, 10, 10), (0.3, 10, 3)] {
            let paid = (1..=n).filter(|i| pays(*i, share)).count();
            assert_eq!(paid, expected, "share {share} of {n}");
        }
    }
}
