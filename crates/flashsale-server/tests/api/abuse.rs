//! Issue 17: one client cannot starve the service, lock out a buyer, or take a whole sale.
//! Distinct clients are distinct loopback source addresses (127.0.0.x, bound before
//! connecting); rate limits are on, at their defaults unless a test narrows them.

use crate::helpers::{ADMIN_TOKEN, START, T0, TestApp, read, rfc3339, spawn_app_with};
use flashsale_core::ManualClock;
use flashsale_server::config::RateLimits;
use flashsale_server::{Application, Config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long any single network step of these tests may take before the test fails.
const STEP: Duration = Duration::from_secs(10);

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A client whose connections come from `127.0.0.<last>`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(loopback(last))
        .build()
        .unwrap()
}

/// A raw connection from `127.0.0.<last>` to the app's address `base` (`http://host:port`).
async fn connect_from(last: u8, base: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(loopback(last), 0)).unwrap();
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body) from `stream`; `None` if the
/// server closed the connection first.
async fn read_response(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(STEP, stream.read(&mut chunk))
            .await
            .expect("no answer in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        let n = tokio::time::timeout(STEP, stream.read(&mut chunk))
            .await
            .expect("no body in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    Some((head, body))
}

fn purchase_request(sale: i64, user: &str) -> Vec<u8> {
    let body = json!({ "user_id": user }).to_string();
    format!(
        "POST /api/sales/{sale}/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn limited(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|config| {
        config.rate_limits = RateLimits::default();
        configure(config);
    })
    .await
}

async fn buy_from(
    client: &reqwest::Client,
    app: &TestApp,
    sale: i64,
    user: &str,
) -> (StatusCode, Value) {
    let response = client
        .post(app.url(&format!("/api/sales/{sale}/orders")))
        .json(&json!({ "user_id": user }))
        .send()
        .await
        .unwrap();
    read(response).await
}

#[tokio::test]
async fn one_address_holds_streams_up_to_its_cap_while_another_address_buys_and_healthz_answers() {
    let app = limited(|c| {
        c.protection.max_connections = Some(8);
        c.protection.max_connections_per_ip = 4;
        c.protection.max_streams_per_ip = 3;
    })
    .await;
    let sale = app.active_sale(100, 1).await;
    let attacker = client_from(2);
    let events = app.url(&format!("/api/sales/{sale}/events"));
    // Streams up to the cap...
    let mut held = Vec::new();
    for _ in 0..3 {
        let stream = attacker.get(&events).send().await.unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        held.push(stream);
    }
    // ...then 429 (on a fourth connection, the address's last).
    let (status, body) = read(attacker.get(&events).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited");
    // A fifth connection from the same address is refused at once, not queued.
    let mut extra = connect_from(2, &app.address).await;
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .ok();
    let refused = read_response(&mut extra).await;
    if let Some((head, body)) = &refused {
        assert!(head.starts_with("http/1.1 429"), "{head}");
        assert!(body.contains("rate_limited"), "{body}");
    }
    // Another address still buys, reads and probes.
    let buyer = client_from(3);
    let (status, body) = buy_from(&buyer, &app, sale, "real-buyer").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let health = buyer.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Closing a stream gives its slot back.
    held.pop();
    let reopened = tokio::time::timeout(STEP, async {
        loop {
            let response = attacker.get(&events).send().await.unwrap();
            if response.status() == StatusCode::OK {
                return response;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the closed stream's slot never came back");
    drop(reopened);
}

#[tokio::test]
async fn with_ops_listen_probes_answer_when_the_connection_budget_is_spent() {
    let app = limited(|c| {
        c.ops_listen = Some("127.0.0.1:0".parse().unwrap());
        c.protection.max_connections = Some(2);
    })
    .await;
    let ops = app.ops_address.clone().unwrap();
    // Two addresses take the whole public budget...
    let _a = connect_from(2, &app.address).await;
    let _b = connect_from(3, &app.address).await;
    // (wait until the server has accepted both: a third connection is then left queued)
    let mut queued = connect_from(4, &app.address).await;
    queued
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(300), queued.read(&mut byte)).await;
    assert!(waited.is_err(), "a connection past the budget was served");
    // ...and the probes still answer on the ops address.
    let client = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = client.get(format!("{ops}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    // The ops address serves nothing else, and `/metrics` has left the public address.
    let other = client.get(format!("{ops}/api/sale")).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    drop((_a, _b));
    let (status, _) = read(app.get("/metrics").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_hundred_and_ten_purchases_with_invented_ids_from_one_address_take_at_most_its_share() {
    let app = limited(|_| {}).await;
    let sale = app.active_sale(100, 1).await;
    let script = client_from(2);
    let attempts = (0..110).map(|i| {
        let script = script.clone();
        let url = app.url(&format!("/api/sales/{sale}/orders"));
        async move {
            let response = script
                .post(url)
                .json(&json!({ "user_id": format!("invented-{i}") }))
                .send()
                .await
                .unwrap();
            read(response).await
        }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let confirmed = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    // The documented share: 10% of the stock.
    assert_eq!(confirmed, 10, "one address took {confirmed} of 100 units");
    let mut share_refusals = 0;
    for (status, body) in &answers {
        match *status {
            StatusCode::CREATED => {}
            // Past the address's burst (100): the rate limit answers first.
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(body["code"], "rate_limited"),
            _ => {
                assert_eq!(*status, StatusCode::CONFLICT, "{body}");
                assert_eq!(body["code"], "address_limit_reached", "{body}");
                assert_eq!(body["address_share"], 10, "{body}");
                share_refusals += 1;
            }
        }
    }
    assert!(
        share_refusals >= 80,
        "{share_refusals} refused by the share"
    );
    assert_eq!(app.summary(sale).await["confirmed_units"], 10);
    // Everyone else can still buy the other 90.
    let (status, body) = buy_from(&client_from(3), &app, sale, "someone-else").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn naming_a_victim_cannot_lock_the_victim_out() {
    let app = limited(|_| {}).await;
    let live = app.create_sale(100, 1).await;
    let upcoming = {
        let body = json!({
            "name": "Later", "starts_at": rfc3339(START + time::Duration::hours(1)),
            "ends_at": rfc3339(START + time::Duration::hours(2)), "stock": 10,
        });
        let (status, body) = read(app.post_sale(&body, Some(ADMIN_TOKEN)).await).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["sale_id"].as_i64().unwrap()
    };
    app.clock.set(START);
    // From one address: attempts naming the victim against a sale that does not exist and one
    // that has not started (the finding: five of these made the victim's purchase 429).
    let attacker = client_from(2);
    for _ in 0..10 {
        let (status, _) = buy_from(&attacker, &app, 987_654, "victim").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = buy_from(&attacker, &app, upcoming, "victim").await;
        assert_eq!(status, StatusCode::CONFLICT);
    }
    // From many addresses, against the live sale: attempts the store refuses (a quantity over
    // the limit) spend each sender's own budget, not the victim's.
    for last in 4..9 {
        let flooder = client_from(last);
        for _ in 0..10 {
            let response = flooder
                .post(app.url(&format!("/api/sales/{live}/orders")))
                .json(&json!({ "user_id": "victim", "quantity": 2 }))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_client_error());
        }
    }
    let (status, body) = buy_from(&client_from(3), &app, live, "victim").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_sub_microsecond_window_is_400_invalid_request() {
    let app = limited(|_| {}).await;
    let body = json!({
        "name": "Blink", "starts_at": "2026-11-22T12:00:00.0000001Z",
        "ends_at": "2026-11-22T12:00:00.0000002Z", "stock": 10,
    });
    let (status, body) = read(app.post_sale(&body, Some(ADMIN_TOKEN)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "invalid_request");
    assert!(
        body["message"].as_str().unwrap().contains("ends_at"),
        "{body}"
    );
}

#[tokio::test]
async fn a_429_sent_before_the_body_is_read_leaves_a_keep_alive_connection_working() {
    let app = limited(|c| {
        c.rate_limits.purchase_rate_per_ip = 1;
        c.rate_limits.purchase_burst_per_ip = 1;
    })
    .await;
    let sale = app.active_sale(100, 1).await;
    let mut conn = connect_from(2, &app.address).await;
    conn.write_all(&purchase_request(sale, "first"))
        .await
        .unwrap();
    let (head, body) = read_response(&mut conn).await.expect("first answer");
    assert!(head.starts_with("http/1.1 201"), "{head}{body}");
    // Refused by the address bucket before the handler reads the body.
    conn.write_all(&purchase_request(sale, "second"))
        .await
        .unwrap();
    let (head, body) = read_response(&mut conn).await.expect("429 answer");
    assert!(head.starts_with("http/1.1 429"), "{head}{body}");
    assert!(!head.contains("connection: close"), "{head}");
    // The same connection carries the next request.
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut conn)
        .await
        .expect("the connection was closed after the 429");
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[tokio::test]
async fn refusals_that_leave_the_body_unread_say_connection_close() {
    let app = limited(|_| {}).await;
    let sale = app.active_sale(100, 1).await;
    let cases = [
        // 415: the body is never read.
        format!(
            "POST /api/sales/{sale}/orders HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\n\
             content-length: 5\r\n\r\nhello"
        ),
        // 413 on the declared length: the body is never read.
        format!(
            "POST /api/sales/{sale}/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 5000\r\n\r\n{{}}"
        ),
        // 401: the token is checked before the body.
        "POST /api/admin/sales HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: 2\r\n\r\n{}"
            .to_owned(),
    ];
    for request in cases {
        let mut conn = connect_from(2, &app.address).await;
        conn.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut conn).await.expect("an answer");
        assert!(head.contains("connection: close"), "{head}{body}");
    }
}

#[tokio::test]
async fn a_purchase_shed_as_overloaded_leaves_a_keep_alive_connection_working() {
    let app = limited(|c| c.protection.max_inflight_purchases = 0).await;
    let sale = app.active_sale(100, 1).await;
    let mut conn = connect_from(2, &app.address).await;
    conn.write_all(&purchase_request(sale, "first"))
        .await
        .unwrap();
    let (head, _) = read_response(&mut conn).await.expect("503 answer");
    assert!(head.starts_with("http/1.1 503"), "{head}");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut conn)
        .await
        .expect("the connection was closed after the 503");
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_408_body_timeout_not_503() {
    let app = limited(|c| c.protection.header_read_timeout_ms = 300).await;
    let sale = app.active_sale(100, 1).await;
    let mut conn = connect_from(2, &app.address).await;
    conn.write_all(
        format!(
            "POST /api/sales/{sale}/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 100\r\n\r\n{{\"user_id\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut conn).await.expect("an answer");
    assert!(head.starts_with("http/1.1 408"), "{head}{body}");
    assert!(head.contains("connection: close"), "{head}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "body_timeout");
    assert_eq!(app.status(sale).await["stock_remaining"], 100);
}

#[tokio::test]
async fn spellings_of_one_email_address_are_one_buyer_on_every_route() {
    // A generous per-buyer burst: every spelling below is charged to the same buyer.
    let app = limited(|c| c.rate_limits.purchase_burst_per_user = 100).await;
    let sale = app.active_sale(100, 1).await;
    let (status, body) = app.buy(sale, "alice@example.com").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for variant in [
        "Alice@example.com",
        "alice@EXAMPLE.com",
        " ALICE@example.com ",
        "ali\u{200B}ce@example.com",
        "\u{FEFF}alice@example.com",
    ] {
        let (status, body) = app.buy(sale, variant).await;
        assert_eq!(status, StatusCode::CONFLICT, "{variant:?}: {body}");
        assert_eq!(body["code"], "already_purchased", "{variant:?}: {body}");
    }
    // "Did I get one?" under another spelling finds the same order.
    let (status, body) = app.orders(sale, "ALICE%40Example.com").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "alice@example.com");
    let (status, _) = app.orders(sale, "ali%E2%80%8Bce%40example.com").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.summary(sale).await["confirmed_units"], 1);
}

#[tokio::test]
async fn oversized_request_heads_are_refused_at_16_kib() {
    let app = limited(|_| {}).await;
    let mut conn = connect_from(2, &app.address).await;
    let huge = "a".repeat(20 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {huge}\r\n\r\n");
    // The server may stop reading (and close) before the whole head is written.
    let _ = conn.write_all(request.as_bytes()).await;
    if let Some((head, _)) = read_response(&mut conn).await {
        assert!(head.starts_with("http/1.1 431"), "{head}");
    }
    // A head just under the bound is served.
    let mut conn = connect_from(2, &app.address).await;
    let fits = "a".repeat(12 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {fits}\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut conn).await.expect("an answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[tokio::test]
async fn guessing_the_admin_token_locks_the_address_out_after_ten_failures() {
    let app = limited(|_| {}).await;
    let guesser = client_from(2);
    let summary = app.url("/api/admin/sales/1/summary");
    for i in 0..10 {
        let response = guesser
            .get(&summary)
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // Locked: even the right token is refused from this address, so guesses teach nothing.
    let (status, body) = read(
        guesser
            .get(&summary)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited");
    // The operator's own address is unaffected.
    let response = client_from(3)
        .get(&summary)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_empty_or_short_admin_token_stops_the_start() {
    for weak in ["", "x", "short-token"] {
        let dir = tempfile::TempDir::new().unwrap();
        let config = Config::for_tests("127.0.0.1:0".parse().unwrap(), dir.path().into(), weak);
        let started = Application::build(config, Arc::new(ManualClock::new(T0))).await;
        let err = started.err().expect("a weak token was accepted");
        assert!(err.to_string().contains("at least 16"), "{err}");
    }
}

#[tokio::test]
async fn answers_carry_nosniff_and_unpredictable_request_ids() {
    let app = limited(|_| {}).await;
    let mut ids = Vec::new();
    for path in ["/api/sales/42", "/healthz", "/nowhere"] {
        let response = app.get(path).await;
        let h = response.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        let id = h["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        ids.push(u64::from_str_radix(&id, 16).unwrap());
    }
    // Not a counter: consecutive requests are not consecutive numbers.
    assert!(
        ids.windows(2).any(|w| w[1].wrapping_sub(w[0]) != 1),
        "{ids:?}"
    );
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn an_event_stream_ends_after_its_lifetime() {
    let app = limited(|c| c.protection.stream_lifetime_secs = 1).await;
    let sale = app.create_sale(10, 1).await;
    let mut stream = app.get(&format!("/api/sales/{sale}/events")).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let ended = tokio::time::timeout(STEP, async {
        while stream.chunk().await.unwrap().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its lifetime");
}
