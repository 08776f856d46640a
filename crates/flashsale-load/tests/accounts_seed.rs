//! End to end, `--identity accounts` (issue 13): the load tool signs up and logs in its buyers
//! against a debug `flashsale --identity accounts`, runs a small seed herd and a duplicates
//! burst with their tokens, and every invariant passes.
//!
//! Needs the server binary of the same build (`target/<profile>/flashsale`): `cargo test
//! --workspace` builds it; with `-p flashsale-load` alone, build it first
//! (`cargo build -p flashsale-server`). Without it the test says so and passes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "accounts-seed-admin-token-0123456789";

/// A server process, killed (and its data dir removed) when dropped.
struct Server {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server_binary() -> Option<PathBuf> {
    let load = Path::new(env!("CARGO_BIN_EXE_flashsale-load"));
    let server = load.parent()?.join("flashsale");
    server.exists().then_some(server)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn start_accounts_server(binary: &Path) -> Server {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!(
        "flashsale-load-accounts-{}-{port}",
        std::process::id()
    ));
    let child = Command::new(binary)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", &dir.to_string_lossy()])
        .args(["--admin-token", ADMIN_TOKEN])
        .args(["--demo-sale", "false", "--rate-limit", "off"])
        .args(["--identity", "accounts"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let server = Server {
        child,
        dir,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(port) {
        assert!(
            Instant::now() < deadline,
            "the server was not ready in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

fn run_load(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale-load"))
        .args(args)
        .args(["--identity", "accounts", "--json", "--start-in", "1"])
        .args(["--target", &server.url, "--admin-token", ADMIN_TOKEN])
        .output()
        .expect("the load tool runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "the run failed: {report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

#[test]
fn a_seed_run_with_signed_in_buyers_keeps_every_invariant() {
    let Some(binary) = server_binary() else {
        eprintln!(
            "SKIPPED: no flashsale binary next to flashsale-load (cargo build -p flashsale-server)"
        );
        return;
    };
    let server = start_accounts_server(&binary);

    let herd = run_load(&server, &["herd", "--buyers", "60", "--stock", "20"]);
    assert_eq!(herd["identity"], "accounts");
    assert_eq!(herd["passed"], true, "{herd:#}");
    assert_eq!(herd["confirmed"], 20);
    assert_eq!(herd["preparation"]["accounts"], 60);
    assert!(herd["preparation"]["login"]["p50_ms"].as_f64() > Some(0.0));
    let checks = herd["checks"].as_array().expect("checks");
    assert!(checks.len() >= 6, "{checks:?}");

    // The per-user limit holds on the verified buyer: 5 concurrent attempts, limit 2.
    let dup = run_load(
        &server,
        &[
            "duplicates",
            "--buyers",
            "20",
            "--attempts-per-buyer",
            "5",
            "--limit",
            "2",
            "--stock",
            "100",
        ],
    );
    assert_eq!(dup["passed"], true, "{dup:#}");
    assert_eq!(dup["confirmed"], 40);
}
