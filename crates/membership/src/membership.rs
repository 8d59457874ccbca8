//! [`Membership`] and [`GossipDriver`]; see the crate documentation.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_coordinator::{ReplicaError, Topology};
use kv_gossip::{Digest, Gossip, MemberState, MemberView, Rng, Status};
use kv_ring::{Node, Ring};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use kv_transport::PeerTransport;
use kv_worker::{Worker, WorkerState};

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
    /// Normal members needed at once before clients are served.
    expect_nodes: usize,
    /// Latched once `expect_nodes` normal members were seen.
    formed: std::sync::atomic::AtomicBool,
    /// Cancelled when this node learns that it was removed, or that its store is an old copy.
    stop: CancellationToken,
    /// Reads our store's counter lease, published every round ([`Membership::publish_lease`]).
    lease: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
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
        let mut recorded = Digest::default();
        if let Some(path) = &state_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    recorded = match serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))? {
                        Recorded::Digest { states, removed } => Digest { states, removed },
                        Recorded::States(states) => Digest { states, removed: Vec::new() },
                    };
                    validate_digest(&recorded).map_err(|e| format!("{}: {e}", path.display()))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
        let previous = local.as_ref().and_then(|me| recorded.states.iter().find(|s| s.id == me.id)).cloned();
        let mut gossip = Gossip::new(local, suspect_after.as_millis() as u64, 0);
        gossip.merge_digest(recorded, 0);
        let membership = Membership {
            gossip: Mutex::new(gossip),
            topology: watch::channel(Arc::new(Topology::empty())).0,
            signature: Mutex::new((Vec::new(), Vec::new())),
            state_file,
            started: Instant::now(),
            metrics,
            expect_nodes: expect_nodes.max(1),
            formed: std::sync::atomic::AtomicBool::new(false),
            stop: CancellationToken::new(),
            lease: std::sync::OnceLock::new(),
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

    /// Publishes the lease `source` reads (our store's counter lease) now and every round;
    /// `at_start` is the lease our store had recorded when this run opened it.
    pub fn publish_lease(&self, at_start: u64, source: impl Fn() -> u64 + Send + Sync + 'static) {
        let mut gossip = self.gossip.lock();
        gossip.set_lease_at_start(at_start);
        gossip.set_lease(source());
        drop(gossip);
        let _ = self.lease.set(Box::new(source));
    }

    /// Whether the cluster has formed: `--expect-nodes` normal members were seen at once. Once
    /// formed, always formed (a later failure is a degraded cluster, not a forming one).
    pub fn formed(&self) -> Result<(), (usize, usize)> {
        use std::sync::atomic::Ordering;
        if self.formed.load(Ordering::Acquire) {
            return Ok(());
        }
        let normal = self.gossip.lock().states().iter().filter(|s| s.status == Status::Normal).count();
        if normal >= self.expect_nodes {
            self.formed.store(true, Ordering::Release);
            return Ok(());
        }
        Err((normal, self.expect_nodes))
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

    /// Merges a peer's digest, dropping invalid states and removals.
    pub fn merge(&self, digest: Digest) {
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
        let changed = self.gossip.lock().merge_digest(Digest { states, removed }, self.now_ms());
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
    }

    /// Gossip targets for this round.
    pub fn targets(&self, fanout: usize, rng: &mut Rng) -> Vec<String> {
        self.gossip.lock().targets(fanout, self.now_ms(), rng)
    }

    /// Every member as `/cluster/members` shows it.
    pub fn members(&self) -> Vec<MemberInfo> {
        let now = self.now_ms();
        self.gossip.lock().views(now).into_iter().map(|view| info(view, now)).collect()
    }

    /// Rebuilds and publishes the topology if placement or liveness changed; records states
    /// when `persist` or when the topology changed.
    fn refresh(&self, persist: bool) {
        let now = self.now_ms();
        // Held until the topology is published: two refreshes racing (a gossip round and a
        // peer's exchange) must not publish an older view after a newer one.
        let mut current = self.signature.lock();
        let views = self.gossip.lock().views(now);
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
        if changed {
            if let Some(metrics) = &self.metrics {
                // Outside the lock (a walk over every range of the ring), from the newest
                // topology published.
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
        if changed || persist {
            self.persist();
        }
    }

    fn persist(&self) {
        let Some(path) = &self.state_file else { return };
        let Digest { states, removed } = self.digest();
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
    }
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

/// The gossip rounds, a [`Worker`]: each unit of work is one round.
pub struct GossipDriver {
    membership: Arc<Membership>,
    seeds: Vec<String>,
    transport: PeerTransport,
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
        GossipDriver { membership, seeds, transport, tick, fanout, rng: Rng::new(seed), answered: 0 }
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
        self.answered = self.exchange_all(targets).await.answered;
    }

    /// Exchanges digests with `targets` at once and merges the answers; returns how many
    /// answered.
    async fn exchange_all(&self, mut targets: Vec<String>) -> Probe {
        let me = self.membership.my_state().map(|s| s.address);
        targets.retain(|t| Some(t) != me.as_ref());
        targets.sort();
        targets.dedup();
        let digest = self.membership.digest();
        let exchanges = targets.iter().map(|target| self.exchange(target, &digest));
        let mut probe = Probe::default();
        for (target, result) in targets.iter().zip(futures::future::join_all(exchanges).await) {
            match result {
                Ok(digest) => {
                    self.membership.merge(digest);
                    probe.answered += 1;
                }
                Err(ReplicaError::Refused { status: 401, message }) => {
                    tracing::warn!(%target, %message, "a peer refused this process's credentials (cluster secret)");
                    probe.unauthorized.push((target.clone(), message));
                }
                Err(e) => tracing::debug!(%target, error = %e, "gossip exchange failed"),
            }
        }
        probe
    }

    /// One exchange with every seed and every known member, before serving: a node learns
    /// whether it was removed (and the cluster's latest state) before it serves anything, and
    /// whether the cluster accepts its credentials.
    pub async fn probe(&self) -> Probe {
        let mut targets: Vec<String> = Vec::new();
        for seed in &self.seeds {
            targets.extend(resolve(seed).await);
        }
        targets.extend(self.membership.states().into_iter().filter(|s| s.status.is_member()).map(|s| s.address));
        self.exchange_all(targets).await
    }

    async fn exchange(&self, target: &str, digest: &Digest) -> Result<Digest, ReplicaError> {
        self.transport.request(target, digest).await
    }
}

/// What one exchange with every seed and known member found.
#[derive(Debug, Default)]
pub struct Probe {
    /// Peers that answered.
    pub answered: usize,
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
