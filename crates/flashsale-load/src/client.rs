//! One keep-alive HTTP/1.1 connection per worker, as oha does: the tool controls exactly how
//! many connections the server sees, and opening them is kept apart from the measured part.
//!
//! A connection that fails is dropped and opened again on the next request; the failure is
//! reported to the caller as a [`TransportError`], never retried silently (a retried purchase
//! would hide a lost answer).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// Hands out source addresses round robin across every connection of the run.
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// One service instance: where to connect and what to send as `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` to connect to.
    pub addr: String,
    /// The `Host` header value.
    pub host: String,
    /// The URL as given, for reports.
    pub url: String,
    /// Local addresses to connect from, round robin (empty: the kernel picks).
    pub sources: Arc<[IpAddr]>,
}

impl Target {
    /// Parses `http://host[:port]` (a trailing `/` is accepted; https is not supported).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.trim_end_matches('/').parse()?;
        anyhow::ensure!(
            uri.scheme_str().unwrap_or("http") == "http",
            "only http:// targets are supported: {url}"
        );
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("target has no host: {url}"))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            addr: format!("{}:{port}", authority.host()),
            host: authority.as_str().to_owned(),
            url: url.to_owned(),
            sources: Arc::from([]),
        })
    }

    /// Connects to the target, from the next source address when there are some.
    async fn connect(&self) -> std::io::Result<TcpStream> {
        if self.sources.is_empty() {
            return TcpStream::connect(&self.addr).await;
        }
        let source = self.sources[NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % self.sources.len()];
        let peer = tokio::net::lookup_host(&self.addr)
            .await?
            .find(|a| a.is_ipv4() == source.is_ipv4())
            .ok_or_else(|| std::io::Error::other("no address of the source's family"))?;
        let socket = if source.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(peer).await
    }
}

/// `n` loopback source addresses from 127.0.0.2 on (`--source-ips`); the whole 127/8 is
/// local on Linux, so each is a distinct client address to a server or proxy on loopback.
pub fn loopback_sources(n: u16) -> Vec<IpAddr> {
    (0..u32::from(n))
        .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0002 + i)))
        .collect()
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransportError {
    /// The TCP connection or HTTP handshake failed.
    Connect,
    /// No full answer within the timeout.
    Timeout,
    /// The connection broke while sending or receiving.
    Io,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportError::Connect => "connect_error",
            TransportError::Timeout => "timeout",
            TransportError::Io => "io_error",
        })
    }
}

impl std::error::Error for TransportError {}

/// An answer: status and the whole body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The body, read to the end.
    pub body: Bytes,
}

/// A keep-alive connection to one target, reopened on demand.
pub struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
    auth: Option<String>,
}

impl Conn {
    /// A connection that is opened on first use (or by [`Conn::open`]).
    pub fn new(target: Arc<Target>, timeout: Duration) -> Self {
        Self {
            target,
            sender: None,
            timeout,
            auth: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` on every request.
    pub fn with_bearer(mut self, token: &str) -> Self {
        self.auth = Some(format!("Bearer {token}"));
        self
    }

    /// Opens the TCP connection and does the HTTP/1 handshake now.
    pub async fn open(&mut self) -> Result<(), TransportError> {
        if self.sender.as_ref().is_some_and(|s| !s.is_closed()) {
            return Ok(());
        }
        self.sender = None;
        let connect = async {
            let stream = self
                .target
                .connect()
                .await
                .map_err(|_| TransportError::Connect)?;
            // Small request/answer pairs: Nagle would add up to 40 ms to each.
            stream
                .set_nodelay(true)
                .map_err(|_| TransportError::Connect)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| TransportError::Connect)?;
            tokio::spawn(async move {
                // Ends when the sender is dropped or the peer closes; either is reported to
                // the request that notices it.
                let _ = connection.await;
            });
            Ok::<_, TransportError>(sender)
        };
        let sender = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| TransportError::Timeout)??;
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one request and reads the whole answer, within the timeout (connecting included).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, TransportError> {
        self.send_as(method, path, body, None).await
    }

    /// [`Conn::send`] with this `Authorization` value (`Bearer <token>`) instead of the
    /// connection's own, when given: one connection serves many signed-in buyers.
    pub async fn send_as(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        auth: Option<&str>,
    ) -> Result<Answer, TransportError> {
        self.send_with(method, path, body, auth, None).await
    }

    /// [`Conn::send_as`] with one more header (`name`, `value`), e.g. a webhook's signature.
    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        auth: Option<&str>,
        header: Option<(&'static str, &str)>,
    ) -> Result<Answer, TransportError> {
        let result = tokio::time::timeout(
            self.timeout,
            self.exchange(method, path, body, auth, header),
        )
        .await;
        match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                // The answer may still arrive on this connection: it cannot be reused.
                self.sender = None;
                Err(TransportError::Timeout)
            }
        }
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        auth: Option<&str>,
        header: Option<(&'static str, &str)>,
    ) -> Result<Answer, TransportError> {
        self.open().await?;
        let sender = self.sender.as_mut().ok_or(TransportError::Connect)?;
        sender.ready().await.map_err(|_| TransportError::Io)?;
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.target.host.as_str());
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        if let Some(auth) = auth.or(self.auth.as_deref()) {
            builder = builder.header(AUTHORIZATION, auth);
        }
        if let Some((name, value)) = header {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|_| TransportError::Io)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| TransportError::Io)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| TransportError::Io)?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parses_host_port_and_default_port() {
        let t = Target::parse("http://127.0.0.1:8080/").expect("valid");
        assert_eq!(t.addr, "127.0.0.1:8080");
        assert_eq!(t.host, "127.0.0.1:8080");
        let t = Target::parse("http://localhost").expect("valid");
        assert_eq!(t.addr, "localhost:80");
    }

    #[test]
    fn loopback_sources_start_at_127_0_0_2() {
        let s = loopback_sources(300);
        assert_eq!(s.len(), 300);
        assert_eq!(s[0].to_string(), "127.0.0.2");
        assert_eq!(s[299].to_string(), "127.0.1.45");
    }

    #[test]
    fn https_targets_are_refused() {
        assert!(Target::parse("https://example.com").is_err());
    }
}
