//! `spawn_app()`: the service in-process on port 0, a fresh temp data dir, a manual clock, and
//! typed helpers (`app.buy(sale, user)`). Time moves by `app.clock`, never by sleeping.

use flashsale_core::ManualClock;
use flashsale_server::{Application, Config};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use tempfile::TempDir;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where the manual clock starts.
pub const T0: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);
/// Test sales start one minute after `T0`...
pub const START: OffsetDateTime = datetime!(2026-11-22 12:01 UTC);
/// ...and end ten minutes later.
pub const END: OffsetDateTime = datetime!(2026-11-22 12:11 UTC);
/// The admin token of every test app.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running app.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// `http://127.0.0.1:<admin port>` when the app runs with `--admin-listen`.
    pub admin_address: Option<String>,
    /// `http://127.0.0.1:<ops port>` when the app runs with `--ops-listen`.
    pub ops_address: Option<String>,
    /// The clock the store decides with.
    pub clock: Arc<ManualClock>,
    /// A client with a connection pool.
    pub client: reqwest::Client,
    data_dir: TempDir,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

/// Starts an app with a fresh data directory and the clock at [`T0`].
pub async fn spawn_app() -> TestApp {
    spawn_in(TempDir::new().unwrap(), Arc::new(ManualClock::new(T0))).await
}

/// Starts an app like [`spawn_app`] with the test config changed by `configure` (e.g. rate
/// limits on).
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let data_dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    spawn_configured(data_dir, clock, configure).await
}

/// Starts an app on an existing data directory and clock (a restart, or data a test wrote).
pub async fn spawn_in(data_dir: TempDir, clock: Arc<ManualClock>) -> TestApp {
    spawn_configured(data_dir, clock, |_| {}).await
}

async fn spawn_configured(
    data_dir: TempDir,
    clock: Arc<ManualClock>,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    flashsale_server::telemetry::init();
    let mut config = Config::for_tests(
        "127.0.0.1:0".parse().unwrap(),
        data_dir.path().to_path_buf(),
        ADMIN_TOKEN,
    );
    configure(&mut config);
    let app = Application::build(config, clock.clone()).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = app
        .admin_port()
        .map(|port| format!("http://127.0.0.1:{port}"));
    let ops_address = app
        .ops_port()
        .map(|port| format!("http://127.0.0.1:{port}"));
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        admin_address,
        ops_address,
        clock,
        client: reqwest::Client::new(),
        data_dir,
        shutdown,
        server,
    }
}

/// RFC 3339 text of an instant.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// A response's status and JSON body (`Value::Null` if the body is not JSON).
pub async fn read(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

impl TestApp {
    /// The app's data directory (the embedded store's database is in it).
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// `self.address` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// Creates a sale from a raw JSON body with an optional token.
    pub async fn post_sale(&self, body: &Value, token: Option<&str>) -> Response {
        let mut request = self.client.post(self.url("/api/admin/sales")).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// Creates a sale from [`START`] to [`END`]; returns its id.
    pub async fn create_sale(&self, stock: u32, per_user_limit: u32) -> i64 {
        let body = json!({
            "name": "Widget", "starts_at": rfc3339(START), "ends_at": rfc3339(END),
            "stock": stock, "per_user_limit": per_user_limit,
        });
        let (status, body) = read(self.post_sale(&body, Some(ADMIN_TOKEN)).await).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["sale_id"].as_i64().unwrap()
    }

    /// Creates a sale and moves the clock to its start.
    pub async fn active_sale(&self, stock: u32, per_user_limit: u32) -> i64 {
        let id = self.create_sale(stock, per_user_limit).await;
        self.clock.set(START);
        id
    }

    /// POSTs a raw body to the sale's orders with an optional idempotency key.
    pub async fn buy_with(&self, sale: i64, body: &Value, key: Option<&str>) -> Response {
        let mut request = self
            .client
            .post(self.url(&format!("/api/sales/{sale}/orders")))
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    /// One unit for `user`.
    pub async fn buy(&self, sale: i64, user: &str) -> (StatusCode, Value) {
        read(self.buy_with(sale, &json!({ "user_id": user }), None).await).await
    }

    /// The sale's status body.
    pub async fn status(&self, sale: i64) -> Value {
        let (status, body) = read(self.get(&format!("/api/sales/{sale}")).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// The buyer's orders (status and body).
    pub async fn orders(&self, sale: i64, user: &str) -> (StatusCode, Value) {
        read(self.get(&format!("/api/sales/{sale}/orders/{user}")).await).await
    }

    /// The admin summary.
    pub async fn summary(&self, sale: i64) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/api/admin/sales/{sale}/summary")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Moves the clock by `by`.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Shuts down gracefully (as SIGTERM would) and waits for the exit.
    pub async fn stop(self) -> (TempDir, Arc<ManualClock>) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
        (self.data_dir, self.clock)
    }

    /// Shuts down gracefully and starts again on the same data directory and clock.
    pub async fn restart(self) -> TestApp {
        let (dir, clock) = self.stop().await;
        spawn_in(dir, clock).await
    }

    /// Like [`TestApp::restart`], with the test config changed by `configure`.
    pub async fn restart_with(self, configure: impl FnOnce(&mut Config)) -> TestApp {
        let (dir, clock) = self.stop().await;
        spawn_configured(dir, clock, configure).await
    }
}

/// Sends raw bytes over a fresh connection and returns everything the server answers.
pub async fn raw_http(app: &TestApp, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    // The server may close before reading the whole body; what it sent is what counts.
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Asks `request` (an admin export of sale `sale`) for CSV the way `ask` says (`"accept"`: the
/// `Accept` header; anything else: `?format=csv`), checks it came as the attachment
/// `sale-{sale}-{what}.csv`, and returns its lines.
pub async fn csv_lines(
    request: reqwest::RequestBuilder,
    ask: &str,
    sale: impl std::fmt::Display,
    what: &str,
) -> Vec<String> {
    let request = if ask == "accept" {
        request.header("accept", "text/csv")
    } else {
        request.query(&[("format", "csv")])
    };
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert_eq!(
        response.headers()["content-disposition"],
        format!("attachment; filename=\"sale-{sale}-{what}.csv\"").as_str()
    );
    let text = response.text().await.unwrap();
    text.split_terminator("\r\n").map(str::to_owned).collect()
}

/// The text of a shipped deployment file (`deploy/` at the repository's root).
pub fn deploy_file(name: &str) -> String {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
