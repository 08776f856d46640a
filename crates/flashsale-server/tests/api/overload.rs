//! NF-5 load shedding and slow clients, over real HTTP: the in-flight bound answers 503
//! `overloaded` at once (a purchase whose client hung up still counts until its work ends), the
//! request timeout answers 503 `timeout` (and the purchase is not lost), a client too slow to
//! send its headers is disconnected, and connections past `--max-connections` wait until one
//! closes.

use crate::helpers::{read, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Liveness guard only: a broken server makes the test fail instead of hanging.
const GUARD: Duration = Duration::from_secs(30);

#[tokio::test]
async fn purchases_beyond_the_in_flight_bound_are_503_overloaded_with_retry_after_and_take_nothing()
{
    let app = spawn_app_with(|c| c.protection.max_inflight_purchases = 0).await;
    let sale = app.active_sale(10, 1).await;
    let response = app.buy_with(sale, &json!({"user_id": "alice"}), None).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "overloaded");
    assert_eq!(app.status(sale).await["stock_remaining"], 10);
    // Reads are not purchases: they still answer.
    assert_eq!(app.orders(sale, "alice").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_purchase_past_the_request_timeout_is_503_timeout_and_leaves_the_books_balanced() {
    // The purchase is admitted and its commit waits on SQLite's write lock, held by another
    // connection past the request timeout (and released well within the writer's 2 s busy
    // timeout), so the buyer is told `timeout`; the purchase goes on to commit, never half
    // done. (A zero timeout raced the commit: a fast disk could answer 201 first.)
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    let app = app
        .restart_with(|c| c.protection.request_timeout_ms = 300)
        .await;
    let db = rusqlite::Connection::open(app.data_dir().join("flashsale.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let response = app.buy_with(sale, &json!({"user_id": "alice"}), None).await;
    db.execute_batch("ROLLBACK").unwrap();
    let retry_after = response.headers().get("retry-after").cloned();
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "timeout");
    assert_eq!(retry_after.unwrap(), "1");
    // In the running process the purchase goes on to its end: the books balance (polled with
    // a deadline, since the purchase may still be committing). Before purchases ran in their
    // own task, the dropped purchase left its unit taken and its order uncounted.
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let summary = app.summary(sale).await;
        let taken = 10 - summary["stock_remaining"].as_i64().unwrap();
        if summary["confirmed_units"].as_i64().unwrap() == taken {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "books never balanced: {summary}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // After a graceful restart with the normal timeout: stock taken = units on record.
    let app = app.restart().await;
    let (status, body) = app.orders(sale, "alice").await;
    let units = match status {
        StatusCode::OK => body["orders"][0]["quantity"].as_i64().unwrap(),
        _ => 0,
    };
    assert_eq!(app.status(sale).await["stock_remaining"], 10 - units);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_purchase_keeps_its_in_flight_slot_until_the_purchase_ends() {
    // Arrange: one slot, and SQLite's write lock held by another connection, so the next
    // commit waits (the writer's busy timeout is 2 s; the lock goes well before).
    let app = spawn_app_with(|c| c.protection.max_inflight_purchases = 1).await;
    let sale = app.active_sale(10, 1).await;
    let db = rusqlite::Connection::open(app.data_dir().join("flashsale.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();

    // Act: alice's purchase is admitted and waits for its commit; she hangs up.
    let abandoned = app
        .client
        .post(app.url(&format!("/api/sales/{sale}/orders")))
        .json(&json!({"user_id": "alice"}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(abandoned.unwrap_err().is_timeout());
    // Her purchase still runs, so it still holds the only slot: bob is shed at once (before
    // the fix the slot went with her connection, and bob queued behind the lock).
    let (status, body) = app.buy(sale, "bob").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "overloaded");

    // Once the commit can go on, her order is confirmed and the slot comes back.
    db.execute_batch("ROLLBACK").unwrap();
    let deadline = std::time::Instant::now() + GUARD;
    let (status, body) = loop {
        let (status, body) = app.buy(sale, "bob").await;
        if body["code"] != "overloaded" {
            break (status, body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.orders(sale, "alice").await.0, StatusCode::OK);
    assert_eq!(app.status(sale).await["stock_remaining"], 8);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_app_with(|c| c.protection.header_read_timeout_ms = 200).await;
    let addr = app.address.trim_start_matches("http://");
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(GUARD, slow.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the slow client was never disconnected");
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "an incomplete request was answered"
    );
    // Everyone else is served as usual.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

async fn exchange(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_answer(stream).await
}

async fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // `/healthz`'s body ends the answer.
    while !String::from_utf8_lossy(&answer).contains("\"ok\"}") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_connection_past_max_connections_waits_until_another_closes() {
    let app = spawn_app_with(|c| c.protection.max_connections = Some(1)).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut first = TcpStream::connect(&addr).await.unwrap();
    assert!(exchange(&mut first).await.contains("200 OK"));

    // The kernel completes the second handshake, but the server does not take it up.
    let mut second = TcpStream::connect(&addr).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The first connection is still served meanwhile, and the second has no answer.
    assert!(exchange(&mut first).await.contains("200 OK"));
    let mut probe = [0u8; 16];
    assert!(
        matches!(second.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the second connection was served while the first held the only slot"
    );

    drop(first);
    let answer = tokio::time::timeout(GUARD, read_answer(&mut second)).await;
    assert!(
        answer
            .expect("the waiting connection was never served")
            .contains("200 OK")
    );
}
