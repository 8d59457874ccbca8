//! Every metric kvnode exports, and the middleware that records HTTP ones.
//!
//! Labels are low-cardinality: the route *template* (`/kv/{key}`, never the key), the method
//! and the status code.

use std::sync::Arc;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use kv_coordinator::CoordinatorMetrics;
use kv_storage::StorageMetrics;
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    /// `kv_members{status}`: members by status as this process sees them (`down` counted apart).
    pub members: IntGaugeVec,
    /// `kv_gossip_rounds_total`.
    pub gossip_rounds: IntCounter,
    /// `kv_gossip_bytes_total{direction}`: gossip message bytes sent and received.
    pub gossip_bytes: IntCounterVec,
    /// `kv_ranges_streaming`: ranges being streamed in or out now.
    pub ranges_streaming: IntGauge,
    /// `kv_stream_keys_total{direction}`: keys streamed in (pulled or received) and out.
    pub stream_keys: IntCounterVec,
    /// `kv_stream_bytes_total{direction}`: value bytes streamed in and out.
    pub stream_bytes: IntCounterVec,
    /// `kv_keys_dropped_total`: keys of lost ranges removed after their owners took them.
    pub keys_dropped: IntCounter,
    /// `kv_keys_discarded_total`: keys of lost ranges holding a version older than half
    /// the tombstone grace, removed without being handed off.
    pub keys_discarded: IntCounter,
    /// `kv_ranges_dropping`: spans of lost ranges not yet handed off and removed.
    pub ranges_dropping: IntGauge,
    /// Replica refusals and amnesia (nodes only; registered by [`Metrics::register_replica`]).
    pub replica: kv_coordinator::replica::ReplicaMetrics,
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
        let members = IntGaugeVec::new(Opts::new("kv_members", "Members by status as seen here"), &["status"])?;
        let gossip_rounds = IntCounter::new("kv_gossip_rounds_total", "Gossip rounds run")?;
        let gossip_bytes =
            IntCounterVec::new(Opts::new("kv_gossip_bytes_total", "Gossip bytes by direction"), &["direction"])?;
        let ranges_streaming = IntGauge::new("kv_ranges_streaming", "Ranges being streamed in or out")?;
        let stream_keys =
            IntCounterVec::new(Opts::new("kv_stream_keys_total", "Keys streamed by direction"), &["direction"])?;
        let stream_bytes = IntCounterVec::new(
            Opts::new("kv_stream_bytes_total", "Value bytes streamed by direction"),
            &["direction"],
        )?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(gossip_rounds.clone()))?;
        registry.register(Box::new(gossip_bytes.clone()))?;
        registry.register(Box::new(ranges_streaming.clone()))?;
        registry.register(Box::new(stream_keys.clone()))?;
        registry.register(Box::new(stream_bytes.clone()))?;
        let keys_dropped = IntCounter::new(
            "kv_keys_dropped_total",
            "Keys of ranges this node lost, removed once their current owners held them",
        )?;
        let ranges_dropping =
            IntGauge::new("kv_ranges_dropping", "Spans of lost ranges not yet handed off and removed")?;
        let keys_discarded = IntCounter::new(
            "kv_keys_discarded_total",
            "Keys of lost ranges holding a version older than half the tombstone grace, removed without hand-off",
        )?;
        registry.register(Box::new(keys_dropped.clone()))?;
        registry.register(Box::new(keys_discarded.clone()))?;
        registry.register(Box::new(ranges_dropping.clone()))?;
        Ok(Metrics {
            keys_dropped,
            keys_discarded,
            ranges_dropping,
            replica: kv_coordinator::replica::ReplicaMetrics::unregistered(),
            registry,
            requests,
            request_seconds,
            coordinator,
            members,
            gossip_rounds,
            gossip_bytes,
            ranges_streaming,
            stream_keys,
            stream_bytes,
        })
    }

    /// Storage metrics, registered in the same registry (nodes only).
    pub fn register_storage(&self) -> prometheus::Result<StorageMetrics> {
        StorageMetrics::register(&self.registry)
    }

    /// Registers the replica's metrics (nodes only).
    pub fn register_replica(&mut self) -> prometheus::Result<()> {
        self.replica = kv_coordinator::replica::ReplicaMetrics::register(&self.registry)?;
        Ok(())
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
pub async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
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
