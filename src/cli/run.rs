//! `fleetscale run`: the agent, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use fleetscale_adapters::SystemClock;

use super::shared::{Failure, load_config, runtime};
use crate::agent::{self, Wiring};
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent's TOML config.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Decide and log as usual, but make no change to any fleet: intended launches and
    /// removals are recorded and logged instead.
    #[arg(long)]
    pub dry_run: bool,
    /// Override the config's log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

pub fn run(args: RunArgs) -> Result<(), Failure> {
    let config = load_config(&args.config)?;
    telemetry::init_logging(args.log_format.unwrap_or(config.agent.log_format));
    let runtime = runtime()?;
    let outcome = runtime.block_on(async {
        let wiring = Wiring {
            dry_run: args.dry_run,
        };
        let stop = stop_signal()
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot listen for SIGTERM: {e}")))?;
        agent::run(&config, wiring, Arc::new(SystemClock), stop)
            .await
            .map_err(Failure::Runtime)
    });
    // A decision abandoned at the stop may still be computing on the blocking pool; its
    // result is not needed.
    runtime.shutdown_background();
    outcome
}

/// Listens for SIGTERM (on unix) at once; the future resolves on SIGINT or SIGTERM.
/// Fails when SIGTERM cannot be listened for. Call it within the runtime.
pub fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            tokio::select! {
                _ = interrupt => tracing::info!("SIGINT received"),
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = interrupt.await;
        }
    })
}
