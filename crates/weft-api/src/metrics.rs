//! The API's Prometheus metrics (HTTP latency by route, webhook intake by outcome) and
//! `GET /metrics`, which also reads the queue's depth from the store at each scrape.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

/// One answered request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// HTTP method.
    pub method: String,
    /// The route's template (`/api/v1/workspaces/{ws}/flows`), never the raw path.
    pub route: String,
    /// Status code.
    pub status: u16,
}

/// A webhook delivery's outcome: `accepted`, `duplicate`, `ignored`, `answered`, or the
/// problem code it was refused with (`invalid_signature`, `rate_limited`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntakeLabels {
    /// Outcome.
    pub outcome: &'static str,
}

/// Runs by status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// Run status.
    pub status: String,
}

/// The API's metrics.
pub struct ApiMetrics {
    http: Family<HttpLabels, Histogram, fn() -> Histogram>,
    intake: Family<IntakeLabels, Counter>,
    runs: Family<StatusLabels, Gauge>,
}

fn latency() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl ApiMetrics {
    fn new() -> Self {
        Self {
            http: Family::new_with_constructor(latency),
            intake: Family::default(),
            runs: Family::default(),
        }
    }

    /// Counts one webhook delivery.
    pub(crate) fn intake(&self, outcome: &'static str) {
        self.intake.get_or_create(&IntakeLabels { outcome }).inc();
    }
}

/// The registry behind `/metrics`: the engine's metrics and the API's.
pub struct Metrics {
    registry: Registry,
    /// The API's own.
    pub api: ApiMetrics,
}

impl Metrics {
    /// Registers the engine's and the API's metrics under the `weft_` prefix.
    pub fn new(engine: &weft_engine::Engine) -> Self {
        let mut registry = Registry::with_prefix("weft");
        engine.metrics().register(&mut registry);
        let api = ApiMetrics::new();
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an API or intake request, by route template, method and status",
            api.http.clone(),
        );
        registry.register(
            "intake",
            "Webhook deliveries by outcome (accepted, duplicate, ignored, or the refusal's code)",
            api.intake.clone(),
        );
        registry.register(
            "runs",
            "Runs in the store by status, read at each scrape (queue depth: status=\"queued\")",
            api.runs.clone(),
        );
        Self { registry, api }
    }
}

/// Records the latency of every routed request.
pub(crate) async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    s.metrics
        .api
        .http
        .get_or_create(&HttpLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: Prometheus text format. Instance-wide and free of tenant data (labels are
/// statuses, routes, connectors and error classes), so it needs no key.
pub(crate) async fn scrape(State(s): State<AppState>) -> Response {
    s.engine.refresh_metrics();
    match s.engine.store().count_runs().await {
        Ok(counts) => {
            for (status, n) in counts {
                s.metrics
                    .api
                    .runs
                    .get_or_create(&StatusLabels {
                        status: status.to_string(),
                    })
                    .set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: could not count runs"),
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.metrics.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// Shared so the router and the handlers see one registry.
pub(crate) type SharedMetrics = Arc<Metrics>;
