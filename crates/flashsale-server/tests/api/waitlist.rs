//! The waitlist over HTTP (SPEC 9, CO-9, CO-10): joining, the place, leaving, every refusal
//! with its code, an expired reservation offered to the head of the list on the manual clock,
//! the offer paid, the summary's counters, and the list's lapse at the end.

use crate::checkout::{demo_pay, hold_sale, id_of, instant, reserve, units};
use crate::helpers::{END, TestApp, read, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::Duration;

async fn join(app: &TestApp, sale: i64, body: &Value) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url(&format!("/api/sales/{sale}/waitlist")))
        .json(body)
        .send()
        .await
        .unwrap();
    read(response).await
}

async fn join_as(app: &TestApp, sale: i64, user: &str) -> (StatusCode, Value) {
    join(app, sale, &json!({ "user_id": user })).await
}

async fn place(app: &TestApp, sale: i64, user: &str) -> (StatusCode, Value) {
    read(app.get(&format!("/api/sales/{sale}/waitlist/{user}")).await).await
}

async fn leave(app: &TestApp, sale: i64, user: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .delete(app.url(&format!("/api/sales/{sale}/waitlist/{user}")))
        .send()
        .await
        .unwrap();
    read(response).await
}

fn code(answer: &(StatusCode, Value)) -> (StatusCode, &str) {
    (answer.0, answer.1["code"].as_str().unwrap_or("<none>"))
}

#[tokio::test]
async fn co9_buyers_join_see_their_place_and_leave_with_a_code_for_each_refusal() {
    let app = spawn_app().await;
    let sale = hold_sale(&app, 1, 1, 600).await;
    assert_eq!(
        code(&join_as(&app, sale, "ann").await),
        (StatusCode::CONFLICT, "units_available")
    );
    reserve(&app, sale, "holder").await;

    let joined = join_as(&app, sale, "ann").await;
    assert_eq!(
        code(&joined),
        (StatusCode::CREATED, "waitlisted"),
        "{}",
        joined.1
    );
    assert_eq!(joined.1["position"], 1);
    assert_eq!(joined.1["sale_id"], sale);
    assert_eq!(joined.1["user_id"], "ann");
    assert_eq!(join_as(&app, sale, "bob").await.1["position"], 2);
    let again = join_as(&app, sale, "ann").await;
    assert_eq!(code(&again), (StatusCode::CONFLICT, "already_waitlisted"));
    assert!(
        again.1["message"].as_str().unwrap().contains("position 1"),
        "{}",
        again.1
    );
    assert_eq!(
        code(&join_as(&app, sale, "holder").await),
        (StatusCode::CONFLICT, "already_purchased")
    );
    assert_eq!(app.status(sale).await["waitlist_length"], 2);

    let (status, body) = place(&app, sale, "bob").await;
    assert_eq!(
        (status, &body["code"], &body["position"]),
        (StatusCode::OK, &json!("waitlisted"), &json!(2))
    );
    assert_eq!(
        code(&place(&app, sale, "dan").await),
        (StatusCode::NOT_FOUND, "not_waitlisted")
    );
    assert_eq!(
        code(&leave(&app, sale, "ann").await),
        (StatusCode::OK, "left_waitlist")
    );
    assert_eq!(
        code(&leave(&app, sale, "ann").await),
        (StatusCode::NOT_FOUND, "not_waitlisted")
    );
    assert_eq!(place(&app, sale, "bob").await.1["position"], 1);
    assert_eq!(app.status(sale).await["waitlist_length"], 1);

    // Bad requests, each with its code; nothing changes.
    for (body, expected) in [
        (json!({}), "invalid_request"),
        (json!({ "user_id": "" }), "invalid_request"),
        (json!({ "user_id": 7 }), "invalid_request"),
        (json!([]), "invalid_request"),
    ] {
        let answer = join(&app, sale, &body).await;
        assert_eq!(
            code(&answer),
            (StatusCode::BAD_REQUEST, expected),
            "{body}: {}",
            answer.1
        );
    }
    let not_json = app
        .client
        .post(app.url(&format!("/api/sales/{sale}/waitlist")))
        .header("content-type", "text/plain")
        .body("ann")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for path in [
        "/api/sales/999999/waitlist/ann".to_owned(),
        "/api/sales/abc/waitlist/ann".to_owned(),
    ] {
        let answer = read(app.get(&path).await).await;
        assert_eq!(
            code(&answer),
            (StatusCode::NOT_FOUND, "sale_not_found"),
            "{path}"
        );
    }
    assert_eq!(
        code(&join_as(&app, 999_999, "ann").await),
        (StatusCode::NOT_FOUND, "sale_not_found")
    );
    assert_eq!(
        code(&leave(&app, 999_999, "ann").await),
        (StatusCode::NOT_FOUND, "sale_not_found")
    );
    assert_eq!(app.status(sale).await["waitlist_length"], 1);
}

#[tokio::test]
async fn co10_co12_an_expired_reservation_is_offered_to_the_head_and_the_offer_is_paid() {
    let app = spawn_app().await;
    let sale = hold_sale(&app, 1, 1, 60).await;
    let held = reserve(&app, sale, "holder").await;
    join_as(&app, sale, "ann").await;
    join_as(&app, sale, "bob").await;
    app.advance(Duration::seconds(60));

    // The store's timer expires the reservation and offers its unit to ann, on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let offer = loop {
        let (status, body) = place(&app, sale, "ann").await;
        if body["code"] == "offered" {
            assert_eq!(status, StatusCode::OK);
            break body["order"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never offered: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(offer["offered"], true, "{offer}");
    assert_eq!(offer["status"], "reserved");
    assert_eq!(offer["quantity"], 1);
    assert_eq!(
        instant(&offer["expires_at"]) - instant(&offer["created_at"]),
        Duration::seconds(60),
        "a fresh window"
    );
    assert!(instant(&offer["created_at"]) >= instant(&held["expires_at"]));
    assert_eq!(place(&app, sale, "bob").await.1["position"], 1);
    assert_eq!(units(&app, sale).await, (0, 1, 0));

    let (status, paid) = demo_pay(&app, id_of(&offer)).await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    assert_eq!(paid["order"]["offered"], true);
    assert_eq!(units(&app, sale).await, (0, 0, 1));
    let (_, now) = place(&app, sale, "ann").await;
    assert_eq!(now["order"]["status"], "paid");

    let summary = app.summary(sale).await;
    assert_eq!(
        summary["checkout"],
        json!({
            "reserved": 2, "paid": 1, "expired": 1, "cancelled": 0,
            "waitlist_joins": 2, "offers_made": 1, "offers_taken": 1, "waitlist_length": 1,
        }),
        "{summary}"
    );
    // Every unit is sold: nothing can free up for bob any more.
    assert_eq!(
        code(&join_as(&app, sale, "cy").await),
        (StatusCode::CONFLICT, "sold_out")
    );
}

#[tokio::test]
async fn co9_the_waitlist_lapses_at_the_end() {
    let app = spawn_app().await;
    let sale = hold_sale(&app, 1, 1, 600).await;
    reserve(&app, sale, "holder").await;
    join_as(&app, sale, "ann").await;
    app.clock.set(END);
    assert_eq!(
        code(&place(&app, sale, "ann").await),
        (StatusCode::NOT_FOUND, "not_waitlisted")
    );
    assert_eq!(app.status(sale).await["waitlist_length"], 0);
    assert_eq!(
        code(&join_as(&app, sale, "bob").await),
        (StatusCode::CONFLICT, "waitlist_closed")
    );
}
