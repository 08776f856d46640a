//! `/metrics` (Prometheus text) and the middleware that measures every route.
//!
//! Each application owns its own recorder (no global), so tests running several apps in one
//! process see their own figures. A series is registered the first time it happens, so the
//! text shows what happened and not hundreds of zeros for route/status pairs that never occur
//! (a `GET` route answering 201, a probe answering 415). The slots are laid out at startup:
//! measuring a request is a map lookup by the matched route, a once-cell load and two atomic
//! updates; only a series' first use allocates.
//!
//! - `http_requests_total{route, status}`, `http_request_duration_seconds{route}` (histogram);
//! - `flashsale_purchases_total{code}`: purchase answers by outcome code (one label per
//!   [`Outcome`]);
//! - sampled from the store every few seconds by [`Metrics::sample_store`] (for alerts that
//!   must not depend on traffic or on a prober): `flashsale_ready` (what `/readyz` would
//!   answer), `flashsale_dependency_up{dependency}` (Redis, PostgreSQL),
//!   `flashsale_reservations_released_total` (expired reservations whose stock went back),
//!   `flashsale_sale_stock_remaining{sale_id}` (sales not yet past their end) and, for a store
//!   that admits in batches (scale-out), `flashsale_admission_calls_total`,
//!   `flashsale_admission_attempts_total` (their ratio is the round trips per attempt) and
//!   `flashsale_admission_calls_by_size_total{le}` (calls of at most `le` attempts,
//!   cumulative as a histogram's buckets).

use crate::http::AppState;
use crate::http::routes;
use crate::latency::PurchaseLatency;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale_core::Outcome;
use flashsale_store::{AdmissionBatches, BATCH_SIZE_BOUNDS, SaleStore};
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    BuildError, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Histogram buckets for request latency, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Statuses given their own series; anything else counts as `other`.
const STATUSES: &[(StatusCode, &str)] = &[
    (StatusCode::OK, "200"),
    (StatusCode::CREATED, "201"),
    (StatusCode::BAD_REQUEST, "400"),
    (StatusCode::UNAUTHORIZED, "401"),
    (StatusCode::NOT_FOUND, "404"),
    (StatusCode::CONFLICT, "409"),
    (StatusCode::PAYLOAD_TOO_LARGE, "413"),
    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "415"),
    (StatusCode::UNPROCESSABLE_ENTITY, "422"),
    (StatusCode::TOO_MANY_REQUESTS, "429"),
    (StatusCode::INTERNAL_SERVER_ERROR, "500"),
    (StatusCode::SERVICE_UNAVAILABLE, "503"),
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// One route's handles, each registered on first use.
struct RouteMetrics {
    route: &'static str,
    /// The purchase route, whose answers also feed [`Metrics::purchase_latency`].
    purchase: bool,
    latency: OnceLock<Histogram>,
    /// One per entry of [`STATUSES`], then `other`.
    by_status: Vec<OnceLock<Counter>>,
}

/// The application's metrics: the recorder, its exporter handle, and a slot per series.
pub struct Metrics {
    /// Kept to register the per-sale and per-dependency series as they appear.
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    routes: HashMap<&'static str, RouteMetrics>,
    /// Purchase answers, indexed by [`Outcome::index`].
    purchases: [OnceLock<Counter>; Outcome::COUNT],
    ready: Gauge,
    released: Counter,
    /// Purchase answer times as fine percentiles, for the operator's live view.
    purchase_latency: Arc<PurchaseLatency>,
}

impl Metrics {
    /// Builds a recorder with explicit buckets and describes every metric; series appear when
    /// first recorded.
    pub fn new() -> Result<Self, BuildError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)?
            .build_recorder();
        recorder.describe_counter(
            "http_requests_total".into(),
            None,
            "HTTP requests by route and status".into(),
        );
        recorder.describe_histogram(
            "http_request_duration_seconds".into(),
            Some(Unit::Seconds),
            "Time to answer, by route".into(),
        );
        recorder.describe_counter(
            "flashsale_purchases_total".into(),
            None,
            "Purchase answers by outcome code".into(),
        );
        recorder.describe_gauge(
            "flashsale_ready".into(),
            None,
            "1 when the store and its dependencies answer (as /readyz), else 0".into(),
        );
        recorder.describe_gauge(
            "flashsale_dependency_up".into(),
            None,
            "1 when the dependency (redis, postgres) answers a ping, else 0".into(),
        );
        recorder.describe_counter(
            "flashsale_reservations_released_total".into(),
            None,
            "Expired reservations whose stock this instance's reconciler gave back".into(),
        );
        recorder.describe_counter(
            "flashsale_admission_calls_total".into(),
            None,
            "Admission script calls, each deciding a batch of attempts of one sale".into(),
        );
        recorder.describe_counter(
            "flashsale_admission_attempts_total".into(),
            None,
            "Purchase attempts decided by the admission script calls".into(),
        );
        recorder.describe_counter(
            "flashsale_admission_calls_by_size_total".into(),
            None,
            "Admission script calls that decided at most `le` attempts".into(),
        );
        recorder.describe_gauge(
            "flashsale_sale_stock_remaining".into(),
            None,
            "Units not yet taken, per sale not past its end".into(),
        );
        let ready = recorder.register_gauge(&Key::from_name("flashsale_ready"), &METADATA);
        let released = recorder.register_counter(
            &Key::from_name("flashsale_reservations_released_total"),
            &METADATA,
        );
        let routes = routes::ALL
            .iter()
            .map(|&route| {
                let metrics = RouteMetrics {
                    route,
                    purchase: route == routes::ORDERS,
                    latency: OnceLock::new(),
                    by_status: (0..=STATUSES.len()).map(|_| OnceLock::new()).collect(),
                };
                (route, metrics)
            })
            .collect();
        Ok(Self {
            handle: recorder.handle(),
            recorder,
            routes,
            purchases: std::array::from_fn(|_| OnceLock::new()),
            ready,
            released,
            purchase_latency: Arc::default(),
        })
    }

    /// This instance's purchase answer times (the live view reads percentiles from it).
    pub fn purchase_latency(&self) -> Arc<PurchaseLatency> {
        Arc::clone(&self.purchase_latency)
    }

    /// Counts one purchase answer.
    pub fn record_purchase(&self, outcome: Outcome) {
        let counter = self.purchases[outcome.index()].get_or_init(|| {
            let key = Key::from_parts(
                "flashsale_purchases_total",
                vec![Label::new("code", outcome.code())],
            );
            self.recorder.register_counter(&key, &METADATA)
        });
        counter.increment(1);
    }

    /// Samples the store's readiness, dependencies, released reservations and open sales'
    /// stock (every upkeep tick, off the request path).
    pub async fn sample_store(&self, store: &dyn SaleStore) {
        let ready = store.ready().await.is_ok();
        self.ready.set(f64::from(u8::from(ready)));
        for dependency in store.dependencies().await {
            let key = Key::from_parts(
                "flashsale_dependency_up",
                vec![Label::new("dependency", dependency.name)],
            );
            self.recorder
                .register_gauge(&key, &METADATA)
                .set(f64::from(u8::from(dependency.up)));
        }
        self.released.absolute(store.reservations_released());
        self.sample_batches(store.admission_batches());
        if let Ok(statuses) = store.statuses().await {
            let now = store.now();
            for status in statuses.iter().filter(|s| now < s.sale.ends_at) {
                let key = Key::from_parts(
                    "flashsale_sale_stock_remaining",
                    vec![Label::new("sale_id", status.sale.id.to_string())],
                );
                self.recorder
                    .register_gauge(&key, &METADATA)
                    .set(f64::from(status.remaining));
            }
        }
    }

    /// Shows the store's admission batches (nothing until it has made a call, so a store
    /// deciding in process shows no such series).
    fn sample_batches(&self, batches: AdmissionBatches) {
        if batches.calls == 0 {
            return;
        }
        let counter = |name: &'static str, labels: Vec<Label>| {
            self.recorder
                .register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        counter("flashsale_admission_calls_total", vec![]).absolute(batches.calls);
        counter("flashsale_admission_attempts_total", vec![]).absolute(batches.attempts);
        let by_size = BATCH_SIZE_BOUNDS
            .iter()
            .map(u64::to_string)
            .zip(batches.at_most)
            .chain([("+Inf".to_owned(), batches.calls)]);
        for (le, calls) in by_size {
            counter(
                "flashsale_admission_calls_by_size_total",
                vec![Label::new("le", le)],
            )
            .absolute(calls);
        }
    }

    /// Drains histogram samples into their buckets; run periodically.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Counts one answer of `route` with `status`, and its latency since `started`.
    pub fn record(&self, route: &str, status: StatusCode, started: Instant) {
        let Some(m) = self.routes.get(route) else {
            return;
        };
        let latency = m.latency.get_or_init(|| {
            let key = Key::from_parts(
                "http_request_duration_seconds",
                vec![Label::new("route", m.route)],
            );
            self.recorder.register_histogram(&key, &METADATA)
        });
        let elapsed = started.elapsed();
        latency.record(elapsed.as_secs_f64());
        if m.purchase {
            self.purchase_latency.record(elapsed);
        }
        let index = STATUSES
            .iter()
            .position(|(s, _)| *s == status)
            .unwrap_or(STATUSES.len());
        let Some(cell) = m.by_status.get(index) else {
            return;
        };
        let counter = cell.get_or_init(|| {
            let label = STATUSES.get(index).map_or("other", |(_, s)| s);
            let labels = vec![Label::new("route", m.route), Label::new("status", label)];
            self.recorder
                .register_counter(&Key::from_parts("http_requests_total", labels), &METADATA)
        });
        counter.increment(1);
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn get_metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.handle.render(),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_counted_under_its_own_code_label() {
        let metrics = Metrics::new().unwrap();
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                metrics.record_purchase(outcome);
            }
        }
        let text = metrics.handle.render();
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            let line = format!(
                "flashsale_purchases_total{{code=\"{}\"}} {}",
                outcome.code(),
                i + 1
            );
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        let series = text
            .lines()
            .filter(|l| l.starts_with("flashsale_purchases_total{"))
            .count();
        assert_eq!(series, Outcome::COUNT);
    }

    #[test]
    fn admission_batches_show_as_calls_attempts_and_cumulative_sizes() {
        let metrics = Metrics::new().unwrap();
        metrics.sample_batches(AdmissionBatches::default());
        assert!(!metrics.handle.render().contains("flashsale_admission"));
        let mut at_most = [0; BATCH_SIZE_BOUNDS.len()];
        at_most[0] = 2;
        for cell in &mut at_most[1..] {
            *cell = 3;
        }
        metrics.sample_batches(AdmissionBatches {
            calls: 3,
            attempts: 7,
            at_most,
        });
        let text = metrics.handle.render();
        for line in [
            "flashsale_admission_calls_total 3",
            "flashsale_admission_attempts_total 7",
            "flashsale_admission_calls_by_size_total{le=\"1\"} 2",
            "flashsale_admission_calls_by_size_total{le=\"8\"} 3",
            "flashsale_admission_calls_by_size_total{le=\"+Inf\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
