//! The client API: `PUT`, `GET` and `DELETE` on `/kv/{key}`, plus `/health` and `/metrics`.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use kv_storage::Record;
use kv_vclock::VClock;
use serde_json::json;

use crate::error::ApiError;
use crate::replica::{Replica, Write};
use crate::AppState;

/// Longest key accepted, in bytes (UTF-8).
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest Content-Type stored with a value.
const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// Content-Type stored when the client sends none.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Header carrying the causal context token.
pub static X_CONTEXT: HeaderName = HeaderName::from_static("x-context");

/// `PUT /kv/{key}`: store the body as a new version.
pub async fn put(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = valid_key(key)?;
    let body = body.map_err(|e| body_error(e, state.config.max_value_bytes))?;
    if body.len() > state.config.max_value_bytes {
        return Err(ApiError::TooLarge { limit: state.config.max_value_bytes });
    }
    let write = Write {
        // Copy: keeping the request's `Bytes` would pin hyper's read buffer.
        value: body.to_vec(),
        content_type: content_type(&headers)?,
        context: context(&headers)?,
        tombstone: false,
    };
    let (_, created) = state.replica.coordinate(key, write).await?;
    Ok(with_context(StatusCode::NO_CONTENT.into_response(), &kv_vclock::Versioned::clock(&created)))
}

/// `GET /kv/{key}`: the value, `300` with the siblings, or `404`.
pub async fn get(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = valid_key(key)?;
    let record = state.replica.get(key).await?;
    Ok(read_response(&record))
}

/// `DELETE /kv/{key}`: write a tombstone. Without `X-Context` it deletes every version this
/// node holds (the coordinator reads its own versions first); with one, exactly what that read
/// saw, so a concurrent write survives as a sibling.
pub async fn delete(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = valid_key(key)?;
    let context = match headers.get(&X_CONTEXT) {
        Some(_) => context(&headers)?,
        None => Replica::context_of(&state.replica.get(key.clone()).await?),
    };
    let write = Write { value: Vec::new(), content_type: String::new(), context, tombstone: true };
    let (_, created) = state.replica.coordinate(key, write).await?;
    Ok(with_context(StatusCode::NO_CONTENT.into_response(), &kv_vclock::Versioned::clock(&created)))
}

/// `PUT`/`GET`/`DELETE /kv/`: the empty key.
pub async fn empty_key() -> ApiError {
    ApiError::BadKey("key must be 1 to 1024 bytes; got an empty key".into())
}

/// `GET /health`: 200 while serving, 503 once shutdown has begun.
pub async fn health(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.ready.load(Ordering::Acquire) {
        return Err(ApiError::NotReady);
    }
    Ok(Json(json!({
        "status": "ok",
        "node_id": state.replica.node_id(),
        "engine": state.replica.engine().kind().name(),
    })))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.replica.engine().refresh_gauges();
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// The response for a read of `record`.
pub fn read_response(record: &Record) -> Response {
    let context = record.context();
    let versions = record.versions();
    let response = match versions {
        [] => ApiError::NotFoundKey.into_response(),
        _ if versions.iter().all(|v| v.tombstone) => ApiError::NotFoundKey.into_response(),
        [only] => {
            let content_type = HeaderValue::from_str(&only.content_type)
                .unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
            ([(CONTENT_TYPE, content_type)], only.value.clone()).into_response()
        }
        many => {
            let siblings: Vec<serde_json::Value> = many
                .iter()
                .map(|v| {
                    let mut sibling = json!({ "value": STANDARD.encode(&v.value), "content_type": v.content_type });
                    if v.tombstone {
                        sibling["deleted"] = json!(true);
                    }
                    sibling
                })
                .collect();
            (StatusCode::MULTIPLE_CHOICES, Json(json!({ "context": context.to_token(), "siblings": siblings })))
                .into_response()
        }
    };
    with_context(response, &context)
}

fn with_context(mut response: Response, context: &VClock) -> Response {
    if let Ok(value) = HeaderValue::from_str(&context.to_token()) {
        if !context.is_empty() {
            response.headers_mut().insert(X_CONTEXT.clone(), value);
        }
    }
    response
}

fn valid_key(key: Result<Path<String>, PathRejection>) -> Result<Vec<u8>, ApiError> {
    let Path(key) =
        key.map_err(|e| ApiError::BadKey(format!("key must be percent-encoded UTF-8: {}", e.body_text())))?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::BadKey(format!("key must be 1 to {MAX_KEY_BYTES} bytes; got {}", key.len())));
    }
    Ok(key.into_bytes())
}

fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge { limit }
    } else {
        ApiError::BadRequest(format!("cannot read body: {}", e.body_text()))
    }
}

fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(DEFAULT_CONTENT_TYPE.to_owned());
    };
    let text = value.to_str().map_err(|_| ApiError::BadRequest("Content-Type must be visible ASCII".into()))?;
    if text.is_empty() || text.len() > MAX_CONTENT_TYPE_BYTES {
        return Err(ApiError::BadRequest(format!("Content-Type must be 1 to {MAX_CONTENT_TYPE_BYTES} bytes")));
    }
    Ok(text.to_owned())
}

fn context(headers: &HeaderMap) -> Result<VClock, ApiError> {
    let Some(value) = headers.get(&X_CONTEXT) else {
        return Ok(VClock::new());
    };
    let text = value.to_str().map_err(|_| ApiError::BadContext("not ASCII".into()))?;
    VClock::from_token(text).map_err(|e| ApiError::BadContext(e.to_string()))
}
