//! The product on sale (SPEC 11, issue 14 item 3; OP-12..OP-15 in docs/requirements.md): its
//! description, price and image, over real HTTP, against the embedded store (manual clock)
//! and the scale-out store (instances on the shared Redis and PostgreSQL, in a schema and
//! prefix of the test's own). Each case runs once per store through [`Target`].

use crate::helpers::{ADMIN_TOKEN, T0, read, rfc3339, spawn_app, spawn_app_with};
use crate::scale_out::{Cleanup, TOKEN, spawn_instance};
use flashsale_testkit::isolation::unique;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

/// Real images, drawn by Chromium (a 160x120 gradient with a circle), one per accepted type.
const PNG: &[u8] = include_bytes!("../fixtures/product.png");
const JPEG: &[u8] = include_bytes!("../fixtures/product.jpg");
const WEBP: &[u8] = include_bytes!("../fixtures/product.webp");

/// One instance of the service under test, with what a case needs to talk to it.
struct Target {
    client: reqwest::Client,
    base: String,
    token: &'static str,
    /// The store's clock now (the manual clock, or the wall clock for scale-out).
    now: OffsetDateTime,
}

impl Target {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.unwrap()).await
    }

    /// Creates a sale with `fields` added to a valid body, starting `starts_in` from now.
    async fn create(&self, starts_in: Duration, fields: Value) -> (StatusCode, Value) {
        let mut body = json!({
            "name": "Walnut chair", "stock": 5,
            "starts_at": rfc3339(self.now + starts_in),
            "ends_at": rfc3339(self.now + Duration::hours(1)),
        });
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.call(
            Method::POST,
            "/api/admin/sales",
            Some(self.token),
            Some(body),
        )
        .await
    }

    async fn sale(&self, starts_in: Duration, fields: Value) -> i64 {
        let (status, body) = self.create(starts_in, fields).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["sale_id"].as_i64().unwrap()
    }

    async fn patch(&self, id: i64, body: Value) -> (StatusCode, Value) {
        let path = format!("/api/admin/sales/{id}");
        self.call(Method::PATCH, &path, Some(self.token), Some(body))
            .await
    }

    async fn status(&self, id: i64) -> Value {
        let (status, body) = self
            .call(Method::GET, &format!("/api/sales/{id}"), None, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn put_image(
        &self,
        id: i64,
        bytes: &'static [u8],
        content_type: &str,
    ) -> (StatusCode, Value) {
        let response = self
            .client
            .put(format!("{}/api/admin/sales/{id}/image", self.base))
            .bearer_auth(self.token)
            .header(header::CONTENT_TYPE, content_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// Sends `head` (and nothing more) over a fresh connection; what the server answers.
    async fn raw(&self, head: &str) -> String {
        raw_request(&self.base, head.as_bytes()).await
    }

    async fn image(&self, url: &str, if_none_match: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{url}", self.base));
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        request.send().await.unwrap()
    }
}

/// Sends `request` over a fresh connection to `base` and returns what the server answers
/// (the server may close before reading all of it: a failed write is not the test's failure).
async fn raw_request(base: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn embedded() -> (crate::helpers::TestApp, Target) {
    let app = spawn_app().await;
    let target = Target {
        client: app.client.clone(),
        base: app.address.clone(),
        token: ADMIN_TOKEN,
        now: T0,
    };
    (app, target)
}

fn scale_out(base: String) -> Target {
    Target {
        client: reqwest::Client::new(),
        base,
        token: TOKEN,
        now: OffsetDateTime::now_utc(),
    }
}

/// OP-12: created with a product, every status body carries it; without, the fields are null.
async fn product_fields_are_set_at_creation_and_carried_by_status_bodies(t: &Target) {
    let id = t
        .sale(
            Duration::minutes(5),
            json!({"description": " Solid walnut.\nSeats one. ", "price_minor": 12_900, "currency": "EUR"}),
        )
        .await;
    let body = t.status(id).await;
    assert_eq!(body["description"], "Solid walnut.\nSeats one.");
    assert_eq!(body["price_minor"], 12_900);
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["image_url"], Value::Null);
    let (_, list) = t
        .call(Method::GET, "/api/admin/sales", Some(t.token), None)
        .await;
    let listed = list["sales"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sale_id"] == id)
        .unwrap();
    assert_eq!(listed["price_minor"], 12_900);

    // The longest description, in a script of two bytes a character, fits an operator's body.
    let longest = "é".repeat(2000);
    let id = t
        .sale(Duration::minutes(5), json!({"description": longest}))
        .await;
    assert_eq!(t.status(id).await["description"], longest.as_str());
    let (status, body) = t.patch(id, json!({"description": "ü".repeat(2000)})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let bare = t.sale(Duration::minutes(5), json!({})).await;
    let body = t.status(bare).await;
    for field in ["description", "price_minor", "currency", "image_url"] {
        assert_eq!(body[field], Value::Null, "{field}: {body}");
    }
}

/// OP-12: each bad product field is a 400 naming it, and nothing is created.
async fn bad_product_fields_are_refused_at_creation(t: &Target) {
    for (fields, names) in [
        (json!({"price_minor": 100}), "currency"),
        (json!({"currency": "EUR"}), "price_minor"),
        (json!({"price_minor": 0, "currency": "EUR"}), "price_minor"),
        (json!({"price_minor": 100, "currency": "eur"}), "currency"),
        (json!({"description": "x".repeat(2001)}), "description"),
        (json!({"description": "bell\u{7}"}), "description"),
    ] {
        let (status, body) = t.create(Duration::minutes(5), fields.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{fields}: {body}");
        assert_eq!(body["code"], "invalid_request");
        assert!(
            body["message"].as_str().unwrap().contains(names),
            "{fields}: {body}"
        );
    }
}

/// OP-13: before the start the product changes (and goes) by PATCH, each change recorded;
/// once active it cannot change, though a form sent back whole is accepted.
async fn the_product_changes_before_the_start_and_not_once_active(t: &Target) {
    let id = t.sale(Duration::minutes(5), json!({})).await;
    let (status, body) = t
        .patch(
            id,
            json!({"description": "Oak now", "price_minor": 500, "currency": "JPY"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            &body["description"],
            &body["price_minor"],
            &body["currency"]
        ),
        (&json!("Oak now"), &json!(500), &json!("JPY"))
    );
    let (status, body) = t
        .patch(id, json!({"price_minor": 7, "currency": null}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "half a price: {body}");
    let (status, body) = t
        .patch(
            id,
            json!({"description": null, "price_minor": null, "currency": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["description"], Value::Null);
    assert_eq!(body["price_minor"], Value::Null);

    let active = t
        .sale(
            -Duration::seconds(1),
            json!({"description": "Blue", "price_minor": 999, "currency": "USD"}),
        )
        .await;
    for change in [
        json!({"description": "Red"}),
        json!({"price_minor": 1, "currency": "USD"}),
        json!({"price_minor": null, "currency": null}),
    ] {
        let (status, body) = t.patch(active, change.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{change}: {body}");
        assert_eq!(body["code"], "sale_started");
    }
    let (status, body) = t
        .patch(
            active,
            json!({"description": "Blue", "price_minor": 999, "currency": "USD", "stock": 6}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "sent back whole: {body}");
    assert_eq!(body["stock_total"], 6);
    let (status, body) = t.put_image(active, PNG, "image/png").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "sale_started");
}

/// OP-14, OP-15: each accepted type is stored and served as the type its bytes are (the
/// Content-Type sent is not read), with a versioned URL, a strong ETag, 304 and a year's cache.
async fn images_of_each_type_are_served_as_sniffed_with_etag_and_long_cache(t: &Target) {
    let id = t.sale(Duration::minutes(5), json!({})).await;
    let mut urls = Vec::new();
    for (bytes, sniffed, declared) in [
        (PNG, "image/png", "image/jpeg"),
        (JPEG, "image/jpeg", "text/html"),
        (WEBP, "image/webp", "application/octet-stream"),
    ] {
        let (status, body) = t.put_image(id, bytes, declared).await;
        assert_eq!(status, StatusCode::OK, "{sniffed}: {body}");
        let url = body["image_url"].as_str().unwrap().to_owned();
        assert!(
            url.starts_with(&format!("/api/sales/{id}/image?v=")),
            "{url}"
        );
        assert_eq!(t.status(id).await["image_url"], url.as_str());
        let response = t.image(&url, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], sniffed);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(
            headers[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
        assert_eq!(&response.bytes().await.unwrap()[..], bytes);
        let again = t.image(&url, Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag.as_str());
        assert!(again.bytes().await.unwrap().is_empty());
        let other = t.image(&url, Some("\"something-else\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
        urls.push(url);
    }
    urls.dedup();
    assert_eq!(urls.len(), 3, "a new image is a new URL: {urls:?}");

    // Removed: the status body has no URL and the image is gone.
    let (status, body) = t
        .call(
            Method::DELETE,
            &format!("/api/admin/sales/{id}/image"),
            Some(t.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["image_url"], Value::Null);
    let response = t.image(&format!("/api/sales/{id}/image"), None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(read(response).await.1["code"], "image_not_found");
}

/// OP-14: what is not an image, or is too large, or has no token, or no sale, is refused,
/// each with its own code, and the sale keeps no image.
async fn uploads_that_are_not_images_or_too_large_are_refused_distinctly(t: &Target) {
    let id = t.sale(Duration::minutes(5), json!({})).await;
    let mut fake_png = PNG[..8].to_vec();
    fake_png.extend_from_slice(&[0x41; 64]);
    let fake_png: &'static [u8] = Box::leak(fake_png.into_boxed_slice());
    for (bytes, declared) in [
        (&b"<html><script>alert(1)</script></html>"[..], "image/png"),
        (fake_png, "image/png"),
        (
            &b"<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>"[..],
            "image/svg+xml",
        ),
        (&b""[..], "image/png"),
    ] {
        let (status, body) = t.put_image(id, bytes, declared).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
        assert_eq!(body["code"], "unsupported_image");
    }
    // Declared over the limit: refused from the header, before a byte of the body is read.
    let answer = t
        .raw(&format!(
            "PUT /api/admin/sales/{id}/image HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
            t.token,
            2 * 1024 * 1024 + 1
        ))
        .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"image_too_large\""), "{answer}");
    let (status, body) = read(
        t.client
            .put(format!("{}/api/admin/sales/{id}/image", t.base))
            .body(PNG)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = t.put_image(999_999, PNG, "image/png").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "sale_not_found");
    let response = t.image("/api/sales/999999/image", None).await;
    assert_eq!(read(response).await.1["code"], "sale_not_found");
    assert_eq!(t.status(id).await["image_url"], Value::Null);
    let response = t.image(&format!("/api/sales/{id}/image"), None).await;
    assert_eq!(read(response).await.1["code"], "image_not_found");
}

#[tokio::test]
async fn op12_embedded_product_fields_are_set_at_creation_and_carried_by_status_bodies() {
    let (_app, t) = embedded().await;
    product_fields_are_set_at_creation_and_carried_by_status_bodies(&t).await;
    bad_product_fields_are_refused_at_creation(&t).await;
}

#[tokio::test]
async fn op13_embedded_the_product_changes_before_the_start_and_not_once_active() {
    let (_app, t) = embedded().await;
    the_product_changes_before_the_start_and_not_once_active(&t).await;
}

#[tokio::test]
async fn op14_embedded_images_are_sniffed_served_and_refused_by_content() {
    let (_app, t) = embedded().await;
    images_of_each_type_are_served_as_sniffed_with_etag_and_long_cache(&t).await;
    uploads_that_are_not_images_or_too_large_are_refused_distinctly(&t).await;
}

#[tokio::test]
async fn op14_embedded_the_size_limit_follows_the_flag_and_refuses_from_content_length() {
    let app = spawn_app_with(|c| c.protection.max_image_bytes = 1024).await;
    let t = Target {
        client: app.client.clone(),
        base: app.address.clone(),
        token: ADMIN_TOKEN,
        now: T0,
    };
    let id = t.sale(Duration::minutes(5), json!({})).await;
    let (status, body) = t.put_image(id, PNG, "image/png").await;
    assert!(PNG.len() > 1024);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["message"].as_str().unwrap().contains("1024"), "{body}");
    // Declared far beyond the limit and never sent: refused from the header alone.
    let head = format!(
        "PUT /api/admin/sales/{id}/image HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
    );
    let answer = raw_request(
        &t.base,
        format!("{head}Content-Length: 1000000000\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("image_too_large"), "{answer}");
    // Undeclared (chunked): refused once more than the limit has arrived.
    let chunk = format!("258\r\n{}\r\n", "A".repeat(0x258));
    let answer = raw_request(
        &t.base,
        format!("{head}Transfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    drop(app);
}

#[tokio::test]
async fn op15_embedded_the_image_survives_a_restart() {
    let (app, t) = embedded().await;
    let id = t
        .sale(
            Duration::minutes(5),
            json!({"description": "Kept", "price_minor": 1, "currency": "KWD"}),
        )
        .await;
    let (_, body) = t.put_image(id, WEBP, "image/webp").await;
    let url = body["image_url"].as_str().unwrap().to_owned();
    let app = app.restart().await;
    let status = app.status(id).await;
    assert_eq!(status["image_url"], url.as_str());
    assert_eq!(status["description"], "Kept");
    assert_eq!(status["currency"], "KWD");
    let response = app.get(&url).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "image/webp");
    assert_eq!(&response.bytes().await.unwrap()[..], WEBP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn op12_op13_scale_out_product_fields_are_created_carried_and_changed_by_the_rules() {
    let name = unique("product");
    let _cleanup = Cleanup::named(&name);
    let (a, _stop_a) = spawn_instance(&name).await;
    let t = scale_out(a);
    product_fields_are_set_at_creation_and_carried_by_status_bodies(&t).await;
    bad_product_fields_are_refused_at_creation(&t).await;
    the_product_changes_before_the_start_and_not_once_active(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn op14_op15_scale_out_an_image_uploaded_to_one_instance_is_served_by_another() {
    let name = unique("image");
    let _cleanup = Cleanup::named(&name);
    let (a, _stop_a) = spawn_instance(&name).await;
    let (b, _stop_b) = spawn_instance(&name).await;
    let t = scale_out(a);
    images_of_each_type_are_served_as_sniffed_with_etag_and_long_cache(&t).await;
    uploads_that_are_not_images_or_too_large_are_refused_distinctly(&t).await;

    let id = t.sale(Duration::minutes(5), json!({})).await;
    let (status, body) = t.put_image(id, JPEG, "image/png").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let url = body["image_url"].as_str().unwrap().to_owned();
    let other = scale_out(b);
    // The other instance learns of the change when its snapshot reloads the sale.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while other.status(id).await["image_url"] != url.as_str() {
        assert!(
            std::time::Instant::now() < deadline,
            "b never saw the image"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let response = other.image(&url, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(&response.bytes().await.unwrap()[..], JPEG);
}

#[tokio::test]
async fn op15_embedded_a_new_image_reaches_an_open_event_stream() {
    let (app, t) = embedded().await;
    let id = t.sale(Duration::minutes(5), json!({})).await;
    let mut stream = app.get(&format!("/api/sales/{id}/events")).await;
    let mut buffer = String::new();
    let first = crate::events::next_sale_event(&mut stream, &mut buffer)
        .await
        .unwrap();
    assert_eq!(first["image_url"], Value::Null);
    let (_, body) = t.put_image(id, PNG, "image/png").await;
    // Nothing else changed (no purchase, the clock stands still): only the change of the sale
    // itself can make the broadcaster publish, well before the 5 s heartbeat.
    let changed = crate::events::next_sale_event(&mut stream, &mut buffer)
        .await
        .unwrap();
    assert_eq!(changed["image_url"], body["image_url"]);
}
