//! Cluster and admin endpoints: `/cluster/members`, `/cluster/ring`, `/admin/local/{key}`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use kv_vclock::Versioned;
use serde_json::{json, Value};

use crate::api::valid_key;
use crate::error::ApiError;
use crate::membership::MemberList;
use crate::AppState;

/// `GET /cluster/members`: every known member.
pub async fn members(State(state): State<AppState>) -> Json<MemberList> {
    Json(MemberList { members: state.membership.members() })
}

/// `GET /cluster/ring`: each member's share of the ring, as primary and as any of N replicas.
pub async fn ring(State(state): State<AppState>) -> Json<Value> {
    let topology = state.membership.topology();
    let n = state.coordinator.quorum().n;
    let primary = topology.ring.ownership(1);
    let replica = topology.ring.ownership(n);
    let nodes: Vec<Value> = topology
        .ring
        .nodes()
        .iter()
        .map(|node| {
            json!({
                "id": node.id,
                "zone": node.zone,
                "weight": node.weight,
                "vnodes": node.weight * topology.ring.vnodes_per_weight(),
                "primary_share": primary.get(&node.id).copied().unwrap_or(0.0),
                "replica_share": replica.get(&node.id).copied().unwrap_or(0.0),
            })
        })
        .collect();
    Json(json!({ "replicas": n, "zones": topology.ring.zone_count(), "nodes": nodes }))
}

/// `GET /admin/local/{key}`: this node's own versions of a key, without asking any other node.
pub async fn local(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let key = valid_key(key)?;
    let replica = state.replica.as_ref().ok_or(ApiError::NoRoute)?;
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
        "context": record.context().to_token(),
        "versions": versions,
    })))
}
