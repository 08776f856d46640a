//! The accept loop (in place of `axum::serve`, which offers neither of the two bounds below).
//!
//! - At most `--max-connections` connections are open at once: a permit is taken *before*
//!   `accept`, so past the bound new connections wait in the kernel's backlog instead of
//!   costing a file descriptor and a task each (as in mini-redis's server).
//! - A client must send each request's headers within `--header-read-timeout`, or its
//!   connection is closed: a slow-loris client holds a permit for that long at most.
//! - Every request carries `ConnectInfo<SocketAddr>` (the peer), which the rate limiter reads.
//! - With a TLS acceptor each connection is handed to [`crate::tls`] (handshake, then HTTP/2
//!   or HTTP/1.1 by ALPN) under the same permit and drain.
//!
//! Shutdown: when `shutdown` is cancelled the listener is dropped (no new connections), each
//! open connection finishes its in-flight request and closes, and the future returns once all
//! have; the caller bounds that wait with its drain deadline.

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The bounds the accept loop enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time allowed to send a request's headers.
    pub header_read_timeout: Duration,
}

/// How long to back off after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown`, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Small JSON answers: send them now rather than waiting to coalesce.
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        if let Some(tls) = &tls {
            crate::tls::spawn_connection(
                tls.clone(),
                stream,
                peer,
                service,
                limits.header_read_timeout,
                graceful.watcher(),
                permit,
            );
            continue;
        }
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
