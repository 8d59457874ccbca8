//! `kvgateway`: a stateless coordinator in front of the storage nodes.
//!
//! It serves exactly the client API of a kvnode (`/kv/{key}` on `--listen`; `/cluster/*`,
//! `/health/*`, `/metrics` and `/admin/workers` on `--admin-listen`) through the same
//! coordinator ([`kv_api`], [`kv_coordinator`]), but stores nothing and links no storage
//! engine: it follows the cluster's gossip as an observer that owns no range
//! ([`kv_membership`], pulling member states from `--seeds`, the nodes' peer addresses, and
//! known members every `--gossip-interval`), places keys on the ring and calls the replicas
//! through the peer transport ([`kv_transport`]), so any number of gateways can run side by
//! side. It never appears in a vector clock: a storage node coordinates every write. It serves
//! no peer listener: nothing calls a gateway.

/// mimalloc: glibc malloc and free were ~15% of CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use kv_api::context::ContextSealer;
use kv_api::ApiState;
use kv_coordinator::{Coordinator, CoordinatorMetrics};
use kv_membership::{GossipDriver, Membership, MembershipMetrics};
use kv_server::admin::{AdminState, ReadyCheck};
use kv_server::config::{settings_file, ClusterSettings, ServerSettings};
use kv_server::http::{layered, HttpMetrics, ListenerOptions};
use kv_server::listen::{ConnectionMetrics, ListenerTls};
use kv_server::security::SecuritySettings;
use kv_server::serve::{bind, cancel_on_signal, init_logging, serve, stop_in_order, Listener, RunError};
use kv_server::tls::Tls;
use kv_transport::{HttpReplicaClient, PeerTransport, Signer, TransportOptions, Verifier, VerifyState};
use kv_worker::{Stage, Supervisor};
use prometheus::Registry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Default client API address of a gateway.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Default admin address of a gateway.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
/// Every kvgateway setting: flags, `KV_*` environment variables or `--config` file keys.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "kvgateway",
    version,
    about = "Stateless coordinator of the kv store: the client API in front of the nodes"
)]
#[serde(rename_all = "kebab-case")]
struct Settings {
    /// TOML file with any of the settings below, keyed by long flag name.
    #[arg(long, env = "KV_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The zone this gateway runs in: `local_quorum` counts the key's replicas in it
    /// [default: default].
    #[arg(long, env = "KV_ZONE")]
    zone: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    server: ServerSettings,
    #[command(flatten)]
    #[serde(flatten)]
    cluster: ClusterSettings,
    #[command(flatten)]
    #[serde(flatten)]
    security: SecuritySettings,
}

fn main() -> ExitCode {
    match start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Startup(message)) => {
            eprintln!("kvgateway: error: {message}");
            ExitCode::from(2)
        }
        Err(RunError::Runtime(e)) => {
            eprintln!("kvgateway: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn start() -> Result<(), RunError> {
    let mut settings = Settings::parse();
    let mut file_zone = None;
    if let Some(path) = settings.config.clone() {
        let mut file: Settings = settings_file(&path).map_err(RunError::Startup)?;
        settings.server.layer_over(&mut file.server);
        settings.cluster.layer_over(&mut file.cluster);
        settings.security.layer_over(&mut file.security);
        file_zone = file.zone;
    }
    let server = settings.server.validate(DEFAULT_LISTEN, DEFAULT_ADMIN_LISTEN).map_err(RunError::Startup)?;
    let mut cluster = settings.cluster.validate().map_err(RunError::Startup)?;
    let security = settings.security.validate().map_err(RunError::Startup)?;
    let zone = settings.zone.or(file_zone).unwrap_or_else(|| "default".to_owned());
    kv_membership::validate_node_id(&zone).map_err(|e| RunError::Startup(format!("--zone: {e}")))?;
    cluster.coordinator.zone = zone;
    if cluster.seeds.is_empty() {
        return Err(RunError::Startup(
            "--seeds: a gateway needs at least one node (its --peer-listen address) to learn the cluster from".into(),
        ));
    }
    init_logging(server.log_format);
    let runtime = server.runtime().map_err(|e| RunError::Startup(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let registry = Registry::new();
        let metric_error = |e: prometheus::Error| RunError::Startup(format!("metrics: {e}"));
        let coordinator_metrics = CoordinatorMetrics::register(&registry).map_err(metric_error)?;
        kv_server::admin::register_process(&registry, "kvgateway").map_err(metric_error)?;
        let http_metrics = HttpMetrics::register(&registry).map_err(metric_error)?;
        let membership_metrics =
            MembershipMetrics::register(&registry, cluster.coordinator.quorum.n).map_err(metric_error)?;
        let supervisor = Supervisor::with_metrics(&registry).map_err(metric_error)?;
        let connection_metrics = ConnectionMetrics::register(&registry).map_err(metric_error)?;
        kv_server::serve::raise_fd_limit(2 * server.limits.max_connections as u64 + 2048);
        if security.secrets.is_insecure() {
            tracing::warn!("--insecure: no cluster secret; this gateway's calls to nodes are not authenticated");
        }
        let signer = Signer::new(&security.secrets);
        let contexts = Arc::new(ContextSealer::new(&security.secrets));
        let tls = security.tls.as_ref().map(Tls::load).transpose().map_err(RunError::Startup)?.map(Arc::new);
        let (membership, _) =
            Membership::new(None, None, cluster.suspect_after, Some(membership_metrics), cluster.expect_nodes)
                .map_err(RunError::Startup)?;
        // Measured, never fenced: a gateway stamps no version and judges no age.
        membership.enable_clock(None, Some(kv_membership::ClockMetrics::register(&registry).map_err(metric_error)?));
        let options = TransportOptions {
            timeout: cluster.coordinator.replica_timeout,
            max_in_flight: cluster.max_replica_calls.get(),
            signer: signer.clone(),
            local_address: Some(server.listen.ip()).filter(|ip| !ip.is_unspecified()),
            tls: tls.as_ref().map(|t| t.client_config()),
            pool_idle: server.limits.idle_timeout / 2,
            gate: None,
            on_not_member: None,
        };
        let transport = PeerTransport::new(options, Some(&registry)).map_err(RunError::Startup)?;
        let client = Arc::new(HttpReplicaClient::new(
            transport.clone(),
            supervisor.clone(),
            cluster.batch_limits(),
            Some(coordinator_metrics.batch_calls.clone()),
        ));
        let coordinator =
            Coordinator::new(client, membership.subscribe(), cluster.coordinator.clone(), coordinator_metrics);
        let gossip = GossipDriver::new(
            membership.clone(),
            cluster.seeds.clone(),
            cluster.gossip_interval,
            cluster.gossip_fanout,
            transport.clone(),
        );
        supervisor.spawn(Stage::Membership, gossip);
        let on_secrets = {
            let (signer, contexts) = (signer.clone(), contexts.clone());
            Box::new(move |secrets: &kv_transport::Secrets| {
                signer.reload(secrets);
                contexts.reload(secrets);
            })
        };
        kv_server::reload::spawn_reloaders(&supervisor, &security, on_secrets, tls.as_ref(), &transport);
        let api = Arc::new(ApiState {
            max_value_bytes: server.max_value_bytes,
            coordinator: coordinator.clone(),
            membership: membership.clone(),
            contexts,
        });
        let serving = Arc::new(AtomicBool::new(true));
        let ready: ReadyCheck = {
            let membership = membership.clone();
            Arc::new(move || {
                membership.formed().map_err(|(normal, expected)| {
                    format!("the cluster is forming: {normal} of {expected} expected members are up")
                })?;
                if membership.topology().ring.nodes().is_empty() {
                    return Err("no member known yet".into());
                }
                Ok(())
            })
        };
        let admin_state = AdminState {
            registry: registry.clone(),
            supervisor: supervisor.clone(),
            serving: serving.clone(),
            ready,
            on_scrape: None,
            id: "gateway".into(),
        };
        let mut admin = kv_server::admin::router(admin_state).merge(kv_api::cluster_router(api.clone()));
        let mut admin_options = ListenerOptions::bodies(64 * 1024);
        if !security.secrets.is_insecure() {
            let auth_metrics = kv_transport::AuthMetrics::register(&registry).map_err(metric_error)?;
            let check = VerifyState {
                verifier: Arc::new(Verifier::new(&signer, security.max_skew)),
                body_limit: 64 * 1024,
                names: Arc::new(vec!["gateway".into()]),
                bound: kv_transport::verify::every,
                metrics: Some(auth_metrics),
                listener: "admin",
                prefix: "/admin/",
            };
            admin_options.precheck = Some(kv_transport::verify::precheck_fn(check.clone()));
            admin = kv_transport::verify::guard(admin, check);
        }
        let (client, client_precheck) =
            kv_server::tokens::protect(kv_api::client_router(api), &security, &registry).map_err(metric_error)?;
        let client_options = ListenerOptions {
            too_large_code: "value_too_large",
            precheck: client_precheck,
            ..ListenerOptions::bodies(server.max_value_bytes.saturating_add(1))
        };
        let listener_tls = || tls.clone().map(|tls| ListenerTls { tls, peer: false });
        let listeners = vec![
            Listener {
                name: "client",
                socket: bind("--listen", server.listen).await?,
                router: layered(client, "client", &server, &http_metrics, client_options),
                tls: listener_tls(),
            },
            Listener {
                name: "admin",
                socket: bind("--admin-listen", server.admin_listen).await?,
                router: layered(admin, "admin", &server, &http_metrics, admin_options),
                tls: listener_tls(),
            },
        ];
        tracing::info!(
            listen = %server.listen, admin_listen = %server.admin_listen, seeds = ?cluster.seeds,
            quorum = ?cluster.coordinator.quorum, "kvgateway serving"
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let deadline =
            serve(listeners, serving, shutdown, server.shutdown_timeout, server.limits, connection_metrics).await?;
        stop_in_order(&supervisor, &coordinator, deadline).await;
        tracing::info!("shutdown complete");
        Ok(())
    })
}
