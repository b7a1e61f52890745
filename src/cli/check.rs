//! `fleetscale check`: validate a config and, unless offline, prove each fleet's cloud
//! access and read its signals once, changing nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use clap::Args;
use fleetscale_adapters::SystemClock;

use super::shared::{Failure, load_config, runtime};
use crate::agent;
use crate::config::{FleetConfig, SignalEntry};
use crate::signal::SignalError;
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The agent's TOML config.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Only validate the file; contact no cloud and no signal source.
    #[arg(long)]
    pub offline: bool,
}

/// Reads one of a fleet's signals once and describes its latest value.
async fn check_signal(
    fleet: &FleetConfig,
    entry: &SignalEntry,
    serving: Option<u32>,
) -> anyhow::Result<String> {
    let mut signal = agent::build_signal(&fleet.name, &entry.source, &SystemClock)?;
    let value = match signal.latest(SystemTime::now(), serving.unwrap_or(1)).await {
        Ok(value) => value,
        // A trace or a generator starts playing now: it is loaded and has no complete
        // step yet. A query that returns nothing, though, is a mistake worth failing on.
        Err(SignalError::Missing(why)) if entry.source.settings().may_start_empty() => {
            return Ok(format!("loaded; {why}"));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(match serving {
        Some(n) => format!("latest demand {value:.2} instances ({n} serving)"),
        None => format!("latest demand {value:.2} instances (serving count unknown: 1 assumed)"),
    })
}

pub fn check(args: CheckArgs) -> Result<(), Failure> {
    let config = load_config(&args.config)?;
    println!(
        "{}: valid ({} fleet{})",
        args.config.display(),
        config.fleets.len(),
        if config.fleets.len() == 1 { "" } else { "s" }
    );
    for fleet in &config.fleets {
        for line in crate::schedule::conflict_warnings(fleet, std::time::SystemTime::now()) {
            println!("warning: {line}");
        }
    }
    if args.offline {
        return Ok(());
    }
    telemetry::init_logging(LogFormat::Text);
    let all_ok = runtime()?.block_on(async {
        let mut all_ok = true;
        for fleet in &config.fleets {
            let cloud = agent::build_cloud(fleet, Arc::new(SystemClock)).await;
            let report = match &cloud {
                Ok(cloud) => cloud.verify_access().await.map_err(anyhow::Error::from),
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            };
            match report {
                Ok(report) => {
                    println!(
                        "fleet {} ({}): authenticated as {}",
                        fleet.name,
                        fleet.adapter.kind(),
                        report.identity
                    );
                    for check in &report.checks {
                        let verdict = if check.allowed { "allowed" } else { "DENIED" };
                        println!("  {:<48} {verdict:<8} {}", check.permission, check.detail);
                    }
                    all_ok &= report.all_allowed();
                }
                Err(e) => {
                    println!(
                        "fleet {} ({}): FAILED: {e:#}",
                        fleet.name,
                        fleet.adapter.kind()
                    );
                    all_ok = false;
                }
            }
            // The signal, read once as the controller would: a utilisation signal needs
            // the serving count, so the fleet is read first (when the cloud allows it).
            let serving = match &cloud {
                Ok(cloud) => cloud.read_fleet().await.map(|f| f.serving()).ok(),
                Err(_) => None,
            };
            for entry in &fleet.signals {
                let kind = entry.source.kind();
                // A lone `[fleets.signal]` is named by its kind: said once.
                let label = if entry.name == kind {
                    format!("signal ({kind})")
                } else {
                    format!("signal {} ({kind})", entry.name)
                };
                match check_signal(fleet, entry, serving).await {
                    Ok(line) => println!("  {label}: {line}"),
                    Err(e) => {
                        println!("  {label}: FAILED: {e:#}");
                        all_ok = false;
                    }
                }
            }
        }
        all_ok
    });
    if all_ok {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "the check failed for at least one fleet (cloud access or signal)"
        )))
    }
}
