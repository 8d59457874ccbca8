//! Start-up, serving and graceful shutdown, for kvnode and (through [`serve`]) kvgateway.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use kv_coordinator::Coordinator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{engine_dir, resolve_node_id, ClusterConfig, Config, LogFormat, ServerConfig};
use crate::membership::{GossipDriver, Membership};
use crate::metrics::Metrics;
use crate::peer_client::{HttpReplicaClient, NodeReplicaClient};
use crate::rebalance::{Dropper, Rebalancer, RebalancerOptions};
use crate::replica::Replica;
use crate::{router, AppState};
use kv_coordinator::ownership::Ownership;
use kv_coordinator::replica::ReplicaCore;
use kv_gossip::{MemberState, Status};

/// A start-up failure (exit status 2) or a failure while running (exit status 1).
#[derive(Debug)]
pub enum RunError {
    /// Bad configuration, unusable data directory, address in use.
    Startup(String),
    /// Failed after serving started.
    Runtime(anyhow::Error),
}

/// Sets up `tracing` on stderr: `RUST_LOG` levels (default info), text or JSON lines.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Everything a node or gateway serves with, before it binds.
pub struct Service {
    /// Handler state.
    pub state: AppState,
    /// The gossip rounds, run by [`serve`].
    pub gossip: GossipDriver,
    /// Data movement (nodes only), run by [`serve`].
    pub rebalancer: Option<Rebalancer>,
    /// Handing off and removing lost ranges (nodes only), run by [`serve`].
    pub dropper: Option<Dropper>,
    /// Keeping the replica's view in step with membership (nodes only), run by [`serve`].
    pub watcher: Option<OwnershipWatcher>,
}

/// Background job: rebuilds the replica's ownership view whenever membership publishes a new
/// topology ([`Ownership::update`]).
pub struct OwnershipWatcher {
    membership: Arc<Membership>,
    ownership: Arc<Ownership>,
}

impl OwnershipWatcher {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut topology = self.membership.subscribe();
        // A topology published between the start-up update and this subscription is applied.
        topology.mark_changed();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = topology.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = topology.borrow_and_update().clone();
                    let ownership = self.ownership.clone();
                    match tokio::task::spawn_blocking(move || ownership.update(&current)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "cannot update the ownership view"),
                        Err(e) => tracing::error!(error = %e, "ownership update task failed"),
                    }
                }
            }
        }
    }
}

/// Builds the coordinator, membership and handler state for a gateway: an observer that owns
/// no range.
pub fn gateway_service(cluster: &ClusterConfig, server: &ServerConfig, metrics: Metrics) -> Result<Service, String> {
    let (membership, _) =
        Membership::new(None, None, cluster.suspect_after, Some(metrics.clone()), cluster.expect_nodes)?;
    let remote = Arc::new(HttpReplicaClient::new(
        cluster.coordinator.replica_timeout,
        cluster.max_replica_calls.get(),
        cluster.batches_per_peer,
        Some(metrics.coordinator.batch_calls.clone()),
    )?);
    build(membership, None, remote, cluster, server, metrics)
}

fn build(
    membership: Arc<Membership>,
    replica: Option<Replica>,
    remote: Arc<HttpReplicaClient>,
    cluster: &ClusterConfig,
    server: &ServerConfig,
    metrics: Metrics,
) -> Result<Service, String> {
    let client =
        Arc::new(NodeReplicaClient::new(replica.clone(), remote, Some(metrics.coordinator.batch_calls.clone())));
    let coordinator =
        Coordinator::new(client, membership.subscribe(), cluster.coordinator.clone(), metrics.coordinator.clone());
    let gossip = GossipDriver::new(
        membership.clone(),
        cluster.seeds.clone(),
        cluster.gossip_interval,
        cluster.gossip_fanout,
        cluster.coordinator.replica_timeout,
        metrics.clone(),
    );
    let state = AppState {
        max_value_bytes: server.max_value_bytes,
        coordinator,
        membership,
        replica,
        ownership: None,
        metrics: Arc::new(metrics),
        ready: Arc::new(AtomicBool::new(true)),
    };
    Ok(Service { state, gossip, rebalancer: None, dropper: None, watcher: None })
}

/// Binds the listener, turning "address in use" into a start-up error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|e| RunError::Startup(format!("cannot listen on {addr}: {e}")))
}

/// Serves until `shutdown`, then: `/health` says not ready, no new connections, in-flight
/// requests and background replication finish within `--shutdown-timeout`.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    server: &ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let Service { state, gossip, rebalancer, dropper, watcher } = service;
    let ready = state.ready.clone();
    let coordinator: Arc<Coordinator> = state.coordinator.clone();
    let app: Router = router(state, server);
    // Background jobs stop with the server; their handles are awaited below.
    let workers = CancellationToken::new();
    let mut handles = vec![tokio::spawn(gossip.run(workers.clone()))];
    handles.extend(rebalancer.map(|r| tokio::spawn(r.run(workers.clone()))));
    handles.extend(dropper.map(|d| tokio::spawn(d.run(workers.clone()))));
    handles.extend(watcher.map(|w| tokio::spawn(w.run(workers.clone()))));
    let stop = shutdown.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.cancelled().await;
        ready.store(false, Ordering::Release);
        tracing::info!("shutdown: no new connections; draining in-flight requests");
    });
    let deadline = tokio::time::Instant::now();
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(server.shutdown_timeout).await;
    };
    tokio::select! {
        result = serve => result.context("HTTP server failed").map_err(RunError::Runtime)?,
        () = drain_deadline => tracing::warn!(timeout = ?server.shutdown_timeout, "shutdown: drain deadline passed; closing remaining requests"),
    }
    workers.cancel();
    for handle in handles {
        let _ = handle.await;
    }
    let tasks = coordinator.tasks();
    tasks.close();
    let left = server.shutdown_timeout.saturating_sub(deadline.elapsed());
    if tokio::time::timeout(left, tasks.wait()).await.is_err() {
        tracing::warn!(pending = tasks.len(), "shutdown: background replication did not finish in time");
    }
    Ok(())
}

/// Runs a kvnode: opens storage, joins the cluster, serves until `signal` (or until it has
/// left the cluster), drains and syncs. With `--leave-on-shutdown`, a signal first hands the
/// node's ranges off.
pub async fn run(config: Config, signal: CancellationToken) -> Result<(), RunError> {
    let node_id = resolve_node_id(config.node_id.as_deref(), &config.data_dir).map_err(RunError::Startup)?;
    let generation = next_generation(&config.data_dir).map_err(RunError::Startup)?;
    let mut metrics = Metrics::new().map_err(|e| RunError::Startup(format!("metrics: {e}")))?;
    metrics.register_replica().map_err(|e| RunError::Startup(format!("metrics: {e}")))?;
    let storage_metrics = metrics.register_storage().map_err(|e| RunError::Startup(format!("metrics: {e}")))?;
    let dir = engine_dir(&config.data_dir, config.storage.engine).map_err(RunError::Startup)?;
    let engine =
        kv_storage::open(&dir, &config.storage, storage_metrics).map_err(|e| RunError::Startup(e.to_string()))?;
    let identity = engine.identity();
    // A store once found to be an older copy of itself stays refused, whatever peers say now.
    if let Some(marker) = engine.get_meta(RESTORED_META).map_err(|e| RunError::Startup(e.to_string()))? {
        let text = String::from_utf8_lossy(&marker).into_owned();
        let mut numbers = text.split(' ').map(|n| n.parse::<u64>().unwrap_or_default());
        let (known, recorded) = (numbers.next().unwrap_or_default(), numbers.next().unwrap_or_default());
        return Err(restored_error(&node_id, identity.incarnation, known, recorded));
    }
    let progress_file = config.data_dir.join("streams.json");
    if identity.fresh {
        // Stream progress belongs to the store it was made for.
        let _ = std::fs::remove_file(&progress_file);
    }
    let core = Arc::new(ReplicaCore::new(&node_id, engine.clone(), metrics.replica.clone()));
    let me = MemberState {
        id: node_id.clone(),
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
    };
    let (membership, previous) = Membership::new(
        Some(me),
        Some(config.data_dir.join("members.json")),
        config.cluster.suspect_after,
        Some(metrics.clone()),
        config.cluster.expect_nodes,
    )
    .map_err(RunError::Startup)?;
    let status = start_status(&node_id, identity, previous.as_ref(), config.cluster.seeds.is_empty())?;
    membership.set_status(status);
    // Our own state as last recorded, from a later run than our store: an older copy.
    if let Some(recorded) = previous.as_ref().filter(|p| p.incarnation == identity.incarnation) {
        if recorded.lease > identity.lease_at_open {
            return Err(restored(&*engine, &node_id, identity, recorded.lease));
        }
    }
    let lease_engine = engine.clone();
    membership.publish_lease(identity.lease_at_open, move || lease_engine.counter_lease());
    let replica = Replica::new(node_id.clone(), core.clone());
    let n = config.cluster.coordinator.quorum.n;
    let ownership = Arc::new(
        Ownership::open(&node_id, n, core.clone(), metrics.ranges_dropping.clone()).map_err(RunError::Startup)?,
    );
    ownership.update(&membership.topology()).map_err(RunError::Startup)?;
    let remote = Arc::new(
        HttpReplicaClient::new(
            config.cluster.coordinator.replica_timeout,
            config.cluster.max_replica_calls.get(),
            config.cluster.batches_per_peer,
            Some(metrics.coordinator.batch_calls.clone()),
        )
        .map_err(RunError::Startup)?,
    );
    let mut service = build(
        membership.clone(),
        Some(replica.clone()),
        remote.clone(),
        &config.cluster,
        &config.server,
        metrics.clone(),
    )
    .map_err(RunError::Startup)?;
    // Before serving anything, hear from the cluster: a node an operator removed learns it
    // here and refuses to serve its old data.
    let answered = service.gossip.probe().await;
    refuse_if_stopped(&membership, &*engine, &node_id, identity)?;
    tracing::info!(answered, "start-up gossip exchange done");
    ownership.update(&membership.topology()).map_err(RunError::Startup)?;
    let shutdown = CancellationToken::new();
    service.state.ownership = Some(ownership.clone());
    service.rebalancer = Some(Rebalancer::new(
        membership.clone(),
        ownership.clone(),
        replica.clone(),
        remote.clone(),
        RebalancerOptions {
            replicas: n,
            read_quorum: config.cluster.coordinator.quorum.r,
            gossip_interval: config.cluster.gossip_interval,
            concurrency: config.stream_concurrency.get(),
            progress_file,
        },
        metrics.clone(),
        shutdown.clone(),
    ));
    service.dropper = Some(Dropper::new(
        membership.clone(),
        ownership.clone(),
        replica,
        remote,
        n,
        config.cluster.gossip_interval * 5,
        config.cluster.coordinator.tombstone_grace,
        metrics,
    ));
    service.watcher = Some(OwnershipWatcher { membership: membership.clone(), ownership });
    let listener = bind(config.server.listen).await?;
    tracing::info!(
        node_id, actor = core.actor(), generation, status = status.name(), listen = %config.server.listen, advertise = %config.advertise,
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
                    } else {
                        shutdown.cancel();
                    }
                }
                () = stop.cancelled() => shutdown.cancel(),
            }
        }
    };
    let watcher = tokio::spawn(on_signal);
    let served = serve(listener, service, &config.server, shutdown).await;
    watcher.abort();
    served?;
    let synced = engine.clone();
    tokio::task::spawn_blocking(move || synced.sync())
        .await
        .context("storage sync task")
        .and_then(|r| r.context("final storage sync"))
        .map_err(RunError::Runtime)?;
    refuse_if_stopped(&membership, &*engine, &node_id, identity)?;
    tracing::info!("shutdown complete: storage synced");
    Ok(())
}

/// Refuses to go on when the cluster removed this node or knows its store to be an old copy.
fn refuse_if_stopped(
    membership: &Membership,
    engine: &dyn kv_storage::Engine,
    node_id: &str,
    identity: kv_storage::Identity,
) -> Result<(), RunError> {
    if membership.removed_me() {
        return Err(removed_error(node_id, identity.incarnation));
    }
    match membership.restored_me() {
        Some(known) => Err(restored(engine, node_id, identity, known)),
        None => Ok(()),
    }
}

/// Name of the store's metadata entry marking it as an older copy of itself.
const RESTORED_META: &str = "restored";

/// The store is an older copy of itself (an earlier run of it used counters up to `known`):
/// marks it so in the store, so that every later start refuses too (by then peers may only
/// know this run's state), and returns the refusal.
fn restored(engine: &dyn kv_storage::Engine, node_id: &str, identity: kv_storage::Identity, known: u64) -> RunError {
    let marker = format!("{known} {}", identity.lease_at_open);
    if let Err(e) = engine.put_meta(RESTORED_META, marker.as_bytes()).and_then(|()| engine.sync()) {
        tracing::error!(error = %e, "cannot mark the store as an older copy of itself");
    }
    restored_error(node_id, identity.incarnation, known, identity.lease_at_open)
}

fn restored_error(node_id: &str, incarnation: u64, known: u64, recorded: u64) -> RunError {
    RunError::Startup(format!(
        "node {node_id} (storage incarnation {incarnation:016x}): an earlier run of this store used dot counters up to \
         {known}, but its data directory had recorded only {recorded}: it is an older copy of itself (restored from a \
         backup or a snapshot) and lacks writes it acknowledged, so it must not serve; start it on an empty data \
         directory: it joins again as a new storage incarnation and pulls its ranges from the other replicas"
    ))
}

fn removed_error(node_id: &str, incarnation: u64) -> RunError {
    RunError::Startup(format!(
        "node {node_id} (storage incarnation {incarnation:016x}) was removed from the cluster by an operator and must not \
         serve its old data; to bring this machine back, start it with an empty data directory: it joins as a new member"
    ))
}

/// The status a node starts in, from what its store and its recorded membership say.
///
/// - A store with data (not fresh) resumes its recorded status; one that left or was removed
///   refuses to start.
/// - A fresh store (new, wiped or in memory) is a new actor with no data: if this id was a
///   member before, its data is gone, so it joins again and pulls its ranges before it serves
///   reads, whatever it was.
/// - Never recorded: the first node of a cluster (no seeds) starts normal; others join.
fn start_status(
    node_id: &str,
    identity: kv_storage::Identity,
    previous: Option<&MemberState>,
    no_seeds: bool,
) -> Result<Status, RunError> {
    match previous {
        Some(recorded) if !identity.fresh => match recorded.status {
            Status::Left => Err(RunError::Startup(format!(
                "node {node_id} has left the cluster; to join again, start it with an empty data directory"
            ))),
            Status::Removed => Err(removed_error(node_id, identity.incarnation)),
            status => Ok(status),
        },
        Some(recorded) => {
            tracing::warn!(
                previous = recorded.status.name(),
                "the store has no identity but this node was a member (its data is gone, or an earlier \
                 release wrote it): joining again as a new actor and pulling its ranges from the other owners"
            );
            Ok(Status::Joining)
        }
        None if no_seeds => Ok(Status::Normal),
        None => Ok(Status::Joining),
    }
}

/// The generation for this start: above the recorded one and at least the wall clock in
/// milliseconds (so a run started from an older copy of the data directory still differs from
/// every run peers saw), recorded in `data-dir/generation`.
fn next_generation(data_dir: &std::path::Path) -> Result<u64, String> {
    let path = data_dir.join("generation");
    let previous = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let generation = now.max(previous + 1);
    std::fs::write(&path, format!("{generation}\n")).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(generation)
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    token.cancel();
}
