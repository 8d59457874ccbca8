//! # The client API: `PUT`, `GET` and `DELETE` on `/kv/{key}` over HTTP/JSON
//!
//! What a client sees, identically on every `kvnode` and every `kvgateway`: values are stored
//! with `PUT`, read with `GET` (one value, or `300 Multiple Choices` with the siblings and their
//! context) and deleted with `DELETE`, with vector-clock contexts in the `X-Context` header and
//! the number of replicas that answered in `X-Replicas`. Handlers stay short and call the
//! [`kv_coordinator::Coordinator`]; errors become JSON bodies in one place ([`ApiError`]).
//!
//! The crate also serves the cluster views for the admin listener (`/cluster/members`,
//! `/cluster/ring`), read from [`kv_membership::Membership`]. It links no storage: a gateway is
//! this crate, the coordinator and membership.
//!
//! # Layout
//! - [`api`] — the `/kv/{key}` handlers, key and header checks.
//! - [`cluster`] — `/cluster/members`, `/cluster/ring`.
//! - [`context`] — [`context::ContextSealer`]: context tokens with a MAC under the cluster secret.
//! - [`error`] — [`ApiError`] and its HTTP mapping.
//! - [`process`] — what a kvnode and a kvgateway both start, once.
//! - [`backup`], [`ticket`] — backup by range scans, restore, and restore tickets.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use axum::Router;
use kv_coordinator::Coordinator;
use kv_membership::Membership;

pub mod api;
pub mod backup;
pub mod cluster;
pub mod context;
pub mod error;
pub mod process;
pub mod ticket;

pub use error::ApiError;

/// What the client API and cluster views read.
pub struct ApiState {
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Quorum reads and writes.
    pub coordinator: Arc<Coordinator>,
    /// Known members.
    pub membership: Arc<Membership>,
    /// Seals and opens context tokens.
    pub contexts: Arc<context::ContextSealer>,
    /// Calls to members (`/admin/status` asks each its load), when the process has them.
    pub transport: Option<kv_transport::PeerTransport>,
}

/// The client listener's routes: `/kv/{key}` (and `/noop`, the benchmarks' HTTP ceiling).
/// Anything else is `404` (`/internal/*` and `/admin/*` live on other listeners).
pub fn client_router(state: Arc<ApiState>) -> Router {
    // Room for the value plus one byte, so an oversized body is refused by our own check with a
    // clear message rather than cut short.
    let body_limit = state.max_value_bytes.saturating_add(1);
    Router::new()
        .route("/kv/{key}", put(api::put).get(api::get).delete(api::delete))
        .route("/kv/", put(api::empty_key).get(api::empty_key).delete(api::empty_key))
        .route("/noop", axum::routing::any(api::noop))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The cluster views, for the admin listener.
pub fn cluster_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/cluster/members", get(cluster::members))
        .route("/cluster/ring", get(cluster::ring))
        .route("/admin/status", get(cluster::status))
        .route("/admin/backup/ranges", get(backup::ranges))
        .route("/admin/backup/scan", get(backup::scan))
        .route("/admin/restore/begin", axum::routing::post(backup::begin))
        .route("/admin/restore", axum::routing::post(backup::restore))
        .with_state(state)
}
