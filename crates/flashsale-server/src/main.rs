//! The `flashsale` binary: parse the config, start logging, serve until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use flashsale_core::SystemClock;
use flashsale_server::{Application, Config, telemetry};
use std::sync::Arc;

// Every request allocates (headers, body, the order, the answer) on two cores shared by many
// tasks: glibc's malloc took about 16% of the purchase path's CPU in `perf`; mimalloc's
// per-thread free lists make those allocations cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init();
    let app = match Application::build(config, Arc::new(SystemClock)).await {
        Ok(app) => app,
        Err(e) => {
            // One line that says what to do (each error's message carries its cause), and
            // nothing was served.
            tracing::error!("cannot start: {e}");
            std::process::exit(1);
        }
    };
    app.run_until_stopped()
        .await
        .context("serving the flashsale API")?;
    Ok(())
}
