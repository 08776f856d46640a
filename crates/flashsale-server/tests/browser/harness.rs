//! What every browser test shares: the service in-process on port 0 ([`TestApp`]), Chromium
//! driven through chromedriver ([`Browser`], [`open_browser`]), and where screenshots go. The
//! buyer's page tests (`tests/browser.rs`) and the operator's page tests ([`super::admin`]) both
//! use it; each adds its own page-specific helpers.

use fantoccini::{Client, ClientBuilder, Locator};
use flashsale_core::{Clock, ManualClock};
use flashsale_server::config::IdentitySettings;
use flashsale_server::{Application, Config};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub(crate) const TOKEN: &str = "browser-test-admin-token";
/// Years away from the machine's clock: a page that trusted the client clock would show a
/// countdown of years (or none at all) instead of the seconds the server says.
pub(crate) const T0: OffsetDateTime = datetime!(2031-03-14 09:00 UTC);
/// Browsers are heavy on two shared cores: the tests in this file take turns.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

pub(crate) struct TestApp {
    pub(crate) base: String,
    pub(crate) port: u16,
    /// The clock the service runs on.
    pub(crate) clock: Arc<dyn Clock>,
    /// The same clock when the test moves it by hand.
    pub(crate) manual: Option<Arc<ManualClock>>,
    pub(crate) http: reqwest::Client,
    pub(crate) stop: CancellationToken,
    running: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub(crate) data: TempDir,
    /// How the service identifies buyers (guest unless a test says otherwise).
    pub(crate) identity: IdentitySettings,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The service on a [`ManualClock`] standing at [`T0`].
pub(crate) async fn spawn_app() -> TestApp {
    let manual = Arc::new(ManualClock::new(T0));
    spawn_app_on(Arc::clone(&manual) as Arc<dyn Clock>, Some(manual)).await
}

pub(crate) async fn spawn_app_on(
    clock: Arc<dyn Clock>,
    manual: Option<Arc<ManualClock>>,
) -> TestApp {
    spawn_app_identified(clock, manual, IdentitySettings::default()).await
}

pub(crate) async fn spawn_app_identified(
    clock: Arc<dyn Clock>,
    manual: Option<Arc<ManualClock>>,
    identity: IdentitySettings,
) -> TestApp {
    let data = tempfile::tempdir().unwrap();
    let mut app = TestApp {
        base: String::new(),
        port: 0,
        clock,
        manual,
        http: reqwest::Client::new(),
        stop: CancellationToken::new(),
        running: None,
        data,
        identity,
    };
    app.start().await;
    app
}

impl TestApp {
    /// Starts the service on `self.port` (0 the first time) over `self.data`.
    pub(crate) async fn start(&mut self) {
        let mut config = Config::for_tests(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            self.data.path().to_owned(),
            TOKEN,
        );
        config.identity = self.identity.clone();
        let app = Application::build(config, Arc::clone(&self.clock))
            .await
            .expect("the service starts");
        self.port = app.port();
        self.base = format!("http://127.0.0.1:{}", self.port);
        self.stop = app.shutdown_token();
        self.running = Some(tokio::spawn(app.run_until_stopped()));
    }

    /// Shuts the service down as SIGTERM would and waits until it has stopped.
    pub(crate) async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(running) = self.running.take() {
            running.await.unwrap().expect("a clean shutdown");
        }
    }

    /// Creates a sale starting `starts_in` seconds from the service's now, lasting `lasts`
    /// seconds.
    pub(crate) async fn create_sale(
        &self,
        name: &str,
        starts_in: i64,
        lasts: i64,
        stock: u32,
    ) -> u64 {
        let starts = self.clock.now() + time::Duration::seconds(starts_in);
        let ends = starts + time::Duration::seconds(lasts);
        let response = self
            .http
            .post(format!("{}/api/admin/sales", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({
                "name": name,
                "starts_at": starts.format(&Rfc3339).unwrap(),
                "ends_at": ends.format(&Rfc3339).unwrap(),
                "stock": stock,
                "per_user_limit": 1,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "creating a sale");
        let body: Value = response.json().await.unwrap();
        body["sale_id"].as_u64().unwrap()
    }

    /// Another buyer, outside the browser.
    pub(crate) async fn buy(&self, sale: u64, user: &str) -> Value {
        let response = self
            .http
            .post(format!("{}/api/sales/{sale}/orders", self.base))
            .json(&json!({ "user_id": user }))
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    pub(crate) async fn orders_of(&self, sale: u64, user: &str) -> Value {
        let url = format!("{}/api/sales/{sale}/orders/{user}", self.base);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Purchase attempts the server has seen for the sale.
    pub(crate) async fn attempts(&self, sale: u64) -> u64 {
        let url = format!("{}/api/admin/sales/{sale}/summary", self.base);
        let summary: Value = self
            .http
            .get(url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        summary["attempts"].as_u64().expect("summary has attempts")
    }

    pub(crate) fn set_clock(&self, seconds_after_t0: i64) {
        self.manual
            .as_ref()
            .expect("a test on the manual clock")
            .set(T0 + time::Duration::seconds(seconds_after_t0));
    }

    pub(crate) fn page(&self, sale: u64) -> String {
        format!("{}/?sale={sale}", self.base)
    }
}

// ---------------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------------

pub(crate) struct Browser {
    pub(crate) client: Client,
    driver_port: u16,
    session: String,
    _driver: Child,
    _profile: TempDir,
}

/// Ends the session (which closes Chromium) even when a test panics, so no browser outlives
/// the test; then the chromedriver child is killed on drop.
impl Drop for Browser {
    fn drop(&mut self) {
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.session
        );
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.driver_port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = stream.write_all(request.as_bytes());
            // chromedriver answers once the browser is gone; it may keep the connection open,
            // so read just the one response rather than to the end of the stream.
            let (mut answer, mut chunk) = (Vec::new(), [0u8; 4096]);
            while let Ok(n @ 1..) = stream.read(&mut chunk) {
                answer.extend_from_slice(&chunk[..n]);
                if response_complete(&answer) {
                    break;
                }
            }
        }
    }
}

/// Whether `answer` holds a whole HTTP response (headers and `Content-Length` bytes of body).
pub(crate) fn response_complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

pub(crate) fn tool(var: &str, default: &str, package: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    assert!(
        Path::new(&path).exists(),
        "{path} not found: the browser tests need Debian's `{package}` \
         (apt-get install -y chromium chromium-driver) or {var} pointing at it"
    );
    path
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) async fn open_browser(width: u32, height: u32) -> Browser {
    let chromium = tool("CHROMIUM", "/usr/bin/chromium", "chromium");
    let chromedriver = tool("CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
    let driver_port = free_port();
    let driver = Command::new(&chromedriver)
        .arg(format!("--port={driver_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {chromedriver}: {e}"));
    let profile = tempfile::tempdir().unwrap();
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic",
                format!("--user-data-dir={}", profile.path().display()),
                format!("--window-size={width},{height}"),
            ],
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let url = format!("http://127.0.0.1:{driver_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => break client,
            Err(e) if Instant::now() > deadline => {
                panic!("chromedriver/chromium did not start: {e}")
            }
            // chromedriver is still starting: its port is not open yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    client
        .set_window_size(width, height)
        .await
        .expect("window size");
    let session = client.session_id().await.unwrap().expect("a session id");
    Browser {
        client,
        driver_port,
        session,
        _driver: driver,
        _profile: profile,
    }
}

impl Browser {
    pub(crate) async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    pub(crate) async fn click(&self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    pub(crate) async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

pub(crate) fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("screenshots")
}

pub(crate) fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
