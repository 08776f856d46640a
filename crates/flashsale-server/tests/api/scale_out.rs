//! Scale-out over real HTTP (issue 3): three instances on different ports share one Redis and
//! one PostgreSQL (TEST_REDIS_URL / TEST_DATABASE_URL, defaulting to the local services, in a
//! schema and key prefix of the test's own), and 3,000 buyers spread across them race for 100
//! units.

use flashsale_core::SystemClock;
use flashsale_server::{Application, Config, StoreKind};
use flashsale_testkit::isolation::{database_url, redis_url, unique};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Semaphore;

pub(crate) const TOKEN: &str = "scale-out-admin-token";

/// Drops the test's schema and keys, however the test ends.
pub(crate) use flashsale_testkit::isolation::Cleanup;

pub(crate) async fn spawn_instance(name: &str) -> (String, tokio_util::sync::CancellationToken) {
    let dir = std::env::temp_dir();
    let mut config = Config::for_tests("127.0.0.1:0".parse().unwrap(), dir, TOKEN);
    config.store = StoreKind::Redis;
    config.redis_url = Some(redis_url());
    config.database_url = Some(database_url());
    config.redis_prefix = name.to_owned();
    config.pg_schema = name.to_owned();
    let app = Application::build(config, Arc::new(SystemClock))
        .await
        .unwrap_or_else(|e| panic!("cannot start on the local Redis/PostgreSQL: {e}"));
    let address = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    (address, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_sell_exactly_100_units_to_3000_buyers_over_http() {
    let name = unique("http");
    let _cleanup = Cleanup::named(&name);
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(spawn_instance(&name).await);
    }
    let client = reqwest::Client::new();
    let now = OffsetDateTime::now_utc();
    let sale: Value = client
        .post(format!("{}/api/admin/sales", instances[0].0))
        .bearer_auth(TOKEN)
        .json(&json!({
            "name": "Scale-out widget",
            "starts_at": (now - time::Duration::seconds(1)).format(&Rfc3339).unwrap(),
            "ends_at": (now + time::Duration::hours(1)).format(&Rfc3339).unwrap(),
            "stock": 100, "per_user_limit": 1,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sale_id = sale["sale_id"].as_i64().unwrap();

    // 3,000 buyers, round robin over the instances, as many in flight as sockets allow.
    let in_flight = Arc::new(Semaphore::new(400));
    let mut tasks = Vec::new();
    for i in 0..3000 {
        let url = format!("{}/api/sales/{sale_id}/orders", instances[i % 3].0);
        let client = client.clone();
        let in_flight = Arc::clone(&in_flight);
        tasks.push(tokio::spawn(async move {
            let _slot = in_flight.acquire_owned().await.unwrap();
            loop {
                let response = client
                    .post(&url)
                    .json(&json!({ "user_id": format!("buyer-{i}") }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                // 503 means nothing was taken: retrying is what a client should do.
                if status != StatusCode::SERVICE_UNAVAILABLE {
                    return (status, body);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let (mut confirmed, mut sold_out) = (0, 0);
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match (status, body["code"].as_str()) {
            (StatusCode::CREATED, Some("confirmed")) => confirmed += 1,
            (StatusCode::CONFLICT, Some("sold_out")) => sold_out += 1,
            other => panic!("unexpected answer {other:?}: {body}"),
        }
    }
    assert_eq!(confirmed, 100);
    assert_eq!(sold_out, 2900);

    // Every instance's status (from its snapshot) soon says sold out; PostgreSQL agrees.
    for (address, _) in &instances {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let status: Value = client
                .get(format!("{address}/api/sales/{sale_id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if status["stock_remaining"] == 0 && status["ended_reason"] == "sold_out" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{address}: {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let summary: Value = client
        .get(format!(
            "{}/api/admin/sales/{sale_id}/summary",
            instances[2].0
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["confirmed_units"], 100, "{summary}");
    let (pg, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = pg
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT user_id), (SELECT sold FROM \"{name}\".sales WHERE id = $1)
                 FROM \"{name}\".orders WHERE sale_id = $1"
            ),
            &[&sale_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 100);
    assert_eq!(row.get::<_, i64>(1), 100);
    assert_eq!(row.get::<_, i32>(2), 100);
    for (_, stop) in instances {
        stop.cancel();
    }
}
