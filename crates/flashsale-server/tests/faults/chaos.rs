//! A chaos TCP proxy the test controls at run time (the idea of crates.io's test ChaosProxy,
//! written afresh): it listens on an address, forwards every connection to an upstream, and
//! can add latency to each chunk in either direction, hold the upstream's replies until
//! released, break every open connection, refuse or blackhole new connections, and break a
//! fraction of connections when the client sends a chunk containing a pattern (`COMMIT`).
//!
//! Why a proxy and not `tc ... netem`: this kernel has no queueing disciplines ("unknown
//! qdisc"), and a proxy also knows what is on the wire (a COMMIT), which netem cannot.

use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client (the flashsale instance) to the upstream (Redis, PostgreSQL).
    Request,
    /// From the upstream back to the client.
    Reply,
}

/// What the proxy does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Connect to the upstream and forward.
    Forward = 0,
    /// Accept and close at once with a reset: the client sees its connection refused.
    Refuse = 1,
    /// Accept and never answer nor forward: the client waits until its own timeout.
    Blackhole = 2,
}

/// When a matching chunk breaks its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Before the chunk reaches the upstream (for `COMMIT`: the transaction is rolled back).
    BeforeForwarding,
    /// Right after the chunk reached the upstream (for `COMMIT`: it commits, the reply is lost).
    AfterForwarding,
    /// One then the other, alternately.
    Alternately,
}

/// What to do when a request chunk contains `pattern`.
#[derive(Clone)]
pub struct Trigger {
    /// The bytes looked for in each request chunk.
    pub pattern: &'static [u8],
    /// Share of the matching chunks acted on (0.0 to 1.0), spread evenly: 0.05 is every 20th.
    pub fraction: f64,
    /// Whether and when the connection carrying the chunk is broken.
    pub cut: Option<Cut>,
    /// Run (before forwarding) on every acted-on chunk, e.g. to stall another proxy.
    pub hook: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// The proxy's run-time switches, shared by its tasks and the test (cheap to clone).
#[derive(Clone)]
pub struct Chaos {
    shared: Arc<Shared>,
}

struct Shared {
    request_latency_us: AtomicU64,
    reply_latency_us: AtomicU64,
    admit: AtomicU8,
    hold: watch::Sender<bool>,
    generation: watch::Sender<u64>,
    trigger: Mutex<Option<Trigger>>,
    matches: AtomicU64,
    acted: AtomicU64,
    cuts: AtomicU64,
    held_chunks: AtomicU64,
}

impl Chaos {
    /// Adds `latency` to every chunk flowing in `direction` (order is kept; throughput is not
    /// reduced: each chunk is delayed from its own arrival).
    pub fn set_latency(&self, direction: Direction, latency: Duration) {
        let us = latency.as_micros() as u64;
        match direction {
            Direction::Request => self.shared.request_latency_us.store(us, Ordering::Relaxed),
            Direction::Reply => self.shared.reply_latency_us.store(us, Ordering::Relaxed),
        }
    }

    /// Holds every reply (bytes from the upstream) until [`Chaos::release_replies`].
    pub fn hold_replies(&self) {
        self.shared.hold.send_replace(true);
    }

    /// Lets held replies through, in order.
    pub fn release_replies(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Reply chunks that arrived while replies were held (so the test can poll for "a reply is
    /// being held now").
    pub fn held_chunks(&self) -> u64 {
        self.shared.held_chunks.load(Ordering::Relaxed)
    }

    /// Breaks every open connection (with a reset where the OS allows).
    pub fn break_all(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Sets what happens to new connections.
    pub fn set_admit(&self, admit: Admit) {
        self.shared.admit.store(admit as u8, Ordering::Relaxed);
    }

    /// Sets (or clears) the pattern trigger.
    pub fn set_trigger(&self, trigger: Option<Trigger>) {
        *self.shared.trigger.lock() = trigger;
    }

    /// Request chunks that matched the trigger's pattern so far.
    pub fn matches(&self) -> u64 {
        self.shared.matches.load(Ordering::Relaxed)
    }

    /// Matching chunks acted on so far (hook run and/or connection cut).
    pub fn acted(&self) -> u64 {
        self.shared.acted.load(Ordering::Relaxed)
    }

    /// Connections broken by the trigger so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::Relaxed)
    }

    fn admit(&self) -> Admit {
        match self.shared.admit.load(Ordering::Relaxed) {
            1 => Admit::Refuse,
            2 => Admit::Blackhole,
            _ => Admit::Forward,
        }
    }

    fn latency(&self, direction: Direction) -> Duration {
        let us = match direction {
            Direction::Request => &self.shared.request_latency_us,
            Direction::Reply => &self.shared.reply_latency_us,
        };
        Duration::from_micros(us.load(Ordering::Relaxed))
    }

    /// Decides, for a request chunk, whether the trigger acts on it, runs its hook, and
    /// returns the cut to apply (resolved to before/after).
    fn on_request_chunk(&self, chunk: &[u8]) -> Option<Cut> {
        let trigger = self.shared.trigger.lock().clone()?;
        if !contains(chunk, trigger.pattern) {
            return None;
        }
        let n = self.shared.matches.fetch_add(1, Ordering::Relaxed) + 1;
        // Act when floor(n * fraction) moves: an even spread with no randomness, so a run is
        // reproducible and 5% really is one in twenty.
        let acts =
            ((n as f64) * trigger.fraction).floor() > (((n - 1) as f64) * trigger.fraction).floor();
        if !acts {
            return None;
        }
        let k = self.shared.acted.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &trigger.hook {
            hook();
        }
        let cut = trigger.cut?;
        self.shared.cuts.fetch_add(1, Ordering::Relaxed);
        Some(match cut {
            Cut::Alternately if k.is_multiple_of(2) => Cut::BeforeForwarding,
            Cut::Alternately => Cut::AfterForwarding,
            other => other,
        })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A running proxy; stops (and drops every connection) when dropped.
pub struct ChaosProxy {
    addr: SocketAddr,
    chaos: Chaos,
    task: JoinHandle<()>,
}

impl std::ops::Deref for ChaosProxy {
    type Target = Chaos;
    fn deref(&self) -> &Chaos {
        &self.chaos
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

impl ChaosProxy {
    /// Listens on `listen` (port 0 picks one) and forwards to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let chaos = Chaos {
            shared: Arc::new(Shared {
                request_latency_us: AtomicU64::new(0),
                reply_latency_us: AtomicU64::new(0),
                admit: AtomicU8::new(Admit::Forward as u8),
                hold: watch::Sender::new(false),
                generation: watch::Sender::new(0),
                trigger: Mutex::new(None),
                matches: AtomicU64::new(0),
                acted: AtomicU64::new(0),
                cuts: AtomicU64::new(0),
                held_chunks: AtomicU64::new(0),
            }),
        };
        let task = tokio::spawn(accept_loop(listener, upstream, chaos.clone()));
        Ok(Self { addr, chaos, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle on the switches that outlives borrows (for hooks on another proxy).
    pub fn chaos(&self) -> Chaos {
        self.chaos.clone()
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, chaos: Chaos) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // Reap finished connection tasks so the set does not grow over a long test.
        while connections.try_join_next().is_some() {}
        let generation = chaos.shared.generation.subscribe();
        match chaos.admit() {
            Admit::Refuse => reset(client),
            Admit::Blackhole => {
                connections.spawn(blackhole(client, generation));
            }
            Admit::Forward => {
                connections.spawn(forward(client, upstream, chaos.clone(), generation));
            }
        }
    }
}

/// Closes with RST rather than FIN, as a refused or broken connection would look.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn blackhole(mut client: TcpStream, mut generation: watch::Receiver<u64>) {
    let mut sink = [0u8; 4096];
    loop {
        tokio::select! {
            read = client.read(&mut sink) => if matches!(read, Ok(0) | Err(_)) { return },
            _ = generation.changed() => { reset(client); return }
        }
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    chaos: Chaos,
    mut generation: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Kept to reset the client's socket however the connection ends by force. The upstream's
    // socket is only closed (FIN): data already sent to it (a COMMIT) is still read and acted
    // on by the server, as when a network breaks right after a packet got through.
    let client_socket = second_handle(&client);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let both = async {
        tokio::try_join!(
            pump(client_read, server_write, Direction::Request, chaos.clone()),
            pump(server_read, client_write, Direction::Reply, chaos.clone()),
        )
    };
    let forced = tokio::select! {
        ended = both => ended.is_err(),
        _ = generation.changed() => true,
    };
    if forced && let Some(socket) = client_socket {
        reset(socket);
    }
}

/// A second handle on the socket, so it can be reset after its halves were moved into the
/// pumps (dropping the handle does not close the socket until every handle is gone).
fn second_handle(stream: &TcpStream) -> Option<TcpStream> {
    use std::os::fd::AsFd;
    let owned = stream.as_fd().try_clone_to_owned().ok()?;
    let std = std::net::TcpStream::from(owned);
    std.set_nonblocking(true).ok()?;
    TcpStream::from_std(std).ok()
}

/// A delay line: each chunk is stamped on arrival and written once its latency has passed
/// (and, for replies, once they are not held); a matching request chunk may cut the connection.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    chaos: Chaos,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = {
        let chaos = chaos.clone();
        async move {
            loop {
                let mut buf = vec![0u8; 16 * 1024];
                let n = from.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<(), io::Error>(());
                }
                buf.truncate(n);
                if direction == Direction::Reply && *chaos.shared.hold.borrow() {
                    chaos.shared.held_chunks.fetch_add(1, Ordering::Relaxed);
                }
                let due = Instant::now() + chaos.latency(direction);
                if tx.send((due, buf)).is_err() {
                    return Ok(());
                }
            }
        }
    };
    let writer = async move {
        let mut hold = chaos.shared.hold.subscribe();
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let mut cut = None;
            match direction {
                Direction::Reply => {
                    // Held replies wait here, in order, until released.
                    let _ = hold.wait_for(|held| !*held).await;
                }
                Direction::Request => cut = chaos.on_request_chunk(&chunk),
            }
            if cut == Some(Cut::BeforeForwarding) {
                return Err(io::Error::other("cut before forwarding"));
            }
            to.write_all(&chunk).await?;
            if cut == Some(Cut::AfterForwarding) {
                to.flush().await?;
                return Err(io::Error::other("cut after forwarding"));
            }
        }
        // The source closed: pass the half-close on.
        let _ = to.shutdown().await;
        Ok(())
    };
    tokio::try_join!(reader, writer).map(drop)
}
