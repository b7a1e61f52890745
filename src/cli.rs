//! The command line: `run`, `check`, `replay` (and `plan`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use fleetscale_adapters::SystemClock;

use crate::agent::{self, Wiring};
use crate::config::{Config, FleetConfig, SignalConfig, SignalEntry};
use crate::signal::SignalError;
use crate::telemetry::{self, LogFormat};

/// fleetscale: an autoscaling agent for virtual-machine fleets.
///
/// It watches how much work a fleet has, forecasts it, plans the fleet size with a
/// dynamic program that weighs instance cost against unserved demand and boot delay, and
/// grows or shrinks the fleet on AWS EC2, Azure VM Scale Sets or an in-memory mock.
#[derive(Debug, Parser)]
#[command(name = "fleetscale", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: reconcile every fleet of the config each tick until SIGINT or
    /// SIGTERM, then stop cleanly (each fleet finishes its current call) and exit 0.
    Run(RunArgs),
    /// Validate a config (exit 2 listing every problem) and, unless --offline, prove each
    /// fleet's cloud access without changing anything and read its signal once.
    Check(CheckArgs),
    /// Replay a recorded trace through the real controller on a simulated clock and report
    /// cost and unserved demand against the oracle (the model of BENCHMARK.md).
    Replay(ReplayArgs),
    /// Show what the agent would do for one fleet now, acting on nothing: read the fleet
    /// and the signal once, warm the fleet's policy from the signal's history, and print
    /// the observation, the forecast (with its quantiles) and the planned trajectory.
    Plan(crate::plan_cli::PlanArgs),
    /// The management API's commands (status, pause, resume, override), against a
    /// running agent.
    #[command(flatten)]
    Api(crate::api_cli::ApiCommand),
}

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

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The agent's TOML config.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Only validate the file; contact no cloud and no signal source.
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// CSV trace: a header row, then one row per step.
    #[arg(long)]
    pub trace: PathBuf,
    /// The value column.
    #[arg(long)]
    pub column: String,
    /// How much of the column's value one instance serves at its service-level limit.
    #[arg(long)]
    pub per_instance: f64,
    /// Length of one row (one step), e.g. 60s or 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// Time from launch until an instance serves.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub boot: Duration,
    /// A policy (dp, target-tracking, step-scaling, predictive, static-peak, oracle), or
    /// `all` for every one of them in one table.
    #[arg(long, default_value = "dp")]
    pub policy: String,
    /// The policy's knob (target-tracking: target utilisation; step-scaling: threshold;
    /// predictive: target utilisation; dp: max_unserved). Default: the policy's default.
    #[arg(long)]
    pub setting: Option<f64>,
    /// Sweep each baseline's knob and report its cheapest setting with at most 0.1 %
    /// unserved; with --format json or csv, every setting of the sweep.
    #[arg(long)]
    pub sweep: bool,
    /// Fewest instances.
    #[arg(long, default_value_t = 1)]
    pub min: u32,
    /// Most instances (default: unbounded).
    #[arg(long)]
    pub max: Option<u32>,
    /// The cloud to replay in: `ideal` (BENCHMARK.md's model), `aws` or `hostile` (its
    /// "Realistic clouds" scenarios: boot and termination times, read lag, failed and
    /// half-filled launches, throttling, deaths, signal gaps, agent restarts), or a TOML
    /// file of one's own with the same fields (see the README).
    #[arg(long, default_value = "ideal")]
    pub cloud: String,
    /// Seed of every random draw of the cloud scenario; the same seed repeats a run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also draw demand, serving and billed instances to this SVG (with --sweep: dp and
    /// the cheapest baseline at its best setting).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also write every run's figures (the whole sweep) as JSON to this file.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

/// How a command ended, mapped to the process's exit code in one place.
#[derive(Debug)]
pub enum Failure {
    /// The input is wrong (a config, a trace, an argument): exit 2.
    Invalid(String),
    /// Something failed while running: exit 1.
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Invalid(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Invalid(message) => write!(f, "{}", message.trim_end()),
            Failure::Runtime(error) => write!(f, "error: {error:#}"),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(error)
    }
}

pub fn load_config(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure::Invalid(e.to_string()))
}

pub fn execute(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Replay(args) => crate::replay_cli::replay(args),
        Command::Plan(args) => crate::plan_cli::plan(args),
        Command::Api(command) => crate::api_cli::execute(command).map_err(|e| match e {
            crate::api_cli::ApiCliError::Invalid(message) => Failure::Invalid(message),
            crate::api_cli::ApiCliError::Failed(error) => Failure::Runtime(error),
        }),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new().map_err(|e| Failure::Runtime(e.into()))
}

fn run(args: RunArgs) -> Result<(), Failure> {
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
        Err(SignalError::Missing(why)) if !matches!(entry.source, SignalConfig::Prometheus(_)) => {
            return Ok(format!("loaded; {why}"));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(match serving {
        Some(n) => format!("latest demand {value:.2} instances ({n} serving)"),
        None => format!("latest demand {value:.2} instances (serving count unknown: 1 assumed)"),
    })
}

fn check(args: CheckArgs) -> Result<(), Failure> {
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
