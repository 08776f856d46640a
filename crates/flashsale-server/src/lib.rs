//! The flashsale HTTP service as a library, so tests can start it in-process on port 0.
//!
//! - [`admin_token`]: the admin token, given or generated once and kept in the data directory.
//! - [`config`]: the one `Config` (flags and `FLASHSALE_*` environment variables).
//! - [`startup`]: [`startup::Application`]: bind, open the store, resolve the admin token,
//!   seed the demo sale, serve,
//!   shut down gracefully (stop accepting, drain, end live streams, flush the store).
//! - [`serve`]: the accept loop: connection limits (total and per address), header-read
//!   timeout, peer addresses.
//! - [`address_slots`]: what each client address holds open (connections, event streams).
//! - [`tls`]: native HTTPS (rustls; HTTP/2 and HTTP/1.1 by ALPN; certificate reload on SIGHUP).
//! - [`telemetry`]: logging (`RUST_LOG`, a request id on every line).
//! - [`live`]: the operator's live view: per-sale samplers and their bounded histories;
//!   [`latency`]: this instance's purchase latency as percentiles.
//! - [`http`]: the router and one module per resource; the contract is `docs/api.md`.
//!
//! Dependencies point inward: this crate uses `flashsale-store` (the `SaleStore` trait and its
//! backends) and `flashsale-core` (the domain); neither knows about HTTP.

#![warn(missing_docs)]

pub mod address_slots;
pub mod admin_token;
pub mod config;
pub mod http;
pub mod latency;
pub mod live;
pub mod serve;
pub mod startup;
pub mod telemetry;
pub mod tls;

pub use config::{Config, StoreKind};
pub use startup::Application;
