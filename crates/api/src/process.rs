//! What a kvnode and a kvgateway both start, once: the metrics registry and the process-wide
//! metrics, the supervisor, the signer and context sealer, TLS, the peer transport and its
//! batched replica client, the reloaders, the client and admin listeners, the ordered stop and
//! the exit code. Each binary adds only what is its own (a node: storage, the replica, its
//! workers and the peer listener; a gateway: nothing but its readiness).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::Router;
use kv_coordinator::{Coordinator, CoordinatorMetrics};
use kv_membership::{Membership, MembershipMetrics};
use kv_server::admin::AdminState;
use kv_server::config::{ClusterConfig, ServerConfig};
use kv_server::http::{layered, HttpMetrics, ListenerOptions};
use kv_server::listen::{ConnectionMetrics, ListenerTls};
use kv_server::security::SecurityConfig;
use kv_server::serve::{bind, serve, stop_in_order, Listener, RunError};
use kv_server::tls::Tls;
use kv_transport::{HttpReplicaClient, PeerTransport, Signer, TransportOptions, Verifier, VerifyState};
use kv_worker::Supervisor;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::context::ContextSealer;
use crate::ApiState;

/// Largest body of an admin request: a restore page (`POST /admin/restore`) carries whole
/// records, each up to 8 × `--max-value-bytes` of values (the sibling bytes cap), with room for
/// their clocks; every other admin request carries a small JSON at most.
pub fn admin_body_limit(max_value_bytes: usize) -> usize {
    max_value_bytes.saturating_add(1).saturating_mul(8).saturating_add(1 << 20)
}

/// The error a metric registration fails with: a start-up error.
pub fn metric_error(e: prometheus::Error) -> RunError {
    RunError::Startup(format!("metrics: {e}"))
}

/// The exit code of a binary's run: 0, 2 for a start-up error (bad flags, config, ports), 1 for
/// a failure while running; the error goes to stderr prefixed with `name`.
pub fn exit(name: &str, result: Result<(), RunError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Startup(message)) => {
            eprintln!("{name}: error: {message}");
            ExitCode::from(2)
        }
        Err(RunError::Runtime(e)) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The pieces every serving process has, built once at start-up.
pub struct Process {
    /// Every metric of the process.
    pub registry: Registry,
    /// Runs, shows and stops every background worker.
    pub supervisor: Supervisor,
    /// The coordinator's metrics (the batchers count their calls in them too).
    pub coordinator_metrics: CoordinatorMetrics,
    /// Membership's metrics.
    pub membership_metrics: MembershipMetrics,
    /// Requests by listener, route and status.
    pub http_metrics: HttpMetrics,
    /// Connections by listener.
    pub connection_metrics: ConnectionMetrics,
    /// Signs every request this process sends a peer.
    pub signer: Signer,
    /// Seals and opens client context tokens.
    pub contexts: Arc<ContextSealer>,
    /// The listeners' and the transport's TLS, when on.
    pub tls: Option<Arc<Tls>>,
}

impl Process {
    /// Registers the process-wide metrics (`kind`: `kvnode` or `kvgateway`; `node`: a node's id,
    /// a gateway's host name, in `kv_build_info`), raises the file
    /// limit to `files`, loads the secrets and TLS files. `insecure` is what `--insecure` means
    /// for this kind of process, logged as a warning.
    pub fn start(
        kind: &str,
        node: &str,
        cluster: &ClusterConfig,
        security: &SecurityConfig,
        files: u64,
        insecure: &str,
    ) -> Result<Process, RunError> {
        let registry = Registry::new();
        kv_server::admin::register_process(&registry, kind, node).map_err(metric_error)?;
        let process = Process {
            coordinator_metrics: CoordinatorMetrics::register(&registry).map_err(metric_error)?,
            membership_metrics: MembershipMetrics::register(&registry, cluster.coordinator.quorum.n)
                .map_err(metric_error)?,
            http_metrics: HttpMetrics::register(&registry).map_err(metric_error)?,
            connection_metrics: ConnectionMetrics::register(&registry).map_err(metric_error)?,
            supervisor: Supervisor::with_metrics(&registry).map_err(metric_error)?,
            signer: Signer::new(&security.secrets),
            contexts: Arc::new(ContextSealer::new(&security.secrets)),
            tls: security.tls.as_ref().map(Tls::load).transpose().map_err(RunError::Startup)?.map(Arc::new),
            registry,
        };
        kv_server::serve::raise_fd_limit(files);
        if security.secrets.is_insecure() {
            tracing::warn!("--insecure: no cluster secret; {insecure}");
        }
        Ok(process)
    }

    /// The peer transport, sending from `local` (the listen address's IP unless unspecified),
    /// with the node's gate and not-a-member handler (`None` for a gateway).
    pub fn transport(
        &self,
        cluster: &ClusterConfig,
        server: &ServerConfig,
        local: std::net::IpAddr,
        gate: Option<kv_transport::Gate>,
        on_not_member: Option<kv_transport::OnNotMember>,
    ) -> Result<PeerTransport, RunError> {
        let options = TransportOptions {
            timeout: cluster.coordinator.replica_timeout,
            max_in_flight: cluster.max_replica_calls.get(),
            signer: self.signer.clone(),
            local_address: Some(local).filter(|ip| !ip.is_unspecified()),
            tls: self.tls.as_ref().map(|t| t.client_config()),
            pool_idle: server.limits.idle_timeout / 2,
            gate,
            on_not_member,
        };
        PeerTransport::new(options, Some(&self.registry)).map_err(RunError::Startup)
    }

    /// The batched replica client over `transport`: one batcher per peer, under the supervisor.
    pub fn replica_client(&self, transport: &PeerTransport, cluster: &ClusterConfig) -> Arc<HttpReplicaClient> {
        Arc::new(HttpReplicaClient::new(
            transport.clone(),
            self.supervisor.clone(),
            cluster.batch_limits(),
            Some(self.coordinator_metrics.batch_calls.clone()),
        ))
    }

    /// Reloads the secrets (signer and contexts), client tokens and TLS files on SIGHUP and
    /// when they change.
    pub fn spawn_reloaders(&self, security: &SecurityConfig, transport: &PeerTransport) {
        let on_secrets = {
            let (signer, contexts) = (self.signer.clone(), self.contexts.clone());
            Box::new(move |secrets: &kv_transport::Secrets| {
                signer.reload(secrets);
                contexts.reload(secrets);
            })
        };
        kv_server::reload::spawn_reloaders(&self.supervisor, security, on_secrets, self.tls.as_ref(), transport);
    }

    /// What the client API and the cluster views read.
    pub fn api(
        &self,
        server: &ServerConfig,
        coordinator: &Arc<Coordinator>,
        membership: &Arc<Membership>,
        transport: &PeerTransport,
    ) -> Arc<ApiState> {
        Arc::new(ApiState {
            max_value_bytes: server.max_value_bytes,
            coordinator: coordinator.clone(),
            membership: membership.clone(),
            contexts: self.contexts.clone(),
            transport: Some(transport.clone()),
        })
    }

    /// The checks of signed requests on a listener: signatures by `verifier`, addressed to
    /// one of `names`, under `prefix`.
    pub fn verify_state(
        verifier: &Arc<Verifier>,
        names: &Arc<Vec<String>>,
        listener: &'static str,
        prefix: &'static str,
        bound: kv_transport::BoundCheck,
        body_limit: usize,
        metrics: &kv_transport::AuthMetrics,
    ) -> VerifyState {
        VerifyState {
            verifier: verifier.clone(),
            body_limit,
            names: names.clone(),
            bound,
            metrics: Some(metrics.clone()),
            listener,
            prefix,
            bearer: None,
        }
    }

    /// The admin listener's check: signed requests, and the admin tokens of `security` when
    /// it has some (`--admin-tokens-file`).
    pub fn admin_check(mut check: VerifyState, security: &SecurityConfig) -> VerifyState {
        check.bearer = security
            .admin_tokens
            .as_ref()
            .map(|(_, tokens)| kv_server::tokens::admin_bearer(tokens.clone(), check.metrics.clone()));
        check
    }

    /// The client listener on `--listen`: the client API behind client tokens when they are on.
    pub async fn client_listener(
        &self,
        server: &ServerConfig,
        security: &SecurityConfig,
        api: Arc<ApiState>,
    ) -> Result<Listener, RunError> {
        let (client, precheck) =
            kv_server::tokens::protect(crate::client_router(api), security, &self.registry).map_err(metric_error)?;
        let options = ListenerOptions {
            too_large_code: "value_too_large",
            precheck,
            ..ListenerOptions::bodies(server.max_value_bytes)
        };
        self.listener("client", "--listen", server.listen, client, server, options, false).await
    }

    /// The admin listener on `--admin-listen`: `admin_state`'s routes, the cluster views and
    /// `extra`, behind `check` (signed requests) unless the process runs `--insecure`.
    pub async fn admin_listener(
        &self,
        server: &ServerConfig,
        admin_state: AdminState,
        api: Arc<ApiState>,
        extra: Option<Router>,
        check: Option<VerifyState>,
        precheck: impl FnOnce(VerifyState) -> kv_server::http::Precheck,
    ) -> Result<Listener, RunError> {
        let mut admin = kv_server::admin::router(admin_state).merge(crate::cluster_router(api));
        if let Some(extra) = extra {
            admin = admin.merge(extra);
        }
        let mut options = ListenerOptions::bodies(admin_body_limit(server.max_value_bytes));
        if let Some(check) = check {
            options.precheck = Some(precheck(check.clone()));
            admin = kv_transport::verify::guard(admin, check);
        }
        self.listener("admin", "--admin-listen", server.admin_listen, admin, server, options, false).await
    }

    /// A bound listener named `name` serving `router` with this process's layers and TLS.
    #[allow(clippy::too_many_arguments)]
    pub async fn listener(
        &self,
        name: &'static str,
        flag: &str,
        address: std::net::SocketAddr,
        router: Router,
        server: &ServerConfig,
        options: ListenerOptions,
        peer: bool,
    ) -> Result<Listener, RunError> {
        Ok(Listener {
            name,
            socket: bind(flag, address).await?,
            router: layered(router, name, server, &self.http_metrics, options),
            tls: self.tls.clone().map(|tls| ListenerTls { tls, peer }),
        })
    }

    /// The admin state of this process: its metrics, workers and readiness.
    pub fn admin_state(
        &self,
        serving: &Arc<AtomicBool>,
        ready: kv_server::admin::ReadyCheck,
        on_scrape: Option<Arc<dyn Fn() + Send + Sync>>,
        id: String,
    ) -> AdminState {
        AdminState {
            registry: self.registry.clone(),
            supervisor: self.supervisor.clone(),
            serving: serving.clone(),
            ready,
            on_scrape,
            id,
        }
    }

    /// Serves `listeners` until `shutdown`, drains them, then stops the workers in order after
    /// the coordinator's background work, all within `--shutdown-timeout`.
    pub async fn serve(
        &self,
        listeners: Vec<Listener>,
        serving: Arc<AtomicBool>,
        shutdown: CancellationToken,
        server: &ServerConfig,
        coordinator: &Coordinator,
    ) -> Result<(), RunError> {
        let connections = self.connection_metrics.clone();
        let deadline = serve(listeners, serving, shutdown, server.shutdown_timeout, server.limits, connections).await?;
        stop_in_order(&self.supervisor, coordinator, deadline).await;
        Ok(())
    }
}

/// This machine's host name (a pod's name on Kubernetes), or `unknown`: what names a gateway in
/// `kv_build_info`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
