//! Start-up as a newcomer meets it: the binary binds before it creates anything, says in one
//! line why it cannot start, keeps its generated admin token across restarts, and refuses a
//! data directory another process holds.

use crate::helpers::{END, START, rfc3339};
use flashsale_core::SystemClock;
use flashsale_server::admin_token::TOKEN_FILE;
use flashsale_server::{Application, Config};
use reqwest::StatusCode;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Runs the binary on `listen` and `data_dir` and waits (at most 20 s) for it to exit.
fn run_binary(listen: &str, data_dir: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .env("FLASHSALE_LISTEN", listen)
        .env("FLASHSALE_DATA_DIR", data_dir)
        .env_remove("FLASHSALE_ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!(
                "flashsale kept running: {:?}",
                child.wait_with_output().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The one non-empty line of the output, with its leading RFC 3339 instant checked.
fn the_one_line(output: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{text}");
    let instant = lines[0].split_whitespace().next().unwrap();
    assert!(
        OffsetDateTime::parse(instant, &Rfc3339).is_ok(),
        "not RFC 3339: {instant}"
    );
    lines[0].to_owned()
}

async fn build(data_dir: &Path, admin_token: Option<&str>) -> Application {
    flashsale_server::telemetry::init();
    let mut config = Config::for_tests("127.0.0.1:0".parse().unwrap(), data_dir.into(), "x");
    config.admin_token = admin_token.map(str::to_owned);
    Application::build(config, Arc::new(SystemClock))
        .await
        .unwrap()
}

/// Creates a sale with `token` on the app serving `port`; returns the HTTP status.
async fn create_with(port: u16, token: &str) -> StatusCode {
    let body =
        json!({"name": "W", "starts_at": rfc3339(START), "ends_at": rfc3339(END), "stock": 5});
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/admin/sales"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

/// Serves `app` while `check` runs, then stops it.
async fn while_serving<F: Future<Output = ()>>(app: Application, check: impl FnOnce(u16) -> F) {
    let port = app.port();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    check(port).await;
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_taken_port_fails_in_one_line_and_creates_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = run_binary(&listen, &data_dir);
    assert!(!output.status.success());
    let line = the_one_line(&output);
    assert!(
        line.contains(&format!("cannot listen on {listen}")) && line.contains("already in use"),
        "{line}"
    );
    assert!(!data_dir.exists(), "the data directory was created");
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_exits_at_once_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let first = build(dir.path(), Some("startup-test-admin-token")).await;
    let output = run_binary("127.0.0.1:0", dir.path());
    assert!(!output.status.success());
    let line = the_one_line(&output);
    assert!(
        line.contains("in use by another flashsale process"),
        "{line}"
    );
    while_serving(first, |_| async {}).await;
}

#[tokio::test]
async fn the_generated_admin_token_is_kept_across_restarts_and_an_explicit_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let first = build(dir.path(), None).await;
    let file = dir.path().join(TOKEN_FILE);
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let created = |port| {
        let token = token.clone();
        async move { assert_eq!(create_with(port, &token).await, StatusCode::CREATED) }
    };
    while_serving(first, created).await;

    let again = build(dir.path(), None).await;
    while_serving(again, created).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);

    let explicit = build(dir.path(), Some("chosen-admin-token-0123")).await;
    while_serving(explicit, |port| async move {
        assert_eq!(create_with(port, &token).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            create_with(port, "chosen-admin-token-0123").await,
            StatusCode::CREATED
        );
    })
    .await;
}
