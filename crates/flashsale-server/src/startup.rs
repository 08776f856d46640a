//! Startup and shutdown: [`Application::build`] does everything that can fail before traffic
//! (bind, open the store, seed the demo sale); [`Application::run_until_stopped`] serves until
//! SIGTERM/SIGINT (or [`Application::shutdown_token`] is cancelled), then stops accepting,
//! drains in-flight requests within [`DRAIN_DEADLINE`], ends live streams, stops background
//! tasks, and flushes the store.

use crate::config::{Config, StoreKind, generate_admin_token};
use crate::http::{self, AppState, Shared, Surface};
use crate::serve::{ConnectionLimits, serve};
use crate::tls::Tls;
use flashsale_core::{Clock, NewSale};
use flashsale_store::SaleStore;
use flashsale_store::embedded::EmbeddedStore;
use flashsale_store::redis_pg::{RedisPgConfig, RedisPgStore};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight requests may take to finish once shutdown starts.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often histogram samples are folded into buckets (and the store sampled for metrics).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// Longest the store's metrics sample may take (its pings have their own, shorter timeouts).
const STORE_SAMPLE_DEADLINE: Duration = Duration::from_secs(3);

/// Why the service could not start.
#[derive(Debug, Error)]
pub enum StartupError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] flashsale_store::StoreError),
    /// A setting the chosen backend needs is missing (the message names the variable).
    #[error("{0}")]
    MissingSetting(&'static str),
    /// The TLS certificate or key could not be loaded.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The metrics recorder could not be built.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
}

/// A bound, ready service.
pub struct Application {
    listener: TcpListener,
    port: u16,
    /// With `--admin-listen`: the admin routes' own listener and its port.
    admin_listener: Option<(TcpListener, u16)>,
    limits: ConnectionLimits,
    /// With `--tls-cert`/`--tls-key`: the certificate served on every listener.
    tls: Option<Tls>,
    state: AppState,
    store: Arc<dyn SaleStore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Application {
    /// Binds, opens the store, seeds the demo sale if asked and none exists.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        tracing::info!(?config, "starting flashsale");
        // Before the store: a bad certificate path fails in milliseconds, not after migrations.
        let tls = Tls::from_settings(&config.tls)?;
        let store = open_store(&config, clock).await?;
        if config.demo_sale {
            seed_demo_sale(store.as_ref()).await?;
        }
        let admin_token = config.admin_token.clone().unwrap_or_else(|| {
            let token = generate_admin_token();
            println!("admin token (set FLASHSALE_ADMIN_TOKEN to choose one): {token}");
            token
        });
        let (listener, port) = bind(config.listen).await?;
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let state = AppState::new(Shared {
            store: Arc::clone(&store),
            admin_token: admin_token.into_bytes().into_boxed_slice(),
            metrics: http::metrics::Metrics::new()?,
            events: http::events::Broadcasts::new(
                Arc::clone(&store),
                shutdown.clone(),
                tasks.clone(),
            ),
            openapi: http::openapi::document(),
            purchase_slots: Semaphore::new(config.protection.max_inflight_purchases),
            limiter: http::limits::Limiter::new(&config.rate_limits),
            request_timeout: config.protection.request_timeout(),
        });
        tracing::info!(port, tls = tls.is_some(), "listening");
        if let Some((_, admin_port)) = &admin_listener {
            tracing::info!(
                port = admin_port,
                "admin routes listening on their own address"
            );
        }
        let limits = ConnectionLimits {
            max_connections: config.protection.max_connections,
            header_read_timeout: config.protection.header_read_timeout(),
        };
        Ok(Self {
            listener,
            port,
            admin_listener,
            limits,
            tls,
            state,
            store,
            shutdown,
            tasks,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port, with `--admin-listen`.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_listener.as_ref().map(|(_, port)| *port)
    }

    /// Cancelling this token shuts the application down as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until a signal or the shutdown token, then shuts down gracefully.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let Self {
            listener,
            admin_listener,
            limits,
            tls,
            state,
            store,
            shutdown,
            tasks,
            ..
        } = self;
        let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
        let acceptor = tls.as_ref().map(Tls::acceptor);
        if let Some(tls) = tls {
            tasks.spawn(tls.reload_on_sighup(shutdown.clone()));
        }
        let upkeep = {
            let state = state.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(METRICS_UPKEEP);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = tick.tick() => {
                            state.metrics.run_upkeep();
                            state.limiter.retain_recent();
                            // Bounded: a hung dependency must not stop the histogram upkeep.
                            let sample = state.metrics.sample_store(state.store.as_ref());
                            if tokio::time::timeout(STORE_SAMPLE_DEADLINE, sample).await.is_err() {
                                tracing::warn!("sampling the store for metrics timed out");
                            }
                        }
                    }
                }
            })
        };
        let mut server = match admin_listener {
            None => tokio::spawn(serve(
                listener,
                http::router(state),
                limits,
                acceptor,
                shutdown.clone(),
            )),
            Some((admin_listener, _)) => {
                let public = serve(
                    listener,
                    http::router_for(state.clone(), Surface::Public),
                    limits,
                    acceptor.clone(),
                    shutdown.clone(),
                );
                let admin = serve(
                    admin_listener,
                    http::router_for(state, Surface::Admin),
                    limits,
                    acceptor,
                    shutdown.clone(),
                );
                tokio::spawn(async move {
                    let (public, admin) = tokio::join!(public, admin);
                    public.and(admin)
                })
            }
        };
        let served = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown.cancelled() => None,
        };
        // Stop background work whatever ended the server.
        shutdown.cancel();
        signals.abort();
        let served = match served {
            Some(result) => result,
            None => {
                tracing::info!("shutting down: draining in-flight requests");
                match tokio::time::timeout(DRAIN_DEADLINE, &mut server).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("drain deadline passed; closing remaining connections");
                        server.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        tasks.close();
        if tokio::time::timeout(DRAIN_DEADLINE, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop in time");
        }
        drop(upkeep);
        store.shutdown().await;
        tracing::info!("stopped");
        served.map_err(io::Error::other)?
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, u16), StartupError> {
    let bind_error = |source| StartupError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let port = listener.local_addr().map_err(bind_error)?.port();
    Ok((listener, port))
}

async fn open_store(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn SaleStore>, StartupError> {
    match config.store {
        StoreKind::Embedded => {
            let dir = config.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, clock))
                .await
                .map_err(|e| {
                    flashsale_store::StoreError::Internal(format!("store open task failed: {e}"))
                })??;
            Ok(Arc::new(store))
        }
        StoreKind::Redis => {
            // The scale-out store decides with Redis's clock (one clock for every instance),
            // not the injected one.
            let redis_url = config
                .redis_url
                .clone()
                .ok_or(StartupError::MissingSetting(
                    "--store redis needs REDIS_URL (--redis-url)",
                ))?;
            let database_url = config
                .database_url
                .clone()
                .ok_or(StartupError::MissingSetting(
                    "--store redis needs DATABASE_URL (--database-url)",
                ))?;
            let mut store_config = RedisPgConfig::new(redis_url, database_url);
            store_config.key_prefix = config.redis_prefix.clone();
            store_config.pg_schema = config.pg_schema.clone();
            Ok(Arc::new(RedisPgStore::connect(store_config).await?))
        }
    }
}

/// Creates the demo sale (starts 30 s from now, lasts 10 min, 100 units, 1 per buyer) when the
/// store has no sale at all.
async fn seed_demo_sale(store: &dyn SaleStore) -> Result<(), StartupError> {
    if !store.statuses().await?.is_empty() {
        return Ok(());
    }
    let starts_at = store.now() + time::Duration::seconds(30);
    let ends_at = starts_at + time::Duration::minutes(10);
    let new = NewSale::parse("Demo sale", starts_at, ends_at, 100, 1)
        .map_err(|e| flashsale_store::StoreError::Internal(format!("demo sale is invalid: {e}")))?;
    let sale = store.create_sale(new).await?;
    tracing::info!(sale = %sale.id, starts_at = %sale.starts_at, "created the demo sale");
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
    token.cancel();
}
