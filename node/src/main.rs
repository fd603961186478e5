//! The `astramq-node` binary: configuration, logging, runtime, signals;
//! `astramq-node user ...` manages users instead of running a node.

use anyhow::Context;
use astramq_node::config::NodeConfig;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("user") {
        std::process::exit(astramq_node::auth::admin::main(args.skip(1)));
    }
    let config = NodeConfig::load()
        .unwrap_or_else(|error| astramq_shared::config::exit_invalid("astramq-node", &error));
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        // Installed before the node says it is ready, so a SIGTERM sent the
        // moment it is ready is a graceful shutdown, not the default kill.
        let terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        astramq_node::run(config, shutdown_signal(terminate, interrupt)).await
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal(mut terminate: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
