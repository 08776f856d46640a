//! Admin security: the admin routes on their own listener (`--admin-listen`), and the admin
//! token never reaching the log. (Constant-time comparison: `extract::tests`; wrong tokens
//! are 401: `admin::admin_endpoints_are_401_unauthorized_without_the_right_bearer_token`.)

use crate::helpers::{ADMIN_TOKEN, END, START, read, rfc3339, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn with_admin_listen_the_admin_routes_are_404_on_the_public_address_only() {
    let app =
        spawn_app_with(|config| config.admin_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let admin = app.admin_address.clone().expect("an admin address");
    let body =
        json!({"name": "W", "starts_at": rfc3339(START), "ends_at": rfc3339(END), "stock": 5});

    // Public listener: admin routes do not exist there, even with the right token.
    let (status, answer) = read(app.post_sale(&body, Some(ADMIN_TOKEN)).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(answer["code"], "not_found");

    // Admin listener: the token is still required, and then it works.
    let post = |token: Option<&str>| {
        let mut request = app
            .client
            .post(format!("{admin}/api/admin/sales"))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(post(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let (status, created) = read(post(Some(ADMIN_TOKEN)).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["sale_id"].as_i64().unwrap();
    let summary = app
        .client
        .get(format!("{admin}/api/admin/sales/{id}/summary"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(summary.status(), StatusCode::OK);
    let public_summary = app
        .client
        .get(app.url(&format!("/api/admin/sales/{id}/summary")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(public_summary.status(), StatusCode::NOT_FOUND);

    // The buyers' API is on the public address only; health is on both.
    assert_eq!(app.status(id).await["sale_id"], id);
    let on_admin = app
        .client
        .get(format!("{admin}/api/sales/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_admin.status(), StatusCode::NOT_FOUND);
    for base in [&app.address, &admin] {
        let health = app
            .client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_never_appears_in_the_log_even_at_debug() {
    let secret = "s3cret-admin-token-0123456789abcdef";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::TempDir::new().unwrap();
    // Files, not pipes: a full pipe nobody reads would stall a process logging at trace.
    let log_path = dir.path().join("flashsale.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .env("FLASHSALE_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLASHSALE_DATA_DIR", dir.path().join("data"))
        .env("FLASHSALE_ADMIN_TOKEN", secret)
        .env("FLASHSALE_DEMO_SALE", "false")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
    {
        assert!(
            Instant::now() < deadline,
            "the binary did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body =
        json!({"name": "W", "starts_at": rfc3339(START), "ends_at": rfc3339(END), "stock": 5});
    for token in [secret, "wrong-token", &secret[..10]] {
        client
            .post(format!("{base}/api/admin/sales"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    // SIGTERM would be gentler, but the log up to now is what matters.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("request"), "nothing was logged: {log}");
    assert!(
        !log.contains(&secret[..10]),
        "the token leaked into the log:\n{log}"
    );
}
