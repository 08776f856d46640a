//! NF-4: the real `flashsale` binary is killed with SIGKILL in the middle of traffic, then
//! restarted on the same data directory: every `confirmed` answer a client received is still
//! there, and stock taken equals the units of the orders on record.

use crate::helpers::{ADMIN_TOKEN, read};
use reqwest::StatusCode;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const WORKERS: usize = 16;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the process when dropped, so a failing test leaves no server behind.
struct Server(Child);

impl Server {
    /// SIGKILL (what `Child::kill` sends on Unix): the process gets no chance to flush.
    fn kill_9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn start_binary(port: u16, data_dir: &std::path::Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .env("FLASHSALE_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLASHSALE_DATA_DIR", data_dir)
        .env("FLASHSALE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FLASHSALE_DEMO_SALE", "false")
        // Sixteen workers buy as many buyers from one address: a script, to the limiter.
        .env("FLASHSALE_RATE_LIMIT", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server(child)
}

async fn wait_until_healthy(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status() == StatusCode::OK
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the binary did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nf4_every_confirmed_order_survives_a_kill_9_mid_traffic() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut child = start_binary(port, dir.path());
    wait_until_healthy(&client, &base).await;

    let now = OffsetDateTime::now_utc();
    let body = json!({
        "name": "Crash", "stock": 100_000,
        "starts_at": (now - time::Duration::seconds(5)).format(&Rfc3339).unwrap(),
        "ends_at": (now + time::Duration::hours(1)).format(&Rfc3339).unwrap(),
    });
    let response = client
        .post(format!("{base}/api/admin/sales"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, sale) = read(response).await;
    assert_eq!(status, StatusCode::CREATED, "{sale}");
    let sale = sale["sale_id"].as_i64().unwrap();

    // Buyers hammer the server until it dies; each records what it tried and what was confirmed.
    let dead = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (client, base, dead) = (client.clone(), base.clone(), Arc::clone(&dead));
            tokio::spawn(async move {
                let (mut tried, mut confirmed) = (Vec::new(), Vec::new());
                for i in 0.. {
                    let user = format!("w{w}-u{i}");
                    tried.push(user.clone());
                    let sent = client
                        .post(format!("{base}/api/sales/{sale}/orders"))
                        .json(&json!({ "user_id": user }))
                        .send()
                        .await;
                    let Ok(response) = sent else { break };
                    if response.status() == StatusCode::CREATED {
                        let Ok(body) = response.json::<serde_json::Value>().await else {
                            break;
                        };
                        confirmed
                            .push((user, body["order"]["order_id"].as_str().unwrap().to_owned()));
                    } else if dead.load(Ordering::Relaxed) {
                        break;
                    }
                }
                (tried, confirmed)
            })
        })
        .collect();

    // Kill once enough orders are confirmed (polled with a deadline, not a fixed sleep).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = read(
            client
                .get(format!("{base}/api/sales/{sale}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        if status["stock_remaining"].as_i64().unwrap() <= 100_000 - 300 {
            break;
        }
        assert!(Instant::now() < deadline, "traffic did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill_9();
    dead.store(true, Ordering::Relaxed);

    let mut tried = Vec::new();
    let mut confirmed = Vec::new();
    for worker in workers {
        let (t, c) = worker.await.unwrap();
        tried.extend(t);
        confirmed.extend(c);
    }
    assert!(
        confirmed.len() >= 100,
        "only {} confirmed before the kill",
        confirmed.len()
    );

    let _restarted = start_binary(port, dir.path());
    let client = reqwest::Client::new();
    wait_until_healthy(&client, &base).await;

    for (user, order_id) in &confirmed {
        let (status, found) = read(
            client
                .get(format!("{base}/api/sales/{sale}/orders/{user}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "confirmed order of {user} lost");
        assert_eq!(found["orders"][0]["order_id"], order_id.as_str());
    }
    let mut units_on_record = 0;
    for user in &tried {
        let (status, found) = read(
            client
                .get(format!("{base}/api/sales/{sale}/orders/{user}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        if status == StatusCode::OK {
            units_on_record += found["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["quantity"].as_i64().unwrap())
                .sum::<i64>();
        }
    }
    let (_, status) = read(
        client
            .get(format!("{base}/api/sales/{sale}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let taken =
        status["stock_total"].as_i64().unwrap() - status["stock_remaining"].as_i64().unwrap();
    assert_eq!(taken, units_on_record, "NF-4/NF-6: stock and orders agree");
    assert!(units_on_record >= confirmed.len() as i64);
}
