//! Backup and restore by range scans, on the admin listener of any node or gateway
//! (`kvctl backup DIR`, `kvctl restore DIR`; docs/operations.md, "Back up and restore").
//!
//! - `GET /admin/backup/ranges`: the ring's arcs, each a hash range whose keys share one
//!   preference list, as inclusive `[lo, hi]` spans.
//! - `GET /admin/backup/scan?lo=&hi=&after=&limit=`: a page of one arc's records, read from R
//!   of its replicas and merged (every version either held is kept: siblings and tombstones as
//!   they are), so that every write acknowledged at W is in the backup (R + W > N). Binary: a
//!   postcard [`BackupPage`].
//! - `POST /admin/restore/begin[?into_non_empty=true]`: a restore ticket, which every
//!   `POST /admin/restore` carries (`?ticket=`, [`crate::ticket`]). Issued only if no member holds a
//!   record, unless `into_non_empty` (rule 16: a value deleted after the backup whose tombstone
//!   was purged would come back); valid for `--tombstone-grace` from its issue, sealed with the
//!   cluster secret, so that any node or gateway accepts it.
//! - `POST /admin/restore`: a postcard list of records, merged into every replica of each key
//!   with the peer protocol's store-batch (as a leaving node hands its ranges off); answered
//!   once W replicas of every key hold them durably.
//!
//! Both refuse `409` while the ring is changing (a join, a leave or a removal in progress):
//! arcs move, and a copy made then could miss a range. Neither is a point-in-time snapshot:
//! writes during a backup may or may not be in it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kv_proto::{BackupPage, Entry, ScanRequest, StoreBatchRequest};
use kv_types::Record;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ticket::{self, RestoreTicket};
use crate::{ApiError, ApiState};

/// Most records in one backup page.
pub const MAX_PAGE: u32 = 1000;

/// The query of `GET /admin/backup/scan`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    /// First hash of the arc (inclusive).
    lo: u64,
    /// Last hash of the arc (inclusive).
    hi: u64,
    /// The key to continue after, hex (the previous page's `next`).
    after: Option<String>,
    /// Most records [default and most: 1000].
    limit: Option<u32>,
}

/// The query of `POST /admin/restore/begin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeginQuery {
    /// Merge into a cluster that holds records [default: false].
    into_non_empty: Option<bool>,
}

/// The query of `POST /admin/restore`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreQuery {
    /// The ticket `POST /admin/restore/begin` gave.
    ticket: Option<String>,
}

fn settled(state: &ApiState) -> Result<Arc<kv_coordinator::Topology>, ApiError> {
    let topology = state.membership.topology();
    if topology.pending.is_some() {
        return Err(ApiError::Conflict(
            "the ring is changing (a join, leave or removal in progress): back up or restore once it has settled \
             (`kvctl status` shows no ranges moving)"
                .into(),
        ));
    }
    if topology.ring.is_empty() {
        return Err(ApiError::NotReady);
    }
    Ok(topology)
}

/// `GET /admin/backup/ranges`: `{"replicas", "ranges": [[lo, hi], ...]}`, the ring's arcs as
/// inclusive spans (an arc over the top of the hash space is two).
pub async fn ranges(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let topology = settled(&state)?;
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for arc in topology.ring.ranges() {
        let (start, end) = (arc.start, arc.end);
        if start < end {
            spans.push((start + 1, end));
        } else {
            // Wraps: (start, MAX] and [0, end]; one token only: the whole ring.
            if start < u64::MAX {
                spans.push((start + 1, u64::MAX));
            }
            spans.push((0, end));
        }
    }
    spans.sort_unstable();
    Ok(Json(json!({ "replicas": state.coordinator.quorum().n, "ranges": spans })))
}

/// `GET /admin/backup/scan`: a page of the arc `lo..=hi` from R of its replicas, merged.
pub async fn scan(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<ScanQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadParameter(e.body_text()))?;
    let topology = settled(&state)?;
    let after = match &query.after {
        Some(hex_key) => Some(hex::decode(hex_key).map_err(|_| ApiError::BadParameter("after: hex".into()))?),
        None => None,
    };
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if query.lo > query.hi || limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadParameter(format!("lo <= hi and a limit of 1 to {MAX_PAGE}")));
    }
    if after.as_deref().is_some_and(|key| !(query.lo..=query.hi).contains(&kv_ring::hash_key(key))) {
        return Err(ApiError::BadParameter("after: a key of the arc lo..=hi".into()));
    }
    let quorum = state.coordinator.quorum();
    let replicas: Vec<String> =
        topology.ring.preference_list_at(query.hi, quorum.n).into_iter().map(|n| n.id.clone()).collect();
    if topology.ring.preference_list_at(query.lo, quorum.n).iter().map(|n| &n.id).ne(replicas.iter()) {
        return Err(ApiError::BadParameter("lo..=hi is not one arc of the ring (GET /admin/backup/ranges)".into()));
    }
    let transport = state.transport.as_ref().ok_or(ApiError::NotReady)?;
    let request = ScanRequest { first_hash: query.lo, last_hash: query.hi, after: after.clone(), limit };
    // Every replica at once; the first R answers make the page.
    let asked = replicas.iter().map(|id| {
        let address = topology.addresses.get(id).cloned().unwrap_or_default();
        let request = request.clone();
        async move { (id.clone(), transport.request(&address, &request).await) }
    });
    let mut pages = Vec::new();
    let mut refused = Vec::new();
    for (id, answer) in futures::future::join_all(asked).await {
        match answer {
            Ok(page) => pages.push(page),
            Err(e) => refused.push(format!("{id}: {e}")),
        }
    }
    if pages.len() < quorum.r {
        return Err(ApiError::MembersUnavailable(format!(
            "{} of the {} replicas of {:016x}..={:016x} answered, {} needed: {}",
            pages.len(),
            replicas.len(),
            query.lo,
            query.hi,
            quorum.r,
            refused.join("; ")
        )));
    }
    let page = merge_pages(pages.into_iter().map(|p| (p.entries, p.done)).collect());
    Ok(([(CONTENT_TYPE, "application/octet-stream")], kv_proto::encode(&page)).into_response())
}

/// The page several replicas' pages of the same arc make: every record up to the first key at
/// which one of them stopped (a replica that has more may hold keys the others lack past it),
/// each key's versions merged.
fn merge_pages(pages: Vec<(Vec<Entry>, bool)>) -> BackupPage {
    let position = |key: &[u8]| (kv_ring::hash_key(key), key.to_vec());
    // Where the page must end: the smallest last key of a page that is not the arc's end.
    let bound = pages
        .iter()
        .filter(|(entries, done)| !done && !entries.is_empty())
        .filter_map(|(entries, _)| entries.last().map(|(k, _)| position(k)))
        .min();
    let mut merged: BTreeMap<(u64, Vec<u8>), Record> = BTreeMap::new();
    for (entries, _) in pages {
        for (key, versions) in entries {
            let at = position(&key);
            if bound.as_ref().is_some_and(|b| at > *b) {
                continue;
            }
            merged.entry(at).or_default().merge(versions);
        }
    }
    let next = bound.map(|(_, key)| key);
    let entries: Vec<Entry> = merged.into_iter().map(|((_, key), record)| (key, record.into_versions())).collect();
    BackupPage { entries, next }
}

/// `POST /admin/restore/begin`: `200 {"ticket", "into_non_empty", "valid_for_s"}` once every
/// member said it holds no record (or `into_non_empty`); `409` if one does, `503` if one does
/// not answer or this node's clock is fenced.
pub async fn begin(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<BeginQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadParameter(e.body_text()))?;
    settled(&state)?;
    if state.membership.clock_fenced() {
        return Err(ApiError::MembersUnavailable(
            "this node's clock is off from the cluster's: a ticket is stamped with it; ask another process".into(),
        ));
    }
    let into_non_empty = query.into_non_empty.unwrap_or(false);
    if !into_non_empty {
        let (members, loads) = crate::cluster::member_loads(&state).await;
        for (member, load) in members.iter().zip(loads) {
            match load {
                Ok(load) if !load.holds_records => {}
                Ok(_) => {
                    return Err(ApiError::Conflict(format!(
                        "{} holds records: a restore merges the backup into what is there, and a value deleted \
                         after the backup whose tombstone was since purged would come back. Restore into an empty \
                         cluster, or begin with into_non_empty=true (kvctl restore --into-non-empty) to merge anyway",
                        member.id
                    )))
                }
                Err(e) => {
                    return Err(ApiError::MembersUnavailable(format!(
                        "{} did not say whether it holds records ({e}): restore once every member answers",
                        member.id
                    )))
                }
            }
        }
    }
    let ticket = RestoreTicket::issue(&state, into_non_empty);
    Ok(Json(json!({
        "ticket": ticket.seal(&state.contexts),
        "into_non_empty": into_non_empty,
        "valid_for_s": (ticket.expires_ms - ticket.issued_ms) / 1000,
    })))
}

/// `POST /admin/restore`: merges a postcard list of records into every replica of each key
/// (store-batch); `200 {"keys": k}` once W replicas of every key hold them. It carries a
/// ticket from [`begin`].
pub async fn restore(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<RestoreQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadParameter(e.body_text()))?;
    let ticket = query.ticket.as_deref().ok_or_else(|| {
        ApiError::BadParameter(
            "a restore batch carries a ticket (?ticket=): get one with POST /admin/restore/begin (kvctl restore \
             does)"
                .into(),
        )
    })?;
    let ticket = RestoreTicket::open(&state.contexts, ticket)?;
    let grace = state.coordinator.tombstone_grace().as_millis() as u64;
    let cluster_now = ticket::cluster_now(&state);
    ticket.check(
        cluster_now,
        ticket::members_digest(&state),
        grace,
        state.coordinator.max_clock_skew().as_millis() as u64,
    )?;
    let entries: Vec<Entry> = kv_proto::decode(&body)
        .map_err(|e| ApiError::BadRequest(format!("a restore body is postcard records: {e}")))?;
    let topology = settled(&state)?;
    let quorum = state.coordinator.quorum();
    if let Some((key, _)) = entries.iter().find(|(key, _)| key.is_empty() || key.len() > crate::api::MAX_KEY_BYTES) {
        return Err(ApiError::BadKey(format!(
            "a restored key is 1 to {} bytes, got {}",
            crate::api::MAX_KEY_BYTES,
            key.len()
        )));
    }
    // A version from the future would look young for ever: hand-offs and hints would deliver it
    // again after its key was purged (rule 13 bounds written_at by the clock offset).
    let now = kv_coordinator::now_ms();
    let limit = now + state.coordinator.max_clock_skew().as_millis() as u64;
    if let Some((key, _)) = entries.iter().find(|(_, versions)| versions.iter().any(|v| v.written_at > limit)) {
        return Err(ApiError::BadRequest(format!(
            "a restored version of {:?} was written in the future (written_at past this process's clock plus \
             --max-clock-offset): not a backup of a cluster whose clocks agreed with this one's",
            String::from_utf8_lossy(key)
        )));
    }
    let keys = entries.len();
    // Applied within one replica timeout of now, or not at all (as anti-entropy's store-batches):
    // a batch stalled on its way must not land after the tombstone collector's second look.
    // ... and never after the ticket expires (in this process's clock; the replicas judge it).
    let offset = state.membership.clock_offset_ms();
    let deadline_ms = (now + state.coordinator.replica_timeout().as_millis() as u64)
        .min(ticket.good_until(grace).saturating_add_signed(-offset));
    // The records of each preference list, sent to all of its replicas at once.
    let mut groups: BTreeMap<Vec<String>, Vec<Entry>> = BTreeMap::new();
    for entry in entries {
        let replicas = topology.ring.preference_list(&entry.0, quorum.n).into_iter().map(|n| n.id.clone()).collect();
        groups.entry(replicas).or_default().push(entry);
    }
    let transport = state.transport.as_ref().ok_or(ApiError::NotReady)?;
    for (replicas, entries) in groups {
        let request = StoreBatchRequest { entries, begin: None, complete: None, deadline_ms };
        let sent = replicas.iter().map(|id| {
            let address = topology.addresses.get(id).cloned().unwrap_or_default();
            let request = &request;
            async move { (id, transport.request(&address, request).await) }
        });
        let answers = futures::future::join_all(sent).await;
        let acks = answers.iter().filter(|(_, a)| a.is_ok()).count();
        if acks < quorum.w {
            let failures: Vec<String> =
                answers.iter().filter_map(|(id, a)| a.as_ref().err().map(|e| format!("{id}: {e}"))).collect();
            return Err(ApiError::MembersUnavailable(format!(
                "{acks} of {} replicas stored a restore batch, {} needed: {}",
                replicas.len(),
                quorum.w,
                failures.join("; ")
            )));
        }
    }
    Ok(Json(json!({ "keys": keys })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_types::Version;
    use kv_vclock::{Dot, VClock};

    fn version(node: &str, counter: u64, value: &str) -> Version {
        Version {
            dot: Dot { node: node.into(), counter, timestamp: 0 },
            context: VClock::new(),
            value: value.as_bytes().to_vec().into(),
            content_type: "text/plain".into(),
            tombstone: false,
            written_at: 0,
            write_id: 0,
        }
    }

    /// A page stops at the first key one replica stopped at; versions of one key held by two
    /// replicas are merged, concurrent ones kept as siblings.
    #[test]
    fn pages_of_replicas_merge_up_to_the_first_stop() {
        let mut keys: Vec<Vec<u8>> = (0..6).map(|i| format!("k{i}").into_bytes()).collect();
        keys.sort_by_key(|k| (kv_ring::hash_key(k), k.clone()));
        let entry = |i: usize, v: Version| (keys[i].clone(), vec![v]);
        // Replica a: keys 0..4, stopped (its page was full); replica b: keys 0, 1, 4, 5, done.
        let a = vec![
            entry(0, version("a", 1, "x")),
            entry(1, version("a", 2, "y")),
            entry(2, version("a", 3, "z")),
            entry(3, version("a", 4, "w")),
        ];
        let b = vec![
            entry(0, version("b", 1, "x2")),
            entry(1, version("a", 2, "y")),
            entry(4, version("b", 2, "u")),
            entry(5, version("b", 3, "v")),
        ];
        let page = merge_pages(vec![(a, false), (b, true)]);
        let got: Vec<&[u8]> = page.entries.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            got,
            keys[..4].iter().map(Vec::as_slice).collect::<Vec<_>>(),
            "up to a's last key, b's beyond it left"
        );
        assert_eq!(page.next.as_deref(), Some(keys[3].as_slice()));
        assert_eq!(page.entries[0].1.len(), 2, "concurrent versions of key 0 are siblings");
        assert_eq!(page.entries[1].1.len(), 1, "the same version from both replicas is one");
        // Both done: everything, and no next page.
        let done = merge_pages(vec![(vec![entry(5, version("b", 3, "v"))], true), (Vec::new(), true)]);
        assert_eq!((done.entries.len(), done.next), (1, None));
    }
}
