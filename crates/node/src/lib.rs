//! # kvnode: a storage node
//!
//! A `kvnode` stores a share of the keys. It serves three listeners:
//!
//! - **client** (`--listen`): the client API, `PUT`, `GET` and `DELETE` on `/kv/{key}`
//!   ([`kv_api`]); any node coordinates any request ([`kv_coordinator`]): it places the key on
//!   the ring, writes to W of its N replicas and reads from R of them;
//! - **peer** (`--peer-listen`): the internal replica API other nodes and gateways call
//!   ([`internal`]), behind the one signature check of the peer transport ([`kv_transport`]);
//!   its address is what the node gossips as its own (`--advertise`);
//! - **admin** (`--admin-listen`): `/metrics`, `/health/live`, `/health/ready`,
//!   `/admin/workers` ([`kv_server::admin`]), `/cluster/*` ([`kv_api::cluster`]) and the node's
//!   own `/admin/*` ([`admin`]).
//!
//! As a replica it answers replica calls over its storage engine ([`kv_replica`],
//! [`kv_storage`]). Members find each other by gossip ([`kv_membership`]); a new node streams in
//! the ranges it gains, a leaving one hands its ranges off, and the ranges of a removed one are
//! re-replicated ([`workers::rebalance`], over the pure plans of [`kv_coordinator::plan`]).
//!
//! The stateless `kvgateway` (crate `kv-gateway`) serves the same client API from the same
//! crates without this one: it links no storage.
//!
//! ## Background work and shutdown
//!
//! Every background job is a [`kv_worker::Worker`] under one supervisor: gossip, the
//! rebalancer, the dropper, the ownership watcher and one batcher per peer. On SIGTERM or
//! Ctrl-C the node reports not ready, stops accepting, drains in-flight requests, stops the
//! upkeep workers, lets background replication and read repair finish, stops the batchers and
//! then gossip, all within `--shutdown-timeout` counted from the signal, syncs storage and
//! exits 0 ([`start`]).
//!
//! # Layout
//! - [`config`] — flags, environment and file, validated.
//! - [`internal`] — the replica API for other nodes (peer listener).
//! - [`admin`] — `/admin/local/{key}`, `/admin/keys`, `/admin/leave`, `/admin/remove/{id}`.
//! - [`workers`] — the background workers (rebalancing, hints, anti-entropy, tombstone
//!   collection, ownership) and their metrics.
//! - [`replica`] — local reads, stores and write coordination off the async workers.
//! - [`peer_client`] — the coordinator's replica client (local shortcut, else the transport).
//! - [`metrics`] — the node's own metrics.
//! - [`start`] — start-up (the object graph, the workers, the listeners), serving and
//!   graceful shutdown.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use kv_membership::Membership;
use kv_replica::ownership::Ownership;
use kv_transport::VerifyState;

pub mod admin;
pub mod config;
pub mod internal;
pub mod metrics;
pub mod peer_client;
pub mod replica;
pub mod start;
pub mod workers;

/// What the peer and admin handlers of a node read.
pub struct NodeState {
    /// Local storage.
    pub replica: replica::Replica,
    /// What this node owns, fills and drops.
    pub ownership: Arc<Ownership>,
    /// Known members.
    pub membership: Arc<Membership>,
    /// The node's own metrics.
    pub metrics: metrics::NodeMetrics,
    /// Merkle trees of the segments it holds.
    pub trees: Arc<kv_replica::RangeTrees>,
    /// Asks the anti-entropy worker for a round now.
    pub repair: tokio::sync::mpsc::Sender<workers::antientropy::RepairRequest>,
    /// Seals context tokens (shown by `/admin/local`).
    pub contexts: Arc<kv_api::context::ContextSealer>,
    /// The storage engine (its size, for `/internal/v1/status`).
    pub engine: Arc<dyn kv_storage::Engine>,
    /// Hints kept for other nodes.
    pub hints: Arc<kv_storage::HintStore>,
    /// The node's workers (the rebalancer's and dropper's progress).
    pub supervisor: kv_worker::Supervisor,
    /// What the rebalancer is moving now.
    pub transfers: Arc<workers::rebalance::Transfers>,
    /// Its data directory (the free space of its filesystem).
    pub data_dir: std::path::PathBuf,
}

/// Internal messages carry a key's whole sibling set; allow this many values' worth (plus a
/// full batch of small calls, see [`kv_coordinator::batch`]).
const INTERNAL_BODY_VALUES: usize = 16;

/// The largest body of a peer request.
pub fn peer_body_limit(max_value_bytes: usize) -> usize {
    max_value_bytes
        .saturating_add(1)
        .saturating_mul(INTERNAL_BODY_VALUES)
        .saturating_add(2 * kv_coordinator::batch::MAX_BATCH_BYTES)
}

/// Peer requests bound to their destination (a replay to another member is refused): all but
/// gossip, whose replay is harmless and which is sent to seed addresses that may not be the
/// advertised one.
pub fn peer_bound(_method: &axum::http::Method, path: &str) -> bool {
    path != kv_proto::GOSSIP_PATH
}

/// The peer listener's routes: `/internal/*` only, every request's signature checked first
/// (`verify`, its `prefix` `/`).
pub fn peer_router(state: Arc<NodeState>, verify: VerifyState) -> Router {
    let body_limit = verify.body_limit;
    Router::new()
        .route(kv_proto::BATCH_PATH, post(internal::batch))
        .route(kv_proto::SCAN_PATH, post(internal::scan))
        .route(kv_proto::STORE_BATCH_PATH, post(internal::store_batch))
        .route(kv_proto::GOSSIP_PATH, post(internal::gossip))
        .route(kv_proto::MERKLE_PATH, post(internal::merkle))
        .route(kv_proto::STATUS_PATH, post(internal::status))
        // Inside the signature check: it runs on requests whose sender is known.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), members_only))
        .route_layer(axum::middleware::from_fn_with_state(verify, kv_transport::verify))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Middleware of the peer listener, after the signature check: a member that left or was
/// removed (by the signature's `from`) is refused `410 not_a_member` whatever it asks, which
/// makes it stop (it may have been paused, or partitioned, through its removal, and its copies
/// predate deletes the cluster has purged since); and this node answers no replica call while
/// it must not serve (`503 not_serving`: its clock is fenced, or after it was frozen it
/// cannot confirm it is still a member). Gossip passes: it is how a stale member learns.
async fn members_only(
    axum::extract::State(state): axum::extract::State<Arc<NodeState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    if request.uri().path() == kv_proto::GOSSIP_PATH {
        return next.run(request).await;
    }
    let refuse = |status: StatusCode, code: &str, message: String| {
        (status, axum::Json(serde_json::json!({ "error": code, "message": message }))).into_response()
    };
    let sender = request.extensions().get::<kv_transport::signer::Signed>().and_then(|s| s.from.clone());
    if let Some((id, incarnation)) = sender {
        if let Some(what) = state.membership.not_a_member(&id, incarnation) {
            state.metrics.refused_members.with_label_values(&[what]).inc();
            return refuse(
                StatusCode::GONE,
                kv_transport::NOT_A_MEMBER,
                format!(
                    "{id} (storage incarnation {incarnation:016x}) {} the cluster: it must stop; to bring it back, start \
                     it on an empty data directory",
                    if what == "left" { "has left" } else { "was removed from" }
                ),
            );
        }
    }
    if let Err(e) = state.membership.confirm().await {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, kv_transport::NOT_SERVING, e.to_string());
    }
    next.run(request).await
}

/// The node's own admin routes (merged into the admin listener with the shared ones).
pub fn admin_router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/admin/local/{key}", get(admin::local))
        .route("/admin/keys", get(admin::keys))
        .route("/admin/leave", post(admin::leave))
        .route("/admin/remove/{id}", post(admin::remove))
        .route("/admin/repair", post(admin::repair))
        .route("/admin/thaw", get(admin::frozen).post(admin::thaw))
        .route("/admin/trees", get(admin::trees))
        .with_state(state)
}
