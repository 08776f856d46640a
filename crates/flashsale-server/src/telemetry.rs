//! Logging: `tracing` with `RUST_LOG` respected (default `info`). Each request runs in a span
//! carrying its request id (the `x-request-id` header, generated when absent), so every line
//! logged while serving it names the request.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing), which
/// lets every test call it.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour codes only help people at a terminal; they garble files and log collectors.
        .with_ansi(std::io::stdout().is_terminal())
        .try_init();
}
