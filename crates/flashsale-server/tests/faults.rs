//! Network faults between scale-out instances and their stores (T-11 in
//! docs/requirements.md; issue 10): the real `flashsale` binary reaches Redis and PostgreSQL
//! only through chaos TCP proxies the test controls ([`chaos`]), and, where the machine allows
//! (root, `ip netns`), runs inside a network namespace of its own that the test partitions
//! ([`netns`]). Every answer is recorded and checked at quiet against PostgreSQL
//! ([`harness::violations`]): `201` means on record, `503 unavailable` means nothing taken,
//! `409 already_purchased` means the buyer holds units, a key's replays agree, and PostgreSQL
//! never holds more than the stock (IM-4, NF-7) or the limit (NF-8).
//!
//! How to run: `cargo test -p flashsale-server --test faults -- --nocapture` (the tally lines
//! go to stderr). See docs/reliability.md, "Network faults".

#![allow(clippy::unwrap_used)]

#[path = "faults/chaos.rs"]
mod chaos;
#[path = "faults/degraded.rs"]
mod degraded;
#[path = "faults/harness.rs"]
mod harness;
#[path = "faults/honest.rs"]
mod honest;
#[path = "faults/netns.rs"]
mod netns;
#[path = "faults/partitions.rs"]
mod partitions;

/// One fault test at a time: each runs instances, proxies and a crowd of buyers on a 2-core
/// machine, and their time bounds (readiness, recovery) are only meaningful when the tests do
/// not starve each other.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
