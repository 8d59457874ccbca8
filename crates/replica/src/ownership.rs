//! Ownership: which ranges this node serves, which it is filling, and which it is dropping.
//!
//! The replica's view ([`ReplicaView`]) says which key ranges this node holds: those whose N
//! replicas include it in the current ring or in the ring once the moves in progress complete.
//! [`Ownership`] rebuilds it whenever membership publishes a new topology, and keeps the state
//! that topology alone cannot give, recorded in the store so that it survives a restart:
//!
//! - **Dropping.** A range this node stops owning joins the dropping set at the moment its
//!   view changes (and at start-up, everything it does not own does, since it cannot know what
//!   it owned before a crash). Dropping ranges are refused for every call, even once owned
//!   again, until the node's dropper has handed their keys to the current owners
//!   ([`kv_coordinator::plan::drop_targets`]) and removed them. So a node never merges a stale copy of a
//!   range it lost into the range it regains: a purged delete cannot come back from a former
//!   owner, and an old value cannot reappear beside a newer one. Only keys whose every version
//!   is younger than half the tombstone grace are handed off, whole ([`kv_coordinator::plan::hand_off`]):
//!   an older one may predate a tombstone purged since (the node may learn of the loss late,
//!   after a crash or a partition).
//! - **Filling.** A range this node gains in the current ring, by any change (a removal, a
//!   member rejoining on a wiped disk, a leave it was not handed), joins the filling set: it
//!   accepts writes for it at once but serves no read, scan or purge and coordinates nothing
//!   there until it has merged the range from enough of its other owners
//!   ([`kv_coordinator::plan::copies_needed`]), and the node's filler calls [`Ownership::filled`]. A
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
use kv_coordinator::Topology;
use kv_ring::Intervals;
use parking_lot::Mutex;

/// Name of the metadata entry holding the ownership record.
const OWNERSHIP_META: &str = "own";

/// The format of the ownership record (a `kv_storage::format` record; 0.1.0's was bare
/// postcard of the same shape).
const OWNERSHIP_FORMAT: u8 = 1;

/// What decides the view: members of the two rings, and whether we are normal.
type Signature = (Vec<String>, Option<Vec<String>>, bool);

/// What is recorded in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    dropping: Spans,
    filling: Spans,
    prefilled: Vec<(u64, u64)>,
    /// What the last view accepted (owned now or later) and owned now: what the next view is
    /// compared with, after a restart too. `None` before the first view of this store.
    last: Option<(Spans, Spans)>,
    /// Bumped whenever the node stops accepting a range (the loss epoch): a pull or hand-off
    /// that began before may have had part of what it stored dropped since, so neither it nor
    /// progress recorded under an earlier epoch counts. Recorded, so it only grows.
    losses: u64,
}

/// Intervals as recorded.
type Spans = Vec<(u64, u64)>;

struct State {
    record: Record,
    signature: Option<Signature>,
    /// The latest topology applied: what a change re-applies (never an older one a caller
    /// captured before).
    latest: Option<Topology>,
    /// Bumped whenever a range joins the filling set: a fill round that began before may have
    /// copied a range that was lost, dropped and gained again meanwhile.
    fill_epoch: u64,
    /// Hand-offs in progress to this node: range → loss epoch when the first page arrived.
    hand_offs: std::collections::HashMap<(u64, u64), u64>,
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
            Some(bytes) => kv_storage::format::decode(&bytes, OWNERSHIP_FORMAT, |r: Record| r, "recorded ownership")?,
            None => Record::default(),
        };
        Ok(Ownership {
            me: me.to_owned(),
            replicas,
            core,
            state: Mutex::new(State {
                record,
                signature: None,
                latest: None,
                fill_epoch: 0,
                hand_offs: std::collections::HashMap::new(),
            }),
            dropping_gauge,
            changes: tokio::sync::watch::channel(0).0,
        })
    }

    /// Rebuilds the view from `topology`. Ranges it no longer accepts
    /// join the dropping set; ranges it newly owns now (and did not get pre-filled) join the
    /// filling set; both are recorded before the new view is used (an fsync when they change).
    pub fn update(&self, topology: &Topology) -> Result<(), String> {
        let mut state = self.state.lock();
        self.apply(&mut state, topology)
    }

    /// [`Ownership::update`] under the state lock, which the caller holds.
    fn apply(&self, state: &mut State, topology: &Topology) -> Result<(), String> {
        let normal = topology.ring.node(&self.me).is_some() && !topology.leaving.contains(&self.me);
        let ids = |ring: &kv_ring::Ring| ring.nodes().iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let signature = (ids(&topology.ring), topology.pending.as_ref().map(ids), normal);
        state.latest = Some(topology.clone());
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
        let dropping = Intervals::from_spans(record.dropping.iter().copied()).union(&lost);
        record.dropping = dropping.spans().to_vec();
        let prefilled = Intervals::from_spans(record.prefilled.iter().copied());
        let filling_before = Intervals::from_spans(record.filling.iter().copied());
        let filling = filling_before.union(&gained.difference(&prefilled)).difference(&lost);
        if !lost.is_empty() {
            record.losses += 1;
            tracing::info!(
                spans = lost.spans().len(),
                loss_epoch = record.losses,
                "stopped accepting ranges: dropping them"
            );
        }
        if !filling.difference(&filling_before).is_empty() {
            state.fill_epoch += 1;
            tracing::info!(
                spans = filling.difference(&filling_before).spans().len(),
                "gained ranges: filling them from their other owners before serving them"
            );
        }
        record.filling = filling.spans().to_vec();
        record.prefilled = prefilled.difference(&gained).difference(&lost).spans().to_vec();
        if record != state.record {
            self.record(&record)?;
            self.changes.send_modify(|v| *v += 1);
        }
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

    /// The ranges being dropped.
    pub fn dropping(&self) -> Intervals {
        Intervals::from_spans(self.state.lock().record.dropping.iter().copied())
    }

    /// The ranges being filled.
    pub fn filling(&self) -> Intervals {
        Intervals::from_spans(self.state.lock().record.filling.iter().copied())
    }

    /// The ranges being filled and the fill epoch, to pass back to [`Ownership::filled`].
    pub fn filling_snapshot(&self) -> (Intervals, u64) {
        let state = self.state.lock();
        (Intervals::from_spans(state.record.filling.iter().copied()), state.fill_epoch)
    }

    /// The loss epoch, to pass back to [`Ownership::prefill`].
    pub fn loss_epoch(&self) -> u64 {
        self.state.lock().record.losses
    }

    /// `done` was handed off and removed: it leaves the dropping set (and, if owned again, is
    /// filled and then served). Blocks on an fsync.
    pub fn dropped(&self, done: &Intervals, topology: &Topology) -> Result<(), String> {
        self.change(topology, |_, record| {
            record.dropping = Intervals::from_spans(record.dropping.iter().copied()).difference(done).spans().to_vec();
            true
        })
        .map(|_| ())
    }

    /// `done` was merged from enough owners, in a fill round that began at `epoch`
    /// ([`Ownership::filling_snapshot`]): it is complete and served. If a range joined the
    /// filling set since (it may have been lost, dropped and gained again), nothing is marked
    /// and the next round fills again. Blocks on an fsync.
    pub fn filled(&self, done: &Intervals, epoch: u64, topology: &Topology) -> Result<bool, String> {
        self.change(topology, |state, record| {
            if state.fill_epoch != epoch {
                return false;
            }
            record.filling = Intervals::from_spans(record.filling.iter().copied()).difference(done).spans().to_vec();
            true
        })
    }

    /// `ranges` were merged from enough owners (a join's pull that began at loss epoch `epoch`,
    /// [`Ownership::loss_epoch`]) before this node owns them: when it gains them, they are
    /// complete. Only what it accepts now counts, and nothing if it stopped accepting anything
    /// since the pull began (part of what it stored may have been dropped). Blocks on an fsync.
    pub fn prefill(&self, ranges: &Intervals, epoch: u64, topology: &Topology) -> Result<bool, String> {
        self.change(topology, |_, record| {
            if record.losses != epoch {
                return false;
            }
            let accepted =
                record.last.as_ref().map(|(a, _)| Intervals::from_spans(a.iter().copied())).unwrap_or_default();
            let ranges = ranges.intersection(&accepted);
            record.prefilled = Intervals::from_spans(record.prefilled.iter().copied()).union(&ranges).spans().to_vec();
            true
        })
    }

    /// The first page of a hand-off of `range` (`lo..=hi`) to this node arrived.
    pub fn hand_off_begins(&self, range: (u64, u64)) {
        let mut state = self.state.lock();
        let epoch = state.record.losses;
        state.hand_offs.insert(range, epoch);
    }

    /// The last page of a hand-off of `range` arrived: pre-fills it if the hand-off began at the
    /// current loss epoch (nothing this node stored of it can have been dropped since).
    pub fn hand_off_complete(&self, range: (u64, u64), topology: &Topology) -> Result<bool, String> {
        let Some(epoch) = self.state.lock().hand_offs.remove(&range) else { return Ok(false) };
        self.prefill(&Intervals::from_spans([range]), epoch, topology)
    }

    /// Edits the record if `edit` (which sees the state as it is, under the same lock) says
    /// so, records it, and re-applies the latest topology (or `topology`, before the first).
    /// Returns whether it edited.
    fn change(&self, topology: &Topology, edit: impl FnOnce(&State, &mut Record) -> bool) -> Result<bool, String> {
        let mut state = self.state.lock();
        let mut record = state.record.clone();
        if !edit(&state, &mut record) {
            return Ok(false);
        }
        self.record(&record)?;
        state.record = record;
        state.signature = None;
        // Still under the lock: an update that releases it first could apply this (older)
        // topology after a newer one, leaving the view behind the ring (a normal node that
        // stores but refuses to read, until the next change).
        let latest = state.latest.clone().unwrap_or_else(|| topology.clone());
        self.apply(&mut state, &latest)?;
        Ok(true)
    }

    fn record(&self, record: &Record) -> Result<(), String> {
        let bytes = kv_storage::format::encode(OWNERSHIP_FORMAT, record);
        self.core.engine().put_meta(OWNERSHIP_META, &bytes).map_err(|e| format!("cannot record ownership: {e}"))
    }
}
