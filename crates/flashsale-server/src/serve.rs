//! The accept loop (in place of `axum::serve`, which offers neither of the two bounds below).
//!
//! - At most `--max-connections` connections are open at once: a permit is taken *before*
//!   `accept`, so past the bound new connections wait in the kernel's backlog instead of
//!   costing a file descriptor and a task each (as in mini-redis's server).
//! - One client address holds at most `--max-connections-per-ip` of them (its TCP peer
//!   address, an IPv6 client counted as its /64; trusted proxies are not counted): past it, a
//!   new connection gets a fixed 429 and is closed, so one script cannot take the whole budget
//!   and leave everyone else, health checks included, waiting in the backlog.
//! - A client must send each request's headers within `--header-read-timeout`, or its
//!   connection is closed: a slow-loris client holds a permit for that long at most.
//! - A request head may take at most [`MAX_HEAD_BYTES`] of buffer (hyper answers 431 past it):
//!   unfinished headers cost a connection at most that much memory, not hyper's 400 KB.
//! - Every request carries `ConnectInfo<SocketAddr>` (the peer), which the rate limiter reads.
//! - With a TLS acceptor each connection is handed to [`crate::tls`] (handshake, then HTTP/2
//!   or HTTP/1.1 by ALPN) under the same permit and drain.
//!
//! Shutdown: when `shutdown` is cancelled the listener is dropped (no new connections), each
//! open connection finishes its in-flight request and closes, and the future returns once all
//! have; the caller bounds that wait with its drain deadline.

use crate::address_slots::AddressSlots;
use crate::http::App;
use crate::http::client_ip::{TrustedProxies, rate_key};
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
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections per client address at most (trusted proxies excepted).
    pub max_connections_per_ip: usize,
    /// Peers not counted per address: each carries many clients.
    pub trusted_proxies: TrustedProxies,
    /// Time allowed to send a request's headers.
    pub header_read_timeout: Duration,
}

/// The largest buffer a request head may take (hyper's minimum is 8 KiB; a browser's headers
/// are rarely over 2 KiB).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What a connection over its address's bound gets before it is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\n\
content-length: 79\r\n\r\n\
{\"code\":\"rate_limited\",\"message\":\"too many open connections from this address\"}";

/// How long to back off after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown`, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    router: App,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address = AddressSlots::new(limits.max_connections_per_ip);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
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
        let address_slot = if limits.trusted_proxies.contains(peer.ip()) {
            None
        } else {
            match per_address.try_take(rate_key(peer.ip())) {
                Some(slot) => Some(slot),
                None => {
                    // Best effort, without waiting: the socket's send buffer is empty.
                    let _ = stream.try_write(TOO_MANY_CONNECTIONS);
                    tracing::debug!(%peer, "too many connections from this address");
                    continue;
                }
            }
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
                (permit, address_slot),
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
            drop(address_slot);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_429_declares_its_body_length_and_is_json() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(json["code"], "rate_limited");
    }
}
