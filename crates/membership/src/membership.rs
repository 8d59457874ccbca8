//! [`Membership`] and [`GossipDriver`]; see the crate documentation.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};

use crate::contact::Contact;
use kv_coordinator::{ReplicaError, Topology};
use kv_gossip::{Digest, Gossip, MemberState, MemberView, Rng, Status};
use kv_proto::Refusal;
use kv_ring::{Node, Ring};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use kv_transport::PeerTransport;
use kv_worker::{Worker, WorkerState};

use crate::clock::ClockOffsets;
use crate::metrics::MembershipMetrics;
use crate::validate_node_id;

/// Largest member list accepted from a peer; bounds what a confused or hostile peer can make
/// us hold.
pub const MAX_MEMBERS: usize = 1024;

/// Largest removed set accepted from a peer.
pub const MAX_REMOVED: usize = 16 * 1024;

/// A member as `/cluster/members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Node id.
    pub id: String,
    /// `host:port` of its API.
    pub address: String,
    /// Failure domain.
    pub zone: String,
    /// Relative capacity.
    pub weight: u32,
    /// `joining`, `normal`, `leaving`, `left`, `removed`, or `down` (confirmed by two observers).
    pub status: String,
    /// Its gossip status, whatever its liveness.
    pub gossip_status: String,
    /// Heartbeat counter of its current generation.
    pub heartbeat: u64,
    /// Storage incarnation (hex): a wiped disk is a new incarnation.
    pub incarnation: String,
    /// Its store's dot counter lease (every counter it issued is below it; 0 if unknown).
    #[serde(default)]
    pub lease: u64,
    /// Grows at every start.
    pub generation: u64,
    /// This observer suspects it.
    pub suspected: bool,
    /// Milliseconds since its heartbeat last rose, as seen here (`None` for ourselves).
    pub last_seen_ms_ago: Option<u64>,
    /// The release it runs (`0.2.0`); empty for a release before 0.2.0, which does not say.
    #[serde(default)]
    pub release: String,
    /// The newest peer protocol it speaks (6 for a release before 0.2.0, which does not say).
    #[serde(default)]
    pub protocol: u32,
}

/// Body of `GET /cluster/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberList {
    /// Members, sorted by id.
    pub members: Vec<MemberInfo>,
}

/// Checks a recorded digest.
fn validate_digest(digest: &Digest) -> Result<(), String> {
    for state in &digest.states {
        validate_state(state)?;
    }
    for (id, _) in &digest.removed {
        validate_node_id(id)?;
    }
    Ok(())
}

/// Checks a member state received from a peer or read from disk.
pub fn validate_state(state: &MemberState) -> Result<(), String> {
    validate_node_id(&state.id)?;
    validate_node_id(&state.zone).map_err(|e| format!("zone of {}: {e}", state.id))?;
    if !(1..=100).contains(&state.weight) {
        return Err(format!("weight of {} must be 1 to 100", state.id));
    }
    if state.address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
        return Err(format!("address of {} is not HOST:PORT", state.id));
    }
    if state.suspects.len() > MAX_MEMBERS {
        return Err(format!("{} reports too many suspects", state.id));
    }
    let version_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+');
    if state.release.len() > 64 || !state.release.chars().all(version_char) {
        return Err(format!("release of {} is not a version (at most 64 of [0-9A-Za-z.+-])", state.id));
    }
    Ok(())
}

/// What makes two topologies differ: members with their placement-relevant fields, and who is
/// down.
type Signature = (Vec<(String, String, String, u32, Status)>, Vec<String>);

/// `members.json`: member states and the removed set. (Files from before the removed set are a
/// bare list of states.)
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Recorded {
    Digest { states: Vec<MemberState>, removed: Vec<(String, u64)> },
    States(Vec<MemberState>),
}

/// The gossip view and the topology built from it.
pub struct Membership {
    gossip: Mutex<Gossip>,
    topology: watch::Sender<Arc<Topology>>,
    signature: Mutex<Signature>,
    state_file: Option<PathBuf>,
    started: Instant,
    metrics: Option<MembershipMetrics>,
    /// Held while the ring's gauges are set: two refreshes at once interleaved their resets and
    /// sets (ownership shares summing to 1.34: an older ring's shares over a newer one's).
    ring_metrics: Mutex<()>,
    /// Normal members needed at once before clients are served.
    expect_nodes: usize,
    /// Latched once `expect_nodes` normal members were seen.
    formed: std::sync::atomic::AtomicBool,
    /// Cancelled when this node learns that it was removed, or that its store is an old copy.
    stop: CancellationToken,
    /// Reads our store's counter lease, published every round ([`Membership::publish_lease`]).
    lease: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
    /// News of other members, and freezes of this process ([`crate::contact`]).
    contact: Arc<Contact>,
    /// What confirms our membership after a freeze or a gap in contact ([`Membership::confirm`]).
    confirmation: std::sync::OnceLock<Confirmation>,
    /// One confirmation at a time; holds when the last one failed (ms), so that a burst of
    /// requests after a gap waits for one exchange, not one each.
    confirming: tokio::sync::Mutex<Option<u64>>,
    /// Set when a peer refused us as no longer a member (we left or were removed): we stop.
    fenced: std::sync::OnceLock<String>,
    /// Peers' clock offsets and our clock fence ([`Membership::enable_clock`]).
    clock: std::sync::OnceLock<ClockOffsets>,
    /// Held while `members.json` is written.
    persisting: Mutex<()>,
}

/// How [`Membership::confirm`] re-confirms our membership after a gap in contact.
struct Confirmation {
    exchanger: Exchanger,
    /// Longest gap in contact after which we confirm before answering, ms.
    after_ms: u64,
    /// Whether a node that ran all along but hears from no other member (they are down, or a
    /// partition cut it off) serves meanwhile (`--serve-isolated`).
    serve_isolated: bool,
}

/// Why this process must not answer a request now ([`Membership::confirm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotServing {
    /// It left the cluster, was removed, or a peer refused it as no longer a member.
    NotMember(String),
    /// It was frozen (or, with `--serve-isolated=false`, heard from no other member) for
    /// longer than the contact limit, and could reach none now: it cannot tell whether it is
    /// still a member.
    NoContact(String),
    /// Its clock is off from most members' by more than the bound the safety rules need.
    ClockSkew(String),
}

impl std::fmt::Display for NotServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotServing::NotMember(m) | NotServing::NoContact(m) | NotServing::ClockSkew(m) => f.write_str(m),
        }
    }
}

/// The member states and removed set recorded in `path` (`members.json`; empty when there is
/// no such file), without changing it: a node checks its own recorded status with this before
/// [`Membership::new`] records the state it starts in.
pub fn read_recorded(path: &std::path::Path) -> Result<Digest, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Digest::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let recorded = match serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))? {
        Recorded::Digest { states, removed } => Digest { states, removed, ..Digest::default() },
        Recorded::States(states) => Digest { states, ..Digest::default() },
    };
    validate_digest(&recorded).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(recorded)
}

impl Membership {
    /// A node's membership (`local` is its own state) or an observer's (`None`), restoring the
    /// states recorded in `state_file`. Returns it and our own status as last recorded.
    pub fn new(
        local: Option<MemberState>,
        state_file: Option<PathBuf>,
        suspect_after: Duration,
        metrics: Option<MembershipMetrics>,
        expect_nodes: usize,
    ) -> Result<(Arc<Membership>, Option<MemberState>), String> {
        let recorded = match &state_file {
            Some(path) => read_recorded(path)?,
            None => Digest::default(),
        };
        let previous = local.as_ref().and_then(|me| recorded.states.iter().find(|s| s.id == me.id)).cloned();
        let mut gossip = Gossip::new(local, suspect_after.as_millis() as u64, 0);
        gossip.merge_digest(recorded, 0);
        // A cluster we saw formed stays formed across our restarts (on a wiped disk too: the
        // cluster formed, whatever became of our data).
        if previous.as_ref().is_some_and(|p| p.formed) {
            gossip.set_formed();
        }
        let membership = Membership {
            gossip: Mutex::new(gossip),
            topology: watch::channel(Arc::new(Topology::empty())).0,
            signature: Mutex::new((Vec::new(), Vec::new())),
            state_file,
            started: Instant::now(),
            metrics,
            ring_metrics: Mutex::new(()),
            expect_nodes: expect_nodes.max(1),
            formed: std::sync::atomic::AtomicBool::new(false),
            stop: CancellationToken::new(),
            lease: std::sync::OnceLock::new(),
            contact: Arc::new(Contact::new(Instant::now())),
            confirmation: std::sync::OnceLock::new(),
            confirming: tokio::sync::Mutex::new(None),
            fenced: std::sync::OnceLock::new(),
            clock: std::sync::OnceLock::new(),
            persisting: Mutex::new(()),
        };
        membership.refresh(true);
        Ok((Arc::new(membership), previous))
    }

    /// Whether this node was removed by an operator (it must stop serving).
    pub fn removed_me(&self) -> bool {
        self.gossip.lock().removed_me()
    }

    /// The larger counter lease of our own store a peer (or our recorded membership) knew, if
    /// any: our store is an older copy of itself and must not serve ([`Gossip::restored_me`]).
    pub fn restored_me(&self) -> Option<u64> {
        self.gossip.lock().restored_me()
    }

    /// Cancelled when this node learns that it was removed, or that its store is an older copy
    /// of itself: it must stop serving.
    pub fn stop_signal(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Exports peers' clock offsets in `metrics` and, with a `bound`, fences this member's
    /// clock at it from the cluster's ([`crate::clock`]). Call before the first exchange; a
    /// process given no bound (a gateway: it stamps no version) measures but is never fenced.
    pub fn enable_clock(&self, bound: Option<Duration>, metrics: Option<crate::clock::ClockMetrics>) {
        let _ = self.clock.set(ClockOffsets::new(bound, metrics));
    }

    fn clock(&self) -> &ClockOffsets {
        self.clock.get_or_init(|| ClockOffsets::new(None, None))
    }

    /// Records a measurement of peer `id`'s clock (its clock minus ours, over a round trip of
    /// `rtt_ms`).
    pub fn record_clock(&self, id: &str, offset_ms: i64, rtt_ms: u64) {
        if self.clock().record(id, offset_ms, rtt_ms) {
            if self.clock().fenced() {
                tracing::error!(
                    median_offset_ms = self.clock().median_ms(),
                    bound_ms = self.clock().bound_ms(),
                    "this node's clock is off from most members' by more than the bound the safety rules allow: it \
                     serves no client and no replica call until its clock agrees again (fix NTP)"
                );
            } else {
                tracing::warn!("this node's clock agrees with the cluster's again: serving");
            }
        }
    }

    /// The median of the offsets measured lately to the members' clocks (theirs minus ours, ms;
    /// 0 if none): what to add to this process's clock to read the cluster's.
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock().median_ms()
    }

    /// Whether this member's clock is fenced (off from most members' by more than the bound).
    pub fn clock_fenced(&self) -> bool {
        self.clock().fenced()
    }

    /// Whether `id` of storage `incarnation` is this process (a seed that names it another way).
    pub fn is_me(&self, id: &str, incarnation: u64) -> bool {
        self.gossip.lock().my_state().is_some_and(|s| s.id == id && s.incarnation == incarnation)
    }

    /// Whether the member `id` of storage `incarnation` may not act in the cluster any more: it
    /// was removed, or it left. Returns what to tell it. A member we do not know yet (a new
    /// joiner, before gossip brings it) is not refused.
    pub fn not_a_member(&self, id: &str, incarnation: u64) -> Option<&'static str> {
        let gossip = self.gossip.lock();
        if gossip.is_removed(id, incarnation) {
            return Some("removed");
        }
        match gossip.state(id) {
            Some(state) if state.incarnation == incarnation && state.status == Status::Left => Some("left"),
            Some(state) if state.incarnation == incarnation && state.status == Status::Removed => Some("removed"),
            _ => None,
        }
    }

    /// A peer refused us as no longer a member (we left or were removed while we could not
    /// hear of it: paused, partitioned): we stop serving, and the process exits.
    ///
    /// A member that left on its own is not stopped here: a peer that heard it left refuses it
    /// (as may its own peer listener, asked by its `/admin/status`), but it has handed off
    /// everything, and its rebalancer stops it once `left` has had a few gossip rounds to
    /// spread, while its own view still says `left` to `kvctl leave --wait`.
    pub fn fence(&self, reason: String) {
        if self.my_status() == Some(Status::Left) && !self.removed_me() {
            tracing::debug!(%reason, "refused as a member that left, as it did: it exits once `left` has spread");
            return;
        }
        if self.fenced.set(reason.clone()).is_ok() {
            tracing::error!(%reason, "a peer refused this node as no longer a member of the cluster: it stops serving and exits");
            self.stop.cancel();
        }
    }

    /// Why a peer refused us as no longer a member, if one did.
    pub fn fenced(&self) -> Option<String> {
        self.fenced.get().cloned()
    }

    /// Lets [`Membership::confirm`] re-confirm our membership through `exchanger` after a gap of
    /// `after` in contact with the other members, or after this process was frozen for
    /// `after` (it starts the freeze watch); `serve_isolated`: whether a node that ran all
    /// along but hears from no other member serves meanwhile (`--serve-isolated`).
    ///
    /// Fails if the freeze watch's thread cannot start.
    pub fn enable_confirmation(
        &self,
        exchanger: Exchanger,
        after: Duration,
        serve_isolated: bool,
    ) -> std::io::Result<()> {
        let confirmation = Confirmation { exchanger, after_ms: after.as_millis() as u64, serve_isolated };
        if self.confirmation.set(confirmation).is_ok() {
            self.contact.watch(after)?;
        }
        Ok(())
    }

    /// Whether this process is frozen now, and how many freezes it has seen since it started
    /// (what an operator's [`Membership::thaw`] names).
    pub fn freezes(&self) -> (bool, u64) {
        (self.frozen(), self.contact.mark())
    }

    /// An operator who saw `seen` freezes ([`Membership::freezes`]) vouches that no member was
    /// removed while this process was frozen (`POST /admin/thaw`): it serves again without the
    /// confirmation [`Membership::confirm`] waits for, which no member can give when one is
    /// down and every other was frozen at the same time (docs/consistency.md, rule 12). Its
    /// gossip answers then say it is not frozen, so the others frozen with it confirm through
    /// it. Whether it was frozen. Refused for a node that knows it is no longer a member or
    /// whose clock is fenced, and if it froze again since the operator looked: that freeze
    /// nobody vouched for.
    pub fn thaw(&self, seen: u64) -> Result<bool, NotServing> {
        self.serving_now()?;
        if self.confirmation.get().is_none() {
            return Ok(false);
        }
        let thawed = self.contact.vouched(seen).map_err(|now| {
            NotServing::NoContact(format!("this node froze again since: {now} freezes seen, not {seen}"))
        })?;
        if thawed {
            tracing::warn!(
                freezes = seen,
                "an operator vouched that no member was removed while this process was frozen: it serves again \
                 without confirming, and the members frozen with it confirm through it"
            );
        }
        Ok(thawed)
    }

    /// Whether this process was frozen and has not confirmed since (what its gossip answers
    /// say, [`Digest::frozen`]).
    pub fn frozen(&self) -> bool {
        self.confirmation.get().is_some() && self.contact.frozen()
    }

    /// Whether this process may answer a request now; called before a node answers a client or
    /// a replica call (and again before it sends a client the answer). A member that left, was
    /// removed, or was refused as no longer a member does not serve; nor does one whose clock is
    /// fenced. After this process was *frozen* for the contact limit (paused, its VM stopped,
    /// its host asleep: [`crate::contact`]) it first exchanges views with its seeds and members,
    /// and serves only once one of them answered: a node removed while it could not hear of it
    /// learns so before it answers anything, and must not hand out, or write back, data the
    /// cluster has deleted since. A node that ran all along but heard from no other member for
    /// the limit (they are down, or a partition cut it off) serves on with `--serve-isolated`
    /// (the default: the last zone up stays writable at `w=1`; its gossip rounds keep trying
    /// every member, and the first that answers, or refuses it, tells it whether it was
    /// removed), and otherwise confirms the same way. A gateway (no member state) and a member
    /// alone in its view always may.
    pub async fn confirm(&self) -> Result<(), NotServing> {
        self.serving_now()?;
        let Some(confirmation) = self.confirmation.get() else { return Ok(()) };
        if self.may_serve_unconfirmed(confirmation) {
            return Ok(());
        }
        let mut last_failure = self.confirming.lock().await;
        // Another request may have confirmed while we waited.
        if self.may_serve_unconfirmed(confirmation) {
            return Ok(());
        }
        let now = self.now_ms();
        let retry_ms = (confirmation.after_ms / 10).clamp(100, 1000);
        if !last_failure.is_some_and(|at| now.saturating_sub(at) < retry_ms) {
            tracing::info!(
                "no contact with the cluster lately, or this process was frozen: confirming membership before serving"
            );
            // An answer clears a freeze ([`Exchanger::exchange_all`]); the probe ends with
            // the first that does.
            confirmation.exchanger.probe_until_thawed(self).await;
        }
        self.serving_now()?;
        if self.may_serve_unconfirmed(confirmation) {
            *last_failure = None;
            return Ok(());
        }
        *last_failure = Some(self.now_ms());
        Err(NotServing::NoContact(format!(
            "this node {} and cannot reach another member now: it cannot confirm that it is still a member, so it \
             does not serve",
            if self.contact.frozen() {
                format!("did not run for over {} ms (paused, or its host slept)", self.contact.freeze_limit_ms())
            } else {
                format!("has heard from no other member for over {} ms", confirmation.after_ms)
            }
        )))
    }

    /// What readiness reports: [`Membership::confirm`] without its exchange (a node that must
    /// confirm first, or is fenced, is not ready, so that a load balancer sends its clients
    /// elsewhere).
    pub fn ready(&self) -> Result<(), NotServing> {
        self.serving_now()?;
        match self.confirmation.get() {
            Some(confirmation) if !self.may_serve_unconfirmed(confirmation) => Err(NotServing::NoContact(format!(
                "frozen, or no news from any other member, for over {} ms",
                confirmation.after_ms
            ))),
            _ => Ok(()),
        }
    }

    /// Whether [`Membership::confirm`] may answer without an exchange: alone in the view, or
    /// not frozen and either in contact or serving while isolated.
    fn may_serve_unconfirmed(&self, confirmation: &Confirmation) -> bool {
        // The cheap checks first: this runs before every request, and `alone` reads the view
        // under its lock.
        (!self.contact.frozen() && (confirmation.serve_isolated || self.contact.heard_within(confirmation.after_ms)))
            || self.alone()
    }

    /// [`Membership::confirm`]'s checks that need no exchange.
    fn serving_now(&self) -> Result<(), NotServing> {
        if let Some(reason) = self.fenced() {
            return Err(NotServing::NotMember(reason));
        }
        let (status, removed) = {
            let gossip = self.gossip.lock();
            (gossip.my_state().map(|s| s.status), gossip.removed_me())
        };
        if removed || matches!(status, Some(Status::Left | Status::Removed)) {
            let what = if removed { "was removed from" } else { "has left" };
            return Err(NotServing::NotMember(format!("this node {what} the cluster")));
        }
        if self.clock_fenced() {
            return Err(NotServing::ClockSkew(format!(
                "this node's clock is {} ms off from most members' (at most {} ms allowed): fix its time source",
                -self.clock().median_ms(),
                self.clock().bound_ms()
            )));
        }
        Ok(())
    }

    /// Whether we have no other member to hear from (an observer, or a member alone in its view).
    fn alone(&self) -> bool {
        let gossip = self.gossip.lock();
        let me = gossip.me().map(str::to_owned);
        me.is_none() || !gossip.states().iter().any(|s| Some(&s.id) != me.as_ref() && s.status.is_member())
    }

    /// Publishes the lease `source` reads (our store's counter lease) now and every round;
    /// `at_start` is the lease our store had recorded when this run opened it.
    pub fn publish_lease(&self, at_start: u64, source: impl Fn() -> u64 + Send + Sync + 'static) {
        let mut gossip = self.gossip.lock();
        gossip.set_lease_at_start(at_start);
        gossip.set_lease(source());
        drop(gossip);
        let _ = self.lease.set(Box::new(source));
    }

    /// Whether the cluster has formed: `--expect-nodes` normal members (or joining ones now
    /// down) were seen at once, here or by any member whose state we hold (it gossips `formed`, and records it across
    /// restarts). Once formed, always formed: a later failure, leave, removal or restart makes
    /// a degraded or smaller cluster, not a forming one. Evaluated on every change of the view
    /// ([`Membership::refresh`]), not only when a request arrives.
    pub fn formed(&self) -> Result<(), (usize, usize)> {
        use std::sync::atomic::Ordering;
        if self.formed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut gossip = self.gossip.lock();
        match self.check_formed(&mut gossip) {
            Some(normal) => Err((normal, self.expect_nodes)),
            None => Ok(()),
        }
    }

    /// Latches `formed` (and marks our own state, so it spreads) if the view shows the cluster
    /// formed; otherwise returns how many normal members it shows.
    fn check_formed(&self, gossip: &mut Gossip) -> Option<usize> {
        use std::sync::atomic::Ordering;
        // A member last seen joining and now down counts too: the state that says it became
        // normal (and saw the cluster form) may never reach us. A node that formed, served a
        // write and died before its next gossip round left the others forming, every request
        // refused, for good. A joining member that is up does not: the start-up joins run
        // before clients are served.
        let now = self.now_ms();
        let normal = gossip
            .states()
            .iter()
            .filter(|s| s.status == Status::Normal || (s.status == Status::Joining && gossip.is_down(&s.id, now)))
            .count();
        if normal < self.expect_nodes && !gossip.formed_known() {
            return Some(normal);
        }
        if gossip.my_state().is_some_and(|me| !me.formed) {
            gossip.set_formed();
            tracing::info!(normal, expected = self.expect_nodes, "the cluster has formed");
        }
        self.formed.store(true, Ordering::Release);
        None
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Receives every new topology.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.topology.subscribe()
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.borrow().clone()
    }

    /// Our own state (`None` in a gateway).
    pub fn my_state(&self) -> Option<MemberState> {
        self.gossip.lock().my_state().cloned()
    }

    /// Our own status.
    pub fn my_status(&self) -> Option<Status> {
        self.my_state().map(|s| s.status)
    }

    /// Changes our status; it spreads with the next gossip rounds.
    pub fn set_status(&self, status: Status) {
        self.gossip.lock().set_status(status);
        tracing::info!(status = status.name(), "own status changed");
        self.refresh(true);
    }

    /// Declares `id` (its current incarnation) permanently failed.
    pub fn remove(&self, id: &str) -> Result<(), String> {
        if !self.gossip.lock().remove(id) {
            return Err(format!("{id:?} is not a member, or is this node"));
        }
        tracing::warn!(id, "member removed by an operator");
        self.refresh(true);
        Ok(())
    }

    /// Whether `id` is confirmed down.
    pub fn is_down(&self, id: &str) -> bool {
        self.gossip.lock().is_down(id, self.now_ms())
    }

    /// The state of `id`.
    pub fn state(&self, id: &str) -> Option<MemberState> {
        self.gossip.lock().state(id).cloned()
    }

    /// Every member's state.
    pub fn states(&self) -> Vec<MemberState> {
        self.gossip.lock().states()
    }

    /// What a gossip message carries: every state and the removed set.
    pub fn digest(&self) -> Digest {
        self.gossip.lock().digest()
    }

    /// One round's local work: our heartbeat and suspicions; liveness may have changed.
    pub fn tick(&self) {
        let lease = self.lease.get().map(|source| source());
        let mut gossip = self.gossip.lock();
        if let Some(lease) = lease {
            gossip.set_lease(lease);
        }
        gossip.tick(self.now_ms());
        drop(gossip);
        self.refresh(false);
    }

    /// Merges a peer's digest, dropping invalid states and removals; whether it brought news of
    /// another member (contact).
    pub fn merge(&self, digest: Digest) -> bool {
        let states: Vec<MemberState> = digest
            .states
            .into_iter()
            .take(MAX_MEMBERS)
            .filter(|s| match validate_state(s) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an invalid member state from a peer");
                    false
                }
            })
            .collect();
        let removed: Vec<(String, u64)> =
            digest.removed.into_iter().take(MAX_REMOVED).filter(|(id, _)| validate_node_id(id).is_ok()).collect();
        let (was_removed, was_restored) = (self.removed_me(), self.restored_me());
        let (changed, heard) = {
            let mut gossip = self.gossip.lock();
            let before = gossip.heard_others();
            let changed = gossip.merge_digest(Digest { states, removed, ..Digest::default() }, self.now_ms());
            (changed, gossip.heard_others() > before)
        };
        // Contact is hearing news of another member (its heartbeat rises every round): an
        // exchange with ourselves, through a seed naming us another way, is not.
        if heard {
            self.contact.heard();
        }
        if changed {
            for state in self.states().iter().filter(|s| !s.status.is_member()) {
                self.clock().forget(&state.id);
            }
        }
        if !was_removed && self.removed_me() {
            tracing::error!("an operator removed this node from the cluster: it stops serving and exits");
            self.set_status(Status::Removed);
            self.stop.cancel();
        }
        if let (None, Some(lease)) = (was_restored, self.restored_me()) {
            tracing::error!(
                lease,
                "a peer knows a larger counter lease of this store than it has: the data directory is an older copy \
                 of itself (restored from a backup?); it stops serving and exits"
            );
            self.stop.cancel();
        }
        if changed {
            self.refresh(true);
        }
        heard
    }

    /// Gossip targets for this round.
    pub fn targets(&self, fanout: usize, rng: &mut Rng) -> Vec<String> {
        self.gossip.lock().targets(fanout, self.now_ms(), rng)
    }

    /// The newest peer protocol every member (every state not left or removed) speaks: a
    /// feature that needs every member upgraded turns on only when this reaches its version.
    pub fn cluster_protocol(&self) -> u32 {
        let now = self.now_ms();
        cluster_protocol(self.gossip.lock().views(now).iter().map(|v| &v.state))
    }

    /// Every member as `/cluster/members` shows it: the views the published topology was
    /// built from. A merge changes the view before it publishes the topology, so reading the
    /// view directly showed a member `normal` while requests were still routed without it (a
    /// new gateway listing three normal members answered its first write `503 not_ready`).
    pub fn members(&self) -> Vec<MemberInfo> {
        let (views, now) = self.refresh(false);
        views.into_iter().map(|view| info(view, now)).collect()
    }

    /// Rebuilds and publishes the topology if placement or liveness changed; records states
    /// when `persist` or when the topology changed. Returns the views the topology now
    /// published matches, and when they were taken.
    fn refresh(&self, persist: bool) -> (Vec<MemberView>, u64) {
        let now = self.now_ms();
        // Held until the topology is published: two refreshes racing (a gossip round and a
        // peer's exchange) must not publish an older view after a newer one.
        let mut current = self.signature.lock();
        // Formed is noticed as the view changes: a process that serves no request meanwhile
        // still learns it (and records it), so it never waits for members that left since.
        let (views, newly_formed) = {
            let mut gossip = self.gossip.lock();
            let newly_formed =
                !self.formed.load(std::sync::atomic::Ordering::Acquire) && self.check_formed(&mut gossip).is_none();
            (gossip.views(now), newly_formed)
        };
        let signature: Signature = (
            views
                .iter()
                .map(|v| {
                    let s = &v.state;
                    (s.id.clone(), s.address.clone(), s.zone.clone(), s.weight, s.status)
                })
                .collect(),
            views.iter().filter(|v| v.down).map(|v| v.state.id.clone()).collect(),
        );
        let changed = *current != signature;
        if changed {
            *current = signature;
            self.topology.send_replace(Arc::new(build_topology(&views)));
        }
        drop(current);
        if let Some(metrics) = &self.metrics {
            metrics.cluster_protocol.set(i64::from(cluster_protocol(views.iter().map(|v| &v.state))));
        }
        if changed {
            if let Some(metrics) = &self.metrics {
                // Outside the gossip lock (a walk over every range of the ring), one refresh
                // at a time, from the newest topology published (read under that turn).
                let _turn = self.ring_metrics.lock();
                let topology = self.topology.borrow().clone();
                metrics.ring(&topology);
                let mut counts: BTreeMap<&str, i64> =
                    ["joining", "normal", "leaving", "left", "removed", "down"].iter().map(|s| (*s, 0)).collect();
                for view in &views {
                    *counts.entry(if view.down { "down" } else { view.state.status.name() }).or_default() += 1;
                }
                for (status, count) in counts {
                    metrics.members.with_label_values(&[status]).set(count);
                }
            }
        }
        if changed || persist || newly_formed {
            self.persist();
        }
        (views, now)
    }

    fn persist(&self) {
        let Some(path) = &self.state_file else { return };
        // One writer at a time: two refreshes racing (a gossip round and a peer's exchange)
        // shared the temporary file, and one's rename failed or installed the other's half.
        let _writing = self.persisting.lock();
        let Digest { states, removed, .. } = self.digest();
        let text = serde_json::to_string_pretty(&Recorded::Digest { states, removed }).unwrap_or_default();
        let tmp = path.with_extension("json.tmp");
        // Write then rename, so a crash never leaves a half-written file.
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
            tracing::warn!(error = %e, path = %path.display(), "cannot record members");
        }
    }
}

fn info(view: MemberView, now: u64) -> MemberInfo {
    let s = view.state;
    MemberInfo {
        status: if view.down && s.status.is_member() { "down".into() } else { s.status.name().into() },
        gossip_status: s.status.name().into(),
        id: s.id,
        address: s.address,
        zone: s.zone,
        weight: s.weight,
        heartbeat: s.heartbeat,
        incarnation: format!("{:016x}", s.incarnation),
        lease: s.lease,
        generation: s.generation,
        suspected: view.suspected,
        last_seen_ms_ago: view.last_seen_ms.map(|t| now.saturating_sub(t)),
        release: s.release,
        protocol: s.protocol.max(kv_proto::PROTOCOL_MIN),
    }
}

/// The newest peer protocol all of `states` that are members speak (a state that does not say,
/// of a release before 0.2.0, speaks `PROTOCOL_MIN`); this release's when there is none.
fn cluster_protocol<'a>(states: impl Iterator<Item = &'a MemberState>) -> u32 {
    states
        .filter(|s| s.status.is_member())
        .map(|s| s.protocol.clamp(kv_proto::PROTOCOL_MIN, kv_proto::PROTOCOL))
        .min()
        .unwrap_or(kv_proto::PROTOCOL)
}

/// A ring of the members whose status passes `include`.
pub fn ring_of(states: impl IntoIterator<Item = MemberState>, include: impl Fn(Status) -> bool) -> Ring {
    let nodes =
        states.into_iter().filter(|s| include(s.status)).map(|s| Node { id: s.id, zone: s.zone, weight: s.weight });
    // States are validated and keyed by id: ids unique and non-empty, weights non-zero.
    Ring::new(nodes).unwrap_or_else(|_| Topology::empty().ring)
}

/// Members that own ranges now.
pub fn owns_now(status: Status) -> bool {
    matches!(status, Status::Normal | Status::Leaving)
}

/// Members that will own ranges once the moves in progress complete.
pub fn owns_later(status: Status) -> bool {
    matches!(status, Status::Normal | Status::Joining)
}

fn build_topology(views: &[MemberView]) -> Topology {
    let states = views.iter().map(|v| v.state.clone());
    let ring = ring_of(states.clone(), owns_now);
    let now: HashSet<&str> = views.iter().filter(|v| owns_now(v.state.status)).map(|v| v.state.id.as_str()).collect();
    let later: HashSet<&str> =
        views.iter().filter(|v| owns_later(v.state.status)).map(|v| v.state.id.as_str()).collect();
    let pending = (now != later).then(|| ring_of(states, owns_later));
    let addresses = views.iter().map(|v| (v.state.id.clone(), v.state.address.clone())).collect();
    let down = views.iter().filter(|v| v.down).map(|v| v.state.id.clone()).collect();
    let leaving = views.iter().filter(|v| v.state.status == Status::Leaving).map(|v| v.state.id.clone()).collect();
    Topology { ring, pending, addresses, down, leaving }
}

/// Exchanges views with peers: the gossip rounds' exchanges, the start-up probe and
/// [`Membership::confirm`]'s. Every exchange also measures the peer's clock offset. Cheap to
/// clone.
#[derive(Clone)]
pub struct Exchanger {
    seeds: Vec<String>,
    transport: PeerTransport,
}

impl Exchanger {
    /// Exchanges through `transport`, with `seeds` as the way in.
    pub fn new(seeds: Vec<String>, transport: PeerTransport) -> Exchanger {
        Exchanger { seeds, transport }
    }

    /// Exchanges digests with `targets` at once and merges each answer into `membership` as it
    /// comes; returns how many answered. An answer clears a freeze of this process
    /// ([`Contact::answered`](crate::contact::Contact::answered)) if it comes from a member that
    /// was not frozen itself, or once every member answered (all of them frozen, say after a
    /// host that runs them all slept: nothing happened in the cluster that none of them knows,
    /// and all they know is merged). A node refuses an exchange with itself, so its own answer
    /// through a seed that names it another way never counts. With `until_thawed`, returns as
    /// soon as this process is no longer frozen.
    async fn exchange_all(&self, membership: &Membership, mut targets: Vec<String>, until_thawed: bool) -> Probe {
        let me = membership.my_state().map(|s| s.address);
        targets.retain(|t| Some(t) != me.as_ref());
        targets.sort();
        targets.dedup();
        let digest = membership.digest();
        let mark = membership.contact.mark();
        let mut exchanges: FuturesUnordered<_> = targets
            .iter()
            .map(|target| {
                let digest = &digest;
                async move { (target, self.exchange(membership, target, digest).await) }
            })
            .collect();
        let mut probe = Probe::default();
        let mut answered = HashSet::new();
        while let Some((target, result)) = exchanges.next().await {
            match result {
                Ok(digest) => {
                    let confirms = !digest.frozen;
                    if membership.merge(digest) {
                        probe.news += 1;
                    }
                    // Merged first: an answer that says this node was removed stops it.
                    if confirms {
                        membership.contact.answered(mark);
                    }
                    answered.insert(target.as_str());
                    probe.answered += 1;
                    if until_thawed && !membership.contact.frozen() {
                        return probe;
                    }
                }
                Err(ReplicaError::Refused(Refusal::Unauthenticated(message))) => {
                    tracing::warn!(%target, %message, "a peer refused this process's credentials (cluster secret)");
                    probe.unauthorized.push((target.clone(), message));
                }
                Err(e) => tracing::debug!(%target, error = %e, "gossip exchange failed"),
            }
        }
        let others: Vec<String> = membership
            .states()
            .into_iter()
            .filter(|s| s.status.is_member() && Some(&s.address) != me.as_ref())
            .map(|s| s.address)
            .collect();
        if !others.is_empty() && others.iter().all(|a| answered.contains(a.as_str())) {
            membership.contact.answered(mark);
        }
        probe
    }

    /// One exchange with every seed and every known member: a node learns whether it was
    /// removed (and the cluster's latest state), and whether the cluster accepts its
    /// credentials.
    pub async fn probe(&self, membership: &Membership) -> Probe {
        let targets = self.probe_targets(membership).await;
        self.exchange_all(membership, targets, false).await
    }

    /// [`Exchanger::probe`] that returns as soon as an answer confirmed this frozen process.
    async fn probe_until_thawed(&self, membership: &Membership) -> Probe {
        let targets = self.probe_targets(membership).await;
        self.exchange_all(membership, targets, true).await
    }

    /// Every seed and every known member.
    async fn probe_targets(&self, membership: &Membership) -> Vec<String> {
        let mut targets: Vec<String> = Vec::new();
        for seed in &self.seeds {
            targets.extend(resolve(seed).await);
        }
        targets.extend(membership.states().into_iter().filter(|s| s.status.is_member()).map(|s| s.address));
        targets
    }

    /// One exchange with `target`, measuring its clock: from its answer, or from the clock it
    /// gave when it refused our signature as too far from its own.
    async fn exchange(&self, membership: &Membership, target: &str, digest: &Digest) -> Result<Digest, ReplicaError> {
        let mut digest = digest.clone();
        let sent = kv_transport::signer::now_ms();
        digest.clock_ms = sent;
        let result = self.transport.request(target, &digest).await;
        let received = kv_transport::signer::now_ms();
        let their_clock = match &result {
            Ok(answer) => answer.clock_ms,
            Err(ReplicaError::Refused(Refusal::Unauthenticated(message))) => refusal_clock(message),
            Err(_) => 0,
        };
        if their_clock != 0 {
            let id = membership.states().into_iter().find(|s| s.address == target).map(|s| s.id);
            if let Some(id) = id {
                let midpoint = sent / 2 + received / 2;
                let offset = i64::try_from(their_clock).unwrap_or(i64::MAX) - i64::try_from(midpoint).unwrap_or(0);
                membership.record_clock(&id, offset, received.saturating_sub(sent));
            }
        }
        result
    }
}

/// The clock a peer gave in a `401` refusing our signature as too far from its own
/// (`"now_ms"` in the JSON body), or 0.
fn refusal_clock(message: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(message).ok().and_then(|v| v["now_ms"].as_u64()).unwrap_or(0)
}

/// The gossip rounds, a [`Worker`]: each unit of work is one round.
pub struct GossipDriver {
    membership: Arc<Membership>,
    seeds: Vec<String>,
    exchanger: Exchanger,
    tick: tokio::time::Interval,
    fanout: usize,
    rng: Rng,
    /// Peers that answered last round.
    answered: usize,
}

impl GossipDriver {
    /// A driver for `membership`, contacting `seeds` when it knows no live peer and now and
    /// then otherwise, every `interval`, through `transport`.
    pub fn new(
        membership: Arc<Membership>,
        seeds: Vec<String>,
        interval: Duration,
        fanout: usize,
        transport: PeerTransport,
    ) -> Self {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first round runs as the worker starts; the next one interval later, not at once.
        tick.reset();
        let exchanger = Exchanger::new(seeds.clone(), transport);
        GossipDriver { membership, seeds, exchanger, tick, fanout, rng: Rng::new(seed), answered: 0 }
    }

    /// What the driver exchanges with: for [`Membership::enable_confirmation`].
    pub fn exchanger(&self) -> Exchanger {
        self.exchanger.clone()
    }

    async fn round(&mut self) {
        self.membership.tick();
        if let Some(metrics) = &self.membership.metrics {
            metrics.gossip_rounds.inc();
        }
        let mut targets = self.membership.targets(self.fanout, &mut self.rng);
        // Seeds: always when we know no live peer; otherwise one round in five, which lets a
        // partitioned group find the rest again.
        if !self.seeds.is_empty() && (targets.is_empty() || self.rng.below(5) == 0) {
            let seed = self.seeds[self.rng.below(self.seeds.len())].clone();
            let addresses = resolve(&seed).await;
            if !addresses.is_empty() {
                targets.push(addresses[self.rng.below(addresses.len())].clone());
            }
        }
        self.answered = self.exchanger.exchange_all(&self.membership, targets, false).await.answered;
    }

    /// One exchange with every seed and every known member, before serving: a node learns
    /// whether it was removed (and the cluster's latest state) before it serves anything, and
    /// whether the cluster accepts its credentials.
    pub async fn probe(&self) -> Probe {
        self.exchanger.probe(&self.membership).await
    }
}

/// What one exchange with every seed and known member found.
#[derive(Debug, Default)]
pub struct Probe {
    /// Peers that answered.
    pub answered: usize,
    /// Answers that brought news of another member (an answer from ourselves, through a seed
    /// that names us another way, brings none).
    pub news: usize,
    /// Peers that refused this process's signature (`401`), and what they said.
    pub unauthorized: Vec<(String, String)>,
}

impl Worker for GossipDriver {
    fn name(&self) -> String {
        "gossip".into()
    }

    fn status(&self) -> String {
        format!("{} members known, {} answered last round", self.membership.states().len(), self.answered)
    }

    async fn work(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState, String> {
        self.round().await;
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}

/// Every address `seed` (`host:port`) resolves to: a DNS name with several records counts as
/// several seeds.
pub async fn resolve(seed: &str) -> Vec<String> {
    if seed.parse::<std::net::SocketAddr>().is_ok() {
        return vec![seed.to_owned()];
    }
    match tokio::net::lookup_host(seed).await {
        Ok(addresses) => addresses.map(|a| a.to_string()).collect(),
        Err(e) => {
            tracing::debug!(seed, error = %e, "cannot resolve seed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, status: Status) -> MemberState {
        MemberState {
            id: id.into(),
            address: format!("127.0.0.1:{}", 7100 + id.len()),
            zone: "z".into(),
            weight: 1,
            status,
            incarnation: 7,
            lease: 0,
            run: 1,
            generation: 1,
            heartbeat: 1,
            suspects: Vec::new(),
            formed: false,
            release: String::new(),
            protocol: 0,
        }
    }

    fn digest(states: Vec<MemberState>) -> Digest {
        Digest { states, ..Digest::default() }
    }

    /// Every member speaks v7 only once the last one of the previous release (which does not
    /// say) is upgraded; members that left or were removed do not count.
    #[test]
    fn the_cluster_protocol_is_the_oldest_any_member_speaks() {
        let speaking = |id: &str, status: Status, protocol: u32| MemberState { protocol, ..state(id, status) };
        let mixed =
            [speaking("a", Status::Normal, 7), speaking("b", Status::Normal, 0), speaking("c", Status::Joining, 7)];
        assert_eq!(cluster_protocol(mixed.iter()), kv_proto::PROTOCOL_MIN);
        let upgraded =
            [speaking("a", Status::Normal, 7), speaking("b", Status::Left, 0), speaking("c", Status::Normal, 7)];
        assert_eq!(cluster_protocol(upgraded.iter()), 7);
        assert_eq!(cluster_protocol([].iter()), kv_proto::PROTOCOL);
    }

    /// `/cluster/members` never runs ahead of the topology that routes requests: a member it
    /// lists as normal is in the ring. Here a digest lands in the view as a merge leaves it
    /// just before it publishes (the window in which a gateway listed three normal members
    /// and answered a write `503 not_ready`).
    #[test]
    fn the_members_listed_normal_are_in_the_published_ring() {
        let (gateway, _) = Membership::new(None, None, Duration::from_secs(5), None, 3).unwrap();
        let states = vec![state("n1", Status::Normal), state("n2", Status::Normal), state("n3", Status::Normal)];
        gateway.gossip.lock().merge_digest(digest(states), gateway.now_ms());
        let listed: Vec<String> =
            gateway.members().into_iter().filter(|m| m.status == "normal").map(|m| m.id).collect();
        assert_eq!(listed, ["n1", "n2", "n3"]);
        let ring: Vec<String> = gateway.topology().ring.nodes().iter().map(|n| n.id.clone()).collect();
        assert_eq!(ring, listed, "listed normal but not routed to");
    }

    #[test]
    fn a_cluster_that_formed_never_forms_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("members.json");
        let open = || {
            Membership::new(Some(state("n1", Status::Normal)), Some(file.clone()), Duration::from_secs(5), None, 3)
                .unwrap()
                .0
        };
        let n1 = open();
        assert_eq!(n1.formed(), Err((1, 3)));
        // Three normal members seen at once: formed, noticed as the view changes (no request
        // needed), and our own state says so.
        n1.merge(digest(vec![state("n2", Status::Normal), state("n3", Status::Normal)]));
        assert!(n1.formed.load(std::sync::atomic::Ordering::Acquire), "noticed without a request");
        assert!(n1.my_state().unwrap().formed);
        // Two members leave: still formed.
        let mut left = state("n3", Status::Left);
        left.heartbeat = 2;
        n1.merge(digest(vec![left]));
        assert_eq!(n1.formed(), Ok(()));
        // A restart on the same disk, seeing only itself and one other member: formed at once.
        drop(n1);
        let again = open();
        assert_eq!(again.formed(), Ok(()));

        // A process that never saw three normal members (a new gateway, a new node) learns it
        // from any member's state.
        let (gateway, _) = Membership::new(None, None, Duration::from_secs(5), None, 3).unwrap();
        let mut n2 = state("n2", Status::Normal);
        n2.formed = true;
        gateway.merge(digest(vec![n2]));
        assert_eq!(gateway.formed(), Ok(()));
    }

    /// n1 saw the cluster form, served, and died before its next gossip round: the others
    /// last heard of it joining. Once it is down they form all the same; while it is up (still
    /// joining, as at every start-up) they wait for it.
    #[test]
    fn a_member_last_seen_joining_counts_toward_forming_once_down() {
        let (n2, _) =
            Membership::new(Some(state("n2", Status::Normal)), None, Duration::from_millis(50), None, 3).unwrap();
        let mut n3 = state("n3", Status::Normal);
        n2.merge(digest(vec![state("n1", Status::Joining), n3.clone()]));
        assert_eq!(n2.formed(), Err((2, 3)), "n1 joining and up: still forming");
        // n1 goes silent; n3 keeps beating and suspects it too: n1 is down.
        std::thread::sleep(Duration::from_millis(120));
        n3.heartbeat = 2;
        n3.suspects = vec![("n1".into(), 1)];
        n2.merge(digest(vec![n3]));
        assert!(n2.is_down("n1"));
        assert_eq!(n2.formed(), Ok(()));
        // Members that left or were removed do not count.
        let (n4, _) =
            Membership::new(Some(state("n4", Status::Normal)), None, Duration::from_secs(5), None, 3).unwrap();
        n4.merge(digest(vec![state("n5", Status::Left), state("n6", Status::Removed)]));
        assert_eq!(n4.formed(), Err((1, 3)));
    }

    #[test]
    fn removed_and_left_members_are_not_members() {
        let (n1, _) =
            Membership::new(Some(state("n1", Status::Normal)), None, Duration::from_secs(5), None, 1).unwrap();
        n1.merge(digest(vec![state("n2", Status::Normal), state("n3", Status::Normal)]));
        assert_eq!(n1.not_a_member("n2", 7), None);
        assert_eq!(n1.not_a_member("n9", 7), None, "a member not known yet (a new joiner) is not refused");
        n1.remove("n2").unwrap();
        assert_eq!(n1.not_a_member("n2", 7), Some("removed"));
        assert_eq!(n1.not_a_member("n2", 8), None, "the same id on a new disk is a new member");
        let mut left = state("n3", Status::Left);
        left.heartbeat = 2;
        n1.merge(digest(vec![left]));
        assert_eq!(n1.not_a_member("n3", 7), Some("left"));
    }

    /// A peer transport with short timeouts (the tests' peers are never reachable).
    fn test_transport() -> PeerTransport {
        PeerTransport::new(
            kv_transport::TransportOptions {
                timeout: Duration::from_millis(200),
                max_in_flight: 4,
                signer: kv_transport::Signer::new(&kv_transport::Secrets::insecure()),
                local_address: None,
                tls: None,
                pool_idle: Duration::from_secs(1),
                gate: None,
                on_not_member: None,
            },
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_member_confirms_after_a_gap_and_refuses_once_it_left_or_was_fenced() {
        let (n1, _) =
            Membership::new(Some(state("n1", Status::Normal)), None, Duration::from_secs(5), None, 1).unwrap();
        // Alone in its view: nothing to confirm with.
        assert_eq!(n1.confirm().await, Ok(()));
        // A peer's view merged just now: in contact.
        n1.merge(digest(vec![state("n2", Status::Normal)]));
        assert_eq!(n1.confirm().await, Ok(()));
        // Contact older than the limit, and no peer reachable: it cannot confirm.
        let transport = test_transport();
        // (Strict: --serve-isolated=false.)
        n1.enable_confirmation(Exchanger::new(Vec::new(), transport), Duration::from_millis(50), false).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(n1.confirm().await, Err(NotServing::NoContact(_))));
        // An exchange with ourselves (a seed naming us another way) brings no news: still no
        // contact.
        n1.merge(n1.digest());
        assert!(matches!(n1.confirm().await, Err(NotServing::NoContact(_))));
        // News of another member (its heartbeat rose): serving.
        let mut newer = state("n2", Status::Normal);
        newer.heartbeat = 2;
        n1.merge(digest(vec![newer]));
        assert_eq!(n1.confirm().await, Ok(()));
        n1.fence("n2 refused this node: removed".into());
        assert!(matches!(n1.confirm().await, Err(NotServing::NotMember(_))));
        assert!(n1.stop_signal().is_cancelled());
    }

    #[tokio::test]
    async fn a_member_that_left_on_its_own_is_not_stopped_by_a_peers_refusal() {
        let (n1, _) =
            Membership::new(Some(state("n1", Status::Normal)), None, Duration::from_secs(5), None, 1).unwrap();
        n1.set_status(Status::Leaving);
        n1.set_status(Status::Left);
        n1.fence("n2 refused this node: left".into());
        assert!(!n1.stop_signal().is_cancelled(), "its rebalancer stops it once `left` has spread");
        assert_eq!(n1.fenced(), None);
        // One that is still leaving (or normal) and refused stops at once.
        let (n2, _) =
            Membership::new(Some(state("n2", Status::Normal)), None, Duration::from_secs(5), None, 1).unwrap();
        n2.set_status(Status::Leaving);
        n2.fence("n1 refused this node: left".into());
        assert!(n2.stop_signal().is_cancelled());
    }

    #[tokio::test]
    async fn a_thaw_does_not_let_a_removed_member_serve() {
        let (n1, _) =
            Membership::new(Some(state("n1", Status::Normal)), None, Duration::from_secs(5), None, 1).unwrap();
        n1.merge(digest(vec![state("n2", Status::Normal)]));
        n1.enable_confirmation(Exchanger::new(Vec::new(), test_transport()), Duration::from_millis(300), true).unwrap();
        n1.contact.freeze();
        n1.fence("n2 refused this node: removed".into());
        assert!(matches!(n1.thaw(n1.freezes().1), Err(NotServing::NotMember(_))));
        assert!(n1.frozen());
        assert!(matches!(n1.confirm().await, Err(NotServing::NotMember(_))));
    }

    #[tokio::test]
    async fn an_isolated_member_serves_on_but_a_frozen_one_confirms_first() {
        let (n1, _) =
            Membership::new(Some(state("n1", Status::Normal)), None, Duration::from_secs(5), None, 1).unwrap();
        n1.merge(digest(vec![state("n2", Status::Normal)]));
        let transport = test_transport();
        // n2 (never reachable: it has no address anyone listens on) silent for longer than
        // the limit while n1 ran: with --serve-isolated n1 serves on, and is ready.
        n1.enable_confirmation(Exchanger::new(Vec::new(), transport), Duration::from_millis(300), true).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(n1.confirm().await, Ok(()));
        assert_eq!(n1.ready(), Ok(()));
        // Frozen (paused through the limit): it must hear from a member through an exchange of
        // its own first. News merged by gossip does not count (an answer read after the pause
        // may have been sent before it); no member answers here, so it refuses.
        n1.contact.freeze();
        let mut newer = state("n2", Status::Normal);
        newer.heartbeat = 2;
        n1.merge(digest(vec![newer]));
        assert!(matches!(n1.confirm().await, Err(NotServing::NoContact(m)) if m.contains("did not run")));
        assert!(n1.ready().is_err());
        assert!(n1.frozen(), "its gossip answers say it is frozen");
        // An operator's thaw: it serves, and its answers no longer say frozen; a second thaw
        // finds nothing to clear.
        let (frozen, seen) = n1.freezes();
        assert!(frozen);
        // A freeze seen after the operator looked is not the one they vouched for.
        n1.contact.freeze();
        let again = format!("{} freezes seen, not {seen}", seen + 1);
        assert!(matches!(n1.thaw(seen), Err(NotServing::NoContact(m)) if m.contains(&again)));
        assert!(n1.frozen());
        assert_eq!(n1.thaw(seen + 1), Ok(true));
        assert!(!n1.frozen());
        assert_eq!(n1.confirm().await, Ok(()));
        assert_eq!(n1.thaw(seen + 1), Ok(false));
        // Alone in its view, there is no one to confirm with: it serves.
        let mut gone = state("n2", Status::Left);
        gone.heartbeat = 3;
        n1.merge(digest(vec![gone]));
        assert_eq!(n1.confirm().await, Ok(()));
    }
}
