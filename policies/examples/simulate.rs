//! Replays a demand trace through a policy under the benchmark's model (shared/BENCHMARK.md)
//! and prints cost, unserved demand and the cost ratio to the oracle.
//!
//! ```text
//! cargo run --release -p fleetscale-policies --example simulate -- \
//!     TRACE.csv COLUMN PER_INSTANCE STEP [BOOT] [POLICY...]
//! cargo run --release -p fleetscale-policies --example simulate -- \
//!     synthetic:KIND:SEED STEP [BOOT] [POLICY...]
//! ```
//!
//! POLICY is `dp` (default settings), `dp:MAX_UNSERVED`, `oracle` or `tt:RHO` (target
//! tracking with HPA semantics, from the baselines). Synthetic kinds: `web` (1-minute
//! request rate, daily and weekly cycles, bursts, outages), `cpu` (fleet CPU, noisy),
//! `spiky` (a low base with short surges), `ramp` (steady growth), `tiny` (below one
//! instance with rare jumps).
//!
//! `SIMULATE_WRITE=FILE.csv` also writes the trace (column `demand`, in instances);
//! `SIMULATE_DAILY=DAYS` prints figures per period, `SIMULATE_WORST=N` the hours with the
//! most unserved demand, `SIMULATE_REASONS=FROM..TO` the decisions' reasons, and
//! `SIMULATE_FORECAST=H` the forecaster's coverage H steps ahead instead of a replay.
//!
//! Model: at step 0 the fleet holds `ceil(d_0)` serving instances; at each later step the
//! policy sees the demand of the earlier steps and names a billed size (clamped to
//! [1, unbounded]); launches serve `L = ceil(boot / step)` steps later and are billed at
//! once; scale-in removes the newest instances first.

// Benchmark and example code: a panic is a failure of the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use fleetscale_policies::baselines::{TargetTracking, TargetTrackingConfig};
use fleetscale_policies::{DpConfig, DpPlanner, Observation, OraclePolicy, Policy};

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
    let usage = "usage: simulate TRACE.csv COLUMN PER_INSTANCE STEP [BOOT] [POLICY...] | \
                 simulate synthetic:KIND:SEED STEP [BOOT] [POLICY...]";
    let (demand, rest) = if let Some(spec) = args.first().and_then(|a| a.strip_prefix("synthetic:"))
    {
        let step = trace::parse_seconds(args.get(1).ok_or(usage)?)?;
        (synthetic(spec, step)?, &args[1..])
    } else {
        if args.len() < 4 {
            return Err(usage.into());
        }
        let per_instance: f64 = args[2]
            .parse()
            .map_err(|_| format!("PER_INSTANCE {:?}", args[2]))?;
        (
            trace::read_demand(&args[0], &args[1], per_instance)?,
            &args[3..],
        )
    };
    let step = trace::parse_seconds(&rest[0])?;
    if let Ok(path) = std::env::var("SIMULATE_WRITE") {
        // The trace as a CSV (column `demand`, in instances), for `fleetscale replay`.
        let mut text = String::from("step,demand\n");
        for (i, d) in demand.iter().enumerate() {
            text.push_str(&format!("{i},{d}\n"));
        }
        std::fs::write(&path, text).map_err(|e| format!("{path}: {e}"))?;
    }
    let (boot, policies) = match rest.get(1).map(|b| trace::parse_seconds(b)) {
        Some(Ok(boot)) => (boot, &rest[2..]),
        _ => (180.0, &rest[1..]),
    };
    let boot_steps = trace::boot_steps(boot, step);
    let schedule = fleetscale_policies::oracle::solve(&demand, boot_steps, 1, u32::MAX)
        .map_err(|e| e.to_string())?;
    let opt_minutes = schedule.instance_minutes(step);
    let total: f64 = demand.iter().sum();
    println!(
        "{} steps of {step}s, L = {boot_steps}, demand {:.0} instance-steps, peak {:.1}, oracle {opt_minutes:.0} instance-minutes",
        demand.len(),
        total,
        demand.iter().copied().fold(0.0, f64::max),
    );
    if let Some(h) = std::env::var("SIMULATE_FORECAST")
        .ok()
        .and_then(|h| h.parse::<usize>().ok())
    {
        forecast_report(&demand, step, h.max(1));
        return Ok(());
    }
    let names: Vec<String> = if policies.is_empty() {
        vec!["dp".into()]
    } else {
        policies.to_vec()
    };
    for name in names {
        let mut policy: Box<dyn Policy> = build(&name, &demand, boot_steps)?;
        let started = Instant::now();
        let run = replay(
            policy.as_mut(),
            &demand,
            Duration::from_secs_f64(step),
            boot_steps,
        );
        let secs = started.elapsed().as_secs_f64();
        let minutes = run.billed as f64 * step / 60.0;
        println!(
            "{name:<12} instance-minutes {minutes:>12.0}  cost ratio {:.4}  unserved {:.4} %  under-time {:.3} %  actions {}  {:.2} s ({:.1} us/decision)",
            minutes / opt_minutes,
            100.0 * run.unserved / total.max(f64::MIN_POSITIVE),
            100.0 * run.under_steps as f64 / demand.len() as f64,
            run.actions,
            secs,
            1e6 * secs / demand.len() as f64,
        );
        println!(
            "             billed {} = serving {:.0} + booting {:.0}; serving - demand {:.0}",
            run.billed,
            run.serving_sum,
            run.billed as f64 - run.serving_sum,
            run.serving_sum - total
        );
        if let Some(days) = std::env::var("SIMULATE_DAILY")
            .ok()
            .and_then(|d| d.parse::<f64>().ok())
        {
            // Per period of DAYS days: demand, oracle and policy billed, unserved.
            let oracle_billed = schedule.desired_billed();
            let per = ((days * 86_400.0 / step) as usize).max(1);
            for (i, start) in (0..demand.len()).step_by(per).enumerate() {
                let end = (start + per).min(demand.len());
                let sum = |v: &[u32]| v[start..end].iter().map(|&x| f64::from(x)).sum::<f64>();
                let d: f64 = demand[start..end].iter().sum();
                let o = sum(&oracle_billed);
                let p = sum(&run.billed_per_step);
                let u: f64 = run.short_per_step[start..end].iter().sum();
                println!(
                    "  period {i:>3}: demand {d:>9.0} oracle {o:>9.0} policy {p:>9.0} ratio {:>6.3} extra {:>8.0} unserved {u:>7.1}",
                    p / o.max(1.0),
                    p - o
                );
            }
        }
        if let Some(n) = std::env::var("SIMULATE_WORST")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        {
            // The hours with the most unserved demand.
            let per = (3600.0 / step).max(1.0) as usize;
            let mut hours: Vec<(f64, usize)> = run
                .short_per_step
                .chunks(per)
                .enumerate()
                .map(|(i, c)| (c.iter().sum::<f64>(), i * per))
                .collect();
            hours.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut cum = 0.0;
            for &(u, start) in hours.iter().take(n) {
                cum += u;
                let end = (start + per).min(demand.len());
                let peak_d = demand[start..end].iter().copied().fold(0.0, f64::max);
                let first = run.short_per_step[start..end]
                    .iter()
                    .position(|&x| x > 0.0)
                    .unwrap_or(0)
                    + start;
                let shown: Vec<String> = (first.saturating_sub(5)..(first + 8).min(demand.len()))
                    .map(|t| format!("{:.0}/{}", demand[t], run.billed_per_step[t]))
                    .collect();
                println!(
                    "  hour at step {start}: unserved {u:.1} (cumulative {cum:.0}), peak demand {peak_d:.0}; demand/billed from {}: {}",
                    first.saturating_sub(5),
                    shown.join(" ")
                );
            }
        }
        if std::env::var_os("SIMULATE_REASONS").is_some() {
            for (t, r) in &run.reasons {
                println!("  {t}: {r}");
            }
        }
    }
    Ok(())
}

fn build(name: &str, demand: &[f64], boot_steps: u32) -> Result<Box<dyn Policy>, String> {
    let (kind, arg) = name
        .split_once(':')
        .map_or((name, None), |(k, a)| (k, Some(a)));
    let number = |a: Option<&str>| -> Result<Option<f64>, String> {
        a.map(|a| {
            a.parse::<f64>()
                .map_err(|_| format!("{name}: {a:?} is not a number"))
        })
        .transpose()
    };
    Ok(match kind {
        "dp" => {
            let mut config = DpConfig::default();
            if let Some(x) = number(arg)? {
                config.max_unserved = x;
            }
            Box::new(DpPlanner::new(config).map_err(|e| format!("{e:?}"))?)
        }
        "oracle" => {
            Box::new(OraclePolicy::new(demand, boot_steps, 1, u32::MAX).map_err(|e| e.to_string())?)
        }
        "tt" => {
            let rho = number(arg)?.unwrap_or(0.8);
            let config: TargetTrackingConfig = TargetTrackingConfig {
                target_utilisation: rho,
                ..Default::default()
            };
            Box::new(TargetTracking::new(config))
        }
        _ => {
            return Err(format!(
                "unknown policy {name:?} (dp, dp:X, oracle, tt:RHO)"
            ));
        }
    })
}

/// Coverage and width of the forecaster's quantiles `h` steps ahead, per quarter of the
/// trace and over demand above its median.
fn forecast_report(demand: &[f64], step: f64, h: usize) {
    use fleetscale_policies::forecast::{AdaptiveForecaster, ForecastSettings, Forecaster};
    let levels = [0.5, 0.9, 0.99, 0.999, 0.95, 0.97, 0.98, 0.995];
    // Cost and unserved of keeping ceil(quantile) at each of the levels above.
    let mut kept = [0.0; 8];
    let mut short = [0.0; 8];
    let total: f64 = demand.iter().sum();
    let mut f = AdaptiveForecaster::new(ForecastSettings {
        step: Duration::from_secs_f64(step),
        max_horizon: h.max(60),
        unit: 1.0,
    });
    let mut sorted = demand.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let parts = 4;
    let per = demand.len().div_ceil(parts);
    // [part][level] hits, plus counts, relative widths and absolute errors of the median
    let mut hits = vec![[0u64; 8]; parts + 1];
    let mut count = vec![0u64; parts + 1];
    let mut width = vec![0.0; parts + 1];
    let mut abs_err = vec![0.0; parts + 1];
    let mut out = Vec::new();
    for t in 0..demand.len() {
        if t + h < demand.len() && t > 1000 {
            f.forecast_into(h, &levels, &mut out);
            let q = out[(h - 1) * levels.len()..h * levels.len()].to_vec();
            let truth = demand[t + h - 1];
            let floor: f64 = std::env::var("SIMULATE_FLOOR")
                .ok()
                .and_then(|f| f.parse().ok())
                .unwrap_or(0.0);
            for (j, &v) in q.iter().enumerate().filter(|_| truth >= floor) {
                let keep = v.ceil().max(1.0);
                kept[j] += keep;
                short[j] += (truth - keep).max(0.0);
            }
            let mut record = |i: usize| {
                count[i] += 1;
                for (j, &v) in q.iter().enumerate() {
                    if truth <= v {
                        hits[i][j] += 1;
                    }
                }
                width[i] += q[2] / truth.max(1.0);
                abs_err[i] += (truth - q[0]).abs() / truth.max(1.0);
            };
            record(t / per);
            if truth > median {
                record(parts);
            }
        }
        f.observe(demand[t]);
    }
    for (j, l) in levels.iter().enumerate() {
        println!(
            "  keep ceil(q{l}): {:.0} instance-steps, unserved {:.3} %",
            kept[j],
            100.0 * short[j] / total
        );
    }
    println!(
        "forecast {h} steps ahead: coverage of p50 p90 p99 p99.9, mean p99/truth, |err of p50|/truth"
    );
    for i in 0..=parts {
        let n = count[i].max(1) as f64;
        let label = if i == parts {
            "above median".to_string()
        } else {
            format!("quarter {}", i + 1)
        };
        println!(
            "  {label:<13} n {:>7} cover {:.4} {:.4} {:.4} {:.4}  width {:.4}  mape {:.4}",
            count[i],
            hits[i][0] as f64 / n,
            hits[i][1] as f64 / n,
            hits[i][2] as f64 / n,
            hits[i][3] as f64 / n,
            width[i] / n,
            abs_err[i] / n
        );
    }
}

struct Run {
    billed: u64,
    billed_per_step: Vec<u32>,
    serving_sum: f64,
    short_per_step: Vec<f64>,
    unserved: f64,
    under_steps: u64,
    actions: u64,
    reasons: Vec<(usize, String)>,
}

fn replay(policy: &mut dyn Policy, demand: &[f64], step: Duration, boot_steps: u32) -> Run {
    let l = i64::from(boot_steps);
    let explain = std::env::var("SIMULATE_REASONS").ok().and_then(|r| {
        let (a, b) = r.split_once("..")?;
        Some(a.parse::<usize>().ok()?..b.parse::<usize>().ok()?)
    });
    // Launch step of each alive instance, oldest first.
    let start = (demand[0].ceil() as usize).max(1);
    let mut fleet: Vec<i64> = vec![-l; start];
    let mut run = Run {
        billed: 0,
        billed_per_step: Vec::new(),
        serving_sum: 0.0,
        short_per_step: Vec::new(),
        unserved: 0.0,
        under_steps: 0,
        actions: 0,
        reasons: Vec::new(),
    };
    let mut serving_history: Vec<f64> = Vec::with_capacity(demand.len());
    for t in 0..demand.len() {
        let ti = t as i64;
        let serving_now = |fleet: &[i64]| fleet.iter().filter(|&&at| ti - at >= l).count() as u32;
        if t > 0 {
            let serving = serving_now(&fleet);
            let obs = Observation {
                demand: &demand[..t],
                serving_history: &serving_history,
                steps_seen: t as u64,
                serving,
                active: fleet.len() as u32,
                booting: fleet.len() as u32 - serving,
                min: 1,
                max: u32::MAX,
                max_step_up: None,
                max_step_down: None,
                step,
                boot_steps,
                boot_times: &[],
                bounds_ahead: &[],
            };
            let decision = policy.decide(&obs);
            if explain.as_ref().is_some_and(|r| r.contains(&t)) {
                run.reasons
                    .push((t, format!("d={:.2} {}", demand[t], decision.reason)));
            }
            let desired = decision.desired.max(1) as usize;
            if desired != fleet.len() {
                run.actions += 1;
            }
            if desired > fleet.len() {
                fleet.resize(desired, ti);
            } else {
                fleet.truncate(desired); // launch order: the newest are last
            }
        }
        let serving = serving_now(&fleet);
        run.billed += fleet.len() as u64;
        run.billed_per_step.push(fleet.len() as u32);
        run.serving_sum += f64::from(serving);
        let short = (demand[t] - f64::from(serving)).max(0.0);
        run.unserved += short;
        run.short_per_step.push(short);
        if short > 0.0 {
            run.under_steps += 1;
        }
        serving_history.push(f64::from(serving));
    }
    run
}

/// A small deterministic generator (xorshift*), so that synthetic traces need no crate.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Synthetic traces for checking that the planner generalises (instance units).
fn synthetic(spec: &str, step: f64) -> Result<Vec<f64>, String> {
    let (kind, seed) = spec.split_once(':').unwrap_or((spec, "1"));
    let seed: u64 = seed
        .parse()
        .map_err(|_| format!("synthetic seed {seed:?}"))?;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let days = 28.0;
    let n = (days * 86_400.0 / step) as usize;
    let tau = std::f64::consts::TAU;
    let mut out = Vec::with_capacity(n);
    let mut ar = 0.0; // slowly varying multiplicative noise
    let mut burst = 0.0;
    let mut outage = 0usize;
    for i in 0..n {
        let secs = i as f64 * step;
        let day = secs / 86_400.0;
        let daily = (tau * (day - 0.3)).sin();
        let weekend = if (day as u64) % 7 >= 5 { 0.7 } else { 1.0 };
        let value = match kind {
            "web" => {
                ar = 0.98 * ar + 0.03 * rng.normal();
                if rng.uniform() < step / (3.0 * 86_400.0) {
                    burst = 0.5 + rng.uniform();
                }
                burst *= 0.5f64.powf(step / 1200.0);
                if outage == 0 && rng.uniform() < step / (7.0 * 86_400.0) {
                    outage = (1800.0 / step).ceil() as usize;
                }
                let base = 40.0 * weekend * (1.0 + 0.6 * daily) * (1.0 + 0.2 * day / days);
                let v = base * (ar + 0.02 * rng.normal()).exp() * (1.0 + burst);
                if outage > 0 {
                    outage -= 1;
                    0.02 * v
                } else {
                    v
                }
            }
            "cpu" => {
                ar = 0.9 * ar + 0.05 * rng.normal();
                let base = 120.0 * (1.0 + 0.25 * daily) * weekend.sqrt();
                base * (ar + 0.06 * rng.normal()).exp()
            }
            "spiky" => {
                if rng.uniform() < step / 7200.0 {
                    burst = 5.0 + 20.0 * rng.uniform();
                }
                burst *= 0.5f64.powf(step / 300.0);
                (3.0 + burst) * (0.1 * rng.normal()).exp()
            }
            "ramp" => {
                ar = 0.95 * ar + 0.02 * rng.normal();
                (5.0 + 300.0 * day / days) * (1.0 + 0.3 * daily) * ar.exp()
            }
            "tiny" => {
                let jump = if rng.uniform() < step / 86_400.0 {
                    3.0
                } else {
                    0.0
                };
                0.2 * (1.0 + 0.5 * daily) * (0.3 * rng.normal()).exp() + jump
            }
            _ => {
                return Err(format!(
                    "unknown synthetic kind {kind:?} (web, cpu, spiky, ramp, tiny)"
                ));
            }
        };
        out.push(value.max(0.0));
    }
    Ok(out)
}
