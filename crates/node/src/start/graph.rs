//! The object graph of a kvnode: what it builds, in order, before it serves. Nothing here
//! starts a worker or binds a port.

use std::path::PathBuf;
use std::sync::Arc;

use kv_api::process::{metric_error, Process};
use kv_coordinator::Coordinator;
use kv_gossip::{MemberState, Status};
use kv_membership::{GossipDriver, Membership};
use kv_replica::ownership::Ownership;
use kv_replica::replica::ReplicaCore;
use kv_server::serve::RunError;
use kv_storage::{HintStore, Identity};
use kv_transport::{HttpReplicaClient, PeerTransport, Verifier};

use super::identity::{next_generation, refuse_if_marked_restored, restored, start_status};
use crate::config::{engine_dir, resolve_node_id, Config};
use crate::metrics::NodeMetrics;
use crate::peer_client::NodeReplicaClient;
use crate::replica::Replica;
use crate::workers::WorkerMetrics;

/// Everything a running node is made of.
pub struct Graph {
    /// The node's id.
    pub node_id: String,
    /// This start's generation.
    pub generation: u64,
    /// The pieces every serving process has.
    pub process: Process,
    /// The node's own metrics.
    pub metrics: NodeMetrics,
    /// Its workers' metrics.
    pub worker_metrics: WorkerMetrics,
    /// Refused signatures, by listener and reason.
    pub auth_metrics: kv_transport::AuthMetrics,
    /// Checks the signatures of peer and admin requests.
    pub verifier: Arc<Verifier>,
    /// The storage engine.
    pub engine: Arc<dyn kv_storage::Engine>,
    /// The store's identity at open.
    pub identity: Identity,
    /// The status the node started in.
    pub status: Status,
    /// Where range-stream progress is recorded.
    pub progress_file: PathBuf,
    /// What the rebalancer is moving now (`/internal/v1/status`).
    pub transfers: Arc<crate::workers::rebalance::Transfers>,
    /// Hints kept for other nodes.
    pub hints: Arc<HintStore>,
    /// The replica's rules over the store.
    pub core: Arc<ReplicaCore>,
    /// Merkle trees of the segments it holds.
    pub trees: Arc<kv_replica::RangeTrees>,
    /// Local reads, stores and coordination off the async workers.
    pub replica: Replica,
    /// What this node owns, fills and drops.
    pub ownership: Arc<Ownership>,
    /// Known members.
    pub membership: Arc<Membership>,
    /// Calls to peers.
    pub transport: PeerTransport,
    /// Batched replica calls to peers.
    pub remote: Arc<HttpReplicaClient>,
    /// Quorum reads and writes.
    pub coordinator: Arc<Coordinator>,
}

impl Graph {
    /// Opens storage, checks the store is not an older copy of itself, restores membership and
    /// builds the replica, the transport and the coordinator; the gossip driver comes apart, to
    /// be probed with before it runs.
    pub fn build(config: &Config) -> Result<(Graph, GossipDriver), RunError> {
        let node_id = resolve_node_id(config.node_id.as_deref(), &config.data_dir).map_err(RunError::Startup)?;
        let generation = next_generation(&config.data_dir).map_err(RunError::Startup)?;
        let security = &config.security;
        // Three listeners at their caps, the store's files and the calls to peers.
        let process = Process::start(
            "kvnode",
            &node_id,
            &config.cluster,
            security,
            3 * config.server.limits.max_connections as u64 + 4096,
            "anyone who reaches the peer or admin port controls this node",
        )?;
        let registry = &process.registry;
        let metrics = NodeMetrics::register(registry).map_err(metric_error)?;
        let storage_metrics = kv_storage::StorageMetrics::register(registry).map_err(metric_error)?;
        let worker_metrics = WorkerMetrics::register(registry).map_err(metric_error)?;
        let auth_metrics = kv_transport::AuthMetrics::register(registry).map_err(metric_error)?;
        let verifier = Arc::new(Verifier::new(&process.signer, security.max_skew));
        let dir = engine_dir(&config.data_dir, config.storage.engine).map_err(RunError::Startup)?;
        let engine =
            kv_storage::open(&dir, &config.storage, storage_metrics).map_err(|e| RunError::Startup(e.to_string()))?;
        let identity = engine.identity();
        // Every request this node signs names it, so that peers refuse it once it has left or
        // was removed (docs/consistency.md, rule 12).
        process.signer.set_member(&node_id, identity.incarnation);
        refuse_if_marked_restored(&*engine, &node_id, identity)?;
        let progress_file = config.data_dir.join("streams.json");
        if identity.fresh {
            // Stream progress belongs to the store it was made for.
            let _ = std::fs::remove_file(&progress_file);
        }
        let hints =
            Arc::new(engine.open_hints(config.hint_limits).map_err(|e| RunError::Startup(format!("hints: {e}")))?);
        let core = replica_core(config, &node_id, &engine, &hints, &metrics);
        // Merkle trees follow every change to the store from here on (built per segment by the
        // anti-entropy worker).
        let trees = kv_replica::RangeTrees::new();
        if !trees.attach(&*engine) {
            return Err(RunError::Startup("the store already has an observer".into()));
        }
        let (membership, status) = membership(config, &node_id, generation, &engine, identity, &hints, &process)?;
        let replica = Replica::new(node_id.clone(), core.clone());
        let n = config.cluster.coordinator.quorum.n;
        let ownership = Arc::new(
            Ownership::open(&node_id, n, core.clone(), metrics.ranges_dropping.clone()).map_err(RunError::Startup)?,
        );
        ownership.update(&membership.topology()).map_err(RunError::Startup)?;
        let on_not_member: kv_transport::OnNotMember = {
            let membership = membership.clone();
            Arc::new(move |reason: String| membership.fence(reason))
        };
        let transport = process.transport(
            &config.cluster,
            &config.server,
            config.peer_listen.ip(),
            Some(send_gate(&membership)),
            Some(on_not_member),
        )?;
        let remote = process.replica_client(&transport, &config.cluster);
        let client = Arc::new(NodeReplicaClient::new(
            replica.clone(),
            remote.clone(),
            &process.supervisor,
            Some(process.coordinator_metrics.batch_calls.clone()),
        ));
        let coordinator = Coordinator::new(
            client,
            membership.subscribe(),
            config.cluster.coordinator.clone(),
            process.coordinator_metrics.clone(),
        );
        let gossip = GossipDriver::new(
            membership.clone(),
            config.cluster.seeds.clone(),
            config.cluster.gossip_interval,
            config.cluster.gossip_fanout,
            transport.clone(),
        );
        let graph = Graph {
            node_id,
            generation,
            process,
            metrics,
            worker_metrics,
            auth_metrics,
            verifier,
            engine,
            identity,
            status,
            progress_file,
            transfers: Arc::default(),
            hints,
            core,
            trees,
            replica,
            ownership,
            membership,
            transport,
            remote,
            coordinator,
        };
        Ok((graph, gossip))
    }
}

/// The replica's rules over `engine`, with its hints, sibling limits and how long a dot it
/// issued may stay outstanding.
fn replica_core(
    config: &Config,
    node_id: &str,
    engine: &Arc<dyn kv_storage::Engine>,
    hints: &Arc<HintStore>,
    metrics: &NodeMetrics,
) -> Arc<ReplicaCore> {
    let coordinator = &config.cluster.coordinator;
    let grace_ms = coordinator.tombstone_grace.as_millis() as u64;
    let hint_version_age = (grace_ms / 2).saturating_sub(config.hint_limits.max_age_ms);
    Arc::new(
        ReplicaCore::new(node_id, engine.clone(), metrics.replica.clone())
            .with_hints(hints.clone(), hint_version_age)
            .with_sibling_limits(config.siblings)
            // A front's store of a version arrives within its deadline (one replica timeout
            // after the front got the version, itself within one replica timeout), judged by
            // clocks up to the skew bound apart (rule 15).
            .with_outstanding_for(
                (2 * coordinator.replica_timeout + coordinator.max_clock_skew).as_millis() as u64 + 1_000,
            ),
    )
}

/// This node's membership, restored from the data directory, and the status it starts in.
fn membership(
    config: &Config,
    node_id: &str,
    generation: u64,
    engine: &Arc<dyn kv_storage::Engine>,
    identity: Identity,
    hints: &HintStore,
    process: &Process,
) -> Result<(Arc<Membership>, Status), RunError> {
    // Our recorded status, checked before `Membership::new` records the state we start in: a
    // node that left must refuse its data at every start, not only the first (the first start
    // recorded `joining` over `left`, and the second passed).
    let members_file = config.data_dir.join("members.json");
    let recorded = kv_membership::read_recorded(&members_file).map_err(RunError::Startup)?;
    let previous = recorded.states.into_iter().find(|s| s.id == node_id);
    let status = start_status(node_id, identity, previous.as_ref(), config.cluster.seeds.is_empty())
        .inspect_err(|_| mark_if_left(&config.data_dir, previous.as_ref(), hints))?;
    // Started: a marker left from an earlier refusal is stale (the directory was emptied by
    // hand, or the node joined again), and must not empty a member's directory later.
    let _ = std::fs::remove_file(config.data_dir.join(LEFT_MARKER));
    let me = MemberState {
        id: node_id.to_owned(),
        address: config.advertise.clone(),
        zone: config.zone.clone(),
        weight: config.weight.get(),
        status: Status::Joining,
        incarnation: identity.incarnation,
        lease: engine.counter_lease(),
        run: getrandom::u64().map_err(|e| RunError::Startup(format!("no randomness for the run id: {e}")))?,
        generation,
        heartbeat: 0,
        suspects: Vec::new(),
        formed: false,
        release: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: kv_proto::PROTOCOL,
    };
    let (membership, _) = Membership::new(
        Some(me),
        Some(members_file),
        config.cluster.suspect_after,
        Some(process.membership_metrics.clone()),
        config.cluster.expect_nodes,
    )
    .map_err(RunError::Startup)?;
    let clock_metrics = kv_membership::ClockMetrics::register(&process.registry).map_err(metric_error)?;
    membership.enable_clock(Some(config.cluster.max_clock_offset), Some(clock_metrics));
    membership.set_status(status);
    // Our own state as last recorded, from a later run than our store: an older copy.
    if let Some(recorded) = previous.as_ref().filter(|p| p.incarnation == identity.incarnation) {
        if recorded.lease > identity.lease_at_open {
            return Err(restored(&**engine, node_id, identity, recorded.lease));
        }
    }
    let lease_engine = engine.clone();
    membership.publish_lease(identity.lease_at_open, move || lease_engine.counter_lease());
    Ok((membership, status))
}

/// The file a node that left writes when it refuses to start on its data directory: its ranges
/// were handed off, nothing in it is needed, and a supervisor may empty the directory so that
/// the node joins again as a new member (the Helm chart's start.sh does, after a scale-down
/// then a scale-up gave the pod its old volume back).
pub const LEFT_MARKER: &str = "LEFT";

///
/// Not while it holds hints: a leave hands off ranges, not the hints kept for a member that was
/// down, and those may be the only copy of an acknowledged write besides one replica. Such a
/// node keeps refusing, saying why, until an operator decides.
fn mark_if_left(data_dir: &std::path::Path, previous: Option<&MemberState>, hints: &HintStore) {
    if previous.is_none_or(|p| p.status != Status::Left) {
        return;
    }
    let held: u64 = hints.pending().values().map(|p| p.count).sum();
    if held > 0 {
        tracing::error!(
            hints = held,
            "this node left the cluster but holds hints for members that were down: its directory is not marked to \
             be emptied (a hint may be the only copy of a write besides one replica); once every member is up and \
             `kvctl repair` ran on them (anti-entropy spreads what one replica holds), empty it by hand"
        );
        return;
    }
    let text = "this node left the cluster (its ranges were handed off, it held no hints): this directory holds \
                nothing needed; empty it to join again as a new member\n";
    let marked = std::fs::File::create(data_dir.join(LEFT_MARKER))
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()).and_then(|()| f.sync_all()));
    if let Err(e) = marked {
        tracing::warn!(error = %e, "cannot write the left marker");
    }
}

/// What a node asks before it sends a peer anything but gossip: nothing once a peer refused it
/// as no longer a member, nor once it has left (its hand-off is done; it exits once `left` has
/// spread), nor while its clock is fenced (its stamps and its judgements of age would break the
/// rules of docs/consistency.md, "Clocks").
fn send_gate(membership: &Arc<Membership>) -> kv_transport::Gate {
    let membership = membership.clone();
    Arc::new(move || {
        if let Some(reason) = membership.fenced() {
            return Err(format!("this node is no longer a member: {reason}"));
        }
        let status = membership.my_status();
        if status == Some(Status::Left) {
            return Err("this node has left the cluster".into());
        }
        if membership.removed_me() || status == Some(Status::Removed) {
            return Err("this node was removed from the cluster".into());
        }
        if membership.clock_fenced() {
            return Err("this node's clock is fenced: it is off from most members' clocks".into());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Rule 12: a node that has left sends nothing but gossip (the gate is not asked for
    /// gossip), so it draws no refusal and a removal it learns meanwhile still stops it.
    #[test]
    fn a_node_that_left_sends_nothing_but_gossip() {
        let me = MemberState {
            id: "n1".into(),
            address: "127.0.0.1:7101".into(),
            zone: "z".into(),
            weight: 1,
            status: Status::Normal,
            incarnation: 7,
            lease: 0,
            run: 1,
            generation: 1,
            heartbeat: 1,
            suspects: Vec::new(),
            formed: false,
            release: String::new(),
            protocol: 0,
        };
        let (membership, _) = Membership::new(Some(me), None, std::time::Duration::from_secs(5), None, 1).unwrap();
        let gate = send_gate(&membership);
        assert_eq!(gate(), Ok(()));
        membership.set_status(Status::Leaving);
        assert_eq!(gate(), Ok(()), "a leaving node hands its ranges off");
        membership.set_status(Status::Left);
        assert!(gate().is_err(), "a node that has left sends nothing but gossip");
    }
}
