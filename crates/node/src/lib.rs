//! # kvnode: a storage node
//!
//! A `kvnode` stores a share of the keys and serves the client API over HTTP/JSON:
//! `PUT`, `GET` and `DELETE` on `/kv/{key}`, with vector-clock contexts in the `X-Context` header
//! and concurrent versions returned as siblings (`300 Multiple Choices`). Any node coordinates
//! any request ([`kv_coordinator`]): it places the key on the ring, writes to W of its N replicas
//! and reads from R of them. As a replica it serves the internal API ([`internal`]) over its
//! local storage engine ([`kv_storage`]). Members find each other by gossip ([`kv_gossip`],
//! [`membership`]); a new node streams in the ranges it gains, a leaving one hands its ranges
//! off, and the ranges of a removed one are re-replicated ([`rebalance`]).
//!
//! The same client API, without storage, is `kvgateway` (crate `kv-gateway`), built from this
//! crate's [`router`] with no local replica.
//!
//! ## Request path
//!
//! `router` → tower layers (tracing, metrics, timeout, concurrency limit, body limit) → a
//! short handler in [`api`] → the coordinator → replicas (this node directly, others over HTTP
//! with postcard bodies, [`peer_client`]). Errors become responses in one place
//! ([`error::ApiError`]).
//!
//! ## Shutdown
//!
//! On SIGTERM or Ctrl-C the node reports not ready on `/health`, stops accepting connections,
//! lets in-flight requests finish (up to `--shutdown-timeout`), finishes background replication
//! and read repair within the same deadline, syncs storage and exits 0 ([`server`]).
//!
//! # Layout
//! - [`config`] — flags, environment and file, validated.
//! - [`api`] — client API handlers.
//! - [`internal`] — the replica API for other nodes.
//! - [`cluster`] — `/cluster/*` and `/admin/local/{key}`.
//! - [`membership`] — the gossip view, the topology built from it, the gossip driver.
//! - [`rebalance`] — streaming ranges on join, leave and removal; dropping lost ranges.
//! - [`replica`] — local reads, stores and write coordination.
//! - [`peer_client`] — the coordinator's replica client.
//! - [`error`] — [`error::ApiError`] and its HTTP mapping.
//! - [`metrics`] — every metric and the HTTP metrics middleware.
//! - [`server`] — start-up, serving and graceful shutdown.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use kv_coordinator::Coordinator;
use tower::limit::ConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub mod api;
pub mod cluster;
pub mod config;
pub mod error;
pub mod internal;
pub mod membership;
pub mod metrics;
pub mod peer_client;
pub mod rebalance;
pub mod replica;
pub mod server;

/// State shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Quorum reads and writes.
    pub coordinator: Arc<Coordinator>,
    /// Known members.
    pub membership: Arc<membership::Membership>,
    /// Local storage; `None` in a gateway.
    pub replica: Option<replica::Replica>,
    /// What this node owns, fills and drops; `None` in a gateway.
    pub ownership: Option<Arc<kv_coordinator::ownership::Ownership>>,
    /// Metrics registry.
    pub metrics: Arc<metrics::Metrics>,
    /// False once shutdown has begun.
    pub ready: Arc<AtomicBool>,
}

/// Internal messages carry a key's whole sibling set; allow this many values' worth (plus a
/// full batch of small calls, see [`kv_coordinator::batch`]).
const INTERNAL_BODY_VALUES: usize = 16;

/// The HTTP routes and layers, separate from `main` so tests can drive it directly.
pub fn router(state: AppState, server: &config::ServerConfig) -> Router {
    // Handlers and middleware clone the state per request: one Arc, not one per field.
    let state = Arc::new(state);
    // Room for the value plus one byte, so an oversized body is refused by our own check with a
    // clear message rather than cut short.
    let body_limit = state.max_value_bytes.saturating_add(1);
    let mut app = Router::new()
        .route("/kv/{key}", put(api::put).get(api::get).delete(api::delete))
        .route("/kv/", put(api::empty_key).get(api::empty_key).delete(api::empty_key))
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/noop", axum::routing::any(api::noop))
        .route("/cluster/members", get(cluster::members))
        .route("/cluster/ring", get(cluster::ring))
        .layer(DefaultBodyLimit::max(body_limit));
    if state.replica.is_some() {
        let internal = Router::new()
            .route(kv_coordinator::wire::BATCH_PATH, post(internal::batch))
            .route(kv_coordinator::wire::SCAN_PATH, post(internal::scan))
            .route(kv_coordinator::wire::STORE_BATCH_PATH, post(internal::store_batch))
            .route(kv_coordinator::wire::GOSSIP_PATH, post(internal::gossip))
            .route_layer(axum::middleware::from_fn(internal::verify))
            .layer(DefaultBodyLimit::max(
                body_limit
                    .saturating_mul(INTERNAL_BODY_VALUES)
                    .saturating_add(2 * kv_coordinator::batch::MAX_BATCH_BYTES),
            ));
        app = app
            .merge(internal)
            .route("/admin/local/{key}", get(cluster::local))
            .route("/admin/keys", get(cluster::keys))
            .route("/admin/leave", post(cluster::leave))
            .route("/admin/remove/{id}", post(cluster::remove));
    }
    app.fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method)
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(
            ServiceBuilder::new()
                // 503s (quorum not met) are expected in a degraded cluster: log them at debug;
                // real server faults are logged where they happen.
                .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)))
                .layer(TimeoutLayer::with_status_code(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    server.request_timeout,
                ))
                .layer(ConcurrencyLimitLayer::new(server.max_in_flight.get())),
        )
        .with_state(state)
}
