//! The `flashsale` binary: parse the config, start logging, serve until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use flashsale_core::SystemClock;
use flashsale_server::{Application, Config, telemetry};
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init();
    let app = Application::build(config, Arc::new(SystemClock))
        .await
        .context("starting the flashsale service")?;
    app.run_until_stopped()
        .await
        .context("serving the flashsale API")?;
    Ok(())
}
