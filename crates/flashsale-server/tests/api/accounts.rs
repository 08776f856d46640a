//! `--identity accounts` (issue 13, SPEC section 10): sign up, log in, log out over HTTP; the
//! session token is the only way to buy or read one's orders; every bad token is 401; an
//! unknown email and a wrong password get the same answer in about the same time; log-ins are
//! rate limited without locking the owner out; accounts and logouts survive a restart; and in
//! scale-out a logout made on one instance is honoured by another within the poll bound.

use crate::helpers::{TestApp, read, spawn_app_with};
use flashsale_core::SystemClock;
use flashsale_server::config::IdentityMode;
use flashsale_server::{Application, Config, StoreKind};
use flashsale_testkit::isolation::{Cleanup, database_url, redis_url, unique};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

async fn spawn_accounts_app() -> TestApp {
    spawn_app_with(|config| config.identity.mode = IdentityMode::Accounts).await
}

/// POSTs `body` as JSON to `base` + `path`, with an optional bearer token and forwarded-for
/// address.
async fn post(
    client: &Client,
    url: String,
    body: &Value,
    token: Option<&str>,
    from: Option<&str>,
) -> Response {
    let mut request = client.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(from) = from {
        request = request.header("x-forwarded-for", from);
    }
    request.send().await.unwrap()
}

pub(crate) async fn sign_up(client: &Client, base: &str, email: &str) -> (StatusCode, Value) {
    read(
        post(
            client,
            format!("{base}/api/accounts"),
            &json!({ "email": email, "password": PASSWORD }),
            None,
            None,
        )
        .await,
    )
    .await
}

async fn log_in_as(
    client: &Client,
    base: &str,
    email: &str,
    password: &str,
    from: Option<&str>,
) -> (StatusCode, Value) {
    read(
        post(
            client,
            format!("{base}/api/sessions"),
            &json!({ "email": email, "password": password }),
            None,
            from,
        )
        .await,
    )
    .await
}

/// Logs in and returns the token.
pub(crate) async fn token_of(client: &Client, base: &str, email: &str) -> String {
    let (status, body) = log_in_as(client, base, email, PASSWORD, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn buy(client: &Client, base: &str, sale: i64, token: &str) -> (StatusCode, Value) {
    read(
        post(
            client,
            format!("{base}/api/sales/{sale}/orders"),
            &json!({}),
            Some(token),
            None,
        )
        .await,
    )
    .await
}

async fn get_as(client: &Client, url: String, token: &str) -> (StatusCode, Value) {
    read(client.get(url).bearer_auth(token).send().await.unwrap()).await
}

async fn log_out(client: &Client, base: &str, token: &str) -> StatusCode {
    client
        .delete(format!("{base}/api/sessions/current"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

fn assert_invalid_token(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(body["code"], "unauthenticated", "{what}: {body}");
}

#[tokio::test]
async fn a_buyer_signs_up_logs_in_buys_reads_only_their_orders_and_logs_out() {
    let app = spawn_accounts_app().await;
    let (client, base) = (&app.client, app.address.as_str());
    let (status, ann) = sign_up(client, base, "  Ann@Example.COM ").await;
    assert_eq!(status, StatusCode::CREATED, "{ann}");
    assert_eq!(ann["email"], "ann@example.com");
    let (status, body) = sign_up(client, base, "ann@example.com").await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::CONFLICT, &json!("email_taken"))
    );
    assert_eq!(
        sign_up(client, base, "bob@example.com").await.0,
        StatusCode::CREATED
    );

    let (status, session) = log_in_as(client, base, "ANN@example.com", PASSWORD, None).await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    assert!(session["expires_at"].is_string());
    assert_eq!(session["user_id"], ann["user_id"]);
    let token = session["token"].as_str().unwrap().to_owned();
    let bob = token_of(client, base, "bob@example.com").await;

    let sale = app.active_sale(10, 1).await;
    let (status, order) = buy(client, base, sale, &token).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["order"]["user_id"], ann["user_id"]);
    // A body naming another buyer is refused.
    let (status, _) = read(
        post(
            client,
            app.url(&format!("/api/sales/{sale}/orders")),
            &json!({ "user_id": "someone-else" }),
            Some(&bob),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, mine) = get_as(
        client,
        app.url(&format!("/api/sales/{sale}/orders/me")),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(mine["orders"].as_array().unwrap().len(), 1);
    let ann_id = ann["user_id"].as_str().unwrap();
    let (status, body) = get_as(
        client,
        app.url(&format!("/api/sales/{sale}/orders/{ann_id}")),
        &bob,
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("forbidden"))
    );

    assert_eq!(log_out(client, base, &token).await, StatusCode::NO_CONTENT);
    let (status, body) = buy(client, base, sale, &token).await;
    assert_invalid_token(status, &body, "a logged-out token");
    assert_eq!(
        log_out(client, base, &token).await,
        StatusCode::UNAUTHORIZED
    );
    // Bob's session is his own: it still works.
    assert_eq!(buy(client, base, sale, &bob).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn without_a_token_buyer_routes_are_401_and_malformed_tampered_or_expired_tokens_too() {
    let app = spawn_accounts_app().await;
    let (client, base) = (&app.client, app.address.as_str());
    sign_up(client, base, "ann@example.com").await;
    let token = token_of(client, base, "ann@example.com").await;
    let sale = app.active_sale(10, 1).await;

    let response = post(
        client,
        app.url(&format!("/api/sales/{sale}/orders")),
        &json!({ "user_id": "ann" }),
        None,
        None,
    )
    .await;
    assert!(response.headers().contains_key("www-authenticate"));
    let (status, body) = read(response).await;
    assert_invalid_token(status, &body, "no token");

    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 4, "{token}");
    let other_account = "0123456789abcdef0123456789abcdef";
    let tampered = [
        format!("{}.{other_account}.{}.{}", parts[0], parts[2], parts[3]),
        format!(
            "{}.{}.{}.{}",
            parts[0], parts[1], 9_999_999_999_i64, parts[3]
        ),
        format!("{}.{}.{}.{}A", parts[0], parts[1], parts[2], parts[3]),
    ];
    for bad in [
        "junk",
        "a.b.c.d",
        "....",
        &tampered[0],
        &tampered[1],
        &tampered[2],
    ] {
        let (status, body) = buy(client, base, sale, bad).await;
        assert_invalid_token(status, &body, bad);
    }
    // The token works until its expiry (24 h by default), measured on the service's clock.
    app.advance(time::Duration::hours(23));
    let (status, body) = get_as(
        client,
        app.url(&format!("/api/sales/{sale}/orders/me")),
        &token,
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::NOT_FOUND, &json!("order_not_found"))
    );
    app.advance(time::Duration::hours(2));
    let (status, body) = get_as(
        client,
        app.url(&format!("/api/sales/{sale}/orders/me")),
        &token,
    )
    .await;
    assert_invalid_token(status, &body, "an expired token");
}

#[tokio::test]
async fn bad_emails_and_passwords_are_400_and_a_login_with_them_is_just_invalid_credentials() {
    let app = spawn_accounts_app().await;
    let (client, base) = (&app.client, app.address.as_str());
    for (email, password) in [
        ("not-an-email", PASSWORD),
        ("ann@example.com", "short"),
        ("ann@example.com", &"x".repeat(1025)),
    ] {
        let (status, body) = read(
            post(
                client,
                app.url("/api/accounts"),
                &json!({ "email": email, "password": password }),
                None,
                None,
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_request")),
            "{email}"
        );
        let (status, body) = log_in_as(client, base, email, password, None).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::UNAUTHORIZED, &json!("invalid_credentials"))
        );
    }
    let (status, _) = read(
        post(
            client,
            app.url("/api/accounts"),
            &json!({ "email": "ann@example.com" }),
            None,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn an_unknown_email_and_a_wrong_password_get_the_same_answer_in_about_the_same_time() {
    let app = spawn_accounts_app().await;
    let (client, base) = (&app.client, app.address.as_str());
    sign_up(client, base, "ann@example.com").await;
    let mut wrong_password = Vec::new();
    let mut unknown_email = Vec::new();
    // Interleaved, so a slower moment of the machine weighs on both alike.
    for i in 0..5 {
        let started = Instant::now();
        let (status, wrong) =
            log_in_as(client, base, "ann@example.com", "wrong password", None).await;
        wrong_password.push(started.elapsed());
        let started = Instant::now();
        let (status2, unknown) = log_in_as(
            client,
            base,
            &format!("nobody{i}@example.com"),
            PASSWORD,
            None,
        )
        .await;
        unknown_email.push(started.elapsed());
        assert_eq!((status, &wrong), (status2, &unknown));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(wrong["code"], "invalid_credentials");
    }
    let (wrong, unknown) = (median(wrong_password), median(unknown_email));
    let ratio = wrong.as_secs_f64() / unknown.as_secs_f64();
    assert!(
        (0.5..=2.0).contains(&ratio),
        "wrong password {wrong:?} vs unknown email {unknown:?}"
    );
}

#[tokio::test]
async fn a_thousand_wrong_logins_from_one_address_are_limited_and_the_owner_still_logs_in() {
    let app = spawn_app_with(|config| {
        config.identity.mode = IdentityMode::Accounts;
        config.rate_limits.enabled = true;
        config.rate_limits.trusted_proxies = "127.0.0.1".parse().unwrap();
    })
    .await;
    let (client, base) = (&app.client, app.address.as_str());
    sign_up(client, base, "ann@example.com").await;
    let mut limited = 0;
    let mut refused = 0;
    for _ in 0..1_000 {
        let (status, body) = log_in_as(
            client,
            base,
            "ann@example.com",
            "guess",
            Some("198.51.100.7"),
        )
        .await;
        match status {
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            StatusCode::UNAUTHORIZED => refused += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(refused <= 5, "{refused} guesses were checked");
    assert_eq!(limited + refused, 1_000);
    let (status, body) = log_in_as(
        client,
        base,
        "ann@example.com",
        PASSWORD,
        Some("203.0.113.9"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_signups_for_one_email_over_http_exactly_one_succeeds() {
    let app = spawn_accounts_app().await;
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let client = app.client.clone();
            let base = app.address.clone();
            let email = if i % 2 == 0 {
                "race@example.com"
            } else {
                "RACE@example.com"
            };
            tokio::spawn(async move { sign_up(&client, &base, email).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let taken = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, taken), (1, 7), "{statuses:?}");
}

#[tokio::test]
async fn accounts_sessions_and_logouts_survive_a_restart() {
    let app = spawn_accounts_app().await;
    sign_up(&app.client, &app.address, "ann@example.com").await;
    let live = token_of(&app.client, &app.address, "ann@example.com").await;
    let ended = token_of(&app.client, &app.address, "ann@example.com").await;
    assert_eq!(
        log_out(&app.client, &app.address, &ended).await,
        StatusCode::NO_CONTENT
    );
    let key = app.data_dir().join("session-key");
    assert!(key.exists(), "the generated session key is kept");

    let app = app
        .restart_with(|config| config.identity.mode = IdentityMode::Accounts)
        .await;
    let (client, base) = (&app.client, app.address.as_str());
    let sale = app.active_sale(10, 1).await;
    let (status, body) = buy(client, base, sale, &ended).await;
    assert_invalid_token(status, &body, "a token logged out before the restart");
    assert_eq!(buy(client, base, sale, &live).await.0, StatusCode::CREATED);
    assert_eq!(
        sign_up(client, base, "ann@example.com").await.0,
        StatusCode::CONFLICT
    );
    token_of(client, base, "ann@example.com").await;
}

#[tokio::test]
async fn the_page_and_openapi_document_follow_accounts_mode() {
    let app = spawn_accounts_app().await;
    let page = app.get("/").await.text().await.unwrap();
    assert!(page.contains(r#"data-identity="accounts""#));
    let (_, doc) = read(app.get("/api/openapi.json").await).await;
    assert!(doc["components"]["securitySchemes"].is_object(), "{doc}");
}

/// A scale-out instance in accounts mode sharing `name`'s schema and keys, with `key`.
async fn spawn_scale_out(
    name: &str,
    key: Option<&str>,
) -> Result<(String, tokio_util::sync::CancellationToken), String> {
    let mut config = Config::for_tests(
        "127.0.0.1:0".parse().unwrap(),
        std::env::temp_dir(),
        "scale-out-admin-token",
    );
    config.store = StoreKind::Redis;
    config.redis_url = Some(redis_url());
    config.database_url = Some(database_url());
    config.redis_prefix = name.to_owned();
    config.pg_schema = name.to_owned();
    config.identity.mode = IdentityMode::Accounts;
    config.identity.session_key = key.map(str::to_owned);
    let app = Application::build(config, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let address = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    Ok((address, stop))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_scale_out_a_session_from_one_instance_works_on_another_until_a_logout_there() {
    let name = unique("acct");
    let _cleanup = Cleanup::named(&name);
    let refused = spawn_scale_out(&name, None).await.unwrap_err();
    assert!(refused.contains("FLASHSALE_SESSION_KEY"), "{refused}");
    assert!(!refused.contains('\n'), "{refused}");

    let key = "a shared secret of at least thirty-two bytes";
    let (a, stop_a) = spawn_scale_out(&name, Some(key)).await.unwrap();
    let (b, stop_b) = spawn_scale_out(&name, Some(key)).await.unwrap();
    let client = Client::new();
    assert_eq!(
        sign_up(&client, &a, "ann@example.com").await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        sign_up(&client, &b, "ANN@example.com").await.0,
        StatusCode::CONFLICT
    );
    // Eight sign-ups for one email, spread over both instances: one account.
    let race: Vec<_> = (0..8)
        .map(|i| {
            let (client, base) = (
                client.clone(),
                if i % 2 == 0 { a.clone() } else { b.clone() },
            );
            tokio::spawn(async move { sign_up(&client, &base, "race@example.com").await.0 })
        })
        .collect();
    let mut created = 0;
    for attempt in race {
        let status = attempt.await.unwrap();
        assert!(
            matches!(status, StatusCode::CREATED | StatusCode::CONFLICT),
            "{status}"
        );
        created += usize::from(status == StatusCode::CREATED);
    }
    assert_eq!(created, 1);

    let token = token_of(&client, &b, "ann@example.com").await;
    let me = |base: &str| format!("{base}/api/sales/1/orders/me");
    // Verified on A without asking anybody: the key is shared.
    let (status, body) = get_as(&client, me(&a), &token).await;
    assert_ne!(status, StatusCode::UNAUTHORIZED, "{body}");

    assert_eq!(log_out(&client, &b, &token).await, StatusCode::NO_CONTENT);
    let logged_out = Instant::now();
    loop {
        let (status, _) = get_as(&client, me(&a), &token).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            logged_out.elapsed() < Duration::from_secs(3),
            "the other instance still honours the token 3 s after the logout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A third instance started later knows the account and the logout.
    let (c, stop_c) = spawn_scale_out(&name, Some(key)).await.unwrap();
    let (status, _) = get_as(&client, me(&c), &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    token_of(&client, &c, "ann@example.com").await;
    for stop in [stop_a, stop_b, stop_c] {
        stop.cancel();
    }
}
