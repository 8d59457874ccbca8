//! Starting a node's background workers under its supervisor.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use kv_membership::GossipDriver;
use kv_worker::Stage;

use super::graph::Graph;
use crate::config::Config;
use crate::workers::antientropy::{AntiEntropy, AntiEntropyOptions, RepairRequest};
use crate::workers::gc::TombstoneCollector;
use crate::workers::hints::{HintDispatcher, HintOptions};
use crate::workers::ownership::OwnershipWatcher;
use crate::workers::rebalance::{Dropper, Rebalancer, RebalancerOptions};

/// Starts gossip and the upkeep workers (ownership, rebalancing, dropping, hints,
/// anti-entropy, tombstone collection); `shutdown` stops the rebalancer's streams. Returns how
/// to ask the anti-entropy worker for a round now.
pub fn spawn(
    graph: &Graph,
    config: &Config,
    gossip: GossipDriver,
    shutdown: &CancellationToken,
) -> mpsc::Sender<RepairRequest> {
    let supervisor = &graph.process.supervisor;
    let cluster = &config.cluster;
    let n = cluster.coordinator.quorum.n;
    let metrics = &graph.worker_metrics;
    supervisor.spawn(Stage::Membership, gossip);
    supervisor.spawn(Stage::Upkeep, OwnershipWatcher::new(graph.membership.clone(), graph.ownership.clone()));
    let rebalancer = Rebalancer::new(
        graph.membership.clone(),
        graph.ownership.clone(),
        graph.replica.clone(),
        graph.remote.clone(),
        RebalancerOptions {
            replicas: n,
            read_quorum: cluster.coordinator.quorum.r,
            gossip_interval: cluster.gossip_interval,
            concurrency: config.stream_concurrency.get(),
            progress_file: graph.progress_file.clone(),
            transfers: graph.transfers.clone(),
        },
        graph.metrics.clone(),
        shutdown.clone(),
    );
    supervisor.spawn(Stage::Upkeep, rebalancer);
    let dropper = Dropper::new(
        graph.membership.clone(),
        graph.ownership.clone(),
        graph.replica.clone(),
        graph.remote.clone(),
        n,
        cluster.gossip_interval * 5,
        cluster.coordinator.tombstone_grace,
        graph.metrics.clone(),
    );
    supervisor.spawn(Stage::Upkeep, dropper);
    let hints = HintDispatcher::new(
        graph.hints.clone(),
        graph.membership.clone(),
        graph.remote.clone(),
        HintOptions {
            rate: config.hint_rate,
            replicas: n,
            grace_ms: cluster.coordinator.tombstone_grace.as_millis() as u64,
        },
        metrics.hints.clone(),
        graph.coordinator.clone(),
    );
    supervisor.spawn(Stage::Upkeep, hints);
    let (anti_entropy, repair) = AntiEntropy::new(
        graph.core.clone(),
        graph.trees.clone(),
        graph.membership.clone(),
        graph.remote.clone(),
        AntiEntropyOptions {
            interval: config.anti_entropy_interval,
            bytes_per_sec: config.repair_bytes_per_sec,
            replicas: n,
            max_exchange: cluster.coordinator.replica_timeout / 2,
            store_deadline: cluster.coordinator.replica_timeout,
        },
        metrics.repair.clone(),
    );
    supervisor.spawn(Stage::Upkeep, anti_entropy);
    let collector = TombstoneCollector::new(
        graph.core.clone(),
        graph.membership.clone(),
        graph.coordinator.clone(),
        config.gc_interval,
        n,
        metrics.gc.clone(),
    );
    supervisor.spawn(Stage::Upkeep, collector);
    repair
}
