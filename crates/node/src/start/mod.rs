//! Start-up, serving and graceful shutdown of a kvnode.
//!
//! Start-up: build the object graph ([`graph`]: open storage, check the store is not an older
//! copy of itself, restore membership, the replica, transport and coordinator), hear from the
//! cluster once before serving (a removed node learns it here), start the workers
//! ([`workers`]), bind the three listeners ([`routers`]). Shutdown, all within
//! `--shutdown-timeout` counted from the signal: drain the listeners, stop the upkeep workers
//! (rebalancing, dropping, the ownership watcher), let background replication and read repair
//! finish, stop the batchers, stop gossip, sync storage. [`identity`] holds what a node checks
//! of itself before and after.

pub mod graph;
pub mod identity;
pub mod routers;
pub mod workers;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use kv_gossip::Status;
use kv_membership::GossipDriver;
use kv_server::serve::RunError;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::NodeState;
use graph::Graph;
use identity::refuse_if_stopped;

/// Runs a kvnode: opens storage, joins the cluster, serves until `signal` (or until it has
/// left the cluster), drains and syncs. With `--leave-on-shutdown`, a signal first hands the
/// node's ranges off.
pub async fn run(config: Config, signal: CancellationToken) -> Result<(), RunError> {
    let (graph, gossip) = Graph::build(&config)?;
    hear_from_the_cluster(&graph, &config, &gossip).await?;
    let shutdown = CancellationToken::new();
    let repair = workers::spawn(&graph, &config, gossip, &shutdown);
    graph.process.spawn_reloaders(&config.security, &graph.transport);
    let api = graph.process.api(&config.server, &graph.coordinator, &graph.membership, &graph.transport);
    let node = Arc::new(NodeState {
        replica: graph.replica.clone(),
        ownership: graph.ownership.clone(),
        membership: graph.membership.clone(),
        metrics: graph.metrics.clone(),
        trees: graph.trees.clone(),
        repair,
        contexts: graph.process.contexts.clone(),
        engine: graph.engine.clone(),
        hints: graph.hints.clone(),
        supervisor: graph.process.supervisor.clone(),
        transfers: graph.transfers.clone(),
        data_dir: config.data_dir.clone(),
    });
    let serving = Arc::new(AtomicBool::new(true));
    let listeners = routers::listeners(&graph, &config, node, api, &serving).await?;
    let Graph { node_id, generation, status, membership, core, engine, identity, .. } = &graph;
    tracing::info!(
        node_id, actor = %core.actor(), generation, status = status.name(), listen = %config.server.listen, peer_listen = %config.peer_listen,
        admin_listen = %config.server.admin_listen, advertise = %config.advertise,
        engine = %config.storage.engine, sync = %config.storage.sync, data_dir = %config.data_dir.display(),
        seeds = ?config.cluster.seeds, quorum = ?config.cluster.coordinator.quorum, "kvnode serving"
    );
    // A signal stops the node, or with --leave-on-shutdown starts a leave, after which the
    // rebalancer stops it. Learning that it was removed, or that its store is an old copy of
    // itself, stops it too.
    let leave_on_shutdown = config.leave_on_shutdown;
    let on_signal = {
        let (membership, shutdown) = (membership.clone(), shutdown.clone());
        let stop = membership.stop_signal();
        async move {
            tokio::select! {
                () = signal.cancelled() => {
                    if leave_on_shutdown && membership.my_status() == Some(Status::Normal) {
                        tracing::info!("signal: leaving the cluster before exiting (--leave-on-shutdown)");
                        membership.set_status(Status::Leaving);
                        // Still stop if the node is removed, or found to be an old copy, while
                        // it leaves.
                        stop.cancelled().await;
                    }
                    shutdown.cancel();
                }
                () = stop.cancelled() => shutdown.cancel(),
            }
        }
    };
    let watcher = tokio::spawn(on_signal);
    let served = graph.process.serve(listeners, serving, shutdown, &config.server, &graph.coordinator).await;
    watcher.abort();
    served?;
    let (synced, replica) = (engine.clone(), core.clone());
    tokio::task::spawn_blocking(move || {
        synced.sync()?;
        // Rule 15 of docs/consistency.md: the next run keeps this actor only if every dot this
        // one issued is accounted for here.
        match replica.close() {
            0 => synced.mark_clean(),
            keys => {
                tracing::warn!(keys, "versions created here were not all stored here: the next start is a new actor");
                Ok(())
            }
        }
    })
    .await
    .context("storage sync task")
    .and_then(|r| r.context("final storage sync"))
    .map_err(RunError::Runtime)?;
    // A node that left on its own has done what it was asked: a peer that already knew it had
    // left and refused its last gossip (410 not_a_member) does not make that a failure.
    let left = membership.my_status() == Some(Status::Left) && !membership.removed_me();
    if !left {
        refuse_if_stopped(membership, &**engine, node_id, *identity)?;
    }
    tracing::info!("shutdown complete: storage synced");
    Ok(())
}

/// Before serving anything, hears from the cluster: a node an operator removed learns it here
/// and refuses to serve its old data, and a node with the wrong secret learns that.
async fn hear_from_the_cluster(graph: &Graph, config: &Config, gossip: &GossipDriver) -> Result<(), RunError> {
    let membership = &graph.membership;
    // After this process was frozen (paused, its host asleep), or with --serve-isolated=false
    // after any gap in contact, a node confirms it is still a member before it answers a client
    // or a replica call: one removed meanwhile learns so first.
    membership
        .enable_confirmation(gossip.exchanger(), config.cluster.suspect_after, config.serve_isolated)
        .map_err(|e| RunError::Startup(format!("cannot start the freeze watch thread: {e}")))?;
    let probe = gossip.probe().await;
    if let (0, Some((peer, message))) = (probe.answered, probe.unauthorized.first()) {
        return Err(RunError::Startup(format!(
            "the cluster refuses this node's credentials ({peer} answered 401: {message}); every node and gateway \
             of a cluster must hold the same cluster secret (--cluster-secret-file or KV_CLUSTER_SECRET)"
        )));
    }
    refuse_if_stopped(membership, &*graph.engine, &graph.node_id, graph.identity)?;
    tracing::info!(answered = probe.answered, "start-up gossip exchange done");
    graph.ownership.update(&membership.topology()).map_err(RunError::Startup)
}
