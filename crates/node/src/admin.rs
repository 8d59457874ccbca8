//! The node's own admin endpoints, on the admin listener: `/admin/local/{key}`,
//! `/admin/keys`, `/admin/leave`, `/admin/remove/{id}`, `/admin/repair`.

use std::sync::Arc;

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use kv_gossip::Status;
use kv_vclock::Versioned;
use serde_json::{json, Value};

use kv_api::api::valid_key;
use kv_api::ApiError;

use crate::NodeState;

/// `GET /admin/local/{key}`: this node's own versions of a key, without asking any other node.
pub async fn local(
    State(state): State<Arc<NodeState>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let key = valid_key(key)?;
    let replica = &state.replica;
    let record = replica.read(key.clone()).await?;
    let versions: Vec<Value> = record
        .versions()
        .iter()
        .map(|v| {
            let clock: serde_json::Map<String, Value> =
                v.clock().entries().iter().map(|e| (e.node.clone(), json!(e.counter))).collect();
            json!({
                "value": STANDARD.encode(&v.value),
                "content_type": v.content_type,
                "tombstone": v.tombstone,
                "clock": clock,
                "dot": { "node": v.dot.node, "counter": v.dot.counter },
                "written_at": v.written_at,
            })
        })
        .collect();
    Ok(Json(json!({
        "node_id": replica.node_id(),
        "key": String::from_utf8_lossy(&key),
        "context": state.contexts.seal(&key, &record.context()),
        "versions": versions,
    })))
}

/// `POST /admin/leave`: hand this node's ranges to their new owners, leave, and exit.
pub async fn leave(State(state): State<Arc<NodeState>>) -> Result<(StatusCode, Json<Value>), ApiError> {
    match state.membership.my_status() {
        Some(Status::Normal) => {
            state.membership.set_status(Status::Leaving);
            Ok((StatusCode::ACCEPTED, Json(json!({ "status": "leaving" }))))
        }
        Some(Status::Leaving) => Ok((StatusCode::ACCEPTED, Json(json!({ "status": "leaving" })))),
        Some(other) => Err(ApiError::Conflict(format!("cannot leave while {}", other.name()))),
        None => Err(ApiError::Conflict("this process is not a member".into())),
    }
}

/// `GET /admin/thaw`: `{"frozen", "freezes", "serving"}`: whether this node is frozen (rule 12),
/// how many freezes it has seen since it started (what a thaw names), and whether it serves now
/// (`not_serving` says why not).
pub async fn frozen(State(state): State<Arc<NodeState>>) -> Json<Value> {
    let (frozen, freezes) = state.membership.freezes();
    Json(serving(json!({ "frozen": frozen, "freezes": freezes }), &state))
}

/// `POST /admin/thaw?no_removal=true&freezes=N`: the operator, who saw this node frozen with `N`
/// freezes (`GET /admin/thaw`), vouches that no member was removed while it was frozen; it serves
/// again without waiting for a member that was not frozen to answer it (rule 12's way out when
/// one member is down and the others were all frozen at once). `200 {"was_frozen", "serving"}`;
/// `409` if it froze again since (that freeze nobody vouched for), or knows it is no longer a
/// member.
pub async fn thaw(
    State(state): State<Arc<NodeState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if let Some(other) = params.keys().find(|k| !matches!(k.as_str(), "no_removal" | "freezes")) {
        return Err(ApiError::BadParameter(format!("unknown parameter {other:?}")));
    }
    if params.get("no_removal").is_none_or(|v| v != "true") {
        return Err(ApiError::BadParameter(
            "no_removal=true: you vouch that no member was removed while this node was frozen (if one was, this node \
             and the members that confirm through it may answer values deleted since; docs/consistency.md, rule 12)"
                .into(),
        ));
    }
    let seen = params.get("freezes").and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
        ApiError::BadParameter(
            "freezes=N: the freezes GET /admin/thaw showed, so that a freeze seen after you looked is not thawed"
                .into(),
        )
    })?;
    let was_frozen = state.membership.thaw(seen).map_err(|e| ApiError::Conflict(e.to_string()))?;
    Ok(Json(serving(json!({ "was_frozen": was_frozen }), &state)))
}

/// `answer` with `"serving"`, and `"not_serving"` (why) when it does not.
fn serving(mut answer: Value, state: &NodeState) -> Value {
    let ready = state.membership.ready();
    answer["serving"] = json!(ready.is_ok());
    if let Err(e) = ready {
        answer["not_serving"] = json!(e.to_string());
    }
    answer
}

/// `POST /admin/remove/{id}?force=true`: declare a member permanently failed; the others
/// re-replicate its ranges. Refused for a member that is not down unless `force=true`.
pub async fn remove(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let force = params.get("force").is_some_and(|v| v == "true");
    if let Some(other) = params.keys().find(|k| k.as_str() != "force") {
        return Err(ApiError::BadParameter(format!("unknown parameter {other:?}")));
    }
    let Some(member) = state.membership.state(&id) else {
        return Err(ApiError::NotFoundMember(id));
    };
    if !member.status.is_member() {
        return Ok(Json(json!({ "id": id, "status": member.status.name() })));
    }
    if !force && !state.membership.is_down(&id) {
        return Err(ApiError::Conflict(format!(
            "{id} is not down; removing a live node discards its replicas. Stop it first, or add ?force=true"
        )));
    }
    state.membership.remove(&id).map_err(ApiError::Conflict)?;
    Ok(Json(json!({ "id": id, "status": "removed" })))
}

/// `GET /admin/keys`: every key this node stores (live or deleted), for operators and tests.
pub async fn keys(State(state): State<Arc<NodeState>>) -> Result<Json<Value>, ApiError> {
    let replica = &state.replica;
    let mut keys = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = replica.scan_any(0, u64::MAX, after.clone(), 10_000).await?;
        if page.is_empty() {
            break;
        }
        after = page.last().map(|(k, _)| k.clone());
        keys.extend(page.into_iter().map(|(k, _)| String::from_utf8_lossy(&k).into_owned()));
    }
    Ok(Json(json!({ "node_id": replica.node_id(), "count": keys.len(), "keys": keys })))
}

/// How long `POST /admin/repair` waits for its round before answering 202 (the admin
/// listener's request deadline is longer).
const REPAIR_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

/// `POST /admin/repair`: an anti-entropy round now, against every other replica. Answers its
/// report (segments compared and differing, keys and bytes moved each way) when it ends within
/// 25 s; else `202` (the round goes on; its report is in the log and `/admin/workers`).
pub async fn repair(State(state): State<Arc<NodeState>>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.repair.try_send(tx).map_err(|_| ApiError::Unavailable("too many repair requests waiting".into()))?;
    match tokio::time::timeout(REPAIR_WAIT, rx).await {
        Ok(Ok(report)) => Ok((StatusCode::OK, Json(json!(report)))),
        Ok(Err(_)) => Err(ApiError::Internal("the anti-entropy worker stopped".into())),
        Err(_) => Ok((StatusCode::ACCEPTED, Json(json!({ "status": "running" })))),
    }
}

/// `GET /admin/trees`: how many segment trees this node keeps and one digest of all their
/// ranges and roots. Replicas holding the same segments have converged when their digests
/// are equal (the fault-injection tests wait for that).
pub async fn trees(State(state): State<Arc<NodeState>>) -> Json<Value> {
    let (segments, digest) = state.trees.summary();
    Json(json!({ "segments": segments, "digest": format!("{digest:032x}") }))
}
