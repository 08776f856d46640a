//! An operator's change committed in PostgreSQL while Redis could not take it (issue 14,
//! phase 1b; OP-7 in docs/requirements.md): the change's instance is cut off from Redis between its PostgreSQL commit and
//! `change.lua`'s `apply`, so the admin gets a 503 and Redis keeps the old sale (and the
//! change's freeze, until its lease runs out).
//!
//! - Safety: nothing PostgreSQL commits may contradict the committed change: a purchase that
//!   stale Redis admits after a cancellation is never confirmed, on any instance.
//! - Convergence: the audit notices PostgreSQL's revision ahead of Redis's once the freeze's
//!   lease has run out, and rebuilds the sale from PostgreSQL: within the lease (2 s) plus two
//!   audit intervals.
//!
//! The cut is a TCP proxy between one instance and the shared Redis (never stopped).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flashsale_core::{SaleChange, SaleEdit, SaleId};
use flashsale_store::redis_pg::{RedisPgConfig, RedisPgStore};
use flashsale_store::{PurchaseOutcome, SaleStore, StoreError};
use std::time::{Duration, Instant};
use support::{Cleanup, active, assert_invariants, attempt, connect, eventually, isolated};
use tokio::sync::watch;
use uuid::Uuid;

/// The change's freeze lease (`FREEZE_LEASE_MS` in `change.rs`).
const FREEZE_LEASE: Duration = Duration::from_secs(2);

/// A TCP proxy to Redis that, while cut, drops every connection through it and refuses new
/// ones: the instance behind it cannot reach Redis, everyone else can.
struct RedisCut {
    port: u16,
    cut: watch::Sender<bool>,
}

impl RedisCut {
    async fn start(upstream: &str) -> Self {
        let upstream = upstream
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, watching) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *watching.borrow() {
                    continue;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream.as_str()).await else {
                    continue;
                };
                let mut watching = watching.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watching.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { port, cut }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn set(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Two instances on one isolated schema and key prefix: `a` reaches Redis through `proxy`,
/// `b` directly.
struct Pair {
    cfg: RedisPgConfig,
    proxy: RedisCut,
    a: RedisPgStore,
    b: RedisPgStore,
}

async fn pair(reconcile_interval: Duration) -> Pair {
    let mut cfg = isolated(&support::redis_url(), &support::database_url());
    cfg.reconcile_interval = reconcile_interval;
    let proxy = RedisCut::start(&cfg.redis_url).await;
    let mut via_proxy = cfg.clone();
    via_proxy.redis_url = proxy.url();
    let a = connect(&via_proxy).await;
    let b = connect(&cfg).await;
    Pair { cfg, proxy, a, b }
}

/// `change` made on `a`, which loses Redis after the change froze the sale and before
/// PostgreSQL commits it: the change is durable, the admin is told 503.
async fn change_while_redis_is_cut(p: &Pair, sale: SaleId, change: SaleChange) {
    let row = support::pg(&p.cfg).await;
    row.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM sales WHERE id = {} FOR UPDATE",
        sale.0
    ))
    .await
    .unwrap();
    let revision = revision_in_pg(&p.cfg, sale).await;
    let changing = async {
        // Frozen in Redis, now waiting for the sale's row in PostgreSQL.
        let frozen = eventually(Duration::from_secs(5), || async {
            let mut con = support::redis(&p.cfg).await;
            redis::cmd("HEXISTS")
                .arg(meta(&p.cfg, sale))
                .arg("changing")
                .query_async::<bool>(&mut con)
                .await
                .unwrap()
        })
        .await;
        assert!(frozen, "the change never froze the sale");
        p.proxy.set(true);
        row.batch_execute("COMMIT").await.unwrap();
    };
    let (answer, ()) = tokio::join!(p.a.change_sale(sale, change), changing);
    assert!(
        matches!(answer, Err(StoreError::Unavailable { .. })),
        "the admin must hear 503 when Redis cannot take the change: {answer:?}"
    );
    assert_eq!(
        revision_in_pg(&p.cfg, sale).await,
        revision + 1,
        "the change must be committed in PostgreSQL"
    );
    p.proxy.set(false);
}

fn meta(cfg: &RedisPgConfig, sale: SaleId) -> String {
    format!("{{{}:sale:{}}}:meta", cfg.key_prefix, sale.0)
}

async fn revision_in_pg(cfg: &RedisPgConfig, sale: SaleId) -> i64 {
    support::pg(cfg)
        .await
        .query_one("SELECT revision FROM sales WHERE id = $1", &[&sale.0])
        .await
        .unwrap()
        .get(0)
}

async fn revision_in_redis(cfg: &RedisPgConfig, sale: SaleId) -> Option<i64> {
    let mut con = support::redis(cfg).await;
    redis::cmd("HGET")
        .arg(meta(cfg, sale))
        .arg("revision")
        .query_async(&mut con)
        .await
        .unwrap()
}

fn confirmed(outcome: &Result<PurchaseOutcome, StoreError>) -> Option<Uuid> {
    match outcome {
        Ok(PurchaseOutcome::Confirmed(order)) => Some(order.order_id),
        _ => None,
    }
}

/// Issue 14 phase 1b: after a cancel committed in PostgreSQL but not in Redis (and the
/// freeze's lease run out), stale Redis admits buyers again; PostgreSQL's transaction must
/// refuse their orders by the cancelled sale row, so every instance answers at worst 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_redis_never_took_lets_no_purchase_be_confirmed_on_any_instance() {
    // No audit round during the test: this is about what stale Redis can make PostgreSQL do.
    let p = pair(Duration::from_secs(600)).await;
    let _cleanup = Cleanup { cfg: p.cfg.clone() };
    let sale = p.a.create_sale(active(10, 1)).await.unwrap();
    let before = confirmed(&p.b.purchase(attempt(sale.id, "early", None)).await)
        .expect("the sale sells before the cancel");

    change_while_redis_is_cut(&p, sale.id, SaleChange::Cancel).await;
    tokio::time::sleep(FREEZE_LEASE + Duration::from_millis(200)).await;

    for (i, store) in [&p.a, &p.b, &p.a, &p.b].into_iter().enumerate() {
        let outcome = store
            .purchase(attempt(sale.id, &format!("late-{i}"), None))
            .await;
        assert!(
            confirmed(&outcome).is_none(),
            "instance {} confirmed a purchase of a cancelled sale: {outcome:?}",
            if i % 2 == 0 { "a" } else { "b" }
        );
    }
    let late: i64 = support::pg(&p.cfg)
        .await
        .query_one(
            "SELECT count(*) FROM orders o JOIN sales s ON s.id = o.sale_id
             WHERE o.sale_id = $1 AND o.created_at >= s.cancelled_at",
            &[&sale.id.0],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        late, 0,
        "PostgreSQL holds orders made after the cancellation"
    );
    p.a.shutdown().await;
    p.b.shutdown().await;
    assert_invariants(&p.cfg, sale.id, &[before]).await;
}

/// Issue 14 phase 1b: an end lowered (to 1.5 s ahead) in PostgreSQL but not in Redis: once
/// the new end has passed, stale Redis still admits by the old end; PostgreSQL's transaction
/// must refuse those orders by the sale row's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_end_lowered_without_redis_lets_no_purchase_past_it_be_confirmed() {
    let p = pair(Duration::from_secs(600)).await;
    let _cleanup = Cleanup { cfg: p.cfg.clone() };
    let sale = p.a.create_sale(active(10, 1)).await.unwrap();
    let before = confirmed(&p.b.purchase(attempt(sale.id, "early", None)).await)
        .expect("the sale sells before the edit");
    let sooner = SaleEdit {
        ends_at: Some(time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500)),
        ..SaleEdit::default()
    };
    change_while_redis_is_cut(&p, sale.id, SaleChange::Edit(sooner)).await;
    // Past both the freeze's lease and the new end.
    tokio::time::sleep(FREEZE_LEASE + Duration::from_millis(200)).await;
    for (i, store) in [&p.a, &p.b].into_iter().enumerate() {
        let outcome = store
            .purchase(attempt(sale.id, &format!("late-{i}"), None))
            .await;
        assert!(
            confirmed(&outcome).is_none(),
            "a purchase past the lowered end was confirmed: {outcome:?}"
        );
    }
    let late: i64 = support::pg(&p.cfg)
        .await
        .query_one(
            "SELECT count(*) FROM orders o JOIN sales s ON s.id = o.sale_id
             WHERE o.sale_id = $1 AND o.created_at >= s.ends_at",
            &[&sale.id.0],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(late, 0, "PostgreSQL holds orders made after the sale's end");
    p.a.shutdown().await;
    p.b.shutdown().await;
    assert_invariants(&p.cfg, sale.id, &[before]).await;
}

/// Issue 14 phase 1b: a stock raise (2 to 5, one unit sold) committed in PostgreSQL but not in
/// Redis would leave Redis selling one more unit and then refusing as sold out; the audit must notice PostgreSQL's revision ahead of Redis's
/// and rebuild the sale, within the freeze's lease plus two audit intervals, after which both
/// instances sell the new units.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stock_raise_redis_never_took_reaches_redis_within_the_lease_and_two_audit_rounds() {
    let interval = Duration::from_millis(200);
    let p = pair(interval).await;
    let _cleanup = Cleanup { cfg: p.cfg.clone() };
    let sale = p.a.create_sale(active(2, 1)).await.unwrap();
    let mut bought = Vec::new();
    bought.push(
        confirmed(&p.b.purchase(attempt(sale.id, "first", None)).await)
            .expect("the first unit sells"),
    );
    let raise = SaleEdit {
        stock: Some(5),
        ..SaleEdit::default()
    };
    change_while_redis_is_cut(&p, sale.id, SaleChange::Edit(raise)).await;
    let failed_at = Instant::now();
    let pg_revision = revision_in_pg(&p.cfg, sale.id).await;

    let bound = FREEZE_LEASE + 2 * interval + Duration::from_millis(800);
    let converged = eventually(bound, || async {
        revision_in_redis(&p.cfg, sale.id).await == Some(pg_revision)
    })
    .await;
    assert!(
        converged,
        "Redis still holds revision {:?} of the sale, PostgreSQL {pg_revision}, {:?} after the 503",
        revision_in_redis(&p.cfg, sale.id).await,
        failed_at.elapsed()
    );
    eprintln!(
        "the change reached Redis {:?} after the 503",
        failed_at.elapsed()
    );
    // Each instance's view follows Redis's revision within a refresh.
    for (i, store) in [&p.a, &p.b, &p.a].into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let outcome = store
                .purchase(attempt(sale.id, &format!("after-{i}"), None))
                .await;
            if let Some(order) = confirmed(&outcome) {
                bought.push(order);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a raised unit did not sell: {outcome:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    p.a.shutdown().await;
    p.b.shutdown().await;
    assert_invariants(&p.cfg, sale.id, &bought).await;
}
