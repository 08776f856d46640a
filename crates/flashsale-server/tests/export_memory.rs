//! OP-8: the CSV export of a sale with 100,000 orders stays flat in memory. The service runs
//! in this process, alone in this test binary so nothing else moves its memory; the figure is
//! the peak resident set (VmHWM, reset through `/proc/self/clear_refs` just before) above the
//! resident set when the export starts. Collecting the rows, or the CSV text (about 9 MB),
//! before sending would add tens of megabytes; one page of the stream is about 100 KB.
//!
//! How to run: `cargo test -p flashsale-server --test export_memory -- --nocapture` (the
//! figures go to stderr).

#![allow(clippy::unwrap_used)]

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use flashsale_core::ManualClock;
use helpers::{ADMIN_TOKEN, START, T0, spawn_app, spawn_in};
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Instant;

const ORDERS: u64 = 100_000;
/// The most the export may add to the resident set.
const BOUND_BYTES: u64 = 4 * 1024 * 1024;

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

/// Streams the sale's CSV, checking each row is the next order written (in `created_at`
/// order: buyer i at START + i ms) without keeping any; returns rows and bytes.
async fn export(client: &reqwest::Client, base: &str, sale: i64) -> (u64, u64) {
    let mut response = client
        .get(format!("{base}/api/admin/sales/{sale}/orders?format=csv"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut partial: Vec<u8> = Vec::with_capacity(256);
    while let Some(chunk) = response.chunk().await.unwrap() {
        bytes += chunk.len() as u64;
        for &b in chunk.iter() {
            if b != b'\n' {
                partial.push(b);
                continue;
            }
            let line = std::str::from_utf8(&partial).unwrap();
            if rows == 0 {
                assert_eq!(line, "order_id,user_id,quantity,created_at\r");
            } else {
                let user = line.split(',').nth(1).unwrap();
                assert_eq!(user, format!("buyer-{:06}", rows - 1), "row {rows}");
            }
            rows += 1;
            partial.clear();
        }
    }
    assert!(partial.is_empty(), "the CSV ends mid-row");
    (rows - 1, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporting_100_000_orders_as_csv_keeps_the_resident_set_flat() {
    // Arrange: a sale, then 100,000 committed orders written where the store keeps them, read
    // back at the restart as any committed order is.
    let app = spawn_app().await;
    let sale = app.create_sale(200_000, 1).await;
    let (dir, _) = app.stop().await;
    {
        let mut db = rusqlite::Connection::open(dir.path().join("flashsale.db")).unwrap();
        let tx = db.transaction().unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO orders (order_id, sale_id, user_id, quantity, created_at_us)
                     VALUES (?1, ?2, ?3, 1, ?4)",
                )
                .unwrap();
            let start_us = (START.unix_timestamp_nanos() / 1_000) as i64;
            for i in 0..ORDERS {
                let id = uuid::Uuid::from_u128(u128::from(i) + 1);
                insert
                    .execute(rusqlite::params![
                        id.as_bytes().as_slice(),
                        sale,
                        format!("buyer-{i:06}"),
                        start_us + i as i64 * 1_000,
                    ])
                    .unwrap();
            }
        }
        tx.execute(
            "UPDATE sales SET sold = ?1 WHERE id = ?2",
            rusqlite::params![ORDERS as i64, sale],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let app = spawn_in(dir, Arc::new(ManualClock::new(T0))).await;
    // A first export warms what any request touches once (buffers, lazy statics).
    let (rows, _) = export(&app.client, &app.address, sale).await;
    assert_eq!(rows, ORDERS);

    // Act: the export measured.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident set");
    let before = proc_status("VmRSS:");
    let started = Instant::now();
    let (rows, bytes) = export(&app.client, &app.address, sale).await;
    let took = started.elapsed();
    let peak = proc_status("VmHWM:");

    // Assert.
    assert_eq!(rows, ORDERS);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "export of {rows} orders: {bytes} bytes of CSV in {took:?}; resident set {} KiB at \
         the start, peak {} KiB, growth {} KiB (bound {} KiB)",
        before / 1024,
        peak / 1024,
        growth / 1024,
        BOUND_BYTES / 1024
    );
    assert!(
        growth < BOUND_BYTES,
        "the export grew the resident set by {growth} bytes"
    );
}
