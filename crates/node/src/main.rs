//! `kvnode`: parse configuration, set up logging, run the node.

use std::process::ExitCode;

use kv_node::config::{LogFormat, Settings};
use kv_node::server::{cancel_on_signal, run, RunError};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Settings::load().and_then(Settings::validate) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("kvnode: error: {message}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
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
