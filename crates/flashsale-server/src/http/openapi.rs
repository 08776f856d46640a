//! `GET /api/openapi.json`: the OpenAPI 3.1 document, generated from the handlers' and bodies'
//! annotations and serialised once at startup. Request bodies that the handlers parse by
//! borrowing (for speed) are described by the `*Doc` types here.

use crate::http::AppState;
use crate::http::identity::IdentityMode;
use crate::http::{
    admin, admin_ledger, admin_live, admin_orders, admin_sales, checkout, events, health, images,
    metrics, orders, sales, waitlist,
};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flashsale_core::Outcome;
use std::borrow::Cow;
use time::OffsetDateTime;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::OperationBuilder;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Ref, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HttpMethod, PathItem, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

/// Every error body: a stable `code` and a `message`, plus fields depending on the code.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDoc {
    /// The stable code (e.g. `sold_out`).
    code: String,
    /// For people.
    message: String,
    /// `already_purchased`: the buyer's first order.
    order: Option<OrderDoc>,
    /// `already_purchased`, `limit_exceeded`: the buyer's orders.
    orders: Option<Vec<OrderDoc>>,
    /// `limit_exceeded`: units the buyer may still take.
    allowed: Option<u32>,
    /// `insufficient_stock`: units left.
    stock_remaining: Option<u32>,
    /// `sale_not_active`: `upcoming` or `ended`.
    state: Option<String>,
    /// `address_limit_reached`: units one client address may hold in this sale.
    address_share: Option<u32>,
}

/// The error body of a purchase: an [`ErrorDoc`] whose `code` is one of the purchase
/// answers ([`Outcome::ALL`] but `confirmed`), listed as an enum derived from that list.
pub struct PurchaseErrorDoc;

impl PartialSchema for PurchaseErrorDoc {
    fn schema() -> RefOr<Schema> {
        let codes = Outcome::ALL
            .into_iter()
            .filter(|o| *o != Outcome::Confirmed)
            .map(Outcome::code);
        let code = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(codes))
            .description(Some(
                "The stable code of a purchase answer other than `confirmed`.",
            ));
        let narrowed = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("code", code);
        AllOfBuilder::new()
            .item(Ref::from_schema_name(ErrorDoc::name()))
            .item(narrowed)
            .description(Some(
                "The error body of a purchase: an `ErrorDoc` with one of the purchase codes.",
            ))
            .into()
    }
}

impl ToSchema for PurchaseErrorDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PurchaseError")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((ErrorDoc::name().into_owned(), ErrorDoc::schema()));
        <ErrorDoc as ToSchema>::schemas(schemas);
    }
}

/// A durable order.
#[derive(ToSchema)]
#[schema(as = Order)]
#[allow(dead_code)]
pub struct OrderDoc {
    /// UUID v7.
    order_id: uuid::Uuid,
    /// The sale.
    sale_id: i64,
    /// The buyer (trimmed).
    user_id: String,
    /// Units.
    quantity: u32,
    /// When it was admitted.
    created_at: OffsetDateTime,
    /// `confirmed` (instant mode), or `reserved`, `paid`, `expired`, `cancelled` (hold mode).
    status: OrderStatusDoc,
    /// Hold mode only: the first instant the reservation can no longer be paid.
    expires_at: Option<OffsetDateTime>,
    /// Hold mode, once paid: the payment system's reference of the payment.
    payment_ref: Option<String>,
    /// Hold mode: `true` when a waitlist offer made this reservation; absent otherwise.
    offered: Option<bool>,
}

/// The body of a request to join a waitlist.
#[derive(ToSchema)]
#[schema(as = WaitlistJoinRequest)]
#[allow(dead_code)]
pub struct WaitlistJoinDoc {
    /// The buyer (guest mode: required; with identity: optional, and the token's buyer).
    #[schema(min_length = 1, max_length = 254)]
    user_id: Option<String>,
}

/// Where a buyer stands on a waitlist.
#[derive(ToSchema)]
#[schema(as = WaitlistPlace)]
#[allow(dead_code)]
pub struct WaitlistPlaceDoc {
    /// `waitlisted` (with `position`) or `offered` (with `order`).
    code: String,
    /// The sale.
    sale_id: i64,
    /// The buyer.
    user_id: String,
    /// `waitlisted`: the place, 1 being the next offer.
    #[schema(minimum = 1)]
    position: Option<u32>,
    /// `offered`: the reservation the offer made, with its status now.
    order: Option<OrderDoc>,
}

/// The answer to leaving a waitlist.
#[derive(ToSchema)]
#[schema(as = WaitlistLeft)]
#[allow(dead_code)]
pub struct WaitlistLeftDoc {
    /// `left_waitlist`.
    code: String,
    /// The sale.
    sale_id: i64,
    /// The buyer.
    user_id: String,
}

/// The answer of an event that was decided (a cancel, a payment).
#[derive(ToSchema)]
#[schema(as = OrderEvent)]
#[allow(dead_code)]
pub struct OrderEventDoc {
    /// `paid`, `payment_failed`, `cancelled` (or `expired`).
    code: String,
    /// The order as it is now.
    order: OrderDoc,
}

/// One order by id.
#[derive(ToSchema)]
#[schema(as = OrderById)]
#[allow(dead_code)]
pub struct OrderByIdDoc {
    /// The order with its status.
    order: OrderDoc,
}

/// An order's status.
#[derive(ToSchema)]
#[schema(as = OrderStatus)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum OrderStatusDoc {
    /// Instant mode: final at purchase.
    Confirmed,
    /// Hold mode: units held until `expires_at`.
    Reserved,
    /// Hold mode: paid, the units are sold.
    Paid,
    /// Hold mode: not paid in time, the units were released.
    Expired,
    /// Hold mode: released by the buyer.
    Cancelled,
}

/// The body of a purchase attempt.
#[derive(ToSchema)]
#[schema(as = OrderRequest)]
#[allow(dead_code)]
pub struct OrderRequestDoc {
    /// The buyer's id: normalised (docs/api.md, "Buyer ids"), 1-254 characters, no control
    /// characters. The pattern says so: no C0/DEL/C1 character, and at least one that is
    /// neither whitespace nor an invisible format character.
    #[schema(
        min_length = 1,
        max_length = 254,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    user_id: String,
    /// Units (default 1, at most the per-user limit).
    #[schema(minimum = 1, maximum = 1000)]
    quantity: Option<u32>,
}

/// The 201 body of a purchase.
#[derive(ToSchema)]
#[schema(as = Confirmed)]
#[allow(dead_code)]
pub struct ConfirmedDoc {
    /// `confirmed`, or `reserved` for a hold-mode sale.
    code: String,
    /// The durable order.
    order: OrderDoc,
}

/// A buyer's orders.
#[derive(ToSchema)]
#[schema(as = BuyerOrders)]
#[allow(dead_code)]
pub struct BuyerOrdersDoc {
    /// The sale.
    sale_id: i64,
    /// The buyer (trimmed).
    user_id: String,
    /// Committed orders.
    orders: Vec<OrderDoc>,
}

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(title = "flashsale", description = "A flash-sale service. Contract: docs/api.md."),
    paths(
        sales::get_featured_sale,
        sales::get_sale,
        orders::create_order,
        orders::get_orders,
        orders::get_my_orders,
        checkout::get_order,
        checkout::cancel_order,
        checkout::demo_payment,
        checkout::payment_webhook,
        waitlist::join_waitlist,
        waitlist::get_waitlist_place,
        waitlist::leave_waitlist,
        events::get_events,
        admin::create_sale,
        admin::get_summary,
        admin_sales::list_sales,
        admin_sales::update_sale,
        admin_sales::cancel_sale,
        admin_orders::list_orders,
        images::put_image,
        images::delete_image,
        images::get_image,
        admin_live::get_live,
        admin_ledger::list_ledger,
        health::healthz,
        health::readyz,
        metrics::get_metrics,
        get_openapi,
    ),
    modifiers(&AdminToken, &WebPage),
    tags(
        (name = "sales", description = "Sale status and live updates"),
        (name = "orders", description = "Buying, and orders by id"),
        (name = "payments", description = "Paying for reservations (hold mode)"),
        (name = "waitlist", description = "Waiting for released units (hold mode)"),
        (name = "admin", description = "Operators (bearer token)"),
        (name = "operations", description = "Probes, metrics, this document, the web page"),
    )
)]
pub struct ApiDoc;

/// Declares the admin bearer token scheme.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Declares `GET /`, `GET /admin` and `GET /favicon.ico`, whose handlers live with the page's assets.
struct WebPage;

impl Modify for WebPage {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let operation = OperationBuilder::new()
            .tag("operations")
            .summary(Some("The web page"))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The single web page")
                    .content("text/html", ContentBuilder::new().build()),
            )
            .build();
        openapi
            .paths
            .paths
            .insert("/".to_owned(), PathItem::new(HttpMethod::Get, operation));
        let admin = OperationBuilder::new()
            .tag("admin")
            .summary(Some("The operator's page"))
            .description(Some(
                "Sales, create and edit forms, a live view with charts, CSV downloads; it asks \
                 for the admin token and sends it as a bearer token. Served where the admin API \
                 is (with `--admin-listen`, on that listener only).",
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The operator's page")
                    .content("text/html", ContentBuilder::new().build()),
            )
            .build();
        openapi
            .paths
            .paths
            .insert("/admin".to_owned(), PathItem::new(HttpMethod::Get, admin));
        let icon = OperationBuilder::new()
            .tag("operations")
            .summary(Some("The page's icon"))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("An SVG icon")
                    .content("image/svg+xml", ContentBuilder::new().build()),
            )
            .build();
        openapi.paths.paths.insert(
            "/favicon.ico".to_owned(),
            PathItem::new(HttpMethod::Get, icon),
        );
    }
}

/// The buyer routes that need the buyer's bearer token in a token mode: (path, method).
const BUYER_ROUTES: [(&str, HttpMethod); 3] = [
    ("/api/sales/{sale_id}/orders", HttpMethod::Post),
    ("/api/sales/{sale_id}/orders/{user_id}", HttpMethod::Get),
    ("/api/sales/{sale_id}/orders/me", HttpMethod::Get),
];

/// In a token mode: declares the buyer's bearer scheme and requires it on the buyer routes.
fn require_buyer_token(openapi: &mut utoipa::openapi::OpenApi, mode: IdentityMode) {
    let components = openapi.components.get_or_insert_with(Default::default);
    let (format, description) = match mode {
        IdentityMode::Accounts => (
            "session",
            "--identity accounts: the token of `POST /api/sessions`; the buyer id is the account's id",
        ),
        IdentityMode::Guest | IdentityMode::Jwt => (
            "JWT",
            "--identity jwt: the shop's signed token; the buyer id is its `sub`",
        ),
    };
    components.add_security_scheme(
        "buyer_token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format(format)
                .description(Some(description))
                .build(),
        ),
    );
    // The buyer comes from the token: a purchase body may leave `user_id` out.
    if let Some(RefOr::T(Schema::Object(order))) = components.schemas.get_mut("OrderRequest") {
        order.required.retain(|field| field != "user_id");
    }
    for (path, method) in BUYER_ROUTES {
        let Some(item) = openapi.paths.paths.get_mut(path) else {
            continue;
        };
        let operation = match method {
            HttpMethod::Post => item.post.as_mut(),
            _ => item.get.as_mut(),
        };
        if let Some(operation) = operation {
            operation.security = Some(vec![SecurityRequirement::new(
                "buyer_token",
                Vec::<String>::new(),
            )]);
        }
    }
}

/// An operation of the accounts routes with its answers (status, description).
fn account_operation(summary: &str, answers: &[(&str, &str)]) -> utoipa::openapi::path::Operation {
    let mut operation = OperationBuilder::new()
        .tag("accounts")
        .summary(Some(summary));
    for (status, description) in answers {
        let response = ResponseBuilder::new().description(*description);
        let response = if *status == "204" {
            response
        } else {
            response.content("application/json", ContentBuilder::new().build())
        };
        operation = operation.response(*status, response);
    }
    operation.build()
}

/// `--identity accounts`: sign up, log in, log out (logging out needs the buyer token).
fn add_account_routes(openapi: &mut utoipa::openapi::OpenApi) {
    let body = "`{\"email\", \"password\"}`: the email is trimmed and lower-cased; the password 8 to 1024 bytes";
    let mut sign_up = account_operation(
        "Sign up",
        &[
            ("201", "`{\"user_id\", \"email\"}`: the account is made"),
            ("400", "`invalid_request`: a bad email or password"),
            ("409", "`email_taken`"),
            ("429", "`rate_limited`"),
            ("503", "`overloaded`: too many password hashes waiting"),
        ],
    );
    sign_up.description = Some(body.to_owned());
    let mut log_in = account_operation(
        "Log in",
        &[
            (
                "201",
                "`{\"token\", \"expires_at\", \"user_id\", \"email\"}`",
            ),
            (
                "401",
                "`invalid_credentials`: unknown email or wrong password, alike",
            ),
            (
                "429",
                "`rate_limited`: per address, per email and address, per email",
            ),
            ("503", "`overloaded`: too many password hashes waiting"),
        ],
    );
    log_in.description = Some(body.to_owned());
    let mut log_out = account_operation(
        "Log out: the session ends on every instance",
        &[("204", "Logged out"), ("401", "`unauthenticated`")],
    );
    log_out.security = Some(vec![SecurityRequirement::new(
        "buyer_token",
        Vec::<String>::new(),
    )]);
    let paths = &mut openapi.paths.paths;
    paths.insert(
        "/api/accounts".to_owned(),
        PathItem::new(HttpMethod::Post, sign_up),
    );
    paths.insert(
        "/api/sessions".to_owned(),
        PathItem::new(HttpMethod::Post, log_in),
    );
    paths.insert(
        "/api/sessions/current".to_owned(),
        PathItem::new(HttpMethod::Delete, log_out),
    );
}

/// The guest mode's document as JSON bytes.
pub fn document() -> Bytes {
    document_for(IdentityMode::Guest)
}

/// The document for `mode` as JSON bytes: in a token mode the buyer routes require the
/// buyer's bearer token.
pub fn document_for(mode: IdentityMode) -> Bytes {
    let mut openapi = ApiDoc::openapi();
    if mode == IdentityMode::Accounts {
        add_account_routes(&mut openapi);
    }
    if mode != IdentityMode::Guest {
        require_buyer_token(&mut openapi, mode);
    }
    match openapi.to_json() {
        Ok(json) => Bytes::from(json),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise the OpenAPI document");
            Bytes::from_static(b"{}")
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn get_openapi(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.openapi.clone(),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_slice(&document()).unwrap()
    }

    #[test]
    fn the_product_routes_and_fields_are_documented() {
        let doc = doc();
        let paths = &doc["paths"];
        for (path, method) in [
            ("/api/admin/sales/{sale_id}/image", "put"),
            ("/api/admin/sales/{sale_id}/image", "delete"),
            ("/api/sales/{sale_id}/image", "get"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path}");
        }
        let put = &paths["/api/admin/sales/{sale_id}/image"]["put"]["responses"];
        for status in ["200", "401", "404", "409", "413", "415"] {
            assert!(put[status].is_object(), "PUT image {status}");
        }
        assert!(paths["/api/sales/{sale_id}/image"]["get"]["responses"]["304"].is_object());
        let schemas = &doc["components"]["schemas"];
        for field in ["description", "price_minor", "currency", "image_url"] {
            assert!(
                schemas["SaleBody"]["properties"][field].is_object(),
                "SaleBody.{field}"
            );
        }
        for schema in ["CreateSaleRequest", "UpdateSaleRequest"] {
            for field in ["description", "price_minor", "currency"] {
                assert!(
                    schemas[schema]["properties"][field].is_object(),
                    "{schema}.{field}"
                );
            }
        }
    }

    #[test]
    fn the_ledger_route_is_described_with_every_cause() {
        let doc = doc();
        let route = &doc["paths"]["/api/admin/sales/{sale_id}/ledger"]["get"];
        for status in ["200", "400", "401", "404"] {
            assert!(route["responses"][status].is_object(), "{status}");
        }
        let cause =
            doc["components"]["schemas"]["LedgerEntryBody"]["properties"]["cause"]["description"]
                .as_str()
                .unwrap();
        for code in flashsale_store::LedgerCause::ALL.map(flashsale_store::LedgerCause::code) {
            assert!(cause.contains(&format!("`{code}`")), "{code} not described");
        }
    }

    #[test]
    fn the_purchase_error_code_enum_is_every_outcome_but_confirmed() {
        let doc = doc();
        let listed: Vec<&str> =
            doc["components"]["schemas"]["PurchaseError"]["allOf"][1]["properties"]["code"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
        let all: Vec<&str> = Outcome::ALL
            .into_iter()
            .filter(|o| *o != Outcome::Confirmed)
            .map(Outcome::code)
            .collect();
        assert_eq!(listed, all);
        // Every error answer of a purchase is described by it.
        let responses = doc["paths"]["/api/sales/{sale_id}/orders"]["post"]["responses"]
            .as_object()
            .unwrap();
        for (status, response) in responses.iter().filter(|(s, _)| *s != "201") {
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/PurchaseError",
                "{status}"
            );
        }
        // And every status a purchase error can have is documented.
        for outcome in Outcome::ALL.into_iter().filter(|o| *o != Outcome::Internal) {
            let status = outcome.status().to_string();
            assert!(responses.contains_key(&status), "{outcome}: no {status}");
        }
    }

    #[test]
    fn the_summary_rejections_schema_has_one_field_per_counted_outcome() {
        let doc = doc();
        let schema = &doc["components"]["schemas"]["RejectionsBody"];
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let counted: Vec<&str> = Outcome::COUNTED.into_iter().map(Outcome::code).collect();
        assert_eq!(required, counted);
        let mut properties: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        properties.sort_unstable();
        let mut counted = counted;
        counted.sort_unstable();
        assert_eq!(properties, counted);
    }

    #[test]
    fn in_jwt_mode_the_buyer_routes_require_the_buyer_token_and_nothing_else_does() {
        let doc: Value = serde_json::from_slice(&document_for(IdentityMode::Jwt)).unwrap();
        let scheme = &doc["components"]["securitySchemes"]["buyer_token"];
        assert_eq!(
            (&scheme["scheme"], &scheme["bearerFormat"]),
            (&"bearer".into(), &"JWT".into())
        );
        let mut secured = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if operation["security"].to_string().contains("buyer_token") {
                    secured.push(format!("{method} {path}"));
                }
            }
        }
        secured.sort();
        assert_eq!(
            secured,
            [
                "get /api/sales/{sale_id}/orders/me",
                "get /api/sales/{sale_id}/orders/{user_id}",
                "post /api/sales/{sale_id}/orders",
            ]
        );
        let required = &doc["components"]["schemas"]["OrderRequest"]["required"];
        assert!(!required.to_string().contains("user_id"), "{required}");
        // Guest mode declares no buyer token, and the purchase body needs its `user_id`.
        let guest: Value = serde_json::from_slice(&document()).unwrap();
        assert_eq!(
            guest["components"]["schemas"]["OrderRequest"]["required"],
            serde_json::json!(["user_id"])
        );
        assert!(
            !String::from_utf8(document().to_vec())
                .unwrap()
                .contains("buyer_token")
        );
    }

    #[test]
    fn in_accounts_mode_the_account_routes_are_described_and_logout_needs_the_token() {
        let doc: Value = serde_json::from_slice(&document_for(IdentityMode::Accounts)).unwrap();
        let scheme = &doc["components"]["securitySchemes"]["buyer_token"];
        assert_eq!(scheme["bearerFormat"], "session");
        assert!(doc["paths"]["/api/accounts"]["post"]["responses"]["409"].is_object());
        assert!(doc["paths"]["/api/sessions"]["post"]["responses"]["401"].is_object());
        let log_out = &doc["paths"]["/api/sessions/current"]["delete"];
        assert!(log_out["security"].to_string().contains("buyer_token"));
        let purchase = &doc["paths"]["/api/sales/{sale_id}/orders"]["post"];
        assert!(purchase["security"].to_string().contains("buyer_token"));
        let jwt: Value = serde_json::from_slice(&document_for(IdentityMode::Jwt)).unwrap();
        assert!(jwt["paths"]["/api/accounts"].is_null());
    }
}
