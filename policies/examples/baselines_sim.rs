//! Replays a demand trace through the baseline policies under the model of the replay
//! benchmark (shared/BENCHMARK.md), standalone: the fleet model, the oracle and the
//! figures, with no controller and no cloud. A check of the baselines' semantics, not the
//! benchmark itself (that is `fleetscale replay`).
//!
//! ```text
//! cargo run --release -p fleetscale-policies --example baselines_sim -- \
//!     TRACE.csv COLUMN PER_INSTANCE STEP_SECONDS [BOOT_SECONDS] [POLICY...]
//! ```
//!
//! POLICY is a name (dp, target-tracking, step-scaling, predictive, static-peak); each
//! baseline with a knob is swept over it, dp runs at its defaults. Without POLICY, all of
//! the baselines.
//! `BASELINES_SIM_EXPLAIN=FROM..TO` prints the decisions of those steps with their reasons.

// Benchmark and example code: a panic is a failure of the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use fleetscale_policies::{Observation, PolicyConfig};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: baselines_sim TRACE.csv COLUMN PER_INSTANCE STEP_SECONDS [BOOT_SECONDS] [POLICY...]".into());
    }
    let number = |i: usize, what: &str| -> Result<f64, String> {
        args[i]
            .parse::<f64>()
            .map_err(|e| format!("{what} {:?}: {e}", args[i]))
    };
    let per_instance = number(2, "PER_INSTANCE")?;
    let step_secs = number(3, "STEP_SECONDS")?;
    let boot_secs = if args.len() > 4 {
        number(4, "BOOT_SECONDS")?
    } else {
        180.0
    };
    let names: Vec<&str> = if args.len() > 5 {
        args[5..].iter().map(String::as_str).collect()
    } else {
        let baselines = PolicyConfig::baselines();
        std::iter::once("static-peak")
            .chain(baselines.iter().map(PolicyConfig::name))
            .collect()
    };
    let demand = read_trace(&args[0], &args[1], per_instance)?;
    let model = Model {
        step: Duration::from_secs_f64(step_secs),
        boot_steps: (boot_secs / step_secs).ceil() as u32,
        explain: explain_range()?,
    };
    let minutes_per_step = step_secs / 60.0;
    let oracle = oracle_instance_steps(&demand, model.boot_steps) as f64 * minutes_per_step;
    println!(
        "{}: {} steps, oracle {:.0} instance-minutes, L = {}",
        args[0],
        demand.len(),
        oracle,
        model.boot_steps
    );
    println!(
        "{:<16} {:>8} {:>14} {:>10} {:>10} {:>8} {:>8}",
        "policy", "setting", "inst-minutes", "unserved%", "cost-ratio", "actions", "secs"
    );
    for name in names {
        let configs = if name == "static-peak" {
            vec![PolicyConfig::static_peak(&demand)]
        } else {
            let base = PolicyConfig::from_name(name).ok_or(format!("unknown policy {name}"))?;
            let settings = base.sweep_settings();
            if settings.is_empty() {
                // Not swept (dp): its defaults.
                vec![base]
            } else {
                settings
                    .into_iter()
                    .map(|v| base.with_knob(v))
                    .collect::<Result<_, _>>()?
            }
        };
        let mut best: Option<(f64, f64, f64)> = None;
        for config in configs {
            let started = Instant::now();
            let run = model.replay(&demand, &config);
            let secs = started.elapsed().as_secs_f64();
            let minutes = run.instance_steps as f64 * minutes_per_step;
            let ratio = minutes / oracle;
            println!(
                "{:<16} {:>8} {:>14.0} {:>10.3} {:>10.3} {:>8} {:>8.2}",
                name,
                config.knob_value(),
                minutes,
                run.unserved_pct,
                ratio,
                run.actions,
                secs
            );
            if run.unserved_pct <= 0.1 && best.is_none_or(|(_, r, _)| ratio < r) {
                best = Some((config.knob_value(), ratio, run.unserved_pct));
            }
        }
        match best {
            Some((setting, ratio, unserved)) => println!(
                "best {name} at <= 0.1 % unserved: {setting}, cost ratio {ratio:.3}, unserved {unserved:.3} %"
            ),
            None => println!("best {name} at <= 0.1 % unserved: none"),
        }
    }
    Ok(())
}

/// `BASELINES_SIM_EXPLAIN=FROM..TO`: print the decisions of those steps.
fn explain_range() -> Result<std::ops::Range<usize>, String> {
    let Ok(text) = std::env::var("BASELINES_SIM_EXPLAIN") else {
        return Ok(0..0);
    };
    let bad = || format!("BASELINES_SIM_EXPLAIN must be FROM..TO, got {text:?}");
    let (from, to) = text.split_once("..").ok_or_else(bad)?;
    Ok(from.parse().map_err(|_| bad())?..to.parse().map_err(|_| bad())?)
}

/// Reads one column of a CSV trace, in instances. Any unusable value is an error naming
/// its line.
fn read_trace(path: &str, column: &str, per_instance: f64) -> Result<Vec<f64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut lines = text.lines();
    let header = lines.next().ok_or(format!("{path}: empty file"))?;
    let index = header
        .split(',')
        .position(|h| h.trim() == column)
        .ok_or(format!("{path}: no column {column:?}"))?;
    lines
        .enumerate()
        .map(|(i, line)| {
            let value = line.split(',').nth(index).unwrap_or("").trim();
            match value.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v / per_instance),
                _ => Err(format!(
                    "{path}:{}: {column} is not a finite non-negative number: {value:?}",
                    i + 2
                )),
            }
        })
        .collect()
}

/// shared/BENCHMARK.md's fleet model.
struct Model {
    step: Duration,
    boot_steps: u32,
    /// Steps whose decisions are printed with their reasons.
    explain: std::ops::Range<usize>,
}

struct Run {
    instance_steps: u64,
    unserved_pct: f64,
    actions: u64,
}

impl Model {
    fn replay(&self, demand: &[f64], config: &PolicyConfig) -> Run {
        let mut policy = config.build();
        let boot = i64::from(self.boot_steps);
        // Runs of instances (launch step, count), oldest first; newest are removed first.
        let initial = (demand[0].ceil() as u32).max(1);
        let mut fleet: Vec<(i64, u32)> = vec![(-boot, initial)];
        let mut serving_history = Vec::with_capacity(demand.len());
        let (mut instance_steps, mut unserved, mut actions) = (0u64, 0.0, 0u64);
        for t in 0..demand.len() {
            let now = t as i64;
            let billed: u32 = fleet.iter().map(|&(_, n)| n).sum();
            let serving_now = |fleet: &[(i64, u32)]| -> u32 {
                fleet
                    .iter()
                    .filter(|&&(at, _)| now - at >= boot)
                    .map(|&(_, n)| n)
                    .sum()
            };
            if t > 0 {
                let serving = serving_now(&fleet);
                let obs = Observation {
                    demand: &demand[..t],
                    serving_history: &serving_history[..t],
                    steps_seen: t as u64,
                    serving,
                    active: billed,
                    booting: billed - serving,
                    min: 1,
                    max: u32::MAX,
                    max_step_up: None,
                    max_step_down: None,
                    step: self.step,
                    boot_steps: self.boot_steps,
                    boot_times: &[],
                    bounds_ahead: &[],
                };
                let decision = policy.decide(&obs);
                let desired = decision.desired;
                if self.explain.contains(&t) {
                    println!(
                        "  t={t} d[t-1]={:.1} serving={serving} billed={billed} -> {desired}: {}",
                        demand[t - 1],
                        decision.reason
                    );
                }
                if desired > billed {
                    fleet.push((now, desired - billed));
                } else {
                    let mut remove = billed - desired;
                    while remove > 0 {
                        let last = fleet
                            .last_mut()
                            .expect("removing no more than the fleet holds");
                        let taken = last.1.min(remove);
                        last.1 -= taken;
                        remove -= taken;
                        if last.1 == 0 {
                            fleet.pop();
                        }
                    }
                }
                if desired != billed {
                    actions += 1;
                }
            }
            let billed: u32 = fleet.iter().map(|&(_, n)| n).sum();
            let serving = serving_now(&fleet);
            serving_history.push(f64::from(serving));
            instance_steps += u64::from(billed);
            unserved += (demand[t] - f64::from(serving)).max(0.0);
        }
        let total: f64 = demand.iter().sum();
        Run {
            instance_steps,
            unserved_pct: 100.0 * unserved / total,
            actions,
        }
    }
}

/// BENCHMARK.md's oracle: the least `sum s_t + L * sum max(0, s_t - s_{t-1})` with
/// `s_0 = D_0` and `s_t >= D_t = max(1, ceil(d_t))`, by dynamic programming over sizes.
fn oracle_instance_steps(demand: &[f64], boot_steps: u32) -> u64 {
    let need: Vec<usize> = demand.iter().map(|d| (d.ceil() as usize).max(1)).collect();
    let top = *need.iter().max().expect("a trace has steps");
    let launch = boot_steps as u64;
    const INF: u64 = u64::MAX / 4;
    let mut cost = vec![INF; top + 1];
    cost[need[0]] = need[0] as u64;
    let mut next = vec![INF; top + 1];
    for &floor in &need[1..] {
        // From a larger size: free to shrink (suffix minimum). From a smaller one: pay L
        // per instance added (prefix minimum of cost - L * size).
        let mut suffix = vec![INF; top + 2];
        for s in (0..=top).rev() {
            suffix[s] = suffix[s + 1].min(cost[s]);
        }
        let mut prefix = INF as i128;
        for s in 0..=top {
            let grow = if prefix >= INF as i128 {
                INF
            } else {
                (prefix + (launch * s as u64) as i128) as u64
            };
            next[s] = if s < floor {
                INF
            } else {
                s as u64 + suffix[s].min(grow)
            };
            if cost[s] < INF {
                prefix = prefix.min(cost[s] as i128 - (launch * s as u64) as i128);
            }
        }
        std::mem::swap(&mut cost, &mut next);
    }
    *cost.iter().min().expect("sizes exist")
}
