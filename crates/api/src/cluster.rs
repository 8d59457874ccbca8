//! The cluster views, served on the admin listener: `/cluster/members`, `/cluster/ring`.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use kv_membership::MemberList;
use serde_json::{json, Value};

use crate::ApiState;

/// `GET /cluster/members`: every known member.
pub async fn members(State(state): State<Arc<ApiState>>) -> Json<MemberList> {
    Json(MemberList { members: state.membership.members() })
}

/// `GET /cluster/ring`: each member's share of the ring, as primary and as any of N replicas.
pub async fn ring(State(state): State<Arc<ApiState>>) -> Json<Value> {
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
    // Ranges whose replicas change once the moves in progress complete.
    let moving: Vec<Value> = topology
        .pending
        .as_ref()
        .map(|pending| kv_ring::diff(&topology.ring, pending, n))
        .unwrap_or_default()
        .into_iter()
        .map(|m| json!({ "start": m.range.start, "end": m.range.end, "from": m.lost(), "to": m.gained() }))
        .collect();
    Json(json!({
        "replicas": n,
        "zones": topology.ring.zone_count(),
        "nodes": nodes,
        "moving_ranges": moving.len(),
        "moving": moving.into_iter().take(100).collect::<Vec<_>>(),
    }))
}
