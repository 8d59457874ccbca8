//! `kvnode`: parse configuration, set up logging, run the node.

/// mimalloc: glibc malloc and free were ~15% of CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use kv_api::process::exit;
use kv_node::config::Settings;
use kv_node::start::run;
use kv_server::config::load;
use kv_server::serve::{cancel_on_signal, init_logging, RunError};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    exit("kvnode", start())
}

fn start() -> Result<(), RunError> {
    let config = load::<Settings>().and_then(Settings::validate).map_err(RunError::Startup)?;
    init_logging(config.server.log_format);
    let runtime =
        config.server.runtime().map_err(|e| RunError::Startup(format!("cannot start the async runtime: {e}")))?;
    let shutdown = CancellationToken::new();
    runtime.spawn(cancel_on_signal(shutdown.clone()));
    runtime.block_on(run(config, shutdown))
}
