//! `--identity jwt` (issue 13, SPEC section 10): buyer routes need the shop's bearer token, the
//! buyer is the token's `sub`, and every kind of bad token is 401 `unauthenticated`. Keys are
//! made in the test (rcgen for P-256 and Ed25519; one small RSA key below, for tests only).

use crate::helpers::{ADMIN_TOKEN, START, TestApp, read, spawn_app, spawn_app_with};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flashsale_server::Config;
use flashsale_server::config::IdentityMode;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A 2048-bit RSA key made for these tests only (rcgen cannot make RSA keys).
const TEST_RSA_PRIVATE_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAkZD6gCKJnqXEAasKZGsTshoQrfdQoA0sHAp4hlYTTmUTfUl4
sbI+twVqFe3t6vrbHtiL8SISeqeEr/2JRFHUlWctQZ/zIABrz0uyMI/YdugA8wEZ
tEA24wLCTJMhtS2xjWHjGMRtdwu57J0Krh+DpN1Bye+/q8jk6eKHzBpkpHlV6abG
aM4zOQ45T8H2DnE2k3Lsg2nmc/dMrv9SuGNvpus6SHZZ9CYbp/BcdRNUXbqGVAX5
yoeYmyWxE6FHQiMRGhZVpII4IQsg+2IP3iAucmxHBqSKdi/XRiSzm7B+QLMKqr1S
OR/+zIvc74tPFZzDoNtSPh+SLpqQk98rq3uUeQIDAQABAoIBABYbLvpX7w+5cNjS
rCiv3N/b9tMp5IP0kXxOAsZekAlZxD9EnHWv8gztX5JQ/c6vpf3l45VibUKp6gv9
XuPnNszcTGfTmKKFgy80pFec9hdTXcGJqz5Pz4YOHIpwgFqkGSYKyugvUchrGXiG
KOG58M4QDounmIjIC4DmtroXpVfCHYLIWaxVLNKrYyoi9QDsJ+VJjeBLvrWmnsVh
4OMTqMV2ceB7LtmgPWuykzV30TfuiW/rQHbgz3EnzaWoTYm54596/wmIDXDQIc7H
KxZrPlPkymQdul/FqkeEQnDPq2ss7bEDpr93IIKYEYcLeD/i06NnxM1VDgEcMfTQ
Mp4OExkCgYEAwrBNIFO1YIpra8446/QEAQ+ZtYJpPwfmQusG8CJ1TE1jMfbmxh34
D2biBFyJrS4nxicQb18Fk4XJcOX7x74MlQd+GZhjaDUbRrgRrowYdxafcyL5QYWI
N4c/jjWJ7Tae7ZPcV9owo5dIq1IQ78p4u97HVVYoPoB+v86IrfkFUPsCgYEAv2h1
d8zMCiAHdv2C0dyHAzwZVcD7d3VCBMaCMf+ZKEbPF8viJPSA5XwHDNU5JLtIbloB
hGXQ+jZsc6/nF5ULbITEIwhAT6r5itPysBdOtMqdbHtSSs4MqF/8MaHW5E3+AUKJ
diqnirKUw08Nbtz495lQ1xnjHAf5rlirBv5J/hsCgYEAua9AwDZWZW9fqQCVFaY0
M3bXmWB6VN2J5gUXJu0WhuHAXCUqUYa/0qDDrHk97mh5EuqrKC2uudb+G6meDBHd
Gj59LJhFJ1yPWVGxu5JuuxZemYefx7g+BQf/u/igRhi0V8+QdlHp1f0yGAQ7lxi7
MiP2ZhO4anRPb0zi21sIkQUCgYEAlkktWlfpqNWHJu1bxu0w8OBCQCubBiuCH3/B
gAJhPdeDCPsjX8K+ZfDhFDliea227DYtVMggsiUDOD5X4xM6egUwfxUeca8b6d4K
gip6uMcRnbiiX2uzUoyy1kFtGasHEfQtPCO3ktYuqb8rG+3SaY3uhEWmJT850qN5
/a6xaBsCgYB74kSUt2AcRtOV3o5uMF8wOa/2LyZhiUXRvFFjXTTbU+DpupMkzKjL
o/ip+DtnFakeZqehlN9jETGlGgyUHSUFgu58Zt//4/4QdbEhilFlF+oauzvYFuxa
5dOs248MTlDBnYG/OTUMAMPPa0f/4cIt8Gmo1yPBbtQ+STkjkQ6vIg==
-----END RSA PRIVATE KEY-----
";
/// Its public half.
const TEST_RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAkZD6gCKJnqXEAasKZGsT
shoQrfdQoA0sHAp4hlYTTmUTfUl4sbI+twVqFe3t6vrbHtiL8SISeqeEr/2JRFHU
lWctQZ/zIABrz0uyMI/YdugA8wEZtEA24wLCTJMhtS2xjWHjGMRtdwu57J0Krh+D
pN1Bye+/q8jk6eKHzBpkpHlV6abGaM4zOQ45T8H2DnE2k3Lsg2nmc/dMrv9SuGNv
pus6SHZZ9CYbp/BcdRNUXbqGVAX5yoeYmyWxE6FHQiMRGhZVpII4IQsg+2IP3iAu
cmxHBqSKdi/XRiSzm7B+QLMKqr1SOR/+zIvc74tPFZzDoNtSPh+SLpqQk98rq3uU
eQIDAQAB
-----END PUBLIC KEY-----
";

/// The file the tests' JWKS is written to, in the app's data directory.
const JWKS_FILE: &str = "jwks.json";

/// A key the test signs with, and its public JWK.
pub(crate) struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    fn new(alg: Algorithm, kid: &str, key: EncodingKey, mut jwk: Value) -> Self {
        jwk["kid"] = kid.into();
        Self {
            alg,
            kid: kid.to_owned(),
            key,
            jwk: serde_json::from_value(jwk).unwrap(),
        }
    }

    fn rsa(kid: &str) -> Self {
        let key = EncodingKey::from_rsa_pem(TEST_RSA_PRIVATE_PEM.as_bytes()).unwrap();
        let jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        Self::new(
            Algorithm::RS256,
            kid,
            key,
            serde_json::to_value(jwk).unwrap(),
        )
    }

    fn p256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        // The uncompressed point: 0x04, x, y.
        let point = pair.public_key_raw();
        let jwk =
            json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]) });
        Self::new(Algorithm::ES256, kid, key, jwk)
    }

    pub(crate) fn ed25519(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let key = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap();
        let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key_raw()), "alg": "EdDSA" });
        Self::new(Algorithm::EdDSA, kid, key, jwk)
    }

    /// A token with these claims, its header naming this key.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    /// A token for `sub`, valid for an hour around [`START`] (the sales' clock).
    fn token_for(&self, sub: &str) -> String {
        self.sign(&claims_for(sub))
    }
}

/// The instant the clock shows during a test sale, as a JWT NumericDate.
fn start() -> i64 {
    START.unix_timestamp()
}

fn claims_for(sub: &str) -> Value {
    json!({ "sub": sub, "exp": start() + 3600, "iat": start() - 60 })
}

fn jwks_of(signers: &[&Signer]) -> String {
    let set = JwkSet {
        keys: signers.iter().map(|s| s.jwk.clone()).collect(),
    };
    serde_json::to_string(&set).unwrap()
}

/// Switches `config` to jwt mode with a JWKS of `signers` written into its data directory.
pub(crate) fn jwt_mode(config: &mut Config, signers: &[&Signer]) -> PathBuf {
    let path = config.data_dir.join(JWKS_FILE);
    std::fs::write(&path, jwks_of(signers)).unwrap();
    config.identity.mode = IdentityMode::Jwt;
    config.identity.jwt_jwks_file = Some(path.clone());
    path
}

async fn spawn_jwt_app(signers: &[&Signer]) -> TestApp {
    spawn_app_with(|config| {
        jwt_mode(config, signers);
    })
    .await
}

impl TestApp {
    /// POSTs `body` to the sale's orders with an optional bearer token.
    async fn buy_as(&self, sale: i64, token: Option<&str>, body: &Value) -> Response {
        let mut request = self
            .client
            .post(self.url(&format!("/api/sales/{sale}/orders")))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// One unit with `token` and an empty body.
    async fn buy_with_token(&self, sale: i64, token: &str) -> (StatusCode, Value) {
        read(self.buy_as(sale, Some(token), &json!({})).await).await
    }

    /// GETs `path` with an optional bearer token.
    async fn get_as(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }
}

/// Asserts a 401 `unauthenticated` with the bearer challenge, naming `invalid_token` when a
/// token was sent.
async fn assert_unauthenticated(response: Response, token_sent: bool, what: &str) {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(body["code"], "unauthenticated", "{what}: {body}");
    let challenge = challenge.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(
        challenge.starts_with(r#"Bearer realm="flashsale""#),
        "{what}: {challenge}"
    );
    assert_eq!(
        challenge.contains(r#"error="invalid_token""#),
        token_sent,
        "{what}: {challenge}"
    );
}

fn unsigned(header: &Value, claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.", part(header), part(claims))
}

#[tokio::test]
async fn without_a_token_every_buyer_route_is_401_with_a_bearer_challenge_and_status_stays_public()
{
    let signer = Signer::p256("k1");
    let app = spawn_jwt_app(&[&signer]).await;
    let sale = app.active_sale(10, 1).await;

    let purchase = app.buy_as(sale, None, &json!({ "user_id": "alice" })).await;
    assert_unauthenticated(purchase, false, "purchase").await;
    let by_id = app
        .get_as(&format!("/api/sales/{sale}/orders/alice"), None)
        .await;
    assert_unauthenticated(by_id, false, "orders by id").await;
    let mine = app
        .get_as(&format!("/api/sales/{sale}/orders/me"), None)
        .await;
    assert_unauthenticated(mine, false, "orders/me").await;

    assert_eq!(app.status(sale).await["stock_remaining"], 10);
    let featured = app.get("/api/sale").await;
    assert_eq!(featured.status(), StatusCode::OK);
    // The admin routes keep the admin token.
    assert_eq!(app.summary(sale).await["confirmed_units"], 0);
}

#[tokio::test]
async fn malformed_tokens_and_alg_none_are_refused() {
    let signer = Signer::p256("k1");
    let app = spawn_jwt_app(&[&signer]).await;
    let sale = app.active_sale(10, 1).await;
    let good = signer.token_for("alice");
    let (payload_swapped, _) = good.rsplit_once('.').unwrap();
    let none = unsigned(
        &json!({ "alg": "none", "typ": "JWT" }),
        &claims_for("alice"),
    );
    let none_kid = unsigned(
        &json!({ "alg": "none", "typ": "JWT", "kid": "k1" }),
        &claims_for("alice"),
    );
    for (what, token) in [
        ("garbage", "not-a-token".to_owned()),
        ("two parts", payload_swapped.to_owned()),
        ("empty parts", "..".to_owned()),
        ("bad base64", "@@@.@@@.@@@".to_owned()),
        ("alg none", none),
        ("alg none with a kid", none_kid),
        ("no signature", format!("{payload_swapped}.")),
    ] {
        let response = app.buy_as(sale, Some(&token), &json!({})).await;
        assert_unauthenticated(response, true, what).await;
    }
    assert_eq!(app.status(sale).await["stock_remaining"], 10);
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused_beyond_thirty_seconds_of_leeway() {
    let signer = Signer::ed25519("k1");
    let app = spawn_jwt_app(&[&signer]).await;
    let sale = app.active_sale(10, 1).await;
    let now = start();
    let cases = [
        (
            "expired 31 s ago",
            json!({ "sub": "a", "exp": now - 31 }),
            false,
        ),
        (
            "expired just now",
            json!({ "sub": "b", "exp": now - 30 }),
            false,
        ),
        (
            "expired 29 s ago",
            json!({ "sub": "c", "exp": now - 29 }),
            true,
        ),
        ("no exp", json!({ "sub": "d" }), false),
        (
            "exp not a number",
            json!({ "sub": "e", "exp": "soon" }),
            false,
        ),
        (
            "nbf in 31 s",
            json!({ "sub": "f", "exp": now + 600, "nbf": now + 31 }),
            false,
        ),
        (
            "nbf in 29 s",
            json!({ "sub": "g", "exp": now + 600, "nbf": now + 29 }),
            true,
        ),
        (
            "nbf passed",
            json!({ "sub": "h", "exp": now + 600, "nbf": now - 600 }),
            true,
        ),
    ];
    for (what, claims, accepted) in cases {
        let response = app
            .buy_as(sale, Some(&signer.sign(&claims)), &json!({}))
            .await;
        if accepted {
            let (status, body) = read(response).await;
            assert_eq!(status, StatusCode::CREATED, "{what}: {body}");
            assert_eq!(body["order"]["user_id"], claims["sub"], "{what}");
        } else {
            assert_unauthenticated(response, true, what).await;
        }
    }
    // Time is the service's clock: the same token expires when the clock moves on.
    let token = signer.sign(&json!({ "sub": "i", "exp": now + 60 }));
    let path = format!("/api/sales/{sale}/orders/me");
    let (status, _) = read(app.get_as(&path, Some(&token)).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.advance(time::Duration::seconds(90));
    assert_unauthenticated(app.get_as(&path, Some(&token)).await, true, "moved clock").await;
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_refused_even_under_a_known_kid() {
    let known = Signer::p256("k1");
    let stranger = Signer::p256("k1");
    let app = spawn_jwt_app(&[&known]).await;
    let sale = app.active_sale(10, 1).await;
    for (what, token) in [
        ("same kid", stranger.token_for("alice")),
        ("unknown kid", Signer::p256("k9").token_for("alice")),
        (
            "RS256 with no RSA key",
            Signer::rsa("k1").token_for("alice"),
        ),
    ] {
        assert_unauthenticated(app.buy_as(sale, Some(&token), &json!({})).await, true, what).await;
    }
    // A tampered payload under a good signature fails too.
    let good = known.token_for("alice");
    let parts: Vec<&str> = good.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims_for("mallory")).unwrap());
    let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
    assert_unauthenticated(
        app.buy_as(sale, Some(&tampered), &json!({})).await,
        true,
        "tampered payload",
    )
    .await;
    let (status, _) = app.buy_with_token(sale, &good).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    let app = spawn_app_with(|config| {
        let path = config.data_dir.join("provider.pem");
        std::fs::write(&path, TEST_RSA_PUBLIC_PEM).unwrap();
        config.identity.mode = IdentityMode::Jwt;
        config.identity.jwt_public_key_file = Some(path);
    })
    .await;
    let sale = app.active_sale(10, 1).await;
    // The algorithm-confusion attack: the public key (which anyone has) as an HMAC secret.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims_for("mallory"),
        &EncodingKey::from_secret(TEST_RSA_PUBLIC_PEM.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_unauthenticated(
        app.buy_as(sale, Some(&confused), &json!({})).await,
        true,
        "HS256 with the public key",
    )
    .await;
    // The real key's RS256 token is accepted (a PEM key has no kid; the token's is ignored).
    let (status, body) = app
        .buy_with_token(sale, &Signer::rsa("any").token_for("alice"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_are_each_accepted_from_one_jwks() {
    let (rsa, ec, ed) = (Signer::rsa("r"), Signer::p256("e"), Signer::ed25519("d"));
    let app = spawn_jwt_app(&[&rsa, &ec, &ed]).await;
    let sale = app.active_sale(10, 1).await;
    for (signer, buyer) in [
        (&rsa, "rsa@example.com"),
        (&ec, "ec-buyer"),
        (&ed, "ed-buyer"),
    ] {
        let (status, body) = app.buy_with_token(sale, &signer.token_for(buyer)).await;
        assert_eq!(status, StatusCode::CREATED, "{:?}: {body}", signer.alg);
        assert_eq!(body["order"]["user_id"], buyer);
    }
    // Without a kid, the key is found by the algorithm.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = None;
    let token = jsonwebtoken::encode(&header, &claims_for("no-kid"), &ec.key).unwrap();
    let (status, _) = app.buy_with_token(sale, &token).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.status(sale).await["stock_remaining"], 6);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let signer = Signer::p256("k1");
    let app = spawn_app_with(|config| {
        jwt_mode(config, &[&signer]);
        config.identity.jwt_issuer = Some("https://shop.example".into());
        config.identity.jwt_audience = Some("flashsale".into());
    })
    .await;
    let sale = app.active_sale(10, 1).await;
    let exp = start() + 600;
    let iss = "https://shop.example";
    for (what, claims) in [
        (
            "wrong issuer",
            json!({ "sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "flashsale" }),
        ),
        (
            "no issuer",
            json!({ "sub": "a", "exp": exp, "aud": "flashsale" }),
        ),
        (
            "wrong audience",
            json!({ "sub": "a", "exp": exp, "iss": iss, "aud": "another-service" }),
        ),
        ("no audience", json!({ "sub": "a", "exp": exp, "iss": iss })),
        (
            "no sub",
            json!({ "exp": exp, "iss": iss, "aud": "flashsale" }),
        ),
        (
            "blank sub",
            json!({ "sub": "  ", "exp": exp, "iss": iss, "aud": "flashsale" }),
        ),
        (
            "sub with a control character",
            json!({ "sub": "a\u{7}", "exp": exp, "iss": iss, "aud": "flashsale" }),
        ),
    ] {
        let response = app
            .buy_as(sale, Some(&signer.sign(&claims)), &json!({}))
            .await;
        assert_unauthenticated(response, true, what).await;
    }
    for (buyer, aud) in [
        ("a", json!("flashsale")),
        ("b", json!(["other", "flashsale"])),
    ] {
        let claims = json!({ "sub": buyer, "exp": exp, "iss": iss, "aud": aud });
        let (status, body) = app.buy_with_token(sale, &signer.sign(&claims)).await;
        assert_eq!(status, StatusCode::CREATED, "{aud}: {body}");
    }
}

#[tokio::test]
async fn without_a_configured_audience_a_token_meant_for_another_service_is_refused() {
    let signer = Signer::p256("k1");
    let app = spawn_jwt_app(&[&signer]).await;
    let sale = app.active_sale(10, 1).await;
    let claims = json!({ "sub": "a", "exp": start() + 600, "aud": "payments" });
    let response = app
        .buy_as(sale, Some(&signer.sign(&claims)), &json!({}))
        .await;
    assert_unauthenticated(response, true, "foreign audience").await;
}

#[tokio::test]
async fn the_buyer_is_the_tokens_sub_and_a_body_naming_another_buyer_is_403() {
    let signer = Signer::p256("k1");
    let app = spawn_jwt_app(&[&signer]).await;
    let sale = app.active_sale(10, 2).await;
    let token = signer.token_for("Alice@Example.com");

    let (status, body) = read(
        app.buy_as(sale, Some(&token), &json!({ "user_id": "bob@example.com" }))
            .await,
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("forbidden")),
        "{body}"
    );
    assert_eq!(app.status(sale).await["stock_remaining"], 10);

    // The same buyer after normalisation is fine, and so is no user_id at all.
    let (status, body) = read(
        app.buy_as(
            sale,
            Some(&token),
            &json!({ "user_id": "  alice@example.COM " }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["order"]["user_id"], "alice@example.com");
    let (status, body) = app.buy_with_token(sale, &token).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.buy_with_token(sale, &token).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::CONFLICT, &json!("already_purchased"))
    );
    // A malformed body user_id is a bad request, as in guest mode.
    let (status, _) = read(
        app.buy_as(sale, Some(&token), &json!({ "user_id": " " }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = read(
        app.buy_as(sale, Some(&token), &json!({ "quantity": 0 }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_buyer_reads_only_their_own_orders() {
    let signer = Signer::p256("k1");
    let app = spawn_jwt_app(&[&signer]).await;
    let sale = app.active_sale(10, 1).await;
    let (alice, bob) = (signer.token_for("alice"), signer.token_for("bob"));
    assert_eq!(
        app.buy_with_token(sale, &alice).await.0,
        StatusCode::CREATED
    );

    let (status, body) = read(
        app.get_as(&format!("/api/sales/{sale}/orders/alice"), Some(&bob))
            .await,
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("forbidden")),
        "{body}"
    );

    let (status, body) = read(
        app.get_as(&format!("/api/sales/{sale}/orders/me"), Some(&alice))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "alice");
    assert_eq!(body["orders"].as_array().unwrap().len(), 1);
    let (status, by_id) = read(
        app.get_as(
            &format!("/api/sales/{sale}/orders/%20alice%20"),
            Some(&alice),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, &by_id["orders"]),
        (StatusCode::OK, &body["orders"])
    );

    let (status, body) = read(
        app.get_as(&format!("/api/sales/{sale}/orders/me"), Some(&bob))
            .await,
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::NOT_FOUND, &json!("order_not_found"))
    );
}

#[tokio::test]
async fn the_per_buyer_rate_limit_follows_the_verified_buyer_across_addresses() {
    let signer = Signer::p256("k1");
    let app = spawn_app_with(|config| {
        jwt_mode(config, &[&signer]);
        config.rate_limits.enabled = true;
        config.rate_limits.trusted_proxies = "127.0.0.1".parse().unwrap();
        config.rate_limits.purchase_rate_per_user = 1;
        config.rate_limits.purchase_burst_per_user = 2;
    })
    .await;
    let sale = app.active_sale(100, 1).await;
    let token = signer.token_for("alice");
    let from = |address: &str| {
        app.client
            .post(app.url(&format!("/api/sales/{sale}/orders")))
            .bearer_auth(&token)
            .header("x-forwarded-for", address)
            .json(&json!({}))
            .send()
    };
    let statuses = [
        from("203.0.113.1").await.unwrap().status(),
        from("203.0.113.2").await.unwrap().status(),
        from("203.0.113.3").await.unwrap().status(),
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::CONFLICT,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // Another buyer on the first address has a bucket of their own.
    let other = app
        .client
        .post(app.url(&format!("/api/sales/{sale}/orders")))
        .bearer_auth(signer.token_for("bob"))
        .header("x-forwarded-for", "203.0.113.1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::CREATED);
}

/// Polls `check` every 100 ms until it holds or 10 s pass.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rewriting_the_jwks_file_rotates_the_keys_without_a_restart() {
    let (old, new) = (Signer::p256("2026-old"), Signer::ed25519("2026-new"));
    let app = spawn_jwt_app(&[&old]).await;
    let sale = app.active_sale(10, 1).await;
    let path = format!("/api/sales/{sale}/orders/me");
    let app = &app;
    let status_with = |signer: &Signer| {
        let token = signer.token_for("a");
        let path = path.clone();
        async move { app.get_as(&path, Some(&token)).await.status() }
    };
    assert_eq!(status_with(&old).await, StatusCode::NOT_FOUND);
    assert_eq!(status_with(&new).await, StatusCode::UNAUTHORIZED);

    // (A broken file keeping the old keys is `JwtVerifier`'s own test.)
    let file = app.data_dir().join(JWKS_FILE);
    write_later(&file, &jwks_of(&[&new])).await;
    eventually("the new key verifies", || async {
        status_with(&new).await == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(status_with(&old).await, StatusCode::UNAUTHORIZED);
}

/// Writes `text` to `path` with a modification time later than the file's current one (some
/// file systems keep whole seconds only).
async fn write_later(path: &Path, text: &str) {
    let before = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    std::fs::write(path, text).unwrap();
    if let Some(before) = before {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(before + Duration::from_secs(1)).unwrap();
    }
}

#[tokio::test]
async fn jwt_mode_without_a_usable_key_file_does_not_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = |configure: &dyn Fn(&mut Config)| {
        let mut config = Config::for_tests(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("data"),
            ADMIN_TOKEN,
        );
        config.identity.mode = IdentityMode::Jwt;
        configure(&mut config);
        config
    };
    let start = |config: Config| async move {
        let clock = std::sync::Arc::new(flashsale_core::SystemClock);
        match flashsale_server::Application::build(config, clock).await {
            Ok(_) => panic!("started without usable keys"),
            Err(e) => e.to_string(),
        }
    };
    let none = start(config(&|_| {})).await;
    assert!(
        none.contains("--jwt-jwks-file") && none.contains("--jwt-public-key-file"),
        "{none}"
    );

    let missing = dir.path().join("missing.json");
    let unreadable = start(config(&|c| {
        c.identity.jwt_jwks_file = Some(missing.clone())
    }))
    .await;
    assert!(unreadable.contains("missing.json"), "{unreadable}");

    let symmetric = dir.path().join("hs.json");
    std::fs::write(
        &symmetric,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#,
    )
    .unwrap();
    let refused = start(config(&|c| {
        c.identity.jwt_jwks_file = Some(symmetric.clone())
    }))
    .await;
    assert!(refused.contains("no usable key"), "{refused}");

    let private = dir.path().join("private.pem");
    std::fs::write(&private, TEST_RSA_PRIVATE_PEM).unwrap();
    let refused = start(config(&|c| {
        c.identity.jwt_public_key_file = Some(private.clone())
    }))
    .await;
    assert!(refused.contains("private key"), "{refused}");
    assert!(!refused.contains('\n'), "one line: {refused}");
}

#[tokio::test]
async fn in_guest_mode_orders_me_is_401_and_the_by_id_route_is_open_as_before() {
    let app = spawn_app().await;
    let sale = app.active_sale(10, 1).await;
    assert_eq!(app.buy(sale, "alice").await.0, StatusCode::CREATED);
    let response = app.get(&format!("/api/sales/{sale}/orders/me")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (_, body) = read(response).await;
    assert_eq!(body["code"], "unauthenticated");
    assert!(
        body["message"].as_str().unwrap().contains("guest"),
        "{body}"
    );
    assert_eq!(app.orders(sale, "alice").await.0, StatusCode::OK);
    // A buyer literally named "me" still reads their orders, with the path escaped.
    assert_eq!(app.buy(sale, "me").await.0, StatusCode::CREATED);
    let (status, body) = app.orders(sale, "%6De").await;
    assert_eq!(
        (status, &body["user_id"]),
        (StatusCode::OK, &json!("me")),
        "{body}"
    );
    // A token is ignored in guest mode: the body names the buyer.
    let (status, body) = read(
        app.buy_as(sale, Some("junk"), &json!({ "user_id": "bob" }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn the_page_and_the_openapi_document_follow_the_mode() {
    let signer = Signer::p256("k1");
    let jwt = spawn_jwt_app(&[&signer]).await;
    let guest = spawn_app().await;
    let jwt_page = jwt.get("/").await.text().await.unwrap();
    assert!(jwt_page.contains(r#"data-identity="jwt""#));
    let guest_page = guest.get("/").await.text().await.unwrap();
    assert!(guest_page.contains(r#"data-identity="guest""#));
    let doc: Value = jwt.get("/api/openapi.json").await.json().await.unwrap();
    assert_eq!(
        doc["paths"]["/api/sales/{sale_id}/orders"]["post"]["security"],
        json!([{ "buyer_token": [] }])
    );
    let doc: Value = guest.get("/api/openapi.json").await.json().await.unwrap();
    assert!(doc["paths"]["/api/sales/{sale_id}/orders/me"]["get"].is_object());
    assert!(doc["components"]["securitySchemes"]["buyer_token"].is_null());
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
async fn sighup_makes_the_running_binary_verify_with_the_replaced_key() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("provider.pem");
    let first = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&pem, first.public_key_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--admin-token", ADMIN_TOKEN, "--demo-sale", "false"])
            .args(["--identity", "jwt", "--jwt-public-key-file"])
            .arg(&pem)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The binary runs on the real clock.
    let token_of = |pair: &rcgen::KeyPair| {
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let claims = json!({ "sub": "alice", "exp": exp });
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
    };
    let client = reqwest::Client::new();
    // No such sale: 404 once the token is accepted, 401 while it is not.
    let url = format!("http://127.0.0.1:{port}/api/sales/1/orders/me");
    let status_with = |token: String| {
        let request = client.get(&url).bearer_auth(token).send();
        async move { request.await.map(|r| r.status()).ok() }
    };
    let old_token = token_of(&first);
    eventually("the binary serves", || async {
        status_with(old_token.clone()).await == Some(StatusCode::NOT_FOUND)
    })
    .await;

    // A new key in the same file, its modification time put back, so that only SIGHUP can
    // make the binary notice.
    let second = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let new_token = token_of(&second);
    let mtime = std::fs::metadata(&pem).unwrap().modified().unwrap();
    std::fs::write(&pem, second.public_key_pem()).unwrap();
    let file = std::fs::File::options().write(true).open(&pem).unwrap();
    file.set_modified(mtime).unwrap();
    assert_eq!(
        status_with(new_token.clone()).await,
        Some(StatusCode::UNAUTHORIZED)
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("the new key verifies after SIGHUP", || async {
        status_with(new_token.clone()).await == Some(StatusCode::NOT_FOUND)
    })
    .await;
    assert_eq!(status_with(old_token).await, Some(StatusCode::UNAUTHORIZED));
}
