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
use kv_api::process::{exit, metric_error, Process};
use kv_coordinator::Coordinator;
use kv_membership::{GossipDriver, Membership};
use kv_server::admin::ReadyCheck;
use kv_server::config::{load, ClusterSettings, Layered, ServerSettings};
use kv_server::security::SecuritySettings;
use kv_server::serve::{cancel_on_signal, init_logging, RunError};
use kv_transport::Verifier;
use kv_worker::Stage;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Default client API address of a gateway.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Default admin address of a gateway.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
/// Every kvgateway setting: flags, `KV_*` environment variables or `--config` file keys.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(name = "kvgateway", version, about = "Stateless coordinator: the client API in front of the nodes")]
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
    exit("kvgateway", start())
}

impl Layered for Settings {
    fn config_file(&self) -> Option<PathBuf> {
        self.config.clone()
    }

    fn layer_over(&mut self, lower: &mut Settings) {
        self.server.layer_over(&mut lower.server);
        self.cluster.layer_over(&mut lower.cluster);
        self.security.layer_over(&mut lower.security);
        kv_server::layer!(self, lower, zone);
    }
}

fn start() -> Result<(), RunError> {
    let settings = load::<Settings>().map_err(RunError::Startup)?;
    let server = settings.server.validate(DEFAULT_LISTEN, DEFAULT_ADMIN_LISTEN).map_err(RunError::Startup)?;
    let mut cluster = settings.cluster.validate().map_err(RunError::Startup)?;
    let security = settings.security.validate().map_err(RunError::Startup)?;
    let zone = settings.zone.unwrap_or_else(|| "default".to_owned());
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
        let process = Process::start(
            "kvgateway",
            &kv_api::process::host_name(),
            &cluster,
            &security,
            2 * server.limits.max_connections as u64 + 2048,
            "this gateway's calls to nodes are not authenticated",
        )?;
        let (membership, _) = Membership::new(
            None,
            None,
            cluster.suspect_after,
            Some(process.membership_metrics.clone()),
            cluster.expect_nodes,
        )
        .map_err(RunError::Startup)?;
        // Measured, never fenced: a gateway stamps no version; the one age it judges, a restore
        // ticket's, it reads on the members' clock (its own corrected by the offset measured).
        let clock_metrics = kv_membership::ClockMetrics::register(&process.registry).map_err(metric_error)?;
        membership.enable_clock(None, Some(clock_metrics));
        let transport = process.transport(&cluster, &server, server.listen.ip(), None, None)?;
        let client = process.replica_client(&transport, &cluster);
        let coordinator = Coordinator::new(
            client,
            membership.subscribe(),
            cluster.coordinator.clone(),
            process.coordinator_metrics.clone(),
        );
        let gossip = GossipDriver::new(
            membership.clone(),
            cluster.seeds.clone(),
            cluster.gossip_interval,
            cluster.gossip_fanout,
            transport.clone(),
        );
        process.supervisor.spawn(Stage::Membership, gossip);
        process.spawn_reloaders(&security, &transport);
        let api = process.api(&server, &coordinator, &membership, &transport);
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
        let check = if security.secrets.is_insecure() {
            None
        } else {
            let metrics = kv_transport::AuthMetrics::register(&process.registry).map_err(metric_error)?;
            let verifier = Arc::new(Verifier::new(&process.signer, security.max_skew));
            let names = Arc::new(vec!["gateway".to_owned()]);
            let every = kv_transport::verify::every as kv_transport::BoundCheck;
            let body_limit = kv_api::process::admin_body_limit(server.max_value_bytes);
            let check = Process::verify_state(&verifier, &names, "admin", "/admin/", every, body_limit, &metrics);
            Some(Process::admin_check(check, &security))
        };
        let admin_state = process.admin_state(&serving, ready, None, "gateway".into());
        let listeners = vec![
            process.client_listener(&server, &security, api.clone()).await?,
            process.admin_listener(&server, admin_state, api, None, check, kv_transport::verify::precheck_fn).await?,
        ];
        tracing::info!(
            listen = %server.listen, admin_listen = %server.admin_listen, seeds = ?cluster.seeds,
            quorum = ?cluster.coordinator.quorum, "kvgateway serving"
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        process.serve(listeners, serving, shutdown, &server, &coordinator).await?;
        tracing::info!("shutdown complete");
        Ok(())
    })
}
