//! The client API: `PUT`, `GET` and `DELETE` on `/kv/{key}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use kv_coordinator::{Need, PutOutcome, Write};
use kv_types::{Record, Version};
use kv_vclock::{VClock, Versioned};
use serde_json::json;

use crate::context::ContextSealer;
use crate::error::ApiError;
use crate::ApiState;

/// Longest key accepted, in bytes (UTF-8).
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest Content-Type stored with a value.
const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// Content-Type stored when the client sends none.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Header carrying the causal context token.
pub static X_CONTEXT: HeaderName = HeaderName::from_static("x-context");
/// Header of a write's answer when the new version has concurrent siblings: how many.
pub static X_SIBLINGS: HeaderName = HeaderName::from_static("x-siblings");

/// Header saying how many replicas answered, e.g. `2/3`.
pub static X_REPLICAS: HeaderName = HeaderName::from_static("x-replicas");

/// `PUT /kv/{key}?w=&pw=`: store the body as a new version on W of N replicas (`pw` of them
/// the key's own replicas, not fallbacks).
pub async fn put(
    State(state): State<Arc<ApiState>>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = valid_key(key)?;
    let [w, pw] = quorum_params(&state, query, ["w", "pw"])?;
    formed(&state)?;
    serving(&state).await?;
    let body = body.map_err(|e| body_error(e, state.max_value_bytes))?;
    if body.len() > state.max_value_bytes {
        return Err(ApiError::TooLarge { limit: state.max_value_bytes });
    }
    let write = Write {
        // The value's one copy on its way to the replicas (docs/architecture.md, "The critical
        // path of a write"): keeping the request's `Bytes` would pin hyper's read buffer.
        value: Bytes::copy_from_slice(&body),
        content_type: content_type(&headers)?,
        context: context(&state, &key, &headers)?,
        tombstone: false,
    };
    let outcome = state.coordinator.put_with(key.clone(), write, w, count(pw)).await?;
    Ok(written(&key, outcome, &state.contexts))
}

/// `GET /kv/{key}?r=`: the value, `300` with the siblings, or `404`, from R of N replicas.
pub async fn get(
    State(state): State<Arc<ApiState>>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = valid_key(key)?;
    let [r] = quorum_params(&state, query, ["r"])?;
    formed(&state)?;
    serving(&state).await?;
    let outcome = state.coordinator.get_with(key.clone(), r).await?;
    // Checked again before the answer: a node paused while it read must not hand out data
    // once it resumes unless it is still a member.
    serving(&state).await?;
    // Client reads only (a DELETE's read of its context is not one).
    let values = outcome.record.versions().iter().filter(|v| !v.tombstone).count();
    if values > 0 {
        state.coordinator.metrics().read_siblings.observe(values as f64);
    }
    let mut response = read_response(&key, &outcome.record, &state.contexts);
    set_replicas(&mut response, outcome.answered.len(), outcome.replicas);
    Ok(response)
}

/// `DELETE /kv/{key}?w=`: write a tombstone. With `X-Context` it deletes exactly what that read
/// saw, so a concurrent write survives as a sibling; without, the coordinator first reads the
/// key (R replicas) and deletes every version it found.
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = valid_key(key)?;
    let [w, pw] = quorum_params(&state, query, ["w", "pw"])?;
    formed(&state)?;
    serving(&state).await?;
    let context = match headers.get(&X_CONTEXT) {
        Some(_) => context(&state, &key, &headers)?,
        None => state.coordinator.get(key.clone(), None).await?.record.context(),
    };
    let write = Write { value: Bytes::new(), content_type: String::new(), context, tombstone: true };
    let outcome = state.coordinator.put_with(key.clone(), write, w, count(pw)).await?;
    Ok(written(&key, outcome, &state.contexts))
}

/// Refuses client requests while this process must not serve: it left or was removed, its
/// clock is fenced, or after it was frozen it cannot confirm it is still a member
/// ([`kv_membership::Membership::confirm`]). Cheap when all is well (no exchange).
async fn serving(state: &ApiState) -> Result<(), ApiError> {
    state.membership.confirm().await.map_err(|e| ApiError::NotServing(e.to_string()))
}

/// Refuses client requests until the cluster has formed (`--expect-nodes`).
fn formed(state: &ApiState) -> Result<(), ApiError> {
    state.membership.formed().map_err(|(normal, expected)| ApiError::Forming { normal, expected })
}

/// The answer to a write: `204` with the new version's context, `X-Replicas`, and, when the
/// new version has concurrent siblings, `X-Siblings` (their number, the new version included)
/// and no context: the new version's clock names its actor's counter, which covers that
/// actor's earlier dots of the key, including a sibling the client never saw, so a write on it
/// would drop that sibling unseen. The client reads the key to resolve them.
fn written(key: &[u8], outcome: PutOutcome, contexts: &ContextSealer) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if outcome.siblings <= 1 {
        response = with_context(response, key, &outcome.created.clock(), contexts);
    } else if let Ok(value) = HeaderValue::from_str(&outcome.siblings.to_string()) {
        response.headers_mut().insert(X_SIBLINGS.clone(), value);
    }
    set_replicas(&mut response, outcome.acked.len(), outcome.replicas);
    response
}

fn set_replicas(response: &mut Response, answered: usize, replicas: usize) {
    if let Ok(value) = HeaderValue::from_str(&format!("{answered}/{replicas}")) {
        response.headers_mut().insert(X_REPLICAS.clone(), value);
    }
}

/// The per-request quorum parameters `names` (`w` and `pw` for writes, `r` for reads), each
/// if given: `1..=N`, `one`, `quorum`, `all`, and for `r` and `w` also `local_quorum` and
/// `each_quorum`. Any other parameter, or one given twice, is refused.
fn quorum_params<const K: usize>(
    state: &ApiState,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    names: [&str; K],
) -> Result<[Option<Need>; K], ApiError> {
    let Query(params) = query.map_err(|_| ApiError::BadParameter("malformed query string".into()))?;
    if let Some((other, _)) = params.iter().find(|(k, _)| !names.contains(&k.as_str())) {
        return Err(ApiError::BadParameter(format!(
            "unknown parameter {other:?}; this request takes only {}",
            names.join(" and ")
        )));
    }
    let mut out = [None; K];
    for (slot, name) in out.iter_mut().zip(names) {
        let given: Vec<&String> = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v).collect();
        if given.len() > 1 {
            return Err(ApiError::BadParameter(format!("{name} given {} times; give it once", given.len())));
        }
        let zones = name != "pw";
        *slot = given.first().map(|text| state.coordinator.quorum().parse_need(name, text, zones)).transpose()?;
    }
    Ok(out)
}

/// `pw` as a count (it never takes a zone name).
fn count(need: Option<Need>) -> Option<usize> {
    match need {
        Some(Need::Count(n)) => Some(n),
        _ => None,
    }
}

/// `PUT`/`GET`/`DELETE /kv/`: the empty key.
pub async fn empty_key() -> ApiError {
    ApiError::BadKey("key must be 1 to 1024 bytes; got an empty key".into())
}

/// `/noop`, any method: `204` without touching storage or the coordinator. The HTTP ceiling
/// for benchmarks (`kvbench --protocol noop`): what any HTTP store could reach on this machine.
pub async fn noop(_body: Bytes) -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The response for a read of `record`, the versions of `key`.
pub fn read_response(key: &[u8], record: &Record, contexts: &ContextSealer) -> Response {
    let context = record.context();
    // Siblings with the same value, type and delete flag (a retried write coordinated twice)
    // are one answer to the client; the context still covers all of them.
    let mut versions: Vec<&Version> = Vec::with_capacity(record.len());
    for v in record.versions() {
        if !versions
            .iter()
            .any(|u| u.tombstone == v.tombstone && u.value == v.value && u.content_type == v.content_type)
        {
            versions.push(v);
        }
    }
    let versions = versions.as_slice();
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
                    // When its version was written, by the coordinating node's clock: a hint for a
                    // resolver (newest wins), not an order (docs/api.md).
                    let mut sibling = json!({
                        "value": STANDARD.encode(&v.value),
                        "content_type": v.content_type,
                        "written_at": v.written_at,
                    });
                    if v.tombstone {
                        sibling["deleted"] = json!(true);
                    }
                    sibling
                })
                .collect();
            (
                StatusCode::MULTIPLE_CHOICES,
                Json(json!({ "context": contexts.seal(key, &context), "siblings": siblings })),
            )
                .into_response()
        }
    };
    with_context(response, key, &context, contexts)
}

fn with_context(mut response: Response, key: &[u8], context: &VClock, contexts: &ContextSealer) -> Response {
    if let Ok(value) = HeaderValue::from_str(&contexts.seal(key, context)) {
        if !context.is_empty() {
            response.headers_mut().insert(X_CONTEXT.clone(), value);
        }
    }
    response
}

/// The key of a `/kv/{key}` request, checked: UTF-8, 1 to [`MAX_KEY_BYTES`] bytes.
pub fn valid_key(key: Result<Path<String>, PathRejection>) -> Result<Vec<u8>, ApiError> {
    let Path(key) = key.map_err(|e| {
        tracing::debug!(error = %e.body_text(), "bad key in path");
        ApiError::BadKey("key must be UTF-8 once percent-decoded (e.g. %C3%A9 for \u{e9}); got other bytes".into())
    })?;
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

fn context(state: &ApiState, key: &[u8], headers: &HeaderMap) -> Result<VClock, ApiError> {
    let Some(value) = headers.get(&X_CONTEXT) else {
        return Ok(VClock::new());
    };
    let text = value.to_str().map_err(|_| ApiError::BadContext("not ASCII".into()))?;
    state.contexts.open(key, text).map_err(ApiError::BadContext)
}
