//! Native TLS (SPEC section 12), for deployments without a terminating proxy: `--tls-cert` and
//! `--tls-key` name PEM files; the listener then speaks only HTTPS, HTTP/2 or HTTP/1.1 as the
//! client's ALPN asks.
//!
//! - rustls with the `ring` provider (aws-lc-rs would need cmake and nasm to build).
//! - The certificate is served by a resolver holding the current chain and key, so SIGHUP
//!   reloads both files without a restart and without touching open connections; a reload
//!   that fails (missing file, key not matching the certificate) keeps the previous pair and
//!   says why in the log.
//! - The handshake must finish within the header-read timeout, so a client that opens a
//!   connection and stalls holds its connection permit no longer than a slow plain-text one.

use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The TLS flags: both or neither.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsSettings {
    /// PEM certificate chain (leaf first) to serve HTTPS natively; needs `--tls-key`.
    /// Reloaded, with the key, on SIGHUP.
    #[arg(long, env = "FLASHSALE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "FLASHSALE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Why a certificate or key could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("cannot read a certificate chain from {path}: {source}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rustls::pki_types::pem::Error,
    },
    /// The key file could not be read or holds no private key.
    #[error("cannot read a private key from {path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{0}: no certificate in the file")]
    EmptyChain(PathBuf),
    /// rustls refused the pair (unsupported key type, key not matching the certificate).
    #[error("the certificate and key cannot be used: {0}")]
    Rejected(#[from] rustls::Error),
}

/// The served certificate and where it is reloaded from.
#[derive(Debug)]
struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// A loaded certificate, the acceptor serving it, and its reload.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    cert: Arc<ReloadableCert>,
}

impl Tls {
    /// Loads the pair named by `settings`; `None` when TLS is not configured.
    pub fn from_settings(settings: &TlsSettings) -> Result<Option<Self>, TlsError> {
        match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Self::load(cert, key).map(Some),
            // clap makes each flag require the other; a hand-built config with one is plain.
            _ => Ok(None),
        }
    }

    /// Loads `cert_path` and `key_path` and builds the acceptor (ALPN: h2, then http/1.1).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read_pair(cert_path, key_path, &provider)?;
        let cert = Arc::new(ReloadableCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider: Arc::clone(&provider),
            current: RwLock::new(Arc::new(current)),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert,
        })
    }

    /// The acceptor for the accept loop.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the files again; on success new handshakes get the new pair, on failure the
    /// current one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = read_pair(
            &self.cert.cert_path,
            &self.cert.key_path,
            &self.cert.provider,
        )?;
        *self.cert.current.write() = Arc::new(fresh);
        Ok(())
    }

    /// Reloads on every SIGHUP until `shutdown`.
    pub async fn reload_on_sighup(self, shutdown: CancellationToken) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangups = match signal(SignalKind::hangup()) {
                Ok(hangups) => hangups,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; no certificate reload");
                    return;
                }
            };
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = hangups.recv() => if received.is_none() { return },
                }
                match self.reload() {
                    Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificate and key"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS reload failed; still serving the previous certificate")
                    }
                }
            }
        }
        #[cfg(not(unix))]
        shutdown.cancelled().await;
    }
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate {
            path: cert_path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::EmptyChain(cert_path.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Key {
        path: key_path.to_owned(),
        source,
    })?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

/// Handshakes `stream` and serves it over HTTP/2 or HTTP/1.1 (by ALPN) on its own task; the
/// connection joins the graceful drain through `watcher` and releases `permit` when it ends.
/// `held` (the connection permit and the address's slot) is released when the connection ends.
pub(crate) fn spawn_connection<S, H>(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    header_read_timeout: Duration,
    watcher: Watcher,
    held: H,
) where
    H: Send + 'static,
    S: tower::Service<
            Request<Incoming>,
            Response = axum::response::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    tokio::spawn(async move {
        let stream = match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(crate::serve::MAX_HEAD_BYTES)
            .keep_alive(true);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(crate::serve::MAX_HEAD_BYTES as u32);
        let service = hyper_util::service::TowerToHyperService::new(service);
        let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
        if let Err(e) = connection.await {
            tracing::debug!(%peer, error = %e, "TLS connection ended with an error");
        }
        drop(held);
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Writes a fresh self-signed pair for `localhost` into `dir`; returns the leaf's DER.
    fn write_pair(dir: &Path) -> Vec<u8> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), signing_key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn served(tls: &Tls) -> Vec<u8> {
        tls.cert.current.read().cert[0].to_vec()
    }

    #[test]
    fn a_failed_reload_keeps_the_served_pair_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pair(dir.path());
        let tls = Tls::load(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
        assert_eq!(served(&tls), first);

        std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
        let error = tls.reload().unwrap_err();
        assert!(matches!(error, TlsError::Key { .. }), "{error}");
        assert_eq!(
            served(&tls),
            first,
            "a failed reload must keep the old pair"
        );

        // A certificate with another pair's key: rustls refuses the mismatch.
        let second = write_pair(dir.path());
        let stray = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("key.pem"), stray.serialize_pem()).unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Rejected(_))));
        assert_eq!(served(&tls), first);

        let third = write_pair(dir.path());
        assert_ne!(second, third);
        tls.reload().unwrap();
        assert_eq!(served(&tls), third);
    }

    #[test]
    fn an_empty_certificate_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path());
        std::fs::write(dir.path().join("cert.pem"), "").unwrap();
        let error = Tls::load(&dir.path().join("cert.pem"), &dir.path().join("key.pem"))
            .err()
            .unwrap();
        assert!(error.to_string().contains("cert.pem"), "{error}");
    }
}
