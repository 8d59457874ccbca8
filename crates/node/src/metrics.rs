//! Every metric kvnode exports, and the middleware that records HTTP ones.
//!
//! Labels are low-cardinality: the route *template* (`/kv/{key}`, never the key), the method
//! and the status code.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use kv_coordinator::CoordinatorMetrics;
use kv_storage::StorageMetrics;
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::AppState;

/// The node's metric registry and HTTP metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Everything exported on `/metrics`.
    pub registry: Registry,
    /// `kv_http_requests_total{route, method, status}`.
    pub requests: IntCounterVec,
    /// `kv_http_request_duration_seconds{route, method}`.
    pub request_seconds: HistogramVec,
    /// Coordinator metrics (replica calls, quorum failures, read repairs).
    pub coordinator: CoordinatorMetrics,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("kv_http_requests_total", "HTTP requests by route template, method and status"),
            &["route", "method", "status"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("kv_http_request_duration_seconds", "HTTP request latency by route template and method")
                .buckets(exponential_buckets(0.000_05, 2.0, 18)?),
            &["route", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        let coordinator = CoordinatorMetrics::register(&registry)?;
        Ok(Metrics { registry, requests, request_seconds, coordinator })
    }

    /// Storage metrics, registered in the same registry (nodes only).
    pub fn register_storage(&self) -> prometheus::Result<StorageMetrics> {
        StorageMetrics::register(&self.registry)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Middleware: counts and times every request by route template.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let m = &state.metrics;
    m.requests.with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()]).inc();
    m.request_seconds.with_label_values(&[route.as_str(), method.as_str()]).observe(started.elapsed().as_secs_f64());
    response
}
