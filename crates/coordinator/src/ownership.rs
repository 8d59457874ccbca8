//! Ownership: which ranges this node serves, which it is filling, and which it is dropping.
//!
//! The replica's view ([`ReplicaView`]) says which key ranges this node holds: those whose N
//! replicas include it in the current ring or in the ring once the moves in progress complete.
//! [`Ownership`] rebuilds it whenever membership publishes a new topology, and keeps the state
//! that topology alone cannot give, recorded in the store so that it survives a restart:
//!
//! - **Dropping.** A range this node stops owning joins the dropping set, with the time, at the
//!   moment its view changes (and at start-up, everything it does not own does, since it cannot
//!   know what it owned before a crash). Dropping ranges are refused for every call, even once
//!   owned again, until the node's dropper has handed their keys to the current owners
//!   ([`crate::plan::drop_targets`]) and removed them. So a node never merges a stale copy of a
//!   range it lost into the range it regains: a purged delete cannot come back from a former
//!   owner, and an old value cannot reappear beside a newer one. A range dropping for longer
//!   than the tombstone grace period is removed without being handed off
//!   ([`Dropping::stale`]): its copies are older than any tombstone purged since.
//! - **Filling.** A range this node gains in the current ring, by any change (a removal, a
//!   member rejoining on a wiped disk, a leave it was not handed), joins the filling set: it
//!   accepts writes for it at once but serves no read, scan or purge and coordinates nothing
//!   there until it has merged the range from enough of its other owners
//!   ([`crate::plan::copies_needed`]), and the node's filler calls [`Ownership::filled`]. A
//!   coordinator must hold every version of its own actor the key has anywhere, which only a
//!   complete copy guarantees; and a read must not answer from a copy that lacks what a quorum
//!   acknowledged.
//! - **Pre-filled.** What a join pulled, or a leaving node handed off in full, before the ring
//!   gives it to this node ([`Ownership::prefill`]): gained later, it is complete at once. A
//!   pre-filled range this node stops accepting is forgotten.
//!
//! See "Ranges move safely" in docs/consistency.md.

use std::sync::Arc;

use crate::replica::{ReplicaCore, ReplicaView};
use crate::Topology;
use kv_ring::Intervals;
use parking_lot::Mutex;

/// Name of the metadata entry holding the ownership record.
const OWNERSHIP_META: &str = "own";

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

/// What is recorded in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    /// Oldest first.
    dropping: Vec<Dropping>,
    filling: Vec<(u64, u64)>,
    prefilled: Vec<(u64, u64)>,
    /// What the last view accepted (owned now or later) and owned now: what the next view is
    /// compared with, after a restart too. `None` before the first view of this store.
    last: Option<(Spans, Spans)>,
}

/// Intervals as recorded.
type Spans = Vec<(u64, u64)>;

struct State {
    record: Record,
    signature: Option<Signature>,
}

fn union(dropping: &[Dropping]) -> Intervals {
    Intervals::from_spans(dropping.iter().map(|d| (d.lo, d.hi)))
}

/// The node's ownership view and its dropping, filling and pre-filled ranges.
pub struct Ownership {
    me: String,
    replicas: usize,
    core: Arc<ReplicaCore>,
    state: Mutex<State>,
    dropping_gauge: prometheus::IntGauge,
    /// Bumped whenever the record changes: what the filler and dropper wait on.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Ownership {
    /// Loads the record kept in the store.
    pub fn open(
        me: &str,
        replicas: usize,
        core: Arc<ReplicaCore>,
        dropping_gauge: prometheus::IntGauge,
    ) -> Result<Ownership, String> {
        let record = match core.engine().get_meta(OWNERSHIP_META).map_err(|e| e.to_string())? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| format!("recorded ownership: {e}"))?,
            None => Record::default(),
        };
        Ok(Ownership {
            me: me.to_owned(),
            replicas,
            core,
            state: Mutex::new(State { record, signature: None }),
            dropping_gauge,
            changes: tokio::sync::watch::channel(0).0,
        })
    }

    /// Rebuilds the view from `topology` at wall-clock `now_ms`. Ranges it no longer accepts
    /// join the dropping set; ranges it newly owns now (and did not get pre-filled) join the
    /// filling set; both are recorded before the new view is used (an fsync when they change).
    pub fn update(&self, topology: &Topology, now_ms: u64) -> Result<(), String> {
        let normal = topology.ring.node(&self.me).is_some() && !topology.leaving.contains(&self.me);
        let ids = |ring: &kv_ring::Ring| ring.nodes().iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let signature = (ids(&topology.ring), topology.pending.as_ref().map(ids), normal);
        let mut state = self.state.lock();
        if state.signature.as_ref() == Some(&signature) {
            return Ok(());
        }
        let now = topology.ring.owned(&self.me, self.replicas);
        let later = topology.pending.as_ref().map(|p| p.owned(&self.me, self.replicas)).unwrap_or_default();
        let accepted = now.union(&later);
        let (lost, gained) = match &state.record.last {
            Some((accepted_before, now_before)) => (
                Intervals::from_spans(accepted_before.iter().copied()).difference(&accepted),
                now.difference(&Intervals::from_spans(now_before.iter().copied())),
            ),
            // The first view of this store: nothing it held before can be trusted to be a
            // range it still owns, and nothing gained can be missing (it held nothing).
            None => (accepted.complement(), Intervals::new()),
        };
        let mut record = state.record.clone();
        record.last = Some((accepted.spans().to_vec(), now.spans().to_vec()));
        let new_loss = lost.difference(&union(&record.dropping));
        record.dropping.extend(new_loss.spans().iter().map(|&(lo, hi)| Dropping { lo, hi, since_ms: now_ms }));
        let prefilled = Intervals::from_spans(record.prefilled.iter().copied());
        let filling = Intervals::from_spans(record.filling.iter().copied())
            .union(&gained.difference(&prefilled))
            .difference(&lost);
        record.filling = filling.spans().to_vec();
        record.prefilled = prefilled.difference(&gained).difference(&lost).spans().to_vec();
        if record != state.record {
            self.record(&record)?;
            self.changes.send_modify(|v| *v += 1);
        }
        let dropping = union(&record.dropping);
        self.core.set_view(ReplicaView::from_sets(&now, &later, normal, &dropping, &filling));
        self.dropping_gauge.set(record.dropping.len() as i64);
        state.record = record;
        state.signature = Some(signature);
        Ok(())
    }

    /// Notified whenever the dropping, filling or pre-filled ranges change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The ranges being dropped, oldest first.
    pub fn dropping(&self) -> Vec<Dropping> {
        self.state.lock().record.dropping.clone()
    }

    /// The ranges being filled.
    pub fn filling(&self) -> Intervals {
        Intervals::from_spans(self.state.lock().record.filling.iter().copied())
    }

    /// `done` (entries of [`Ownership::dropping`]) were handed off or discarded and removed: they
    /// leave the dropping set (and, if owned again, are filled and then served). Blocks on an
    /// fsync.
    pub fn dropped(&self, done: &[Dropping], topology: &Topology, now_ms: u64) -> Result<(), String> {
        self.change(topology, now_ms, |record| record.dropping.retain(|d| !done.contains(d)))
    }

    /// `done` was merged from enough owners: it is complete and served. Blocks on an fsync.
    pub fn filled(&self, done: &Intervals, topology: &Topology, now_ms: u64) -> Result<(), String> {
        self.change(topology, now_ms, |record| {
            record.filling = Intervals::from_spans(record.filling.iter().copied()).difference(done).spans().to_vec();
        })
    }

    /// `ranges` were merged from enough owners (a join's pull) or handed over in full (a leaving
    /// node's push) before this node owns them: when it gains them, they are complete. Only
    /// what it accepts now counts. Blocks on an fsync.
    pub fn prefill(&self, ranges: &Intervals, topology: &Topology, now_ms: u64) -> Result<(), String> {
        let accepted = self.state.lock().record.last.as_ref().map(|(a, _)| Intervals::from_spans(a.iter().copied()));
        let accepted = accepted.unwrap_or_default();
        let ranges = ranges.intersection(&accepted);
        self.change(topology, now_ms, |record| {
            record.prefilled = Intervals::from_spans(record.prefilled.iter().copied()).union(&ranges).spans().to_vec();
        })
    }

    fn change(&self, topology: &Topology, now_ms: u64, edit: impl FnOnce(&mut Record)) -> Result<(), String> {
        let mut state = self.state.lock();
        let mut record = state.record.clone();
        edit(&mut record);
        self.record(&record)?;
        state.record = record;
        state.signature = None;
        drop(state);
        self.update(topology, now_ms)
    }

    fn record(&self, record: &Record) -> Result<(), String> {
        let bytes = postcard::to_stdvec(record).map_err(|e| e.to_string())?;
        self.core.engine().put_meta(OWNERSHIP_META, &bytes).map_err(|e| format!("cannot record ownership: {e}"))
    }
}
