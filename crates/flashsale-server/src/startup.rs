//! Startup and shutdown: [`Application::build`] does everything that can fail before traffic
//! (load the TLS pair and, with `--identity jwt`, the identity provider's keys; bind, so a
//! taken port fails before anything is created; then open the store the flags choose, through
//! [`Config::store_config`], and with `--identity accounts` the account store beside it (its
//! session key, the logouts so far); resolve the admin token; seed the demo sale);
//! [`Application::run_until_stopped`] serves until SIGTERM/SIGINT (or
//! [`Application::shutdown_token`] is cancelled), then stops accepting, drains in-flight
//! requests within [`DRAIN_DEADLINE`], ends live streams, stops background tasks (the TLS and
//! JWT key reloads and the logout poll among them), and shuts the store down (it waits for every purchase in
//! flight, including those whose client hung up, then flushes).

use crate::address_slots::AddressSlots;
use crate::admin_token::{self, TokenFileError, TokenSource};
use crate::config::{Config, check_admin_token, generate_admin_token};
use crate::http::identity::{Accounts, AccountsError, Identity, JwtError};
use crate::http::{self, AppState, Shared, Surface};
use crate::serve::{ConnectionLimits, serve};
use crate::tls::Tls;
use flashsale_core::{Clock, NewSale};
use flashsale_store::SaleStore;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinHandle};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight requests may take to finish once shutdown starts.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Connections the `--ops-listen` address accepts at once (probes and a metrics scraper).
const OPS_MAX_CONNECTIONS: usize = 64;
/// How often histogram samples are folded into buckets (and the store sampled for metrics).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// Longest the store's metrics sample may take (its pings have their own, shorter timeouts).
const STORE_SAMPLE_DEADLINE: Duration = Duration::from_secs(3);

/// Why the service could not start.
#[derive(Debug, Error)]
pub enum StartupError {
    /// The listen address could not be bound (the cause is in the message, not chained, so
    /// that the one line printed says it once).
    #[error("cannot listen on {addr}: {}", bind_cause(.source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The admin token file could not be read or written.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    /// The store could not be opened.
    #[error("cannot open the store: {}", .0.report())]
    Store(#[from] flashsale_store::StoreError),
    /// A setting the chosen backend needs is missing (the message names the variable).
    #[error("{0}")]
    MissingSetting(&'static str),
    /// A setting is unusable (the message says which and why).
    #[error("{0}")]
    BadSetting(String),
    /// `--identity jwt` without a usable key file.
    #[error(transparent)]
    Identity(#[from] JwtError),
    /// `--identity accounts` without a usable session key or account store.
    #[error(transparent)]
    Accounts(#[from] AccountsError),
    /// The TLS certificate or key could not be loaded.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The metrics recorder could not be built.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
}

/// A bound, ready service.
pub struct Application {
    listeners: Listeners,
    ports: Ports,
    limits: ConnectionLimits,
    /// With `--tls-cert`/`--tls-key`: the certificate served on every listener.
    tls: Option<Tls>,
    state: AppState,
    store: Arc<dyn SaleStore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The ports the listeners were bound to (the actual ones, with port 0).
struct Ports {
    public: u16,
    admin: Option<u16>,
    ops: Option<u16>,
}

impl Application {
    /// Binds first (a taken port fails before anything is created), then opens the store,
    /// resolves the admin token, and seeds the demo sale if asked and none exists.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        if let Some(token) = &config.admin_token {
            check_admin_token(token).map_err(StartupError::BadSetting)?;
        }
        // Before binding and the store: a bad certificate or JWT key file fails in
        // milliseconds.
        let tls = Tls::from_settings(&config.tls)?;
        let identity = Identity::from_settings(&config.identity)?;
        let (listeners, ports) = bind_listeners(&config).await?;
        let store_config = config
            .store_config()
            .map_err(StartupError::MissingSetting)?;
        if identity.is_none() {
            Accounts::check_settings(&config.identity, &store_config)?;
        }
        let token_home = store_config.local_dir().map(Path::to_path_buf);
        let accounts_config = store_config.clone();
        let store = store_config.open(clock).await?;
        let identity = match identity {
            Some(identity) => identity,
            None => Identity::Accounts(Arc::new(
                Accounts::open(
                    &config.identity,
                    &accounts_config,
                    config.rate_limits.enabled,
                    store.now(),
                )
                .await?,
            )),
        };
        let admin_token = resolve_admin_token(&config, token_home.as_deref())?;
        if config.demo_sale {
            seed_demo_sale(store.as_ref()).await?;
        }
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let state = app_state(
            &config,
            &store,
            admin_token,
            identity,
            &shutdown,
            &tasks,
            &ports,
        )?;
        log_addresses(&config, &ports, tls.is_some());
        let limits = connection_limits(&config);
        Ok(Self {
            listeners,
            ports,
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
        self.ports.public
    }

    /// The admin listener's port, with `--admin-listen`.
    pub fn admin_port(&self) -> Option<u16> {
        self.ports.admin
    }

    /// The probes' listener port, with `--ops-listen`.
    pub fn ops_port(&self) -> Option<u16> {
        self.ports.ops
    }

    /// Cancelling this token shuts the application down as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until a signal or the shutdown token, then shuts down gracefully.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let Self {
            listeners,
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
        if let Identity::Jwt(verifier) = &state.identity {
            tasks.spawn(Arc::clone(verifier).watch(shutdown.clone()));
        }
        if let Identity::Accounts(accounts) = &state.identity {
            let clock = Arc::clone(&store);
            let idle = Arc::clone(accounts);
            tasks.spawn(Arc::clone(&accounts.sessions).watch(
                Arc::clone(&accounts.store),
                move || clock.now(),
                move || idle.limits.retain_recent(),
                shutdown.clone(),
            ));
        }
        let upkeep = spawn_upkeep(&tasks, state.clone(), shutdown.clone());
        tasks.spawn(Arc::clone(&state.live).watch_active());
        let mut server = tokio::spawn(serve_listeners(
            listeners,
            state,
            limits,
            acceptor,
            shutdown.clone(),
        ));
        let served = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown.cancelled() => None,
        };
        // Stop background work whatever ended the server.
        shutdown.cancel();
        signals.abort();
        let served = match served {
            Some(result) => result,
            None => drain_connections(server).await,
        };
        stop_background_tasks(&tasks).await;
        drop(upkeep);
        store.shutdown().await;
        tracing::info!("stopped");
        served.map_err(io::Error::other)?
    }
}

/// The listeners one instance serves.
struct Listeners {
    /// The public routes (and the admin ones, unless `admin` is set).
    public: TcpListener,
    /// With `--admin-listen`: the admin routes.
    admin: Option<TcpListener>,
    /// With `--ops-listen`: health, readiness and metrics.
    ops: Option<TcpListener>,
}

/// Binds `--listen`, then `--admin-listen` and `--ops-listen` if set.
async fn bind_listeners(config: &Config) -> Result<(Listeners, Ports), StartupError> {
    let (public, public_port) = bind(config.listen).await?;
    let (admin, admin_port) = bind_optional(config.admin_listen).await?;
    let (ops, ops_port) = bind_optional(config.ops_listen).await?;
    let listeners = Listeners { public, admin, ops };
    let ports = Ports {
        public: public_port,
        admin: admin_port,
        ops: ops_port,
    };
    Ok((listeners, ports))
}

/// The admin token: the one given; else, for a store with a directory of its own, the one
/// kept there (generated the first time); else one generated for this run. Logs where it
/// came from, and prints a generated one once.
fn resolve_admin_token(config: &Config, token_home: Option<&Path>) -> Result<String, StartupError> {
    let (admin_token, token_source) = match (&config.admin_token, token_home) {
        (Some(token), _) => (token.clone(), TokenSource::Given),
        (None, Some(dir)) => admin_token::load_or_create(dir)?,
        (None, None) => (generate_admin_token(), TokenSource::GeneratedForThisRun),
    };
    tracing::info!(?config, admin_token = %token_source, "starting flashsale");
    match &token_source {
        TokenSource::Given | TokenSource::Loaded(_) => {}
        TokenSource::Generated(path) => println!(
            "admin token (generated once, stored in {}; --admin-token overrides it): {admin_token}",
            path.display()
        ),
        TokenSource::GeneratedForThisRun => println!(
            "admin token (generated for this run; give every instance the same --admin-token): {admin_token}"
        ),
    }
    Ok(admin_token)
}

/// `max` for a per-address bound, or no bound with `--rate-limit off` (load tests from one
/// machine).
fn per_address(config: &Config, max: usize) -> usize {
    if config.rate_limits.enabled {
        max
    } else {
        usize::MAX
    }
}

/// What every request handler shares.
fn app_state(
    config: &Config,
    store: &Arc<dyn SaleStore>,
    admin_token: String,
    identity: Identity,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
    ports: &Ports,
) -> Result<AppState, StartupError> {
    let metrics = http::metrics::Metrics::new()?;
    let live = crate::live::Live::new(
        Arc::clone(store),
        metrics.purchase_latency(),
        shutdown.clone(),
        tasks.clone(),
    );
    Ok(AppState::new(Shared {
        store: Arc::clone(store),
        admin_token: admin_token.into_bytes().into_boxed_slice(),
        metrics,
        events: http::events::Broadcasts::new(Arc::clone(store), shutdown.clone(), tasks.clone()),
        live,
        openapi: http::openapi::document_for(identity.mode()),
        purchase_slots: Arc::new(Semaphore::new(config.protection.max_inflight_purchases)),
        limiter: http::limits::Limiter::new(&config.rate_limits),
        request_timeout: config.protection.request_timeout(),
        body_timeout: config.protection.body_timeout(),
        known_sales: http::known_sales::KnownSales::default(),
        streams: AddressSlots::new(per_address(config, config.protection.max_streams_per_ip)),
        stream_lifetime: config.protection.stream_lifetime(),
        max_image_bytes: config.protection.max_image_bytes,
        ops_listener: ports.ops.is_some(),
        identity,
        webhook_secret: config
            .payment_webhook_secret
            .as_deref()
            .map(|secret| flashsale_core::WebhookSecret::new(secret.as_bytes()))
            .transpose()
            .map_err(|e| StartupError::BadSetting(format!("--payment-webhook-secret: {e}")))?,
    }))
}

/// Logs the page's URL and the separate admin and ops addresses.
fn log_addresses(config: &Config, ports: &Ports, tls: bool) {
    tracing::info!(
        url = %page_url(config.listen, ports.public, tls),
        "listening: open the page at this URL"
    );
    if let Some(admin_port) = ports.admin {
        tracing::info!(
            port = admin_port,
            "admin routes listening on their own address"
        );
    }
    if let Some(ops_port) = ports.ops {
        tracing::info!(port = ops_port, "health, readiness and metrics listening");
    }
}

/// The public listener's connection bounds, logging the budget and where it came from.
fn connection_limits(config: &Config) -> ConnectionLimits {
    let budget = config.protection.connection_budget();
    match budget.open_file_limit {
        Some(limit) => tracing::info!(
            max_connections = budget.max_connections,
            open_file_limit = limit,
            "connection budget derived from the open-file limit"
        ),
        None => tracing::info!(
            max_connections = budget.max_connections,
            "connection budget"
        ),
    }
    ConnectionLimits {
        max_connections: budget.max_connections,
        max_connections_per_ip: per_address(config, config.protection.max_connections_per_ip),
        trusted_proxies: config.rate_limits.trusted_proxies.clone(),
        header_read_timeout: config.protection.header_read_timeout(),
    }
}

/// Every few seconds until `shutdown`: folds histogram samples into buckets, drops idle rate
/// buckets, and samples the store for metrics.
fn spawn_upkeep(
    tasks: &TaskTracker,
    state: AppState,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    state.metrics.run_upkeep();
                    // Off the workers: forgetting a few hundred thousand idle buckets takes
                    // tens of milliseconds, and a worker doing it serves none of its
                    // connections meanwhile (the sharded maps keep each lock brief).
                    let limits = state.clone();
                    let forget = tokio::task::spawn_blocking(move || limits.limiter.retain_recent());
                    if forget.await.is_err() {
                        tracing::warn!("forgetting idle rate-limit buckets failed");
                    }
                    // Bounded: a hung dependency must not stop the histogram upkeep.
                    let sample = state.metrics.sample_store(state.store.as_ref());
                    if tokio::time::timeout(STORE_SAMPLE_DEADLINE, sample).await.is_err() {
                        tracing::warn!("sampling the store for metrics timed out");
                    }
                }
            }
        }
    })
}

/// Serves every listener, each with its surface of the routes, until `shutdown`; completes
/// once all of them have drained.
fn serve_listeners(
    listeners: Listeners,
    state: AppState,
    limits: ConnectionLimits,
    acceptor: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> impl Future<Output = io::Result<()>> + Send + 'static {
    let ops = listeners.ops.map(|ops_listener| {
        // Its own small budget, apart from the public one: probes always find room.
        let ops_limits = ConnectionLimits {
            max_connections: OPS_MAX_CONNECTIONS,
            max_connections_per_ip: OPS_MAX_CONNECTIONS,
            ..limits.clone()
        };
        serve(
            ops_listener,
            http::router_for(state.clone(), Surface::Ops),
            ops_limits,
            acceptor.clone(),
            shutdown.clone(),
        )
    });
    let main = match listeners.admin {
        None => futures_util::future::Either::Left(serve(
            listeners.public,
            http::router(state),
            limits,
            acceptor,
            shutdown,
        )),
        Some(admin_listener) => {
            let public = serve(
                listeners.public,
                http::router_for(state.clone(), Surface::Public),
                limits.clone(),
                acceptor.clone(),
                shutdown.clone(),
            );
            let admin = serve(
                admin_listener,
                http::router_for(state, Surface::Admin),
                limits,
                acceptor,
                shutdown,
            );
            futures_util::future::Either::Right(async move {
                let (public, admin) = tokio::join!(public, admin);
                public.and(admin)
            })
        }
    };
    async move {
        match ops {
            None => main.await,
            Some(ops) => {
                let (main, ops) = tokio::join!(main, ops);
                main.and(ops)
            }
        }
    }
}

/// Waits up to [`DRAIN_DEADLINE`] for the listeners to drain their in-flight requests (they
/// stop accepting once shutdown is cancelled), then closes whatever is still open.
async fn drain_connections(
    mut server: JoinHandle<io::Result<()>>,
) -> Result<io::Result<()>, JoinError> {
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

/// Waits up to [`DRAIN_DEADLINE`] for the background tasks (live streams, upkeep, certificate
/// reloads), which end on the cancelled shutdown token.
async fn stop_background_tasks(tasks: &TaskTracker) {
    tasks.close();
    if tokio::time::timeout(DRAIN_DEADLINE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop in time");
    }
}

/// The cause of a failed bind in words a newcomer can act on.
fn bind_cause(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            "the address is already in use (another flashsale?); choose another with --listen"
                .into()
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges)".into()
        }
        _ => e.to_string(),
    }
}

/// The URL to open in a browser: an unspecified address (0.0.0.0, ::) is reachable locally as
/// loopback; the actual port replaces 0.
fn page_url(listen: SocketAddr, port: u16, tls: bool) -> String {
    let ip = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}/", SocketAddr::new(ip, port))
}

/// Binds `addr`, if there is one.
async fn bind_optional(
    addr: Option<SocketAddr>,
) -> Result<(Option<TcpListener>, Option<u16>), StartupError> {
    match addr {
        Some(addr) => {
            let (listener, port) = bind(addr).await?;
            Ok((Some(listener), Some(port)))
        }
        None => Ok((None, None)),
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, u16), StartupError> {
    let bind_error = |source| StartupError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let port = listener.local_addr().map_err(bind_error)?.port();
    Ok((listener, port))
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
        .map_err(|e| flashsale_store::StoreError::internal_from("demo sale is invalid", e))?;
    let sale = store.create_sale(new).await?;
    let starts_at = sale
        .starts_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| format!("<{e}>"));
    tracing::info!(sale = %sale.id, %starts_at, "created the demo sale");
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
