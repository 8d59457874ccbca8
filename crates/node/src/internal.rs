//! The internal replica API under `/internal/v1/`: postcard bodies, for other nodes and
//! gateways only. Every request passes [`verify`] first.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kv_coordinator::auth::{InternalAuth, INTERNAL_HEADER};
use kv_coordinator::wire::{
    decode, encode, CoordinateRequest, CoordinateResponse, PurgeRequest, ReadRequest, ScanRequest, ScanResponse,
    StoreBatchRequest, StoreRequest,
};
use kv_gossip::MemberState;
use serde::de::DeserializeOwned;

use crate::api::MAX_KEY_BYTES;
use crate::error::ApiError;
use crate::replica::Replica;
use crate::AppState;

/// Middleware: the one place internal requests are checked ([`InternalAuth`]).
pub async fn verify(request: Request, next: Next) -> Response {
    let header = request.headers().get(INTERNAL_HEADER).and_then(|v| v.to_str().ok());
    match InternalAuth.verify(header, request.method().as_str(), request.uri().path(), &[]) {
        Ok(()) => next.run(request).await,
        Err(message) => ApiError::Forbidden(message).into_response(),
    }
}

fn replica(state: &AppState) -> Result<&Replica, ApiError> {
    state.replica.as_ref().ok_or(ApiError::NoRoute)
}

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

/// `POST /internal/v1/coordinate`: create a version here and store it.
pub async fn coordinate(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: CoordinateRequest = message(&body)?;
    check_key(&request.key)?;
    let (record, created) = replica(&state)?.coordinate(request.key, request.write).await?;
    Ok(binary(encode(&CoordinateResponse { record, created })))
}

/// `POST /internal/v1/store`: merge versions into this replica.
pub async fn store(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: StoreRequest = message(&body)?;
    check_key(&request.key)?;
    replica(&state)?.store(request.key, request.versions).await?;
    Ok(binary(Vec::new()))
}

/// `POST /internal/v1/read`: this replica's versions.
pub async fn read(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: ReadRequest = message(&body)?;
    check_key(&request.key)?;
    let record = replica(&state)?.read(request.key).await?;
    Ok(binary(encode(&record.into_versions())))
}

/// `POST /internal/v1/purge`: drop a key whose only versions are the given tombstones.
pub async fn purge(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: PurgeRequest = message(&body)?;
    check_key(&request.key)?;
    replica(&state)?.purge(request.key, request.tombstones).await?;
    Ok(binary(Vec::new()))
}

/// Largest scan page served.
const MAX_SCAN_PAGE: u32 = 10_000;

/// `POST /internal/v1/scan`: a page of this replica's records in a range of key hashes.
pub async fn scan(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: ScanRequest = message(&body)?;
    if request.first_hash > request.last_hash || request.limit == 0 || request.limit > MAX_SCAN_PAGE {
        return Err(ApiError::BadRequest(format!("scan needs first <= last and 1 to {MAX_SCAN_PAGE} records")));
    }
    let limit = request.limit as usize;
    let entries = replica(&state)?.scan(request.first_hash, request.last_hash, request.after, limit).await?;
    let done = entries.len() < limit;
    state.metrics.stream_keys.with_label_values(&["out"]).inc_by(entries.len() as u64);
    let value_bytes: u64 = entries.iter().flat_map(|(_, vs)| vs.iter()).map(|v| v.value.len() as u64).sum();
    state.metrics.stream_bytes.with_label_values(&["out"]).inc_by(value_bytes);
    Ok(binary(encode(&ScanResponse { entries, done })))
}

/// `POST /internal/v1/store-batch`: merge many keys (a range handed off by a leaving node).
pub async fn store_batch(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: StoreBatchRequest = message(&body)?;
    for (key, _) in &request.entries {
        check_key(key)?;
    }
    let keys = request.entries.len() as u64;
    let value_bytes: u64 = request.entries.iter().flat_map(|(_, vs)| vs.iter()).map(|v| v.value.len() as u64).sum();
    replica(&state)?.store_batch(request.entries).await?;
    state.metrics.stream_keys.with_label_values(&["in"]).inc_by(keys);
    state.metrics.stream_bytes.with_label_values(&["in"]).inc_by(value_bytes);
    Ok(binary(Vec::new()))
}

/// `POST /internal/v1/gossip`: merge the sender's member states, answer with ours.
pub async fn gossip(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let states: Vec<MemberState> = message(&body)?;
    state.membership.merge(states);
    Ok(binary(encode(&state.membership.states())))
}
