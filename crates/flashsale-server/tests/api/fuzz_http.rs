//! Bad input over real HTTP (issue 7, T-4): random requests against the running service:
//! random JSON and wrong types, huge and unicode ids, control characters, wrong content types,
//! invalid sale ids, truncated bodies, unknown routes and odd methods. Whatever arrives, the
//! answer is never a 500 and never a panic, and every answer that is not a 2xx is a JSON
//! `{code, message}` body. Requests are written by hand on raw TCP so that nothing a client
//! library would tidy up (methods, content types, lengths) is out of reach. (Bytes that are
//! not HTTP at all are hyper's to refuse and never reach our code.)

use crate::helpers::{ADMIN_TOKEN, spawn_app};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One generated request.
#[derive(Debug, Clone)]
struct Case {
    method: String,
    path: String,
    content_type: Option<String>,
    authorized: bool,
    idempotency_key: Option<String>,
    body: Vec<u8>,
    /// Declare more bytes than are sent, then close the sending side.
    truncated: bool,
}

/// Percent-encodes everything but unreserved characters, so any text fits in a path segment.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::from),
        "[a-z@.]{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999999999".to_owned()),
        "[0-9]{1,25}",
        any::<String>(),
        ".{0,300}",
        (0usize..400).prop_map(|n| "é".repeat(n)),
        "[\\x00-\\x1f\\x7f ]{1,5}",
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (json_value(), json_value()).prop_map(|(u, q)| json!({"user_id": u, "quantity": q})
            .to_string()
            .into_bytes()),
        id_text().prop_map(|u| json!({ "user_id": u }).to_string().into_bytes()),
        // Raw text pasted into a JSON string: control characters, quotes, backslashes.
        any::<String>().prop_map(|u| format!("{{\"user_id\":\"{u}\"}}").into_bytes()),
        (0usize..6000).prop_map(|n| json!({ "user_id": "a".repeat(n) }).to_string().into_bytes()),
        (json_value(), 0usize..40).prop_map(|(v, cut)| {
            let mut text = v.to_string().into_bytes();
            text.truncate(text.len().saturating_sub(cut));
            text
        }),
        json_value().prop_map(|v| {
            json!({"name": v, "starts_at": "2026-11-22T12:01:00Z",
                   "ends_at": "2026-11-22T12:11:00Z", "stock": 3})
            .to_string()
            .into_bytes()
        }),
        prop::collection::vec(any::<u8>(), 0..200),
        Just(Vec::new()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (id_text(), id_text(), 0usize..11, "[a-z/._-]{0,30}").prop_map(|(s, u, pick, junk)| {
        let (s, u) = (encode(&s), encode(&u));
        match pick {
            0 => format!("/api/sales/{s}"),
            1 | 2 => format!("/api/sales/{s}/orders"),
            3 => format!("/api/sales/{s}/orders/{u}"),
            4 => "/api/sale".to_owned(),
            5 => "/api/admin/sales".to_owned(),
            6 => format!("/api/admin/sales/{s}/summary"),
            7 => format!("/api/sales/{s}/events"),
            8 => format!("/{junk}"),
            9 => format!("/api/{junk}?{u}"),
            _ => "/api/sales/1/orders".to_owned(),
        }
    })
}

fn case() -> impl Strategy<Value = Case> {
    let method = prop_oneof![
        4 => Just("POST".to_owned()),
        3 => Just("GET".to_owned()),
        1 => Just("PUT".to_owned()),
        1 => Just("DELETE".to_owned()),
        1 => Just("PATCH".to_owned()),
        1 => Just("OPTIONS".to_owned()),
        1 => Just("HEAD".to_owned()),
        1 => "[A-Z]{1,10}".prop_filter("CONNECT takes an authority, not a path", |m| m != "CONNECT"),
    ];
    let content_type = prop_oneof![
        3 => Just(Some("application/json".to_owned())),
        1 => Just(None),
        1 => Just(Some("text/plain".to_owned())),
        1 => Just(Some("APPLICATION/JSON; charset=utf-8".to_owned())),
        1 => Just(Some("application/x-www-form-urlencoded".to_owned())),
        1 => "[ -~]{0,30}".prop_map(Some),
    ];
    (
        method,
        path(),
        content_type,
        any::<bool>(),
        prop::option::of("[ -~]{0,300}"),
        body(),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(method, path, content_type, authorized, idempotency_key, body, truncated)| Case {
                method,
                path,
                content_type,
                authorized,
                idempotency_key,
                body,
                truncated,
            },
        )
}

/// The answer's status and body (empty when the server closed without answering).
async fn send(addr: &str, case: &Case) -> (Option<u16>, Vec<u8>, String) {
    let mut head = format!("{} {} HTTP/1.1\r\nhost: fuzz\r\n", case.method, case.path);
    if let Some(ct) = &case.content_type {
        head.push_str(&format!("content-type: {}\r\n", ct.trim()));
    }
    if case.authorized {
        head.push_str(&format!("authorization: Bearer {ADMIN_TOKEN}\r\n"));
    }
    if let Some(key) = &case.idempotency_key {
        head.push_str(&format!("idempotency-key: {}\r\n", key.trim()));
    }
    let declared = case.body.len() + if case.truncated { 10 } else { 0 };
    head.push_str(&format!("content-length: {declared}\r\n\r\n"));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = head.into_bytes();
    request.extend_from_slice(&case.body);
    // The server may answer (e.g. 413) and close before taking the whole body. The connection
    // is kept alive otherwise: a server closing with our unread bytes in its buffer would reset
    // the connection and could discard its answer before we read it.
    let _ = stream.write_all(&request).await;
    if case.truncated {
        let _ = stream.shutdown().await;
    }
    // Read the head, then exactly the declared body: an event stream never ends by itself.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return (None, answer, String::new()),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    if status.is_some_and(|s| (200..300).contains(&s)) || case.method == "HEAD" {
        return (status, Vec::new(), head);
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = answer[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    (status, body, head)
}

fn check(
    case: &Case,
    (status, body, head): &(Option<u16>, Vec<u8>, String),
) -> Result<(), TestCaseError> {
    let Some(status) = *status else {
        // Only a request we cut short may be dropped without an answer.
        prop_assert!(case.truncated, "no answer to {case:?}");
        return Ok(());
    };
    prop_assert!(
        status < 500 || status == 503,
        "{status} for {case:?}: {}",
        String::from_utf8_lossy(body)
    );
    if (200..300).contains(&status) || case.method == "HEAD" {
        return Ok(());
    }
    prop_assert!(
        head.contains("content-type: application/json"),
        "{head} for {case:?}"
    );
    let parsed: Value = serde_json::from_slice(body).map_err(|e| {
        TestCaseError::fail(format!(
            "{e}: {status} {:?} for {case:?}",
            String::from_utf8_lossy(body)
        ))
    })?;
    prop_assert!(
        parsed["code"].is_string() && parsed["message"].is_string(),
        "{parsed} for {case:?}"
    );
    Ok(())
}

#[test]
fn random_requests_never_get_a_500_and_every_error_is_a_json_code_and_message() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(async {
        let app = spawn_app().await;
        app.active_sale(1_000_000, 5).await;
        app
    });
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 512,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&case(), |case| {
        let answer = runtime.block_on(send(&addr, &case));
        check(&case, &answer)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Still serving, and a 503 above was never a crash: health answers.
    runtime.block_on(async {
        assert_eq!(app.get("/healthz").await.status(), reqwest::StatusCode::OK);
        app.stop().await;
    });
}
