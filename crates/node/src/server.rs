//! Start-up, serving and graceful shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{engine_dir, resolve_node_id, Config};
use crate::metrics::Metrics;
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

/// Opens storage, binds, serves until `shutdown` is cancelled, drains and syncs.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let node_id = resolve_node_id(config.node_id.as_deref(), &config.data_dir).map_err(RunError::Startup)?;
    let metrics = Metrics::new().map_err(|e| RunError::Startup(format!("metrics: {e}")))?;
    let dir = engine_dir(&config.data_dir, config.storage.engine).map_err(RunError::Startup)?;
    let engine = kv_storage::open(&dir, &config.storage, metrics.storage.clone())
        .map_err(|e| RunError::Startup(e.to_string()))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| RunError::Startup(format!("cannot listen on {}: {e}", config.listen)))?;
    tracing::info!(
        node_id, listen = %config.listen, advertise = %config.advertise, engine = %config.storage.engine,
        sync = %config.storage.sync, data_dir = %config.data_dir.display(), "kvnode serving"
    );
    let ready = Arc::new(AtomicBool::new(true));
    let state = AppState {
        config: Arc::new(config.clone()),
        replica: Replica::new(node_id, engine.clone()),
        metrics,
        ready: ready.clone(),
    };
    let app = router(state);
    let stop = shutdown.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.cancelled().await;
        ready.store(false, Ordering::Release);
        tracing::info!("shutdown: no new connections; draining in-flight requests");
    });
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    tokio::select! {
        result = serve => result.context("HTTP server failed").map_err(RunError::Runtime)?,
        () = deadline => tracing::warn!(timeout = ?config.shutdown_timeout, "shutdown: drain deadline passed; closing remaining requests"),
    }
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
