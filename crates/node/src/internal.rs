//! The internal replica API under `/internal/v1/`: postcard bodies, for other nodes and
//! gateways only. Every request passes [`verify`] first.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kv_coordinator::auth::{InternalAuth, INTERNAL_HEADER};
use kv_coordinator::wire::{
    decode, encode, CoordinateRequest, CoordinateResponse, PurgeRequest, ReadRequest, StoreRequest,
};
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
