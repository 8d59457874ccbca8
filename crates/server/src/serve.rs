//! Binding, serving the listeners, signals, logging and the start-up/runtime error split.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// A start-up failure (exit status 2) or a failure while running (exit status 1).
#[derive(Debug)]
pub enum RunError {
    /// Bad configuration, unusable data directory, address in use.
    Startup(String),
    /// Failed after serving started.
    Runtime(anyhow::Error),
}

/// Log levels when `RUST_LOG` is unset: ours at info, the storage engine's chatter at warn.
pub const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn,sled=warn";

/// Sets up `tracing` on stderr: `RUST_LOG` levels (default [`DEFAULT_LOG_FILTER`]), text or JSON
/// lines; colours only when stderr is a terminal (log files stay plain text).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Raises this process's open-files limit to its hard limit (Linux defaults the soft one to
/// 1,024, far below the connection caps of three listeners) and warns when even that is below
/// `needed` descriptors.
pub fn raise_fd_limit(needed: u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-files limit is below what the connection caps allow: raise it (ulimit -n, LimitNOFILE) or \
             lower --max-connections"
        ),
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-files limit"),
    }
}

/// Binds `addr` for the listener `name` (the flag that set it), turning "address in use" into
/// a start-up error.
pub async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|e| RunError::Startup(format!("{name}: cannot listen on {addr}: {e}")))
}

/// One listener: its name (for logs), its socket, what it serves and its TLS.
pub struct Listener {
    /// `client`, `peer` or `admin`.
    pub name: &'static str,
    /// The bound socket.
    pub socket: TcpListener,
    /// Its routes.
    pub router: Router,
    /// TLS, when on.
    pub tls: Option<crate::listen::ListenerTls>,
}

/// Serves every listener until `shutdown` is cancelled; then clears `serving` (readiness fails),
/// stops accepting, and lets in-flight requests finish until the deadline, `timeout` after
/// the cancellation, which it returns: the process's remaining shutdown steps share it.
pub async fn serve(
    listeners: Vec<Listener>,
    serving: Arc<AtomicBool>,
    shutdown: CancellationToken,
    timeout: Duration,
    limits: crate::listen::ConnectionLimits,
    metrics: crate::listen::ConnectionMetrics,
) -> Result<Instant, RunError> {
    let mut servers = JoinSet::new();
    for listener in listeners {
        let (name, stop, metrics) = (listener.name, shutdown.clone(), metrics.clone());
        servers.spawn(async move {
            let served = crate::listen::serve_listener(
                name,
                listener.socket,
                listener.router,
                listener.tls,
                limits,
                metrics,
                stop,
            )
            .await;
            (name, served)
        });
    }
    let ended = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        Some(ended) = servers.join_next() => Some(ended),
    };
    // A listener that stops before the shutdown token (which alone starts a graceful stop)
    // failed.
    if let (Some(ended), false) = (ended, shutdown.is_cancelled()) {
        let detail = match ended {
            Ok((name, Ok(()))) => format!("{name} listener stopped"),
            Ok((name, Err(e))) => format!("{name} listener failed: {e}"),
            Err(e) => format!("listener task failed: {e}"),
        };
        return Err(RunError::Runtime(anyhow::anyhow!(detail)));
    }
    // The deadline counts from the signal, not from start-up.
    let deadline = Instant::now() + timeout;
    serving.store(false, Ordering::Release);
    tracing::info!(?timeout, "shutdown: no new connections; draining in-flight requests");
    loop {
        match tokio::time::timeout_at(deadline, servers.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok((name, Err(e))))) => {
                tracing::warn!(listener = name, error = %e, "listener failed while draining")
            }
            Ok(Some(_)) => {}
            Err(_) => {
                tracing::warn!(?timeout, "shutdown: drain deadline passed; closing remaining requests");
                servers.abort_all();
                break;
            }
        }
    }
    Ok(deadline)
}

/// What the shutdown of a process does after its listeners drained, in order, each step within
/// what is left of `deadline`: stop the upkeep workers, wait for the coordinator's background
/// replication and read repair, stop the batchers, stop gossip.
pub async fn stop_in_order(
    supervisor: &kv_worker::Supervisor,
    coordinator: &kv_coordinator::Coordinator,
    deadline: Instant,
) {
    supervisor.stop(kv_worker::Stage::Upkeep, deadline).await;
    let tasks = coordinator.tasks();
    tasks.close();
    if tokio::time::timeout_at(deadline, tasks.wait()).await.is_err() {
        tracing::warn!(pending = tasks.len(), "shutdown: background replication did not finish in time");
    }
    supervisor.stop(kv_worker::Stage::Transport, deadline).await;
    supervisor.stop(kv_worker::Stage::Membership, deadline).await;
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
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    token.cancel();
}
