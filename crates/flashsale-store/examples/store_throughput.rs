//! Measures the embedded store alone (no HTTP): C concurrent buyers, distinct ids, large
//! stock, for D seconds. Prints purchases/s and the average group-commit size.
//!
//! `cargo run --release -p flashsale-store --example store_throughput -- 256 5`

use flashsale_core::{NewSale, Quantity, SystemClock, UserId};
use flashsale_store::embedded::EmbeddedStore;
use flashsale_store::{Attempt, PurchaseOutcome, SaleStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(256);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(EmbeddedStore::open(dir.path(), Arc::new(SystemClock))?);
    let now = time::OffsetDateTime::now_utc();
    let sale = store
        .create_sale(NewSale::parse(
            "bench",
            now,
            now + time::Duration::hours(1),
            1_000_000_000,
            1,
        )?)
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (store, done) = (Arc::clone(&store), Arc::clone(&done));
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let user = UserId::parse(&format!("w{w}-{i}")).expect("generated id is valid");
                    let attempt = Attempt {
                        sale_id: sale.id,
                        user_id: user,
                        quantity: Quantity::ONE,
                        idempotency_key: None,
                    };
                    if let Ok(PurchaseOutcome::Confirmed(_)) = store.purchase(attempt).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let n = done.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "concurrency={concurrency} confirmed={n} in {secs:.2}s -> {:.0} purchases/s",
        n as f64 / secs
    );
    store.shutdown().await;
    Ok(())
}
