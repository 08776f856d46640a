//! Live updates (FE-7 server side): the stream sends the status at once, then each change, and
//! ends when the application shuts down.

use crate::helpers::{START, spawn_app};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// Reads the next `event: sale` message's data within `deadline`.
pub(crate) async fn next_sale_event(
    response: &mut reqwest::Response,
    buffer: &mut String,
) -> Option<Value> {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            if message.lines().any(|l| l == "event: sale") {
                let data = message.lines().find_map(|l| l.strip_prefix("data: "))?;
                return Some(serde_json::from_str(data).unwrap());
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(3), response.chunk())
            .await
            .expect("no event within 3 s")
            .unwrap()?;
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn the_event_stream_sends_the_status_at_once_then_changes_and_ends_on_shutdown() {
    let app = spawn_app().await;
    let sale = app.create_sale(5, 1).await;
    let mut stream = app.get(&format!("/api/sales/{sale}/events")).await;
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut buffer = String::new();
    let first = next_sale_event(&mut stream, &mut buffer).await.unwrap();
    assert_eq!(first["state"], "upcoming");

    app.clock.set(START);
    let active = next_sale_event(&mut stream, &mut buffer).await.unwrap();
    assert_eq!(active["state"], "active");

    app.buy(sale, "a").await;
    let bought = next_sale_event(&mut stream, &mut buffer).await.unwrap();
    assert_eq!(bought["stock_remaining"], 4);

    let stopping = tokio::spawn(app.stop());
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(_event) = next_sale_event(&mut stream, &mut buffer).await {}
    })
    .await;
    assert!(end.is_ok(), "the stream did not end on shutdown");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown waited on the open stream")
        .unwrap();
}

#[tokio::test]
async fn events_for_an_unknown_sale_are_404_sale_not_found() {
    let app = spawn_app().await;
    let (status, body) = crate::helpers::read(app.get("/api/sales/42/events").await).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("sale_not_found"))
    );
}
