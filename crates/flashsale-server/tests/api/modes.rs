//! One purchase contract in every identity mode, on both stores (issue 13: "the conformance
//! suite runs in `accounts` mode too"): the same sale, the same buyers and the same answers
//! whether a buyer names themselves (`guest`), signs in here (`accounts`) or brings the shop's
//! token (`jwt`), with the embedded store and with a scale-out instance on Redis + PostgreSQL.
//! Only how a buyer is named changes; every decision must not.

use crate::accounts::{sign_up, token_of};
use crate::helpers::{ADMIN_TOKEN, START, TestApp, read, rfc3339, spawn_app_with};
use crate::identity::{Signer, jwt_mode};
use flashsale_core::SystemClock;
use flashsale_server::config::IdentityMode;
use flashsale_server::{Application, Config, StoreKind};
use flashsale_testkit::isolation::{Cleanup, database_url, redis_url, unique};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};
use tokio_util::sync::CancellationToken;

/// The session key of the scale-out instances in accounts mode.
const SESSION_KEY: &str = "the modes test's shared session key, 32+ bytes";

/// Which store serves the deployment.
#[derive(Clone, Copy, Debug)]
enum Store {
    Embedded,
    ScaleOut,
}

/// A running service in one identity mode, and what its buyers need to be named.
struct Deployment {
    base: String,
    client: Client,
    mode: IdentityMode,
    /// The key the shop's tokens are signed with (jwt mode).
    signer: Option<Signer>,
    /// What the deployment's clock shows while the sale runs (tokens are valid around it).
    now: OffsetDateTime,
    running: Running,
}

/// What keeps a deployment alive until the test ends.
enum Running {
    Embedded(TestApp),
    ScaleOut {
        stop: CancellationToken,
        _data_dir: TempDir,
        _cleanup: Cleanup,
    },
}

/// A buyer as the mode names them: a self-reported id, or a bearer token.
struct Buyer {
    id: String,
    token: Option<String>,
}

impl Deployment {
    async fn start(store: Store, mode: IdentityMode) -> Self {
        let signer = (mode == IdentityMode::Jwt).then(|| Signer::ed25519("modes"));
        let configure = |config: &mut Config| {
            config.identity.mode = mode;
            if let Some(signer) = &signer {
                jwt_mode(config, &[signer]);
            }
        };
        match store {
            Store::Embedded => {
                let app = spawn_app_with(configure).await;
                Self {
                    base: app.address.clone(),
                    client: app.client.clone(),
                    mode,
                    signer,
                    now: START,
                    running: Running::Embedded(app),
                }
            }
            Store::ScaleOut => {
                let name = unique("modes");
                let cleanup = Cleanup::named(&name);
                let data_dir = TempDir::new().unwrap();
                let mut config = Config::for_tests(
                    "127.0.0.1:0".parse().unwrap(),
                    data_dir.path().to_path_buf(),
                    ADMIN_TOKEN,
                );
                config.store = StoreKind::Redis;
                config.redis_url = Some(redis_url());
                config.database_url = Some(database_url());
                config.redis_prefix = name.clone();
                config.pg_schema = name;
                config.identity.session_key = Some(SESSION_KEY.to_owned());
                configure(&mut config);
                let app = Application::build(config, Arc::new(SystemClock))
                    .await
                    .unwrap_or_else(|e| panic!("cannot start on the local Redis/PostgreSQL: {e}"));
                let base = format!("http://127.0.0.1:{}", app.port());
                let stop = app.shutdown_token();
                tokio::spawn(app.run_until_stopped());
                Self {
                    base,
                    client: Client::new(),
                    mode,
                    signer,
                    now: OffsetDateTime::now_utc(),
                    running: Running::ScaleOut {
                        stop,
                        _data_dir: data_dir,
                        _cleanup: cleanup,
                    },
                }
            }
        }
    }

    /// Creates a sale that is active now on the deployment's clock; returns its id.
    async fn active_sale(&self, stock: u32, per_user_limit: u32) -> i64 {
        let (starts_at, ends_at) = match &self.running {
            // The manual clock is moved to START below.
            Running::Embedded(_) => (START, START + Duration::minutes(10)),
            Running::ScaleOut { .. } => (
                self.now - Duration::seconds(1),
                self.now + Duration::hours(1),
            ),
        };
        let response = self
            .client
            .post(format!("{}/api/admin/sales", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({
                "name": "Widget", "starts_at": rfc3339(starts_at), "ends_at": rfc3339(ends_at),
                "stock": stock, "per_user_limit": per_user_limit,
            }))
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        if let Running::Embedded(app) = &self.running {
            app.clock.set(START);
        }
        body["sale_id"].as_i64().unwrap()
    }

    /// A buyer called `name`, signed up and logged in or holding a token as the mode needs.
    async fn buyer(&self, name: &str) -> Buyer {
        match self.mode {
            IdentityMode::Guest => Buyer {
                id: name.to_owned(),
                token: None,
            },
            IdentityMode::Accounts => {
                let email = format!("{name}@example.com");
                let (status, body) = sign_up(&self.client, &self.base, &email).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                let id = body["user_id"].as_str().unwrap().to_owned();
                Buyer {
                    id,
                    token: Some(token_of(&self.client, &self.base, &email).await),
                }
            }
            IdentityMode::Jwt => {
                let at = self.now.unix_timestamp();
                let claims = json!({ "sub": name, "iat": at - 60, "exp": at + 3600 });
                let signer = self.signer.as_ref().unwrap();
                Buyer {
                    id: name.to_owned(),
                    token: Some(signer.sign(&claims)),
                }
            }
        }
    }

    fn with_token(request: RequestBuilder, buyer: &Buyer) -> RequestBuilder {
        match &buyer.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `quantity` units for `buyer`, with an optional idempotency key.
    async fn buy(
        &self,
        sale: i64,
        buyer: &Buyer,
        quantity: u32,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let body = match buyer.token {
            None => json!({ "user_id": buyer.id, "quantity": quantity }),
            Some(_) => json!({ "quantity": quantity }),
        };
        let mut request = self
            .client
            .post(format!("{}/api/sales/{sale}/orders", self.base))
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        read(Self::with_token(request, buyer).send().await.unwrap()).await
    }

    /// The buyer's own orders: by id for a guest, `orders/me` with a token (404
    /// `order_not_found` when they have none).
    async fn orders(&self, sale: i64, buyer: &Buyer) -> (StatusCode, Value) {
        let path = match buyer.token {
            None => format!("/api/sales/{sale}/orders/{}", buyer.id),
            Some(_) => format!("/api/sales/{sale}/orders/me"),
        };
        let request = self.client.get(format!("{}{path}", self.base));
        read(Self::with_token(request, buyer).send().await.unwrap()).await
    }

    async fn status(&self, sale: i64) -> Value {
        let response = self
            .client
            .get(format!("{}/api/sales/{sale}", self.base))
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    fn stop(self) {
        if let Running::ScaleOut { stop, .. } = &self.running {
            stop.cancel();
        }
    }
}

fn assert_code(answer: &(StatusCode, Value), status: StatusCode, code: &str, what: &str) {
    assert_eq!(answer.0, status, "{what}: {}", answer.1);
    assert_eq!(answer.1["code"], code, "{what}: {}", answer.1);
}

/// The contract: 5 units, at most 2 per buyer; a keyed purchase replays and its key with
/// another body is refused, the limit (spent, and exceeded by a quantity), the last unit, sold
/// out, and each buyer's own orders; then the token modes' own refusals.
async fn the_purchase_contract_holds(store: Store, mode: IdentityMode) {
    let what = format!("{store:?}, {mode:?}");
    let deployment = Deployment::start(store, mode).await;
    let sale = deployment.active_sale(5, 2).await;
    let [alice, bob, carol, dave] = [
        deployment.buyer("alice").await,
        deployment.buyer("bob").await,
        deployment.buyer("carol").await,
        deployment.buyer("dave").await,
    ];

    let first = deployment.buy(sale, &alice, 2, Some("alice-1")).await;
    assert_code(&first, StatusCode::CREATED, "confirmed", &what);
    assert_eq!(first.1["order"]["user_id"], alice.id.as_str(), "{what}");
    assert_eq!(first.1["order"]["quantity"], 2, "{what}");
    let replay = deployment.buy(sale, &alice, 2, Some("alice-1")).await;
    assert_eq!(replay, first, "{what}: a key replays its first answer");
    let reused = deployment.buy(sale, &alice, 1, Some("alice-1")).await;
    assert_code(
        &reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        &what,
    );
    let over = deployment.buy(sale, &alice, 1, None).await;
    assert_code(&over, StatusCode::CONFLICT, "already_purchased", &what);

    for (quantity, status, code) in [
        (1, StatusCode::CREATED, "confirmed"),
        (2, StatusCode::CONFLICT, "limit_exceeded"),
        (1, StatusCode::CREATED, "confirmed"),
    ] {
        let answer = deployment.buy(sale, &bob, quantity, None).await;
        assert_code(&answer, status, code, &what);
    }
    assert_code(
        &deployment.buy(sale, &carol, 2, None).await,
        StatusCode::CONFLICT,
        "insufficient_stock",
        &what,
    );
    assert_code(
        &deployment.buy(sale, &carol, 1, None).await,
        StatusCode::CREATED,
        "confirmed",
        &what,
    );
    assert_code(
        &deployment.buy(sale, &dave, 1, None).await,
        StatusCode::CONFLICT,
        "sold_out",
        &what,
    );

    let status = deployment.status(sale).await;
    assert_eq!(status["stock_remaining"], 0, "{what}: {status}");
    assert_eq!(status["state"], "ended", "{what}: {status}");
    assert_eq!(status["ended_reason"], "sold_out", "{what}: {status}");
    for (buyer, quantities) in [(&alice, vec![2]), (&bob, vec![1, 1]), (&carol, vec![1])] {
        let (status, body) = deployment.orders(sale, buyer).await;
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
        let orders = body["orders"].as_array().unwrap();
        let got: Vec<_> = orders
            .iter()
            .map(|o| o["quantity"].as_u64().unwrap())
            .collect();
        assert_eq!(got, quantities, "{what}: {} {orders:?}", buyer.id);
        for order in orders {
            assert_eq!(order["user_id"], buyer.id.as_str(), "{what}");
        }
    }
    let none = deployment.orders(sale, &dave).await;
    assert_code(&none, StatusCode::NOT_FOUND, "order_not_found", &what);

    if mode != IdentityMode::Guest {
        // The token names the buyer: no token is 401, a body naming another buyer is 403.
        let anonymous = Buyer {
            id: "mallory".to_owned(),
            token: None,
        };
        assert_code(
            &deployment.buy(sale, &anonymous, 1, None).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            &what,
        );
        let response = deployment
            .client
            .post(format!("{}/api/sales/{sale}/orders", deployment.base))
            .bearer_auth(dave.token.as_deref().unwrap())
            .json(&json!({ "user_id": alice.id, "quantity": 1 }))
            .send()
            .await
            .unwrap();
        assert_code(
            &read(response).await,
            StatusCode::FORBIDDEN,
            "forbidden",
            &what,
        );
    }
    deployment.stop();
}

#[tokio::test]
async fn embedded_guest() {
    the_purchase_contract_holds(Store::Embedded, IdentityMode::Guest).await;
}

#[tokio::test]
async fn embedded_accounts() {
    the_purchase_contract_holds(Store::Embedded, IdentityMode::Accounts).await;
}

#[tokio::test]
async fn embedded_jwt() {
    the_purchase_contract_holds(Store::Embedded, IdentityMode::Jwt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_guest() {
    the_purchase_contract_holds(Store::ScaleOut, IdentityMode::Guest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_accounts() {
    the_purchase_contract_holds(Store::ScaleOut, IdentityMode::Accounts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_jwt() {
    the_purchase_contract_holds(Store::ScaleOut, IdentityMode::Jwt).await;
}
