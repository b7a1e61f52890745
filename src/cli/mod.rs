//! The command line: the top-level [`Cli`] and its [`Command`]s, each a module of its own
//! that owns its arguments (`run`, `check`, `replay`, `plan`, and the management API's
//! `status`, `pause`, `resume`, `override`). What they share lives in [`shared`]; no
//! command module imports another.

mod api;
mod check;
mod plan;
mod replay;
mod run;
mod shared;

use clap::{Parser, Subcommand};

pub use api::ApiCommand;
pub use check::CheckArgs;
pub use plan::PlanArgs;
pub use replay::{Format, ReplayArgs};
pub use run::{RunArgs, stop_signal};
pub use shared::{Failure, load_config};

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
    Plan(PlanArgs),
    /// The management API's commands (status, pause, resume, override), against a
    /// running agent.
    #[command(flatten)]
    Api(ApiCommand),
}

/// Runs the command; its [`Failure`] carries the exit code.
pub fn execute(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::check(args),
        Command::Replay(args) => replay::replay(args),
        Command::Plan(args) => plan::plan(args),
        Command::Api(command) => api::execute(command),
    }
}
