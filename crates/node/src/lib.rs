//! # kvnode: a storage node
//!
//! A `kvnode` stores a share of the keys and serves the client API over HTTP/JSON:
//! `PUT`, `GET` and `DELETE` on `/kv/{key}`, with vector-clock contexts in the `X-Context` header
//! and concurrent versions returned as siblings (`300 Multiple Choices`). Until the replication
//! issue lands, a node is a cluster of one (N = R = W = 1): it coordinates every write itself
//! ([`replica`]) on its local storage engine ([`kv_storage`]).
//!
//! ## Request path
//!
//! `router` → tower layers (tracing, metrics, timeout, concurrency limit, body limit) → a
//! short handler in [`api`] → [`replica::Replica`] → the engine, on the blocking pool because a
//! write waits for its fsync. Errors become responses in one place ([`error::ApiError`]).
//!
//! ## Shutdown
//!
//! On SIGTERM or Ctrl-C the node reports not ready on `/health`, stops accepting connections,
//! lets in-flight requests finish (up to `--shutdown-timeout`), syncs storage and exits 0
//! ([`server`]).
//!
//! # Layout
//! - [`config`] — flags, environment and file, validated.
//! - [`api`] — client API handlers.
//! - [`replica`] — local reads and write coordination.
//! - [`error`] — [`error::ApiError`] and its HTTP mapping.
//! - [`metrics`] — every metric and the HTTP metrics middleware.
//! - [`server`] — start-up, serving and graceful shutdown.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use axum::Router;
use tower::limit::ConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub mod api;
pub mod config;
pub mod error;
pub mod metrics;
pub mod replica;
pub mod server;

/// State shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<config::Config>,
    /// Local storage as replica and coordinator.
    pub replica: replica::Replica,
    /// Metrics registry.
    pub metrics: metrics::Metrics,
    /// False once shutdown has begun.
    pub ready: Arc<AtomicBool>,
}

/// The HTTP routes and layers, separate from `main` so tests can drive it directly.
pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    // Room for the value plus slack, so an oversized body is refused by our own check with a
    // clear message rather than truncated.
    let body_limit = config.max_value_bytes.saturating_add(1);
    Router::new()
        .route("/kv/{key}", put(api::put).get(api::get).delete(api::delete))
        .route("/kv/", put(api::empty_key).get(api::empty_key).delete(api::empty_key))
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method)
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(TimeoutLayer::with_status_code(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    config.request_timeout,
                ))
                .layer(ConcurrencyLimitLayer::new(config.max_in_flight.get()))
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .with_state(state)
}
