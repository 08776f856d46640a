//! Native TLS (SPEC section 12): with `--tls-cert`/`--tls-key` the service buys, serves the
//! page and streams events over HTTPS, on HTTP/2 and HTTP/1.1 (ALPN); a client trusting only
//! the test's own CA validates the chain, one trusting another CA refuses it; SIGHUP makes the
//! real binary serve a replaced certificate.

use crate::events::next_sale_event;
use crate::helpers::{ADMIN_TOKEN, START, read, spawn_app_with};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use reqwest::{StatusCode, Version};
use rustls::pki_types::CertificateDer;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A CA and a `localhost` leaf it signed, written as PEM files.
struct TestPki {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

/// A fresh CA, then a leaf for `localhost` and 127.0.0.1 signed by it, written to `dir`
/// (the chain file holds leaf then CA, as a deployment's would).
fn make_pki(dir: &Path) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "flashsale test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, leaf_cert.pem() + &ca_cert.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    TestPki {
        ca: ca_cert.der().clone(),
        leaf: leaf_cert.der().clone(),
        cert_path,
        key_path,
    }
}

/// A client trusting only `ca`, offering `alpn`, reporting the peer's certificate.
fn client_trusting(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .tls_info(true)
        .build()
        .unwrap()
}

/// The certificate the server presented on `response`'s connection.
fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("a TLS response carries the peer certificate")
        .to_vec()
}

#[tokio::test]
async fn buys_serves_the_page_and_streams_events_over_https_on_h2_and_http1() {
    let dir = TempDir::new().unwrap();
    let pki = make_pki(dir.path());
    let (cert, key) = (pki.cert_path.clone(), pki.key_path.clone());
    let app = spawn_app_with(|config| {
        config.tls.tls_cert = Some(cert);
        config.tls.tls_key = Some(key);
    })
    .await;
    let base = app.address.replace("http://127.0.0.1", "https://localhost");
    let sale = app_sale(&base, &pki).await;
    app.clock.set(START);

    for (alpn, version) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], Version::HTTP_2),
        (&[b"http/1.1".as_slice()][..], Version::HTTP_11),
    ] {
        let client = client_trusting(&pki.ca, alpn);
        let buyer = format!("tls-buyer-{version:?}");
        let response = client
            .post(format!("{base}/api/sales/{sale}/orders"))
            .json(&json!({ "user_id": buyer }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        assert_eq!(peer_certificate(&response), pki.leaf.to_vec());
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["code"], "confirmed", "{body}");

        let page = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(page.version(), version);
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.text().await.unwrap().contains("<html"));

        let mut events = client
            .get(format!("{base}/api/sales/{sale}/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(events.version(), version);
        assert_eq!(events.status(), StatusCode::OK);
        let mut buffer = String::new();
        let first = next_sale_event(&mut events, &mut buffer).await.unwrap();
        assert_eq!(first["sale_id"], sale, "{first}");
    }
    // Both buyers' units are gone: the purchases really went through the HTTPS listener.
    let status = client_trusting(&pki.ca, &[b"h2"])
        .get(format!("{base}/api/sales/{sale}"))
        .send()
        .await
        .unwrap();
    let (_, status) = read(status).await;
    assert_eq!(status["stock_remaining"], 8, "{status}");
}

/// Creates a 10-unit sale over HTTPS (admin routes share the TLS listener).
async fn app_sale(base: &str, pki: &TestPki) -> i64 {
    let body = json!({
        "name": "TLS widget",
        "starts_at": crate::helpers::rfc3339(START),
        "ends_at": crate::helpers::rfc3339(crate::helpers::END),
        "stock": 10, "per_user_limit": 1,
    });
    let response = client_trusting(&pki.ca, &[b"h2"])
        .post(format!("{base}/api/admin/sales"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["sale_id"].as_i64().unwrap()
}

#[tokio::test]
async fn a_client_trusting_another_ca_refuses_the_chain_and_plain_http_gets_no_answer() {
    let dir = TempDir::new().unwrap();
    let pki = make_pki(dir.path());
    let other_dir = TempDir::new().unwrap();
    let other = make_pki(other_dir.path());
    let (cert, key) = (pki.cert_path.clone(), pki.key_path.clone());
    let app = spawn_app_with(|config| {
        config.tls.tls_cert = Some(cert);
        config.tls.tls_key = Some(key);
    })
    .await;
    let base = app.address.replace("http://127.0.0.1", "https://localhost");
    let error = client_trusting(&other.ca, &[b"h2"])
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    // Plain HTTP on the TLS port is not served.
    assert!(app.client.get(app.url("/healthz")).send().await.is_err());
}

#[tokio::test]
async fn startup_fails_clearly_when_the_key_does_not_match_the_certificate() {
    let dir = TempDir::new().unwrap();
    let pki = make_pki(dir.path());
    let stray_key = dir.path().join("stray.pem");
    std::fs::write(&stray_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let mut config = flashsale_server::Config::for_tests(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("data"),
        ADMIN_TOKEN,
    );
    config.tls.tls_cert = Some(pki.cert_path.clone());
    config.tls.tls_key = Some(stray_key);
    let clock = Arc::new(flashsale_core::ManualClock::new(crate::helpers::T0));
    let error = match flashsale_server::Application::build(config, clock).await {
        Ok(_) => panic!("a mismatched key must not start"),
        Err(error) => error.to_string(),
    };
    assert!(error.starts_with("cannot set up TLS"), "{error}");

    config_missing_file_error(&pki).await;
}

async fn config_missing_file_error(pki: &TestPki) {
    let mut config = flashsale_server::Config::for_tests(
        "127.0.0.1:0".parse().unwrap(),
        PathBuf::from("unused"),
        ADMIN_TOKEN,
    );
    config.tls.tls_cert = Some(pki.cert_path.with_file_name("absent.pem"));
    config.tls.tls_key = Some(pki.key_path.clone());
    let clock = Arc::new(flashsale_core::ManualClock::new(crate::helpers::T0));
    let error = match flashsale_server::Application::build(config, clock).await {
        Ok(_) => panic!("a missing certificate must not start"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("absent.pem"), "{error}");
}

/// Kills the child when dropped, so a failing test leaves no server behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sighup_makes_the_binary_serve_the_replaced_certificate() {
    let dir = TempDir::new().unwrap();
    let first = make_pki(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Child(
        Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--admin-token", ADMIN_TOKEN, "--demo-sale", "false"])
            .arg("--tls-cert")
            .arg(&first.cert_path)
            .arg("--tls-key")
            .arg(&first.key_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://localhost:{port}/healthz");
    let served_by = |ca: &CertificateDer<'static>| {
        let client = client_trusting(ca, &[b"http/1.1"]);
        let url = url.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .ok()
                .map(|r| peer_certificate(&r))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while served_by(&first.ca).await != Some(first.leaf.to_vec()) {
        assert!(Instant::now() < deadline, "the TLS binary did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new pair from a new CA in the same files, then SIGHUP.
    let second = make_pki(dir.path());
    let status = Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_by(&second.ca).await != Some(second.leaf.to_vec()) {
        assert!(
            Instant::now() < deadline,
            "the binary still serves the old certificate after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old chain is no longer served.
    assert!(served_by(&first.ca).await.is_none());
}
