//! `kvnode`: parse configuration, set up logging, run the node.

/// mimalloc: glibc malloc and free were ~15% of CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use kv_node::config::Settings;
use kv_node::server::run;
use kv_server::serve::{cancel_on_signal, init_logging, RunError};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config = match Settings::load().and_then(Settings::validate) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("kvnode: error: {message}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.server.log_format);
    let runtime = match config.server.runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kvnode: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    runtime.spawn(cancel_on_signal(shutdown.clone()));
    match runtime.block_on(run(config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Startup(message)) => {
            eprintln!("kvnode: error: {message}");
            ExitCode::from(2)
        }
        Err(RunError::Runtime(e)) => {
            eprintln!("kvnode: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
