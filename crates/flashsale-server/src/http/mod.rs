//! The HTTP layer: the router, shared state, and one module per resource. The contract is
//! `docs/api.md`; `GET /api/openapi.json` is generated from the annotations here.
//!
//! Every answer a client can get is JSON (except `/metrics`, `/` and the event stream): axum's
//! own text rejections never escape, because bodies and path parameters are read by our own
//! extractors ([`extract`]) and the fallbacks answer `not_found` / `method_not_allowed`.
//! Every answer carries `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.

pub mod accounts;
pub mod admin;
pub mod admin_ledger;
pub mod admin_live;
pub mod admin_orders;
pub mod admin_sales;
pub mod checkout;
pub mod client_ip;
pub mod error;
pub mod events;
pub mod export;
pub mod extract;
pub mod health;
pub mod identity;
pub mod images;
pub mod json;
pub mod known_sales;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod orders;
pub mod page;
pub mod sales;
pub mod stack;
pub mod waitlist;

use crate::address_slots::AddressSlots;
use crate::http::error::ApiError;
use axum::Router;
use axum::routing::{get, patch, post, put};
use bytes::Bytes;
use flashsale_store::SaleStore;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Route paths, shared by the router and the per-route metrics.
pub mod routes {
    /// The featured sale.
    pub const FEATURED_SALE: &str = "/api/sale";
    /// One sale.
    pub const SALE: &str = "/api/sales/{sale_id}";
    /// Buying.
    pub const ORDERS: &str = "/api/sales/{sale_id}/orders";
    /// One buyer's orders.
    pub const BUYER_ORDERS: &str = "/api/sales/{sale_id}/orders/{user_id}";
    /// The signed-in caller's orders.
    pub const MY_ORDERS: &str = "/api/sales/{sale_id}/orders/me";
    /// Live updates.
    pub const EVENTS: &str = "/api/sales/{sale_id}/events";
    /// Creating a sale.
    pub const ADMIN_SALES: &str = "/api/admin/sales";
    /// A sale's summary.
    pub const ADMIN_SUMMARY: &str = "/api/admin/sales/{sale_id}/summary";
    /// Editing a sale.
    pub const ADMIN_SALE: &str = "/api/admin/sales/{sale_id}";
    /// A sale's product image, uploaded or removed.
    pub const ADMIN_IMAGE: &str = "/api/admin/sales/{sale_id}/image";
    /// A sale's product image, served.
    pub const IMAGE: &str = "/api/sales/{sale_id}/image";
    /// Cancelling a sale.
    pub const ADMIN_CANCEL: &str = "/api/admin/sales/{sale_id}/cancel";
    /// A sale's orders (JSON pages or CSV).
    pub const ADMIN_ORDERS: &str = "/api/admin/sales/{sale_id}/orders";
    /// A sale's live figures (history, then samples).
    pub const ADMIN_LIVE: &str = "/api/admin/sales/{sale_id}/live";
    /// The operator's page.
    pub const ADMIN_PAGE: &str = "/admin";
    /// A sale's stock ledger (JSON pages or CSV).
    pub const ADMIN_LEDGER: &str = "/api/admin/sales/{sale_id}/ledger";
    /// Liveness.
    pub const HEALTHZ: &str = "/healthz";
    /// Readiness.
    pub const READYZ: &str = "/readyz";
    /// Prometheus metrics.
    pub const METRICS: &str = "/metrics";
    /// Signing up (`--identity accounts`).
    pub const ACCOUNTS: &str = "/api/accounts";
    /// Logging in (`--identity accounts`).
    pub const SESSIONS: &str = "/api/sessions";
    /// Logging out (`--identity accounts`).
    pub const CURRENT_SESSION: &str = "/api/sessions/current";
    /// The OpenAPI document.
    pub const OPENAPI: &str = "/api/openapi.json";
    /// The web page.
    pub const PAGE: &str = "/";
    /// The page's icon.
    pub const FAVICON: &str = "/favicon.ico";
    /// One order by id (`GET`), or its cancel by the buyer (`DELETE`).
    pub const ORDER: &str = "/api/orders/{order_id}";
    /// Demo payment of a reservation (only without a webhook secret).
    pub const ORDER_PAY: &str = "/api/orders/{order_id}/pay";
    /// The payment system's webhook (only with a webhook secret).
    pub const PAYMENT_WEBHOOK: &str = "/api/payments/webhook";
    /// Joining a sale's waitlist.
    pub const WAITLIST: &str = "/api/sales/{sale_id}/waitlist";
    /// A buyer's place on a sale's waitlist (`GET`), or leaving it (`DELETE`).
    pub const WAITLIST_PLACE: &str = "/api/sales/{sale_id}/waitlist/{user_id}";
    /// Every route, for metrics.
    pub const ALL: &[&str] = &[
        FEATURED_SALE,
        SALE,
        ORDERS,
        BUYER_ORDERS,
        MY_ORDERS,
        EVENTS,
        ADMIN_SALES,
        ADMIN_SUMMARY,
        ADMIN_SALE,
        ADMIN_CANCEL,
        ADMIN_ORDERS,
        ADMIN_IMAGE,
        IMAGE,
        ADMIN_LIVE,
        ADMIN_PAGE,
        HEALTHZ,
        READYZ,
        METRICS,
        OPENAPI,
        PAGE,
        FAVICON,
        ACCOUNTS,
        SESSIONS,
        CURRENT_SESSION,
        ORDER,
        ORDER_PAY,
        PAYMENT_WEBHOOK,
        WAITLIST,
        WAITLIST_PLACE,
    ];
}

/// What every handler shares. One `Arc`, so cloning the state per request is one increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The shared parts of [`AppState`].
pub struct Shared {
    /// The backend chosen at startup.
    pub store: Arc<dyn SaleStore>,
    /// The admin bearer token's bytes.
    pub admin_token: Box<[u8]>,
    /// Pre-registered metric handles and the exporter.
    pub metrics: metrics::Metrics,
    /// Per-sale live-update broadcasters.
    pub events: events::Broadcasts,
    /// Per-sale samplers and histories of the operator's live view.
    pub live: Arc<crate::live::Live>,
    /// The OpenAPI document, serialised once.
    pub openapi: Bytes,
    /// Slots for purchases in flight (`--max-inflight-purchases`): past them, 503 at once. A
    /// slot is held until the purchase's work ends, even if its client hung up before.
    pub purchase_slots: Arc<Semaphore>,
    /// Per-address and per-buyer rate limits.
    pub limiter: limits::Limiter,
    /// How long an answer may take before 503 `timeout`.
    pub request_timeout: Duration,
    /// How long a request body may take to arrive before 408 `body_timeout`.
    pub body_timeout: Duration,
    /// Sales seen so far (does the sale exist, is it in its window?).
    pub known_sales: known_sales::KnownSales,
    /// Open event streams per client address (`--max-streams-per-ip`).
    pub streams: Arc<AddressSlots>,
    /// How long one event stream lasts before the server ends it (the page reconnects).
    pub stream_lifetime: Duration,
    /// The largest product image accepted (`--max-image-bytes`).
    pub max_image_bytes: usize,
    /// With `--ops-listen`, `/metrics` is served there only.
    pub ops_listener: bool,
    /// How buyers are identified (`--identity`).
    pub identity: identity::Identity,
    /// The payment webhook's secret (`--payment-webhook-secret`); `None`: no webhook, and the
    /// demo payment route instead.
    pub webhook_secret: Option<flashsale_core::WebhookSecret>,
}

impl AppState {
    /// Wraps the shared parts.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Which routes a listener serves (`--admin-listen` splits them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Every route on one listener (the default).
    All,
    /// Everything but `/api/admin/*` and `/admin`, which answer 404 here.
    Public,
    /// Only `/api/admin/*` and the operator's page `/admin` (plus health, readiness and metrics for the operator's probes).
    Admin,
    /// Only health, readiness and metrics (`--ops-listen`): probes get through even when the
    /// public listener's connection budget is spent.
    Ops,
}

/// The service a listener serves: the router inside its [`stack::Framed`].
pub type App = stack::Framed<Router>;

/// Builds the router with every route, the JSON fallbacks and the middleware stack.
pub fn router(state: AppState) -> App {
    router_for(state, Surface::All)
}

/// Builds the router for one listener's [`Surface`].
pub fn router_for(state: AppState, surface: Surface) -> App {
    let mut routes = Router::new()
        .route(routes::HEALTHZ, get(health::healthz))
        .route(routes::READYZ, get(health::readyz));
    // With an ops listener, the metrics (which tell how busy the sale is) leave the public one.
    if !state.ops_listener || matches!(surface, Surface::Ops | Surface::Admin) {
        routes = routes.route(routes::METRICS, get(metrics::get_metrics));
    }
    if matches!(surface, Surface::All | Surface::Public) {
        routes = routes
            .route(routes::FEATURED_SALE, get(sales::get_featured_sale))
            .route(routes::SALE, get(sales::get_sale))
            .route(routes::ORDERS, post(orders::create_order))
            .route(routes::BUYER_ORDERS, get(orders::get_orders))
            .route(routes::MY_ORDERS, get(orders::get_my_orders))
            .route(routes::EVENTS, get(events::get_events))
            .route(routes::IMAGE, get(images::get_image))
            .route(
                routes::ORDER,
                get(checkout::get_order).delete(checkout::cancel_order),
            )
            .route(routes::ORDER_PAY, post(checkout::demo_payment))
            .route(routes::PAYMENT_WEBHOOK, post(checkout::payment_webhook))
            .route(routes::WAITLIST, post(waitlist::join_waitlist))
            .route(
                routes::WAITLIST_PLACE,
                get(waitlist::get_waitlist_place).delete(waitlist::leave_waitlist),
            )
            .route(routes::OPENAPI, get(openapi::get_openapi))
            .route(routes::PAGE, page::page_route(state.identity.mode()))
            .route(routes::FAVICON, get(page::get_favicon));
        if let identity::Identity::Accounts(_) = &state.identity {
            routes = accounts::routes(routes);
        }
    }
    if matches!(surface, Surface::All | Surface::Admin) {
        routes = routes
            .route(
                routes::ADMIN_SALES,
                post(admin::create_sale).get(admin_sales::list_sales),
            )
            .route(routes::ADMIN_SALE, patch(admin_sales::update_sale))
            .route(routes::ADMIN_CANCEL, post(admin_sales::cancel_sale))
            .route(routes::ADMIN_ORDERS, get(admin_orders::list_orders))
            .route(
                routes::ADMIN_IMAGE,
                put(images::put_image).delete(images::delete_image),
            )
            .route(routes::ADMIN_LIVE, get(admin_live::get_live))
            .route(routes::ADMIN_PAGE, get(page::get_admin_page))
            .route(routes::ADMIN_LEDGER, get(admin_ledger::list_ledger))
            .route(routes::ADMIN_SUMMARY, get(admin::get_summary));
    }
    let router = routes
        .route_layer(stack::RouteStackLayer::new(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    stack::Framed::new(router)
}

/// 404 `not_found` for unknown routes.
async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// 405 `method_not_allowed` for known routes with another method.
async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
