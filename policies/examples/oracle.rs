//! Prints the benchmark oracle's optimum for one trace.
//!
//! ```text
//! cargo run --release -p fleetscale-policies --example oracle -- \
//!     TRACE.csv COLUMN PER_INSTANCE STEP [BOOT] [MIN]
//! # e.g. ../shared/traces/worldcup98_requests_per_minute.csv count 1000 60s 180s
//! ```
//!
//! STEP and BOOT take a number with `s`, `m` or `h` (BOOT defaults to 180s, MIN to 1).
//! The CSV is read with the standard library only: a header line, comma-separated fields
//! without quoting.

// Benchmark and example code: a panic is a failure of the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::ExitCode;

#[path = "support/trace.rs"]
mod trace;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(4..=6).contains(&args.len()) {
        return Err("usage: oracle TRACE.csv COLUMN PER_INSTANCE STEP [BOOT] [MIN]".into());
    }
    let per_instance: f64 = args[2]
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite() && *x > 0.0)
        .ok_or_else(|| format!("PER_INSTANCE: {:?} is not a positive number", args[2]))?;
    let step = trace::parse_seconds(&args[3]).map_err(|e| format!("STEP: {e}"))?;
    let boot = match args.get(4) {
        Some(b) => trace::parse_seconds(b).map_err(|e| format!("BOOT: {e}"))?,
        None => 180.0,
    };
    let min: u32 = match args.get(5) {
        Some(m) => m
            .parse()
            .map_err(|_| format!("MIN: {m:?} is not a whole number"))?,
        None => 1,
    };
    let demand = trace::read_demand(&args[0], &args[1], per_instance)?;
    let boot_steps = trace::boot_steps(boot, step);
    let schedule = fleetscale_policies::oracle::solve(&demand, boot_steps, min, u32::MAX)
        .map_err(|e| format!("{}: {e}", args[0]))?;
    println!(
        "steps {}  boot steps {}  OPT {} instance-steps = {} instance-minutes",
        demand.len(),
        boot_steps,
        schedule.opt_instance_steps,
        schedule.instance_minutes(step)
    );
    Ok(())
}
