//! The cluster views, served on the admin listener: `/cluster/members`, `/cluster/ring`, and
//! `/admin/status` (every member's load and transfers, asked of each).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use kv_membership::{MemberInfo as Member, MemberList};
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

/// Every member that has not left or been removed, and what each reports of itself (asked of
/// all at once; an error for one that does not answer within [`STATUS_WAIT`]).
pub(crate) async fn member_loads(state: &ApiState) -> (Vec<Member>, Vec<Result<kv_proto::NodeStatus, String>>) {
    let members: Vec<Member> =
        state.membership.members().into_iter().filter(|m| !matches!(m.status.as_str(), "left" | "removed")).collect();
    let asked = members.iter().map(|m| {
        let transport = state.transport.clone();
        let address = m.address.clone();
        async move {
            let Some(transport) = transport else { return Err("this process calls no members".to_owned()) };
            match tokio::time::timeout(STATUS_WAIT, transport.request(&address, &kv_proto::StatusRequest {})).await {
                Ok(Ok(status)) => Ok(status),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer in {} s", STATUS_WAIT.as_secs())),
            }
        }
    });
    let answers = futures::future::join_all(asked).await;
    (members, answers)
}

/// How long `/admin/status` waits for each member's answer.
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// `GET /admin/status`: one row per member (not left or removed): its membership (status,
/// zone, release), its share of the ring as any of N replicas, and what it reports itself
/// ([`kv_proto::NodeStatus`]: keys, disk, hints, ranges being filled and dropped with the
/// rebalancer's progress), asked of every member at once; `error` instead for one that does
/// not answer within 3 s. `kvctl status` prints it as a table.
pub async fn status(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let n = state.coordinator.quorum().n;
    let topology = state.membership.topology();
    let shares = topology.ring.ownership(n);
    let (members, answers) = member_loads(&state).await;
    let rows: Vec<Value> = members
        .iter()
        .zip(answers)
        .map(|(m, answer)| {
            let mut row = json!({
                "id": m.id, "address": m.address, "zone": m.zone, "status": m.status, "release": m.release,
                "replica_share": shares.get(&m.id).copied().unwrap_or(0.0),
            });
            match answer {
                Ok(load) => row["load"] = json!(load),
                Err(e) => row["error"] = json!(e),
            }
            row
        })
        .collect();
    let moving = topology.pending.as_ref().map_or(0, |pending| kv_ring::diff(&topology.ring, pending, n).len());
    Json(json!({ "replicas": n, "moving_ranges": moving, "members": rows }))
}
