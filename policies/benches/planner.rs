//! Speed of the planner's parts: one plan over H steps and N candidate sizes, one
//! forecaster update, and one whole `dp` tick.

// Benchmark and example code: a panic is a failure of the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fleetscale_policies::dp::Solver;
use fleetscale_policies::forecast::{AdaptiveForecaster, ForecastSettings, Forecaster};
use fleetscale_policies::planner::{PlanInput, plan_capacity, planning_grid};
use fleetscale_policies::{DpConfig, DpPlanner, Observation, Policy};

/// Demand distributions whose windows together span about `n` sizes over `h` stages: the
/// demand climbs from zero to `n` over the horizon, with a spread of a tenth.
fn climbing_demand(h: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let (levels, weights) = planning_grid();
    let mut demand = Vec::with_capacity(h * levels.len());
    for k in 0..h {
        let centre = n as f64 * k as f64 / h as f64;
        for &q in &levels {
            demand.push((centre * (1.0 + 0.1 * (q - 0.5))).max(0.0));
        }
    }
    (demand, weights)
}

fn bench_plans(c: &mut Criterion) {
    // Without step limits (or with limits too wide to bind any move), each stage
    // considers its own window of sizes, with prefix and suffix minima. Limits that may
    // bind (at most 50 a step) make every stage consider the union of the stages'
    // windows (about N sizes), with sliding-window minima.
    for (h, n, limit) in [
        (60usize, 1_000usize, None),
        (288, 5_000, None),
        (60, 1_000, Some(50u32)),
        (288, 5_000, Some(50)),
    ] {
        let (demand, weights) = climbing_demand(h, n);
        let input = PlanInput {
            pool: 1,
            arrivals: &[1, 1, 1],
            boot_steps: 3,
            min: 1,
            max: u32::MAX,
            bounds: &[],
            max_step_up: limit,
            max_step_down: limit,
            penalty: 100.0,
            demand: &demand,
            weights: &weights,
        };
        let mut solver = Solver::default();
        let label = match limit {
            Some(limit) => format!(", steps of at most {limit}"),
            None => String::new(),
        };
        c.bench_function(&format!("plan H={h} N={n}{label}"), |b| {
            b.iter(|| plan_capacity(black_box(&input), &mut solver).unwrap())
        });
    }
}

fn warm_forecaster(h: usize) -> AdaptiveForecaster {
    let mut f = AdaptiveForecaster::new(ForecastSettings {
        step: Duration::from_secs(60),
        max_horizon: h,
        unit: 1.0,
    });
    for t in 0..3 * 1440 {
        f.observe(100.0 + 50.0 * (t as f64 / 1440.0 * std::f64::consts::TAU).sin());
    }
    f
}

fn bench_forecaster(c: &mut Criterion) {
    let (levels, _) = planning_grid();
    let mut f = warm_forecaster(60);
    let mut t = 0u64;
    c.bench_function("forecaster update (H=60)", |b| {
        b.iter(|| {
            t += 1;
            f.observe(black_box(100.0 + (t % 17) as f64));
        })
    });
    let mut out = Vec::new();
    c.bench_function("forecaster quantiles (H=60, 25 levels)", |b| {
        b.iter(|| f.forecast_into(60, black_box(&levels), &mut out))
    });
}

fn bench_tick(c: &mut Criterion) {
    let demand: Vec<f64> = (0..3 * 1440)
        .map(|t| 100.0 + 50.0 * (t as f64 / 1440.0 * std::f64::consts::TAU).sin())
        .collect();
    let serving: Vec<f64> = demand.iter().map(|d| (d * 1.1).ceil()).collect();
    let mut dp = DpPlanner::new(DpConfig::default()).unwrap();
    let mut t = 1440usize;
    c.bench_function("dp tick (1-minute steps, ~100 instances)", |b| {
        b.iter(|| {
            t = if t + 1 >= demand.len() { 1440 } else { t + 1 };
            let obs = Observation {
                demand: &demand[..t],
                serving_history: &serving[..t],
                steps_seen: t as u64,
                serving: serving[t - 1] as u32,
                active: serving[t - 1] as u32,
                booting: 0,
                min: 1,
                max: u32::MAX,
                max_step_up: None,
                max_step_down: None,
                step: Duration::from_secs(60),
                boot_steps: 3,
                boot_times: &[],
                bounds_ahead: &[],
            };
            dp.decide(black_box(&obs))
        })
    });
}

criterion_group!(benches, bench_plans, bench_forecaster, bench_tick);
criterion_main!(benches);
