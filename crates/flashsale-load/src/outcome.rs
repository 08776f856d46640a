//! What one request came back with, classified by the stable `code` of the API contract
//! (docs/api.md), and the per-worker log of those outcomes.
//!
//! Workers only append to their own [`Log`]; logs are merged once the load is over, so the
//! measured path takes no lock and the HDR histograms (large objects) are built once.

use crate::client::{Answer, TransportError};
use serde::Deserialize;
use std::time::Duration;

/// The kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `POST /api/sales/{id}/orders`.
    Buy,
    /// `GET /api/sales/{id}`.
    Status,
}

impl Op {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Buy => "buy",
            Op::Status => "status",
        }
    }
}

/// The outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// 201 `confirmed`.
    Confirmed,
    /// 409 `already_purchased`.
    AlreadyPurchased,
    /// 409 `limit_exceeded`.
    LimitExceeded,
    /// 409 `sold_out`.
    SoldOut,
    /// 409 `insufficient_stock`.
    InsufficientStock,
    /// 409 `sale_not_active`.
    SaleNotActive,
    /// 400 `invalid_request`.
    InvalidRequest,
    /// 404 `sale_not_found`.
    SaleNotFound,
    /// 429 `rate_limited`.
    RateLimited,
    /// 503 `overloaded`.
    Overloaded,
    /// 503 `unavailable`.
    Unavailable,
    /// 200 on a status read.
    Ok,
    /// Any other status or code (the HTTP status is kept).
    Unexpected(u16),
    /// No HTTP answer.
    Transport(TransportError),
}

impl Outcome {
    /// The name used in reports: the API `code`, or a descriptive one.
    pub fn name(self) -> String {
        match self {
            Outcome::Confirmed => "confirmed".into(),
            Outcome::AlreadyPurchased => "already_purchased".into(),
            Outcome::LimitExceeded => "limit_exceeded".into(),
            Outcome::SoldOut => "sold_out".into(),
            Outcome::InsufficientStock => "insufficient_stock".into(),
            Outcome::SaleNotActive => "sale_not_active".into(),
            Outcome::InvalidRequest => "invalid_request".into(),
            Outcome::SaleNotFound => "sale_not_found".into(),
            Outcome::RateLimited => "rate_limited".into(),
            Outcome::Overloaded => "overloaded".into(),
            Outcome::Unavailable => "unavailable".into(),
            Outcome::Ok => "ok".into(),
            Outcome::Unexpected(status) => format!("http_{status}"),
            Outcome::Transport(e) => e.to_string(),
        }
    }

    /// A business answer the contract expects under load (a purchase decided either way, or
    /// a status read), as opposed to an error, a shed request or a surprise.
    pub fn is_decided(self) -> bool {
        matches!(
            self,
            Outcome::Confirmed
                | Outcome::AlreadyPurchased
                | Outcome::LimitExceeded
                | Outcome::SoldOut
                | Outcome::InsufficientStock
                | Outcome::SaleNotActive
                | Outcome::Ok
        )
    }

    /// Shed by the server (429/503): nothing was taken, the client may retry.
    pub fn is_shed(self) -> bool {
        matches!(
            self,
            Outcome::RateLimited | Outcome::Overloaded | Outcome::Unavailable
        )
    }

    /// A rejection of a purchase by a business rule.
    pub fn is_rejection(self) -> bool {
        matches!(
            self,
            Outcome::AlreadyPurchased
                | Outcome::LimitExceeded
                | Outcome::SoldOut
                | Outcome::InsufficientStock
                | Outcome::SaleNotActive
        )
    }

    /// Classifies an HTTP answer by its status and `code`.
    pub fn classify(op: Op, status: u16, code: Option<&str>) -> Outcome {
        match (op, status, code) {
            (Op::Status, 200, _) => Outcome::Ok,
            (_, 201, Some("confirmed") | None) if op == Op::Buy => Outcome::Confirmed,
            (_, 409, Some("already_purchased")) => Outcome::AlreadyPurchased,
            (_, 409, Some("limit_exceeded")) => Outcome::LimitExceeded,
            (_, 409, Some("sold_out")) => Outcome::SoldOut,
            (_, 409, Some("insufficient_stock")) => Outcome::InsufficientStock,
            (_, 409, Some("sale_not_active")) => Outcome::SaleNotActive,
            (_, 400, _) => Outcome::InvalidRequest,
            (_, 404, Some("sale_not_found")) => Outcome::SaleNotFound,
            (_, 429, _) => Outcome::RateLimited,
            (_, 503, Some("unavailable")) => Outcome::Unavailable,
            (_, 503, _) => Outcome::Overloaded,
            (_, s, _) => Outcome::Unexpected(s),
        }
    }
}

/// The fields of a purchase answer the tool looks at.
#[derive(Debug, Deserialize)]
struct BuyBody {
    code: Option<String>,
    order: Option<OrderBody>,
}

/// An order as the API returns it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct OrderBody {
    /// The order id (a UUID on our server; kept as text).
    pub order_id: serde_json::Value,
    /// The buyer, as the server stored it.
    pub user_id: String,
    /// Units.
    pub quantity: u32,
}

/// A confirmation received by a buyer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The buyer id the tool sent.
    pub user_id: String,
    /// The order id in the answer.
    pub order_id: String,
    /// Units.
    pub quantity: u32,
}

/// One measured request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// What was asked.
    pub op: Op,
    /// What came back.
    pub outcome: Outcome,
    /// Microseconds from the scheduled (or actual) start to the end of the answer.
    pub micros: u64,
}

/// What one worker saw.
#[derive(Debug, Default)]
pub struct Log {
    /// Every measured request.
    pub samples: Vec<Sample>,
    /// Every confirmation, with its order id (purchases only).
    pub confirmations: Vec<Confirmation>,
}

impl Log {
    /// Records the result of a request by `user_id` (empty for status reads).
    pub fn record(
        &mut self,
        op: Op,
        user_id: &str,
        result: Result<Answer, TransportError>,
        took: Duration,
    ) -> Outcome {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let outcome = match result {
            Err(e) => Outcome::Transport(e),
            Ok(answer) if op == Op::Status => Outcome::classify(op, answer.status.as_u16(), None),
            Ok(answer) => {
                let parsed: Option<BuyBody> = serde_json::from_slice(&answer.body).ok();
                let code = parsed.as_ref().and_then(|b| b.code.as_deref());
                let outcome = Outcome::classify(op, answer.status.as_u16(), code);
                if outcome == Outcome::Confirmed {
                    let order = parsed.and_then(|b| b.order);
                    self.confirmations.push(Confirmation {
                        user_id: user_id.to_owned(),
                        order_id: order
                            .as_ref()
                            .map(|o| id_text(&o.order_id))
                            .unwrap_or_default(),
                        quantity: order.map_or(1, |o| o.quantity),
                    });
                }
                outcome
            }
        };
        self.samples.push(Sample {
            op,
            outcome,
            micros,
        });
        outcome
    }

    /// Appends another worker's log.
    pub fn merge(&mut self, other: Log) {
        self.samples.extend(other.samples);
        self.confirmations.extend(other.confirmations);
    }
}

/// An order id as text, whether the server sends it as a string or a number.
pub fn id_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_status_and_code() {
        assert_eq!(
            Outcome::classify(Op::Buy, 201, Some("confirmed")),
            Outcome::Confirmed
        );
        assert_eq!(
            Outcome::classify(Op::Buy, 409, Some("sold_out")),
            Outcome::SoldOut
        );
        assert_eq!(
            Outcome::classify(Op::Buy, 503, Some("overloaded")),
            Outcome::Overloaded
        );
        assert_eq!(
            Outcome::classify(Op::Buy, 409, Some("what")),
            Outcome::Unexpected(409)
        );
        assert_eq!(Outcome::classify(Op::Status, 200, None), Outcome::Ok);
        assert_eq!(
            Outcome::classify(Op::Status, 201, None),
            Outcome::Unexpected(201)
        );
    }

    #[test]
    fn a_confirmation_keeps_the_order_id() {
        let mut log = Log::default();
        let body = r#"{"code":"confirmed","order":{"order_id":"abc","sale_id":1,"user_id":"u1","quantity":1,"created_at":"x"}}"#;
        let answer = Answer {
            status: hyper::StatusCode::CREATED,
            body: body.into(),
        };
        let outcome = log.record(Op::Buy, "u1", Ok(answer), Duration::from_millis(2));
        assert_eq!(outcome, Outcome::Confirmed);
        assert_eq!(log.confirmations[0].order_id, "abc");
        assert_eq!(log.samples[0].micros, 2000);
    }
}
