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
//! the [`crate::rebalance::Dropper`] has handed their keys to the current owners and removed
//! them. So a node never merges a stale copy of a range it lost into the range it regains: a
//! purged delete cannot come back from a former owner, and an old value cannot reappear beside
//! a newer one ("Ranges move safely" in docs/consistency.md).

use std::sync::Arc;

use kv_coordinator::replica::{ReplicaCore, ReplicaView};
use kv_coordinator::Topology;
use kv_ring::Intervals;
use parking_lot::Mutex;

/// Name of the metadata entry holding the dropping set.
const DROPPING_META: &str = "drop";

/// What decides the view: members of the two rings, and whether we are normal.
type Signature = (Vec<String>, Option<Vec<String>>, bool);

struct State {
    /// What the last view owned; `None` before the first.
    owned: Option<Intervals>,
    dropping: Intervals,
    signature: Option<Signature>,
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
        let dropping = match core.engine().get_meta(DROPPING_META).map_err(|e| e.to_string())? {
            Some(bytes) => {
                let spans: Vec<(u64, u64)> =
                    postcard::from_bytes(&bytes).map_err(|e| format!("recorded dropping ranges: {e}"))?;
                Intervals::from_spans(spans)
            }
            None => Intervals::new(),
        };
        Ok(Ownership {
            me: me.to_owned(),
            replicas,
            core,
            state: Mutex::new(State { owned: None, dropping, signature: None }),
            dropping_gauge,
        })
    }

    /// Rebuilds the view from `topology`. Ranges it no longer owns join the dropping set, which
    /// is recorded before the new view is used. Blocks on an fsync when the set grows.
    pub fn update(&self, topology: &Topology) -> Result<(), String> {
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
        let dropping = state.dropping.union(&lost);
        if dropping != state.dropping {
            self.record(&dropping)?;
        }
        self.core.set_view(view(dropping.clone()));
        self.dropping_gauge.set(dropping.spans().len() as i64);
        state.owned = Some(owned);
        state.dropping = dropping;
        state.signature = Some(signature);
        Ok(())
    }

    /// The ranges being dropped.
    pub fn dropping(&self) -> Intervals {
        self.state.lock().dropping.clone()
    }

    /// `done` was handed off and removed: it leaves the dropping set (and, if owned again, is
    /// served from now on). Blocks on an fsync.
    pub fn dropped(&self, done: &Intervals, topology: &Topology) -> Result<(), String> {
        let mut state = self.state.lock();
        let dropping = state.dropping.difference(done);
        self.record(&dropping)?;
        state.dropping = dropping;
        state.signature = None;
        drop(state);
        self.update(topology)
    }

    fn record(&self, dropping: &Intervals) -> Result<(), String> {
        let bytes = postcard::to_stdvec(dropping.spans()).map_err(|e| e.to_string())?;
        self.core.engine().put_meta(DROPPING_META, &bytes).map_err(|e| format!("cannot record dropping ranges: {e}"))
    }
}
