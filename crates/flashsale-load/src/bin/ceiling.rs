//! `flashsale-ceiling`: the trivial axum server every benchmark figure is divided by
//! (docs/requirements.md#8-the-performance-bar). It answers the same routes as the service with
//! the same JSON shapes but keeps no state: parsing the purchase body and writing a small answer
//! is all it does, so it measures what this machine, this HTTP stack and this client can do at
//! all.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Trivial axum server answering the flashsale purchase and status routes without a store.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(
        long,
        default_value = "127.0.0.1:8090",
        env = "FLASHSALE_CEILING_LISTEN"
    )]
    listen: SocketAddr,
}

/// The purchase body of docs/api.md.
#[derive(Debug, Deserialize)]
struct OrderRequest {
    user_id: String,
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize)]
struct Order {
    order_id: u64,
    sale_id: u64,
    user_id: String,
    quantity: u32,
}

#[derive(Debug, Serialize)]
struct Confirmed {
    code: &'static str,
    order: Order,
}

#[derive(Debug, Serialize)]
struct Status {
    sale_id: u64,
    name: &'static str,
    state: &'static str,
    ended_reason: Option<&'static str>,
    starts_at: &'static str,
    ends_at: &'static str,
    stock_total: u64,
    stock_remaining: u64,
    per_user_limit: u32,
    sold_out_at: Option<&'static str>,
    server_time: String,
}

async fn create_order(
    Path(sale_id): Path<u64>,
    Json(req): Json<OrderRequest>,
) -> (StatusCode, Json<Confirmed>) {
    let order = Order {
        order_id: 1,
        sale_id,
        user_id: req.user_id,
        quantity: req.quantity,
    };
    (
        StatusCode::CREATED,
        Json(Confirmed {
            code: "confirmed",
            order,
        }),
    )
}

async fn get_sale(Path(sale_id): Path<u64>) -> Json<Status> {
    Json(Status {
        sale_id,
        name: "ceiling",
        state: "active",
        ended_reason: None,
        starts_at: "2026-01-01T00:00:00Z",
        ends_at: "2036-01-01T00:00:00Z",
        stock_total: 1_000_000,
        stock_remaining: 1_000_000,
        per_user_limit: 1,
        sold_out_at: None,
        // The service formats its clock into every status answer; so does the ceiling.
        server_time: OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default(),
    })
}

async fn healthz() -> &'static str {
    "{\"status\":\"ok\"}"
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Router::new()
        .route("/api/sales/{sale_id}/orders", post(create_order))
        .route("/api/sales/{sale_id}", get(get_sale))
        .route("/healthz", get(healthz));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("ceiling listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
