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
use crate::membership::{Member, Membership, MembershipRefresher};
use crate::metrics::Metrics;
use crate::peer_client::{HttpReplicaClient, NodeReplicaClient};
use crate::replica::Replica;
use crate::{router, AppState};

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
    /// The membership refresher, run by [`serve`].
    pub refresher: MembershipRefresher,
}

/// Builds the coordinator, membership and handler state for a node (`local` is its replica and
/// member) or a gateway (`None`).
pub fn service(
    local: Option<(Replica, Member)>,
    state_file: Option<std::path::PathBuf>,
    cluster: &ClusterConfig,
    server: &ServerConfig,
    metrics: Metrics,
) -> Result<Service, String> {
    let (replica, member) = local.map_or((None, None), |(r, m)| (Some(r), Some(m)));
    let membership = Membership::new(member, state_file)?;
    let remote = HttpReplicaClient::new(cluster.coordinator.replica_timeout, cluster.max_replica_calls.get())?;
    let client = Arc::new(NodeReplicaClient::new(replica.clone(), remote));
    let coordinator =
        Coordinator::new(client, membership.subscribe(), cluster.coordinator.clone(), metrics.coordinator.clone());
    let refresher = MembershipRefresher::new(
        membership.clone(),
        cluster.seeds.clone(),
        cluster.refresh_interval,
        cluster.coordinator.replica_timeout,
    );
    let state = AppState {
        max_value_bytes: server.max_value_bytes,
        coordinator,
        membership,
        replica,
        metrics,
        ready: Arc::new(AtomicBool::new(true)),
    };
    Ok(Service { state, refresher })
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
    let Service { state, refresher } = service;
    let ready = state.ready.clone();
    let coordinator: Arc<Coordinator> = state.coordinator.clone();
    let app: Router = router(state, server);
    let refresher = tokio::spawn(refresher.run(shutdown.clone()));
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
    let _ = refresher.await;
    let tasks = coordinator.tasks();
    tasks.close();
    let left = server.shutdown_timeout.saturating_sub(deadline.elapsed());
    if tokio::time::timeout(left, tasks.wait()).await.is_err() {
        tracing::warn!(pending = tasks.len(), "shutdown: background replication did not finish in time");
    }
    Ok(())
}

/// Runs a kvnode: opens storage, binds, serves until `shutdown`, drains and syncs.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let node_id = resolve_node_id(config.node_id.as_deref(), &config.data_dir).map_err(RunError::Startup)?;
    let metrics = Metrics::new().map_err(|e| RunError::Startup(format!("metrics: {e}")))?;
    let storage_metrics = metrics.register_storage().map_err(|e| RunError::Startup(format!("metrics: {e}")))?;
    let dir = engine_dir(&config.data_dir, config.storage.engine).map_err(RunError::Startup)?;
    let engine =
        kv_storage::open(&dir, &config.storage, storage_metrics).map_err(|e| RunError::Startup(e.to_string()))?;
    let member = Member {
        id: node_id.clone(),
        address: config.advertise.clone(),
        zone: config.zone.clone(),
        weight: config.weight.get(),
    };
    let replica = Replica::new(node_id.clone(), engine.clone());
    let service = service(
        Some((replica, member)),
        Some(config.data_dir.join("members.json")),
        &config.cluster,
        &config.server,
        metrics,
    )
    .map_err(RunError::Startup)?;
    let listener = bind(config.server.listen).await?;
    tracing::info!(
        node_id, listen = %config.server.listen, advertise = %config.advertise, engine = %config.storage.engine,
        sync = %config.storage.sync, data_dir = %config.data_dir.display(), seeds = ?config.cluster.seeds,
        quorum = ?config.cluster.coordinator.quorum, "kvnode serving"
    );
    serve(listener, service, &config.server, shutdown).await?;
    tokio::task::spawn_blocking(move || engine.sync())
        .await
        .context("storage sync task")
        .and_then(|r| r.context("final storage sync"))
        .map_err(RunError::Runtime)?;
    tracing::info!("shutdown complete: storage synced");
    Ok(())
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
