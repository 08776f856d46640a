//! T-6: the whole lifecycle with a manual clock: upcoming -> active -> purchases -> sold out
//! -> ended, and ended by time (FL-1..FL-5, IM-1..IM-5).

use crate::helpers::{END, START, spawn_app};
use reqwest::StatusCode;
use time::Duration;

#[tokio::test]
async fn fl1_to_fl5_a_sale_goes_upcoming_active_sold_out_and_stays_ended() {
    let app = spawn_app().await;
    let sale = app.create_sale(3, 1).await;

    // FL-1: one nanosecond before the start it is upcoming and refuses buyers.
    app.clock.set(START - Duration::nanoseconds(1));
    assert_eq!(app.status(sale).await["state"], "upcoming");
    let (status, body) = app.buy(sale, "eager").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["state"], "upcoming");

    // FL-2: exactly at the start it is active (IM-1: full stock).
    app.clock.set(START);
    let status_body = app.status(sale).await;
    assert_eq!(status_body["state"], "active");
    assert_eq!(status_body["stock_remaining"], 3);

    // IM-2: each confirmed unit removes exactly one.
    for (n, user) in ["u1", "u2", "u3"].into_iter().enumerate() {
        app.advance(Duration::seconds(1));
        assert_eq!(app.buy(sale, user).await.0, StatusCode::CREATED);
        assert_eq!(app.status(sale).await["stock_remaining"], 2 - n);
    }

    // FL-4: the last unit ends it as sold out; IM-5: later attempts are sold_out.
    let ended = app.status(sale).await;
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["ended_reason"], "sold_out");
    assert_eq!(ended["sold_out_at"], "2026-11-22T12:01:03Z");
    let (status, body) = app.buy(sale, "late").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("sold_out"))
    );

    // FL-5: it never turns back, and IM-3 stock never goes below 0.
    app.clock.set(END + Duration::days(1));
    let later = app.status(sale).await;
    assert_eq!(later["state"], "ended");
    assert_eq!(later["ended_reason"], "sold_out");
    assert_eq!(later["stock_remaining"], 0);
}

#[tokio::test]
async fn fl3_a_sale_ends_by_time_exactly_at_ends_at_whatever_the_stock() {
    let app = spawn_app().await;
    let sale = app.create_sale(5, 1).await;
    app.clock.set(END - Duration::nanoseconds(1_000));
    assert_eq!(app.status(sale).await["state"], "active");
    assert_eq!(app.buy(sale, "just-in-time").await.0, StatusCode::CREATED);

    app.clock.set(END);
    let body = app.status(sale).await;
    assert_eq!(body["state"], "ended");
    assert_eq!(body["ended_reason"], "time");
    assert_eq!(body["stock_remaining"], 4);
    let (status, body) = app.buy(sale, "too-late").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "sale_not_active");
    assert_eq!(body["state"], "ended");
}
