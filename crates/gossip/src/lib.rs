//! # Gossip membership and failure detection
//!
//! Dynamo §4.8: there is no central membership service. Every member keeps a view of all
//! members — id, address, zone, weight, [`Status`], its storage *incarnation*, a *generation*
//! and a *heartbeat* — and every gossip interval it bumps its own heartbeat and exchanges its
//! view with a few random peers (push-pull). A [`merge`](Gossip::merge) keeps, per member, the
//! newer state: higher generation first (a restarted process starts a new generation, so it is
//! told apart from its old self), then higher heartbeat. A member's status is changed only by
//! that member (joining → normal → leaving → left), except *removed*.
//!
//! ## Removal is permanent
//!
//! An operator removes a member: the pair (id, incarnation) joins the *removed set*, which every
//! view keeps forever and every exchange carries ([`Digest`]). A state of a removed pair is
//! *removed*, whatever its generation: a removed node restarted on its old disk (same
//! incarnation) cannot come back, and learns from any peer that it was removed
//! ([`Gossip::removed_me`]). The same id on an empty disk is a new incarnation, a new member.
//!
//! ## Failure detection
//!
//! Each member watches the heartbeats it receives (its [`FailureDetector`], inside
//! [`Gossip`]): a member whose heartbeat has not risen for `suspect_after` is *suspected*. Each
//! member publishes its suspicions in its own gossiped state, with the heartbeat it last saw.
//! A member is *down* only when at least two members (or every other live member, in a cluster
//! of two) suspect it at its latest known heartbeat: the seed's rule that a failure must be
//! confirmed by others, so one slow or partitioned observer cannot declare a node dead. A
//! suspicion is cleared as soon as a newer heartbeat arrives. Neither suspicion nor down moves
//! data: a down node keeps its ranges (temporary failures are for hinted handoff); only an
//! operator's *remove* or a graceful *leave* changes the ring.
//!
//! ## Guarantees and non-goals
//!
//! - [`merge`](Gossip::merge) is commutative, associative and idempotent per member, so views
//!   converge whatever the order and duplication of messages.
//! - Information spreads in O(log n) rounds with a constant fanout (epidemic broadcast); the
//!   simulation in this crate's tests measures it for 10 to 100 members.
//! - No I/O, no clock, no randomness of its own: time (ms) and a seeded [`Rng`] are passed in,
//!   so the simulation is deterministic.
//! - Not Byzantine-tolerant: members trust each other's states (the security issue signs them).
//!
//! # Layout
//! - [`Gossip`], [`MemberState`], [`MemberView`], [`Status`], [`Rng`] — this file.
//! - [`detector`] — [`FailureDetector`]: one observer's heartbeat timeouts.

use std::collections::{BTreeMap, BTreeSet};

pub mod detector;

pub use detector::FailureDetector;

use serde::{Deserialize, Serialize};

/// Where a member is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Status {
    /// Streaming in the ranges it will own; receives writes for them, serves no reads yet.
    Joining,
    /// Owns its ranges.
    Normal,
    /// Handing its ranges to their new owners; still serves them.
    Leaving,
    /// Left the cluster after handing off its ranges.
    Left,
    /// Declared permanently failed by an operator; its ranges are re-replicated by the others.
    Removed,
}

impl Status {
    /// Lower-case name for APIs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Status::Joining => "joining",
            Status::Normal => "normal",
            Status::Leaving => "leaving",
            Status::Left => "left",
            Status::Removed => "removed",
        }
    }

    /// Whether the member is still part of the cluster (not left or removed).
    pub fn is_member(self) -> bool {
        !matches!(self, Status::Left | Status::Removed)
    }
}

/// One member's gossiped state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// Node id.
    pub id: String,
    /// `host:port` of its API.
    pub address: String,
    /// Failure domain.
    pub zone: String,
    /// Relative capacity.
    pub weight: u32,
    /// Life-cycle status.
    pub status: Status,
    /// Storage incarnation: random, drawn when its store was created; a wiped disk is a new
    /// incarnation (and a new actor in vector clocks). 0 in states recorded before incarnations.
    #[serde(default)]
    pub incarnation: u64,
    /// Every dot counter its store has issued, or may issue, is below this (the store's recorded
    /// counter lease; it only grows). Peers keep the latest: a store restored from an old copy
    /// of its data directory starts with a smaller one and learns so ([`Gossip::restored_me`]).
    /// 0 when unknown.
    #[serde(default)]
    pub lease: u64,
    /// Random, drawn at every start of the process: tells runs of one store apart (generations
    /// can repeat when clocks step back or a data directory is restored with its generation
    /// file). 0 in states recorded before runs were named.
    #[serde(default)]
    pub run: u64,
    /// Grows every time the process starts.
    pub generation: u64,
    /// Grows every gossip round of this generation (and on every status change).
    pub heartbeat: u64,
    /// Members this member suspects, with the heartbeat of theirs it last saw.
    pub suspects: Vec<(String, u64)>,
    /// This member has seen the cluster formed (`--expect-nodes` normal members at once, joining ones now down counted, or a
    /// member that had). Set once, never cleared, kept across restarts: a cluster that formed
    /// never forms again, whatever leaves, removals and restarts follow, and a process that
    /// starts later learns it from any member's state. False in states recorded before.
    #[serde(default)]
    pub formed: bool,
    /// The release its process runs (`0.2.0`); empty for a process of a release before 0.2.0
    /// (peer protocol v6, whose states do not carry it). Operators see who is upgraded.
    #[serde(default)]
    pub release: String,
    /// The newest peer protocol its process speaks (`kv_proto::PROTOCOL`); 0 when unknown (a
    /// process of a release before 0.2.0, which speaks only v6). A feature that needs every
    /// member to speak a version turns on once every member's state says so
    /// (`kv_membership::Membership::cluster_protocol`).
    #[serde(default)]
    pub protocol: u32,
}

impl MemberState {
    fn version(&self) -> (u64, u64) {
        (self.generation, self.heartbeat)
    }

    /// Whether `self` should replace `other` in a view.
    fn supersedes(&self, other: &MemberState) -> bool {
        self.version() > other.version()
    }
}

/// What one gossip exchange carries: every member's state and the removed set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Member states, sorted by id.
    pub states: Vec<MemberState>,
    /// (id, incarnation) pairs removed by an operator.
    pub removed: Vec<(String, u64)>,
    /// The sender's wall clock when it sent this (ms since the epoch; 0: not given): the
    /// caller of an exchange estimates each peer's clock offset from the answer's, as NTP does
    /// (offset = answer's clock - midpoint of send and receipt).
    #[serde(default)]
    pub clock_ms: u64,
    /// The sender was frozen (did not run for a while) and has not confirmed since: what it
    /// knows may predate what the cluster did meanwhile, so its answer does not confirm
    /// another frozen member.
    #[serde(default)]
    pub frozen: bool,
}

impl Digest {
    /// The body of a gossip exchange in peer protocol `version` (`kv_proto::PROTOCOL_MIN` up to
    /// `kv_proto::PROTOCOL`): v6 has no `release` in member states.
    pub fn encode_as(&self, version: u32) -> Vec<u8> {
        let bytes = if version <= 6 { postcard::to_stdvec(&v6::Digest::from(self)) } else { postcard::to_stdvec(self) };
        // Serialising plain owned data into a Vec cannot fail.
        bytes.unwrap_or_default()
    }

    /// Decodes the body of a gossip exchange sent in peer protocol `version`, refusing
    /// trailing bytes.
    pub fn decode_as(bytes: &[u8], version: u32) -> Result<Digest, String> {
        fn whole<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
            let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(format!("{} trailing bytes", rest.len()))
            }
        }
        if version <= 6 {
            whole::<v6::Digest>(bytes).map(Digest::from)
        } else {
            whole(bytes)
        }
    }
}

/// The shapes of peer protocol v6 (release 0.1.0), for peers that have not upgraded: postcard
/// writes fields in order, so a state with `release` and `protocol` cannot be read by them,
/// nor theirs as one.
mod v6 {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub struct MemberState {
        id: String,
        address: String,
        zone: String,
        weight: u32,
        status: super::Status,
        incarnation: u64,
        lease: u64,
        run: u64,
        generation: u64,
        heartbeat: u64,
        suspects: Vec<(String, u64)>,
        formed: bool,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Digest {
        states: Vec<MemberState>,
        removed: Vec<(String, u64)>,
        clock_ms: u64,
        frozen: bool,
    }

    impl From<&super::Digest> for Digest {
        fn from(d: &super::Digest) -> Self {
            let states = d
                .states
                .iter()
                .map(|s| MemberState {
                    id: s.id.clone(),
                    address: s.address.clone(),
                    zone: s.zone.clone(),
                    weight: s.weight,
                    status: s.status,
                    incarnation: s.incarnation,
                    lease: s.lease,
                    run: s.run,
                    generation: s.generation,
                    heartbeat: s.heartbeat,
                    suspects: s.suspects.clone(),
                    formed: s.formed,
                })
                .collect();
            Digest { states, removed: d.removed.clone(), clock_ms: d.clock_ms, frozen: d.frozen }
        }
    }

    impl From<Digest> for super::Digest {
        fn from(d: Digest) -> Self {
            let states = d
                .states
                .into_iter()
                .map(|s| super::MemberState {
                    id: s.id,
                    address: s.address,
                    zone: s.zone,
                    weight: s.weight,
                    status: s.status,
                    incarnation: s.incarnation,
                    lease: s.lease,
                    run: s.run,
                    generation: s.generation,
                    heartbeat: s.heartbeat,
                    suspects: s.suspects,
                    formed: s.formed,
                    release: String::new(),
                    protocol: 0,
                })
                .collect();
            super::Digest { states, removed: d.removed, clock_ms: d.clock_ms, frozen: d.frozen }
        }
    }
}

/// A member as an observer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its gossiped state.
    pub state: MemberState,
    /// This observer suspects it (no heartbeat for `suspect_after`).
    pub suspected: bool,
    /// Confirmed down: suspected by enough members.
    pub down: bool,
    /// Observer's time (ms) of its last heartbeat increase; `None` for itself.
    pub last_seen_ms: Option<u64>,
}

/// A small seeded xorshift generator, so gossip target choice is deterministic in tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound.max(1) as u64) as usize
    }
}

/// One member's (or an observer's) view of the cluster.
#[derive(Debug, Clone)]
pub struct Gossip {
    me: Option<String>,
    members: BTreeMap<String, MemberState>,
    /// When each member's heartbeat last rose, and who is silent.
    detector: FailureDetector,
    /// (id, incarnation) pairs removed for good.
    removed: BTreeSet<(String, u64)>,
    /// Every counter earlier runs of our store issued is below this (`None`: not checked).
    lease_at_start: Option<u64>,
    /// A peer knew a larger counter lease of an earlier run of our store than our store had
    /// recorded (set once, never cleared).
    restored: Option<u64>,
    /// Newer states of members other than us merged so far: what tells that we hear from the
    /// cluster (an exchange with ourselves, under another address, brings none).
    heard_others: u64,
}

impl Gossip {
    /// A view owned by member `me` (`None` for an observer such as a gateway), suspecting
    /// members whose heartbeat has not risen for `suspect_after_ms`.
    pub fn new(me: Option<MemberState>, suspect_after_ms: u64, now_ms: u64) -> Gossip {
        let mut gossip = Gossip {
            me: None,
            members: BTreeMap::new(),
            detector: FailureDetector::new(suspect_after_ms),
            removed: BTreeSet::new(),
            lease_at_start: None,
            restored: None,
            heard_others: 0,
        };
        if let Some(state) = me {
            gossip.me = Some(state.id.clone());
            gossip.detector.heard(&state.id, state.version(), now_ms);
            gossip.members.insert(state.id.clone(), state);
        }
        gossip
    }

    /// This member's id (`None` for an observer).
    pub fn me(&self) -> Option<&str> {
        self.me.as_deref()
    }

    /// How many newer states of other members this view has merged: it grows while we hear
    /// from the cluster (their heartbeats rise every round).
    pub fn heard_others(&self) -> u64 {
        self.heard_others
    }

    /// This member's own state.
    pub fn my_state(&self) -> Option<&MemberState> {
        self.me.as_ref().and_then(|id| self.members.get(id))
    }

    /// Every member's state, sorted by id (what a gossip message carries).
    pub fn states(&self) -> Vec<MemberState> {
        self.members.values().cloned().collect()
    }

    /// The state of `id`.
    pub fn state(&self, id: &str) -> Option<&MemberState> {
        self.members.get(id)
    }

    /// One round's local work: bump our heartbeat and refresh our published suspicions.
    pub fn tick(&mut self, now_ms: u64) {
        let suspects: Vec<(String, u64)> = self
            .members
            .values()
            .filter(|m| Some(&m.id) != self.me.as_ref() && self.suspects(m, now_ms))
            .map(|m| (m.id.clone(), m.heartbeat))
            .collect();
        if let Some(me) = self.me.clone() {
            if let Some(state) = self.members.get_mut(&me) {
                state.heartbeat += 1;
                state.suspects = suspects;
                self.detector.heard(&me, state.version(), now_ms);
            }
        }
    }

    /// Changes our own status (bumping the heartbeat so it spreads).
    pub fn set_status(&mut self, status: Status) {
        if let Some(state) = self.me.as_ref().and_then(|me| self.members.get_mut(me)) {
            state.status = status;
            state.heartbeat += 1;
        }
    }

    /// Marks our own state as having seen the cluster formed (bumping the heartbeat the first
    /// time, so it spreads). Never undone.
    pub fn set_formed(&mut self) {
        if let Some(state) = self.me.as_ref().and_then(|me| self.members.get_mut(me)) {
            if !state.formed {
                state.formed = true;
                state.heartbeat += 1;
            }
        }
    }

    /// Whether any state in this view (ours included, any status) says the cluster formed.
    pub fn formed_known(&self) -> bool {
        self.members.values().any(|m| m.formed)
    }

    /// Records our store's counter lease (bumping the heartbeat when it grew, so it spreads).
    pub fn set_lease(&mut self, lease: u64) {
        if let Some(state) = self.me.as_ref().and_then(|me| self.members.get_mut(me)) {
            if lease > state.lease {
                state.lease = lease;
                state.heartbeat += 1;
            }
        }
    }

    /// Our store had recorded `lease` when this run opened it: every counter its earlier runs
    /// issued is below it, and no earlier run of ours can have gossiped a larger lease.
    pub fn set_lease_at_start(&mut self, lease: u64) {
        self.lease_at_start = Some(lease);
    }

    /// The larger counter lease of an earlier run of our store that a peer (or our recorded
    /// membership) knew, if one did: our store is an older copy of itself (restored from a
    /// backup or a snapshot), it forgot versions it acknowledged and counters it issued, and it
    /// must not serve.
    pub fn restored_me(&self) -> Option<u64> {
        self.restored
    }

    /// Declares `id` permanently failed: its current incarnation joins the removed set. Returns
    /// false if it is unknown or is ourselves.
    pub fn remove(&mut self, id: &str) -> bool {
        if self.me.as_deref() == Some(id) {
            return false;
        }
        match self.members.get_mut(id) {
            Some(state) => {
                state.status = Status::Removed;
                state.heartbeat += 1;
                state.suspects.clear();
                self.removed.insert((id.to_owned(), state.incarnation));
                true
            }
            None => false,
        }
    }

    /// Whether (`id`, `incarnation`) was removed.
    pub fn is_removed(&self, id: &str, incarnation: u64) -> bool {
        self.removed.contains(&(id.to_owned(), incarnation))
    }

    /// Whether this member itself was removed: it must stop serving.
    pub fn removed_me(&self) -> bool {
        self.my_state().is_some_and(|me| self.is_removed(&me.id, me.incarnation))
    }

    /// The removed set.
    pub fn removed(&self) -> Vec<(String, u64)> {
        self.removed.iter().cloned().collect()
    }

    /// What a gossip exchange sends: every state and the removed set.
    pub fn digest(&self) -> Digest {
        Digest { states: self.states(), removed: self.removed(), ..Digest::default() }
    }

    /// Merges a peer's [`Digest`]. Returns whether anything changed.
    pub fn merge_digest(&mut self, digest: Digest, now_ms: u64) -> bool {
        let removed = self.merge_removed(digest.removed);
        let states = self.merge(digest.states, now_ms);
        removed || states
    }

    /// Adds pairs to the removed set (a union: commutative, associative, idempotent) and marks
    /// the members they name removed. Returns whether anything changed.
    pub fn merge_removed(&mut self, removed: impl IntoIterator<Item = (String, u64)>) -> bool {
        let mut changed = false;
        for pair in removed {
            if self.removed.contains(&pair) {
                continue;
            }
            if let Some(state) = self.members.get_mut(&pair.0) {
                if state.incarnation == pair.1 && self.me.as_deref() != Some(pair.0.as_str()) {
                    state.status = Status::Removed;
                    state.suspects.clear();
                }
            }
            self.removed.insert(pair);
            changed = true;
        }
        changed
    }

    /// Merges states received from a peer. States about ourselves are ignored (we are the
    /// authority on our own state), except that a state of another incarnation or another run
    /// under our id with a generation at or above ours (our predecessor on a disk since wiped,
    /// or an earlier run of ours that had moved its generation) makes us move our generation
    /// past it, so that our state wins everywhere; and a state of another run
    /// (another run nonce) of our own incarnation with a larger counter lease than our store
    /// had recorded at start means our store is an older copy of itself
    /// ([`Gossip::restored_me`]). A state of a removed
    /// (id, incarnation) is taken as removed. Returns whether anything changed.
    pub fn merge(&mut self, incoming: impl IntoIterator<Item = MemberState>, now_ms: u64) -> bool {
        let mut changed = false;
        for mut state in incoming {
            if self.me.as_deref() == Some(state.id.as_str()) {
                if let Some(me) = self.me.as_ref().and_then(|id| self.members.get_mut(id)) {
                    // Another run of our store: not this one (whatever its generation, which
                    // this run moves past a wiped predecessor's).
                    let other_run = state.incarnation == me.incarnation && state.run != me.run;
                    if other_run && self.lease_at_start.is_some_and(|start| state.lease > start) {
                        self.restored = self.restored.max(Some(state.lease));
                    }
                    // Any earlier holder of our id at or above our generation (a wiped
                    // predecessor, or an earlier run of ours that moved its generation while
                    // our clock is behind) would outrank us everywhere: move past it.
                    let not_us = state.incarnation != me.incarnation || state.run != me.run;
                    if not_us && state.generation >= me.generation {
                        me.generation = state.generation + 1;
                        me.heartbeat = 0;
                        changed = true;
                    }
                }
                continue;
            }
            if self.removed.contains(&(state.id.clone(), state.incarnation)) {
                state.status = Status::Removed;
                state.suspects.clear();
            }
            let newer = match self.members.get(&state.id) {
                Some(current) => state.supersedes(current),
                None => true,
            };
            if newer {
                // A state relayed by a process of an older release lost its release field:
                // the member's own run did not change it.
                if let Some(current) = self.members.get(&state.id).filter(|c| c.run == state.run) {
                    if state.release.is_empty() {
                        state.release.clone_from(&current.release);
                    }
                    if state.protocol == 0 {
                        state.protocol = current.protocol;
                    }
                }
                self.detector.heard(&state.id, state.version(), now_ms);
                self.members.insert(state.id.clone(), state);
                self.heard_others += 1;
                changed = true;
            }
        }
        changed
    }

    fn suspects(&self, member: &MemberState, now_ms: u64) -> bool {
        if !member.status.is_member() || Some(&member.id) == self.me.as_ref() {
            return false;
        }
        self.detector.suspects(&member.id, now_ms)
    }

    /// Whether `id` is confirmed down: suspected at its latest heartbeat by at least two
    /// members (us included), or by every other live member when fewer than two remain.
    pub fn is_down(&self, id: &str, now_ms: u64) -> bool {
        let Some(member) = self.members.get(id) else { return false };
        if !member.status.is_member() {
            return false;
        }
        let mut reporters = 0;
        let mut others = 0;
        for m in self.members.values().filter(|m| m.id != id && m.status.is_member()) {
            others += 1;
            let reports = if Some(&m.id) == self.me.as_ref() {
                self.suspects(member, now_ms)
            } else {
                m.suspects.iter().any(|(s, hb)| s == id && *hb >= member.heartbeat)
            };
            if reports {
                reporters += 1;
            }
        }
        others > 0 && reporters >= others.min(2)
    }

    /// Every member as this observer sees it.
    pub fn views(&self, now_ms: u64) -> Vec<MemberView> {
        self.members
            .values()
            .map(|state| MemberView {
                suspected: self.suspects(state, now_ms),
                down: self.is_down(&state.id, now_ms),
                last_seen_ms: if Some(&state.id) == self.me.as_ref() {
                    None
                } else {
                    self.detector.last_heard(&state.id)
                },
                state: state.clone(),
            })
            .collect()
    }

    /// Addresses to gossip with this round: up to `fanout` distinct members we do not suspect
    /// (not us, not left or removed), chosen at random, plus, with probability
    /// suspected / (live + 1), one suspected member (as Cassandra does): a member that came
    /// back, or the other side of a healed partition, is heard from again without waiting for
    /// a seed.
    pub fn targets(&self, fanout: usize, now_ms: u64, rng: &mut Rng) -> Vec<String> {
        let (mut live, suspected): (Vec<&MemberState>, Vec<&MemberState>) = self
            .members
            .values()
            .filter(|m| Some(&m.id) != self.me.as_ref() && m.status.is_member())
            .partition(|m| !self.suspects(m, now_ms));
        let mut out = Vec::new();
        while out.len() < fanout && !live.is_empty() {
            let pick = live.swap_remove(rng.below(live.len()));
            out.push(pick.address.clone());
        }
        let live_count = out.len() + live.len();
        if !suspected.is_empty() && rng.below(live_count + 1) < suspected.len() {
            out.push(suspected[rng.below(suspected.len())].address.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests;
