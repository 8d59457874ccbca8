//! The admin listener's shared routes: liveness, readiness, metrics, workers.
//!
//! - `GET /health/live`: `200` while the process runs (a liveness probe: restart it if not),
//!   with the process's id (a node's id: admin requests are signed for it).
//! - `GET /health/ready`: `200` when it should get traffic: the binary's own check passes
//!   (a node: membership known, its status `normal`, storage open; a gateway: it knows a formed
//!   ring) and shutdown has not begun; else `503` with the reason.
//! - `GET /metrics`: the Prometheus text exposition.
//! - `GET /admin/workers`: every background worker and its state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kv_worker::Supervisor;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::http::json_error;

/// Whether the process should get traffic; `Err` says why not.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the shared admin routes read.
#[derive(Clone)]
pub struct AdminState {
    /// Every metric of the process.
    pub registry: Registry,
    /// Every background worker.
    pub supervisor: Supervisor,
    /// False once shutdown has begun.
    pub serving: Arc<AtomicBool>,
    /// The binary's readiness condition.
    pub ready: ReadyCheck,
    /// Runs before each scrape of `/metrics` (gauges read on demand, e.g. storage sizes).
    pub on_scrape: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The process's name: a node's id (what `kvctl` signs admin requests for), `gateway`.
    pub id: String,
}

impl AdminState {
    /// Whether the process should get traffic.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.serving.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        (self.ready)()
    }
}

/// The shared admin routes; binaries merge their own (`/cluster/*`, `/admin/...`) into it.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/workers", get(workers))
        .with_state(state)
}

async fn live(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "live", "id": state.id }))
}

async fn ready(State(state): State<AdminState>) -> Response {
    match state.readiness() {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(reason) => json_error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", &reason),
    }
}

/// Registers what every process exports besides its own metrics: the process collector
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
/// `process_max_fds`, `process_start_time_seconds`, ...) and `kv_build_info{binary, version,
/// node}` (always 1: which release each process runs, for upgrades, and which node it is:
/// `node` is a node's id, a gateway's host name, so that a dashboard can join any series of an
/// `instance` to the node it names).
pub fn register_process(registry: &Registry, binary: &str, node: &str) -> prometheus::Result<()> {
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("kv_build_info", "The binary, release and node of this process (always 1)"),
        &["binary", "version", "node"],
    )?;
    info.with_label_values(&[binary, env!("CARGO_PKG_VERSION"), node]).set(1);
    registry.register(Box::new(info))
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding gathered families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    if let Some(refresh) = &state.on_scrape {
        refresh();
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], render(&state.registry)).into_response()
}

async fn workers(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "workers": state.supervisor.workers() }))
}
