//! The internal replica API under `/internal/v1/`: postcard bodies, for other nodes and
//! gateways only, on the peer listener. Every request passes [`kv_transport::verify()`] first.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use kv_gossip::Digest;
use kv_proto::{
    decode, encode, Call, MerkleRequest, MerkleResponse, Refusal, ScanRequest, ScanResponse, StoreBatchRequest,
    MAX_BATCH_CALLS, MAX_MERKLE_QUERIES,
};
use kv_transport::signer::Signed;
use serde::de::DeserializeOwned;

use kv_api::api::MAX_KEY_BYTES;
use kv_api::ApiError;

use crate::NodeState;

fn message<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    decode(body).map_err(|e| ApiError::BadRequest(format!("malformed internal message: {e}")))
}

fn check_key(key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::BadKey(format!("key must be 1 to {MAX_KEY_BYTES} bytes")));
    }
    Ok(())
}

fn binary(bytes: Vec<u8>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

/// `POST /internal/v1/batch`: run many replica calls, answer one reply per call in order.
/// A call with a bad key fails alone (400 in its reply); a malformed or oversized batch is
/// refused whole.
pub async fn batch(State(state): State<Arc<NodeState>>, body: Bytes) -> Result<Response, ApiError> {
    let calls: Vec<Call> = message(&body)?;
    if calls.len() > MAX_BATCH_CALLS {
        return Err(ApiError::BadRequest(format!("a batch holds at most {MAX_BATCH_CALLS} calls")));
    }
    let replica = &state.replica;
    let mut bad = Vec::new();
    let mut good = Vec::with_capacity(calls.len());
    for (i, call) in calls.into_iter().enumerate() {
        match check_key(call.key()) {
            Ok(()) => good.push(call),
            Err(e) => bad.push((i, Refusal::Malformed(e.to_string()).into())),
        }
    }
    let mut replies = replica.execute(good).await;
    for (i, reply) in bad {
        replies.insert(i, reply);
    }
    Ok(binary(encode(&replies)))
}

/// Largest scan page served.
const MAX_SCAN_PAGE: u32 = 10_000;

/// `POST /internal/v1/scan`: a page of this replica's records in a range of key hashes.
pub async fn scan(State(state): State<Arc<NodeState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: ScanRequest = message(&body)?;
    if request.first_hash > request.last_hash || request.limit == 0 || request.limit > MAX_SCAN_PAGE {
        return Err(ApiError::BadRequest(format!("scan needs first <= last and 1 to {MAX_SCAN_PAGE} records")));
    }
    let limit = request.limit as usize;
    let (entries, done) = state.replica.scan_page(request.first_hash, request.last_hash, request.after, limit).await?;
    state.metrics.stream_keys.with_label_values(&["out"]).inc_by(entries.len() as u64);
    let value_bytes: u64 = entries.iter().flat_map(|(_, vs)| vs.iter()).map(|v| v.value.len() as u64).sum();
    state.metrics.stream_bytes.with_label_values(&["out"]).inc_by(value_bytes);
    Ok(binary(encode(&ScanResponse { entries, done })))
}

/// `POST /internal/v1/store-batch`: merge many keys (a range handed off by a leaving node, or a
/// dropped range handed to its owners); the last page of a complete hand-off pre-fills it.
pub async fn store_batch(State(state): State<Arc<NodeState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: StoreBatchRequest = message(&body)?;
    for (key, _) in &request.entries {
        check_key(key)?;
    }
    if let Some(range) = request.begin {
        state.ownership.hand_off_begins(range);
    }
    let keys = request.entries.len() as u64;
    let value_bytes: u64 = request.entries.iter().flat_map(|(_, vs)| vs.iter()).map(|v| v.value.len() as u64).sum();
    state.replica.store_batch(request.entries, request.deadline_ms).await?;
    state.metrics.stream_keys.with_label_values(&["in"]).inc_by(keys);
    state.metrics.stream_bytes.with_label_values(&["in"]).inc_by(value_bytes);
    if let Some(range) = request.complete {
        let ownership = state.ownership.clone();
        // A leaving node handed over all of this range: gaining it, we hold it completely.
        let topology = state.membership.topology();
        tokio::task::spawn_blocking(move || ownership.hand_off_complete(range, &topology))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(ApiError::Internal)?;
    }
    Ok(binary(Vec::new()))
}

/// `POST /internal/v1/gossip`: merge the sender's digest (member states and removed set),
/// answer with ours.
/// An exchange with itself (a seed that names this node another way) is refused: its answer
/// would be taken for another member's (which clears a freeze, `kv_membership::Contact`).
pub async fn gossip(
    State(state): State<Arc<NodeState>>,
    signed: Option<Extension<Signed>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Some((id, incarnation)) = signed.as_ref().and_then(|s| s.from.as_ref()) {
        if state.membership.is_me(id, *incarnation) {
            return Err(ApiError::BadRequest(
                "a gossip exchange with itself: one of this node's seeds names the node itself".into(),
            ));
        }
    }
    // In the caller's protocol version, and so is the answer (v6 states carry no release).
    let version = signed.as_ref().map_or(kv_proto::PROTOCOL_MIN, |s| s.version);
    let digest =
        Digest::decode_as(&body, version).map_err(|e| ApiError::BadRequest(format!("malformed gossip: {e}")))?;
    // Our view as it was before the caller's: what it sends about itself cannot hide what we
    // knew of it (a node started on an older copy of its store learns of its later run so).
    let mut reply = state.membership.digest();
    // Our clock, from which the caller measures its offset from ours.
    reply.clock_ms = kv_transport::signer::now_ms();
    // A frozen node's view may predate what the cluster did meanwhile: it confirms no one.
    reply.frozen = state.membership.frozen();
    state.membership.merge(digest);
    Ok(binary(reply.encode_as(version)))
}

/// Most node values one Merkle request may ask for (all leaves of many segments).
const MAX_MERKLE_VALUES: usize = 1 << 20;

/// `POST /internal/v1/merkle`: node values of this replica's segment trees; `None` for a
/// segment it does not hold completely (or has no tree of yet).
pub async fn merkle(State(state): State<Arc<NodeState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: MerkleRequest = message(&body)?;
    let values: usize = request.queries.iter().map(|q| q.indices.len()).sum();
    if request.queries.len() > MAX_MERKLE_QUERIES || values > MAX_MERKLE_VALUES {
        return Err(ApiError::BadRequest(format!(
            "a merkle request asks at most {MAX_MERKLE_QUERIES} queries and {MAX_MERKLE_VALUES} values"
        )));
    }
    // Read with no change in progress, and answered only once what was read is durable: an
    // old owner that finds a bucket equal to its own removes its copy instead of handing it
    // over (the dropper), so what our tree shows must survive a crash of ours.
    let answers = tokio::task::spawn_blocking(move || {
        let view = state.replica.core().view();
        let mut answers = Vec::new();
        state.replica.engine().read_durable(&mut || {
            answers = request
                .queries
                .iter()
                .map(|q| {
                    let indices: Vec<usize> = q.indices.iter().map(|&i| i as usize).collect();
                    if q.lo > q.hi || !view.serves_range(q.lo, q.hi) {
                        return None;
                    }
                    state.trees.values(q.lo, q.hi, q.level, &indices)
                })
                .collect();
        })?;
        Ok::<_, kv_storage::Error>(answers)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(format!("storage: {e}")))?;
    Ok(binary(encode(&MerkleResponse { answers })))
}

/// `POST /internal/v1/status`: this node's load and transfers ([`kv_proto::NodeStatus`]), for
/// `/admin/status` on any member or gateway (`kvctl status`).
pub async fn status(State(state): State<Arc<NodeState>>, body: Bytes) -> Result<Response, ApiError> {
    let _: kv_proto::StatusRequest = message(&body)?;
    // Off the async workers: it walks the hint index (under its lock) and asks the engine.
    let status = tokio::task::spawn_blocking(move || node_status(&state))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(binary(encode(&status)))
}

/// What [`status`] answers.
pub fn node_status(state: &NodeState) -> kv_proto::NodeStatus {
    let (keys, disk_bytes) = state.engine.size();
    let pending = state.hints.pending();
    let workers = state.supervisor.workers();
    let worker = |name: &str| workers.iter().find(|w| w.name == name).map(|w| w.status.clone()).unwrap_or_default();
    let (transfer, transfer_ranges, transfer_done, transfer_keys) = state.transfers.now();
    let holds_records = state.engine.scan(0, u64::MAX, None, 1).map_or(true, |page| !page.is_empty());
    kv_proto::NodeStatus {
        holds_records,
        transfer: transfer.to_owned(),
        transfer_ranges,
        transfer_done,
        transfer_keys,
        node_id: state.replica.node_id().to_owned(),
        status: state.membership.my_status().map_or("unknown", |s| s.name()).to_owned(),
        keys,
        disk_bytes,
        disk_free_bytes: crate::metrics::disk_space(&state.data_dir).map_or(0, |(free, _)| free),
        hints: pending.values().map(|p| p.count).sum(),
        hint_bytes: pending.values().map(|p| p.bytes).sum(),
        filling_share: share(&state.ownership.filling()),
        dropping_share: share(&state.ownership.dropping()),
        rebalancer: worker("rebalancer"),
        dropper: worker("dropper"),
    }
}

/// The fraction of the ring's hash space that `intervals` cover.
fn share(intervals: &kv_ring::Intervals) -> f64 {
    let width: f64 = intervals.spans().iter().map(|(lo, hi)| (hi - lo) as f64 + 1.0).sum();
    (width / 2f64.powi(64)).min(1.0)
}
