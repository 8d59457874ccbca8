//! Start-up, serving and graceful shutdown of a kvnode.
//!
//! Start-up: open storage, check the store is not an older copy of itself, restore membership,
//! hear from the cluster once before serving (a removed node learns it here), start the
//! workers, bind the three listeners. Shutdown, all within `--shutdown-timeout` counted from
//! the signal: drain the listeners, stop the upkeep workers (rebalancing, dropping, the
//! ownership watcher), let background replication and read repair finish, stop the batchers,
//! stop gossip, sync storage.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use kv_api::context::ContextSealer;
use kv_api::ApiState;
use kv_coordinator::Coordinator;
use kv_gossip::{MemberState, Status};
use kv_membership::{GossipDriver, Membership, MembershipMetrics};
use kv_replica::ownership::Ownership;
use kv_replica::replica::ReplicaCore;
use kv_server::admin::{AdminState, ReadyCheck};
use kv_server::http::{layered, HttpMetrics, ListenerOptions};
use kv_server::listen::{ConnectionMetrics, ListenerTls};
use kv_server::serve::{bind, serve, stop_in_order, Listener, RunError};
use kv_server::tls::Tls;
use kv_transport::{BoundCheck, HttpReplicaClient, PeerTransport, Signer, TransportOptions, Verifier, VerifyState};
use kv_worker::{Stage, Supervisor, Worker, WorkerState};
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::{engine_dir, resolve_node_id, Config};
use crate::metrics::NodeMetrics;
use crate::peer_client::NodeReplicaClient;
use crate::rebalance::{Dropper, Rebalancer, RebalancerOptions};
use crate::replica::Replica;
use crate::NodeState;

/// Worker: rebuilds the replica's ownership view whenever membership publishes a new
/// topology ([`Ownership::update`]).
pub struct OwnershipWatcher {
    membership: Arc<Membership>,
    ownership: Arc<Ownership>,
    topology: tokio::sync::watch::Receiver<Arc<kv_coordinator::Topology>>,
    updates: u64,
}

impl OwnershipWatcher {
    /// A watcher that applies the current topology first (one published between start-up and
    /// now is not missed), then every new one.
    pub fn new(membership: Arc<Membership>, ownership: Arc<Ownership>) -> Self {
        let mut topology = membership.subscribe();
        topology.mark_changed();
        OwnershipWatcher { membership, ownership, topology, updates: 0 }
    }
}

impl Worker for OwnershipWatcher {
    fn name(&self) -> String {
        "ownership".into()
    }

    fn status(&self) -> String {
        format!("{} topology updates applied; {} members", self.updates, self.membership.states().len())
    }

    async fn work(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState, String> {
        if !self.topology.has_changed().map_err(|e| e.to_string())? {
            return Ok(WorkerState::Idle);
        }
        let current = self.topology.borrow_and_update().clone();
        let ownership = self.ownership.clone();
        let applied = match tokio::task::spawn_blocking(move || ownership.update(&current)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot update the ownership view: {e}")),
            Err(e) => Err(format!("ownership update task failed: {e}")),
        };
        if applied.is_err() {
            // Not applied: the supervisor's retry must apply it, not wait for the next change.
            self.topology.mark_changed();
        }
        applied?;
        self.updates += 1;
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) {
        if self.topology.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.topology.mark_changed();
    }
}

/// Runs a kvnode: opens storage, joins the cluster, serves until `signal` (or until it has
/// left the cluster), drains and syncs. With `--leave-on-shutdown`, a signal first hands the
/// node's ranges off.
pub async fn run(config: Config, signal: CancellationToken) -> Result<(), RunError> {
    let node_id = resolve_node_id(config.node_id.as_deref(), &config.data_dir).map_err(RunError::Startup)?;
    let generation = next_generation(&config.data_dir).map_err(RunError::Startup)?;
    let registry = Registry::new();
    let metric_error = |e: prometheus::Error| RunError::Startup(format!("metrics: {e}"));
    let metrics = NodeMetrics::register(&registry).map_err(metric_error)?;
    kv_server::admin::register_process(&registry, "kvnode").map_err(metric_error)?;
    let storage_metrics = kv_storage::StorageMetrics::register(&registry).map_err(metric_error)?;
    let coordinator_metrics = kv_coordinator::CoordinatorMetrics::register(&registry).map_err(metric_error)?;
    let http_metrics = HttpMetrics::register(&registry).map_err(metric_error)?;
    let membership_metrics =
        MembershipMetrics::register(&registry, config.cluster.coordinator.quorum.n).map_err(metric_error)?;
    let supervisor = Supervisor::with_metrics(&registry).map_err(metric_error)?;
    let hint_metrics = crate::hints::HintMetrics::register(&registry).map_err(metric_error)?;
    let repair_metrics = crate::antientropy::RepairMetrics::register(&registry).map_err(metric_error)?;
    let gc_metrics = crate::gc::GcMetrics::register(&registry).map_err(metric_error)?;
    let auth_metrics = kv_transport::AuthMetrics::register(&registry).map_err(metric_error)?;
    let connection_metrics = ConnectionMetrics::register(&registry).map_err(metric_error)?;
    // Three listeners at their caps, the store's files and the calls to peers.
    kv_server::serve::raise_fd_limit(3 * config.server.limits.max_connections as u64 + 4096);
    let security = &config.security;
    if security.secrets.is_insecure() {
        tracing::warn!("--insecure: no cluster secret; anyone who reaches the peer or admin port controls this node");
    }
    let signer = Signer::new(&security.secrets);
    let verifier = Arc::new(Verifier::new(&signer, security.max_skew));
    let contexts = Arc::new(ContextSealer::new(&security.secrets));
    let tls = security.tls.as_ref().map(Tls::load).transpose().map_err(RunError::Startup)?.map(Arc::new);
    let dir = engine_dir(&config.data_dir, config.storage.engine).map_err(RunError::Startup)?;
    let engine =
        kv_storage::open(&dir, &config.storage, storage_metrics).map_err(|e| RunError::Startup(e.to_string()))?;
    let identity = engine.identity();
    // Every request this node signs names it, so that peers refuse it once it has left or was
    // removed (docs/consistency.md, rule 12).
    signer.set_member(&node_id, identity.incarnation);
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
    let hint_store =
        Arc::new(engine.open_hints(config.hint_limits).map_err(|e| RunError::Startup(format!("hints: {e}")))?);
    let grace_ms = config.cluster.coordinator.tombstone_grace.as_millis() as u64;
    let hint_version_age = (grace_ms / 2).saturating_sub(config.hint_limits.max_age_ms);
    let core = Arc::new(
        ReplicaCore::new(&node_id, engine.clone(), metrics.replica.clone())
            .with_hints(hint_store.clone(), hint_version_age)
            .with_sibling_limits(config.siblings)
            // A front's store of a version arrives within its deadline (one replica timeout
            // after the front got the version, itself within one replica timeout), judged by
            // clocks up to the skew bound apart (rule 15).
            .with_outstanding_for(
                (2 * config.cluster.coordinator.replica_timeout + config.cluster.coordinator.max_clock_skew).as_millis()
                    as u64
                    + 1_000,
            ),
    );
    // Merkle trees follow every change to the store from here on (built per segment by the
    // anti-entropy worker).
    let trees = kv_replica::RangeTrees::new();
    if !trees.attach(&*engine) {
        return Err(RunError::Startup("the store already has an observer".into()));
    }
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
        formed: false,
    };
    let (membership, previous) = Membership::new(
        Some(me),
        Some(config.data_dir.join("members.json")),
        config.cluster.suspect_after,
        Some(membership_metrics),
        config.cluster.expect_nodes,
    )
    .map_err(RunError::Startup)?;
    let clock_metrics = kv_membership::ClockMetrics::register(&registry).map_err(metric_error)?;
    membership.enable_clock(Some(config.cluster.max_clock_offset), Some(clock_metrics));
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
    let transport = PeerTransport::new(
        TransportOptions {
            timeout: config.cluster.coordinator.replica_timeout,
            max_in_flight: config.cluster.max_replica_calls.get(),
            signer: signer.clone(),
            local_address: Some(config.peer_listen.ip()).filter(|ip| !ip.is_unspecified()),
            tls: tls.as_ref().map(|t| t.client_config()),
            pool_idle: config.server.limits.idle_timeout / 2,
            gate: Some(send_gate(&membership)),
            on_not_member: Some({
                let membership = membership.clone();
                Arc::new(move |reason: String| membership.fence(reason))
            }),
        },
        Some(&registry),
    )
    .map_err(RunError::Startup)?;
    let remote = Arc::new(HttpReplicaClient::new(
        transport.clone(),
        supervisor.clone(),
        config.cluster.batch_limits(),
        Some(coordinator_metrics.batch_calls.clone()),
    ));
    let client = Arc::new(NodeReplicaClient::new(
        replica.clone(),
        remote.clone(),
        &supervisor,
        Some(coordinator_metrics.batch_calls.clone()),
    ));
    let coordinator =
        Coordinator::new(client, membership.subscribe(), config.cluster.coordinator.clone(), coordinator_metrics);
    let gossip = GossipDriver::new(
        membership.clone(),
        config.cluster.seeds.clone(),
        config.cluster.gossip_interval,
        config.cluster.gossip_fanout,
        transport.clone(),
    );
    // After this process was frozen (paused, its host asleep), or with --serve-isolated=false
    // after any gap in contact, a node confirms it is still a member before it answers a client
    // or a replica call: one removed meanwhile learns so first.
    membership
        .enable_confirmation(gossip.exchanger(), config.cluster.suspect_after, config.serve_isolated)
        .map_err(|e| RunError::Startup(format!("cannot start the freeze watch thread: {e}")))?;
    // Before serving anything, hear from the cluster: a node an operator removed learns it
    // here and refuses to serve its old data, and a node with the wrong secret learns that.
    let probe = gossip.probe().await;
    if let (0, Some((peer, message))) = (probe.answered, probe.unauthorized.first()) {
        return Err(RunError::Startup(format!(
            "the cluster refuses this node's credentials ({peer} answered 401: {message}); every node and gateway \
             of a cluster must hold the same cluster secret (--cluster-secret-file or KV_CLUSTER_SECRET)"
        )));
    }
    refuse_if_stopped(&membership, &*engine, &node_id, identity)?;
    tracing::info!(answered = probe.answered, "start-up gossip exchange done");
    ownership.update(&membership.topology()).map_err(RunError::Startup)?;
    let shutdown = CancellationToken::new();
    supervisor.spawn(Stage::Membership, gossip);
    supervisor.spawn(Stage::Upkeep, OwnershipWatcher::new(membership.clone(), ownership.clone()));
    supervisor.spawn(
        Stage::Upkeep,
        Rebalancer::new(
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
        ),
    );
    supervisor.spawn(
        Stage::Upkeep,
        Dropper::new(
            membership.clone(),
            ownership.clone(),
            replica.clone(),
            remote.clone(),
            n,
            config.cluster.gossip_interval * 5,
            config.cluster.coordinator.tombstone_grace,
            metrics.clone(),
        ),
    );
    supervisor.spawn(
        Stage::Upkeep,
        crate::hints::HintDispatcher::new(
            hint_store,
            membership.clone(),
            remote.clone(),
            crate::hints::HintOptions {
                rate: config.hint_rate,
                replicas: n,
                grace_ms: config.cluster.coordinator.tombstone_grace.as_millis() as u64,
            },
            hint_metrics,
            coordinator.clone(),
        ),
    );
    let (anti_entropy, repair) = crate::antientropy::AntiEntropy::new(
        core.clone(),
        trees.clone(),
        membership.clone(),
        remote.clone(),
        crate::antientropy::AntiEntropyOptions {
            interval: config.anti_entropy_interval,
            bytes_per_sec: config.repair_bytes_per_sec,
            replicas: n,
            max_exchange: config.cluster.coordinator.replica_timeout / 2,
            store_deadline: config.cluster.coordinator.replica_timeout,
        },
        repair_metrics,
    );
    supervisor.spawn(Stage::Upkeep, anti_entropy);
    supervisor.spawn(
        Stage::Upkeep,
        crate::gc::TombstoneCollector::new(
            core.clone(),
            membership.clone(),
            coordinator.clone(),
            config.gc_interval,
            n,
            gc_metrics,
        ),
    );
    let on_secrets = {
        let (signer, contexts) = (signer.clone(), contexts.clone());
        Box::new(move |secrets: &kv_transport::Secrets| {
            signer.reload(secrets);
            contexts.reload(secrets);
        })
    };
    kv_server::reload::spawn_reloaders(&supervisor, security, on_secrets, tls.as_ref(), &transport);
    let server = &config.server;
    let api = Arc::new(ApiState {
        max_value_bytes: server.max_value_bytes,
        coordinator: coordinator.clone(),
        membership: membership.clone(),
        contexts: contexts.clone(),
    });
    let node = Arc::new(NodeState {
        replica,
        ownership,
        membership: membership.clone(),
        metrics,
        trees,
        repair,
        contexts: contexts.clone(),
    });
    let serving = Arc::new(AtomicBool::new(true));
    let ready: ReadyCheck = {
        let membership = membership.clone();
        Arc::new(move || match membership.my_status() {
            // Fenced (its clock is off, a peer refused it as no longer a member) or out of
            // contact with every other member, it serves nothing: not ready, so that a load
            // balancer sends its clients elsewhere.
            Some(Status::Normal) => membership.ready().map_err(|e| e.to_string()),
            Some(other) => Err(format!("node is {}", other.name())),
            None => Err("membership not known".into()),
        })
    };
    let (scraped, scraped_metrics, data_dir) = (engine.clone(), node.metrics.clone(), config.data_dir.clone());
    let admin_state = AdminState {
        registry: registry.clone(),
        supervisor: supervisor.clone(),
        serving: serving.clone(),
        ready,
        on_scrape: Some(Arc::new(move || {
            scraped.refresh_gauges();
            scraped_metrics.refresh_disk(&data_dir);
        })),
        id: node_id.clone(),
    };
    let names = Arc::new(vec![config.advertise.clone(), node_id.clone()]);
    let verify = |listener, prefix, bound, body_limit| VerifyState {
        verifier: verifier.clone(),
        body_limit,
        names: names.clone(),
        bound,
        metrics: Some(auth_metrics.clone()),
        listener,
        prefix,
    };
    let mut admin = kv_server::admin::router(admin_state)
        .merge(kv_api::cluster_router(api.clone()))
        .merge(crate::admin_router(node.clone()));
    let mut admin_options = ListenerOptions::bodies(ADMIN_BODY_LIMIT);
    // With --insecure, admin requests are not signed (curl works); peer requests still are,
    // with the built-in key, which catches corruption and other protocol versions.
    if !security.secrets.is_insecure() {
        let check = verify("admin", "/admin/", kv_transport::verify::every as BoundCheck, ADMIN_BODY_LIMIT);
        admin_options.precheck = Some(prechecked(check.clone(), None));
        admin = kv_transport::verify::guard(admin, check);
    }
    let peer_limit = crate::peer_body_limit(server.max_value_bytes);
    let peer_check = verify("peer", "/", crate::peer_bound as BoundCheck, peer_limit);
    let peer_options = ListenerOptions {
        unshed: &[kv_proto::GOSSIP_PATH],
        body_max: peer_limit,
        too_large_code: "body_too_large",
        precheck: Some(prechecked(peer_check.clone(), Some((kv_proto::GOSSIP_PATH, GOSSIP_BODY_LIMIT)))),
    };
    let peer = crate::peer_router(node, peer_check);
    let (client, client_precheck) =
        kv_server::tokens::protect(kv_api::client_router(api), security, &registry).map_err(metric_error)?;
    let client_options = ListenerOptions {
        too_large_code: "value_too_large",
        precheck: client_precheck,
        ..ListenerOptions::bodies(server.max_value_bytes.saturating_add(1))
    };
    let listener_tls = |peer| tls.clone().map(|tls| ListenerTls { tls, peer });
    let listeners = vec![
        Listener {
            name: "client",
            socket: bind("--listen", server.listen).await?,
            router: layered(client, "client", server, &http_metrics, client_options),
            tls: listener_tls(false),
        },
        Listener {
            name: "peer",
            socket: bind("--peer-listen", config.peer_listen).await?,
            router: layered(peer, "peer", server, &http_metrics, peer_options),
            tls: listener_tls(true),
        },
        Listener {
            name: "admin",
            socket: bind("--admin-listen", server.admin_listen).await?,
            router: layered(admin, "admin", server, &http_metrics, admin_options),
            tls: listener_tls(false),
        },
    ];
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
    let served =
        serve(listeners, serving, shutdown, config.server.shutdown_timeout, config.server.limits, connection_metrics)
            .await;
    watcher.abort();
    let deadline = served?;
    stop_in_order(&supervisor, &coordinator, deadline).await;
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
        refuse_if_stopped(&membership, &*engine, &node_id, identity)?;
    }
    tracing::info!("shutdown complete: storage synced");
    Ok(())
}

/// What a node asks before it sends a peer anything but gossip: nothing once a peer refused it
/// as no longer a member, nor while its clock is fenced (its stamps and its judgements of age
/// would break the rules of docs/consistency.md, "Clocks").
fn send_gate(membership: &Arc<Membership>) -> kv_transport::Gate {
    let membership = membership.clone();
    Arc::new(move || {
        if let Some(reason) = membership.fenced() {
            return Err(format!("this node is no longer a member: {reason}"));
        }
        if membership.removed_me() || membership.my_status() == Some(Status::Removed) {
            return Err("this node was removed from the cluster".into());
        }
        if membership.clock_fenced() {
            return Err("this node's clock is fenced: it is off from most members' clocks".into());
        }
        Ok(())
    })
}

/// Largest body of an admin request (they carry none but a small JSON at most).
const ADMIN_BODY_LIMIT: usize = 64 * 1024;

/// Largest body of a gossip exchange: a digest of hundreds of members is tens of KiB.
const GOSSIP_BODY_LIMIT: u64 = 1 << 20;

/// The head check of a listener: the signature's form, key and time before the body is read,
/// and (for `small`'s path) a declared body no larger than its limit.
fn prechecked(check: VerifyState, small: Option<(&'static str, u64)>) -> kv_server::http::Precheck {
    Arc::new(move |parts: &mut axum::http::request::Parts| {
        kv_transport::verify::precheck(&check, parts)?;
        if let Some((path, limit)) = small.filter(|(path, _)| parts.uri.path() == *path) {
            let declared = parts
                .headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_none_or(|length| length > limit) {
                return Err(Box::new(kv_server::http::json_error(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    &format!("{path} takes a body of at most {limit} bytes, with its Content-Length"),
                )));
            }
        }
        Ok(())
    })
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
    if let Some(reason) = membership.fenced() {
        return Err(RunError::Startup(format!(
            "node {node_id} (storage incarnation {:016x}) is no longer a member of the cluster ({reason}); it stopped \
             without serving its old data. To bring this machine back, start it with an empty data directory: it \
             joins as a new member",
            identity.incarnation
        )));
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
