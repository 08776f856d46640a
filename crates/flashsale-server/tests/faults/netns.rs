//! A private network namespace per test, joined to the host by one veth pair, so an instance
//! can be partitioned for real: it runs inside (`ip netns exec`), its only routes are the
//! veth's subnet and loopback (no default route: a partitioned instance has no route at all and
//! none of its packets can leave toward any other network), and the test cuts it off with
//! blackhole routes inside the namespace.
//!
//! Addresses, for the subnet 10.231.X.0/24 (X unique per test, reserved by a lock file):
//! - 10.231.X.1 (host): the Redis chaos proxy listens here;
//! - 10.231.X.3 (host): the PostgreSQL chaos proxy listens here;
//! - 10.231.X.4 (host): the test's HTTP client binds here, so the client's path never shares an
//!   address with a store's path and a cut store link leaves the client link up;
//! - 10.231.X.2 (namespace): the instance.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Runs `ip` with `args`; the error carries its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Which store link a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The instance to Redis (10.231.X.1).
    Redis,
    /// The instance to PostgreSQL (10.231.X.3).
    Postgres,
}

/// A namespace and its veth pair; both are deleted on drop.
pub struct Netns {
    /// The namespace's name (for `ip netns exec`).
    pub name: String,
    host_if: String,
    subnet: u8,
    // Held for the namespace's life: the lock reserving the subnet (released by the OS even
    // if the test process dies).
    _lock: File,
}

impl Netns {
    /// Creates the namespace, or says why it cannot (not root, no `ip`, no netns support).
    pub fn create(label: &str) -> Result<Self, String> {
        let (subnet, lock) = reserve_subnet()?;
        let pid = std::process::id();
        let name = format!("fsf-{label}-{pid}-{subnet}");
        // Interface names are at most 15 bytes.
        let host_if = format!("fsf{subnet}h{}", pid % 100_000);
        let ns_if = format!("fsf{subnet}n{}", pid % 100_000);
        // Leftovers of a killed run that had this subnet (its lock is free now).
        let _ = ip(&["link", "del", &host_if]);
        let netns = Self {
            name,
            host_if,
            subnet,
            _lock: lock,
        };
        netns.build(&ns_if)?;
        Ok(netns)
    }

    fn build(&self, ns_if: &str) -> Result<(), String> {
        let (ns, host_if) = (self.name.as_str(), self.host_if.as_str());
        let x = self.subnet;
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
        ])?;
        ip(&["link", "set", ns_if, "netns", ns])?;
        for host in [1, 3, 4] {
            let address = format!("10.231.{x}.{host}/24");
            ip(&["addr", "add", &address, "dev", host_if])?;
        }
        ip(&["link", "set", host_if, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("10.231.{x}.2/24"),
            "dev",
            ns_if,
        ])?;
        ip(&["-n", ns, "link", "set", ns_if, "up"])?;
        Ok(())
    }

    /// The host-side address a store's proxy listens on.
    pub fn store_address(&self, link: Link) -> Ipv4Addr {
        let host = match link {
            Link::Redis => 1,
            Link::Postgres => 3,
        };
        Ipv4Addr::new(10, 231, self.subnet, host)
    }

    /// The host-side address the test's client binds to.
    pub fn client_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 4)
    }

    /// The instance's address inside the namespace.
    pub fn instance_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 2)
    }

    /// Cuts the instance off `link`: a blackhole route inside the namespace, so its packets
    /// toward that address are dropped before they leave (connects fail, sends go nowhere).
    pub fn cut(&self, link: Link) -> Result<(), String> {
        let to = format!("{}/32", self.store_address(link));
        ip(&["-n", &self.name, "route", "add", "blackhole", &to])
    }

    /// Heals a [`Netns::cut`].
    pub fn heal(&self, link: Link) -> Result<(), String> {
        let to = format!("{}/32", self.store_address(link));
        ip(&["-n", &self.name, "route", "del", "blackhole", &to])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its end of the pair, which takes the host end with
        // it; the explicit delete covers a namespace that failed half-way through creation.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// Reserves a subnet number no other test (in this or another process) holds, by an exclusive
/// lock on a file named after it.
fn reserve_subnet() -> Result<(u8, File), String> {
    let dir = std::env::temp_dir();
    let start = (std::process::id() % 200) as u16;
    for i in 0..200u16 {
        let x = (1 + (start + i) % 200) as u8;
        let path = dir.join(format!("flashsale-faults-10.231.{x}.lock"));
        let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if file.try_lock().is_ok() {
            return Ok((x, file));
        }
    }
    Err("no free 10.231.X.0/24 subnet (200 locked)".into())
}

/// Whether namespaces can be made here: root and a working `ip netns`. Tests that need one
/// print a loud `SKIPPED` line and return when this fails.
pub fn available() -> Result<(), String> {
    let probe = format!("fsf-probe-{}", std::process::id());
    ip(&["netns", "add", &probe])?;
    let _ = ip(&["netns", "del", &probe]);
    Ok(())
}
