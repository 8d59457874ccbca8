//! `kvgateway`: a stateless coordinator in front of the storage nodes.
//!
//! It serves exactly the client API of a kvnode (`/kv/{key}`, `/cluster/*`, `/health`,
//! `/metrics`) through the same coordinator, but stores nothing: it follows the cluster's
//! gossip as an observer that owns no range (pulling member states from `--seeds` and known
//! members every `--gossip-interval`), places keys on the ring and talks to the replicas itself,
//! so any number of gateways can run side by side. It never appears in a vector clock: a storage node
//! coordinates every write.

/// mimalloc: glibc malloc and free were ~15% of CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kv_node::config::{settings_file, ClusterSettings, ServerSettings};
use kv_node::metrics::Metrics;
use kv_node::server::{bind, cancel_on_signal, gateway_service, init_logging, serve, RunError};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Default client API address of a gateway.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

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
    #[command(flatten)]
    #[serde(flatten)]
    server: ServerSettings,
    #[command(flatten)]
    #[serde(flatten)]
    cluster: ClusterSettings,
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
    if let Some(path) = settings.config.clone() {
        let mut file: Settings = settings_file(&path).map_err(RunError::Startup)?;
        settings.server.layer_over(&mut file.server);
        settings.cluster.layer_over(&mut file.cluster);
    }
    let server = settings.server.validate(DEFAULT_LISTEN).map_err(RunError::Startup)?;
    let cluster = settings.cluster.validate().map_err(RunError::Startup)?;
    if cluster.seeds.is_empty() {
        return Err(RunError::Startup("--seeds: a gateway needs at least one node to learn the cluster from".into()));
    }
    init_logging(server.log_format);
    let runtime = server.runtime().map_err(|e| RunError::Startup(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let metrics = Metrics::new().map_err(|e| RunError::Startup(format!("metrics: {e}")))?;
        let service = gateway_service(&cluster, &server, metrics).map_err(RunError::Startup)?;
        let listener = bind(server.listen).await?;
        tracing::info!(listen = %server.listen, seeds = ?cluster.seeds, quorum = ?cluster.coordinator.quorum, "kvgateway serving");
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        serve(listener, service, &server, shutdown).await?;
        tracing::info!("shutdown complete");
        Ok(())
    })
}
