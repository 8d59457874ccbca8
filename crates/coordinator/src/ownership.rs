//! Ownership: which ranges this node serves, and which it is dropping.
//!
//! The replica's view ([`ReplicaView`]) says which key ranges this node holds: those whose N
//! replicas include it in the current ring or in the ring once the moves in progress complete.
//! [`Ownership`] rebuilds it whenever membership publishes a new topology, and keeps the one
//! piece of state that topology alone cannot give: the ranges it is **dropping**.
//!
//! A range this node stops owning is added to the dropping set, durably, at the moment its view
//! changes (and at start-up, everything it does not own is, since it cannot know what it owned
//! before a crash). Dropping ranges are refused for every call, even once owned again, until
//! the node's dropper has handed their keys to the current owners ([`crate::plan::drop_targets`])
//! and removed them. So a node never merges a stale copy of a range it lost into the range it regains: a
//! purged delete cannot come back from a former owner, and an old value cannot reappear beside
//! a newer one ("Ranges move safely" in docs/consistency.md).

use std::sync::Arc;

use crate::replica::{ReplicaCore, ReplicaView};
use crate::Topology;
use kv_ring::Intervals;
use parking_lot::Mutex;

/// Name of the metadata entry holding the dropping set.
const DROPPING_META: &str = "drop";

/// What decides the view: members of the two rings, and whether we are normal.
type Signature = (Vec<String>, Option<Vec<String>>, bool);

/// A range being dropped, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dropping {
    /// First key hash.
    pub lo: u64,
    /// Last key hash.
    pub hi: u64,
    /// Wall-clock ms when this node stopped owning it.
    pub since_ms: u64,
}

impl Dropping {
    /// Whether the range has been dropping longer than `grace_ms` at `now_ms`: its keys are
    /// removed without being handed off.
    pub fn stale(&self, now_ms: u64, grace_ms: u64) -> bool {
        now_ms.saturating_sub(self.since_ms) > grace_ms
    }
}

struct State {
    /// What the last view owned; `None` before the first.
    owned: Option<Intervals>,
    /// Oldest first.
    dropping: Vec<Dropping>,
    signature: Option<Signature>,
}

fn union(dropping: &[Dropping]) -> Intervals {
    Intervals::from_spans(dropping.iter().map(|d| (d.lo, d.hi)))
}

/// The node's ownership view and dropping set.
pub struct Ownership {
    me: String,
    replicas: usize,
    core: Arc<ReplicaCore>,
    state: Mutex<State>,
    dropping_gauge: prometheus::IntGauge,
}

impl Ownership {
    /// Loads the dropping set recorded in the store.
    pub fn open(
        me: &str,
        replicas: usize,
        core: Arc<ReplicaCore>,
        dropping_gauge: prometheus::IntGauge,
    ) -> Result<Ownership, String> {
        let dropping: Vec<Dropping> = match core.engine().get_meta(DROPPING_META).map_err(|e| e.to_string())? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| format!("recorded dropping ranges: {e}"))?,
            None => Vec::new(),
        };
        Ok(Ownership {
            me: me.to_owned(),
            replicas,
            core,
            state: Mutex::new(State { owned: None, dropping, signature: None }),
            dropping_gauge,
        })
    }

    /// Rebuilds the view from `topology` at wall-clock `now_ms`. Ranges it no longer owns join
    /// the dropping set, which is recorded before the new view is used. Blocks on an fsync when
    /// the set grows.
    pub fn update(&self, topology: &Topology, now_ms: u64) -> Result<(), String> {
        let normal = topology.ring.node(&self.me).is_some() && !topology.leaving.contains(&self.me);
        let ids = |ring: &kv_ring::Ring| ring.nodes().iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let signature = (ids(&topology.ring), topology.pending.as_ref().map(ids), normal);
        let mut state = self.state.lock();
        if state.signature.as_ref() == Some(&signature) {
            return Ok(());
        }
        let view = |dropping: Intervals| {
            ReplicaView::new(&self.me, self.replicas, &topology.ring, topology.pending.as_ref(), normal, dropping)
        };
        let owned = view(Intervals::new()).owned().clone();
        let lost = match &state.owned {
            Some(before) => before.difference(&owned),
            None => owned.complement(),
        };
        let mut dropping = state.dropping.clone();
        // Only what no entry covers yet is new: an old entry keeps its age.
        let new = lost.difference(&union(&dropping));
        dropping.extend(new.spans().iter().map(|&(lo, hi)| Dropping { lo, hi, since_ms: now_ms }));
        if dropping != state.dropping {
            self.record(&dropping)?;
        }
        let spans = union(&dropping);
        self.core.set_view(view(spans));
        self.dropping_gauge.set(dropping.len() as i64);
        state.owned = Some(owned);
        state.dropping = dropping;
        state.signature = Some(signature);
        Ok(())
    }

    /// The ranges being dropped, oldest first.
    pub fn dropping(&self) -> Vec<Dropping> {
        self.state.lock().dropping.clone()
    }

    /// `done` (entries of [`Ownership::dropping`]) were handed off or discarded and removed: they
    /// leave the dropping set (and, if owned again, are served from now on). Blocks on an fsync.
    pub fn dropped(&self, done: &[Dropping], topology: &Topology, now_ms: u64) -> Result<(), String> {
        let mut state = self.state.lock();
        let dropping: Vec<Dropping> = state.dropping.iter().filter(|d| !done.contains(d)).copied().collect();
        self.record(&dropping)?;
        state.dropping = dropping;
        state.signature = None;
        drop(state);
        self.update(topology, now_ms)
    }

    fn record(&self, dropping: &[Dropping]) -> Result<(), String> {
        let bytes = postcard::to_stdvec(dropping).map_err(|e| e.to_string())?;
        self.core.engine().put_meta(DROPPING_META, &bytes).map_err(|e| format!("cannot record dropping ranges: {e}"))
    }
}
