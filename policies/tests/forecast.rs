//! The planner's forecaster on the histories it must survive: empty, constant, gappy,
//! spiky, trending, seasonal, tiny and huge. Forecasts are always finite, non-negative
//! and ordered by quantile; on a clean seasonal series the quantiles cover the truth at
//! about their nominal rate.

// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use fleetscale_policies::forecast::{AdaptiveForecaster, ForecastSettings, Forecaster};

const LEVELS: [f64; 5] = [0.05, 0.25, 0.5, 0.9, 0.999];

fn forecaster(step_secs: u64, horizon: usize) -> AdaptiveForecaster {
    AdaptiveForecaster::new(ForecastSettings {
        step: Duration::from_secs(step_secs),
        max_horizon: horizon,
        unit: 1.0,
    })
}

/// A deterministic stream of uniform numbers in [0, 1).
fn uniforms(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Checks every forecast of a run over `values`, at every `every` steps.
fn assert_sane(values: &[f64], step_secs: u64, horizon: usize, every: usize) {
    let mut f = forecaster(step_secs, horizon);
    for (t, &v) in values.iter().enumerate() {
        f.observe(v);
        if t % every == 0 || t + 1 == values.len() {
            let q = f.forecast(horizon + 5, &LEVELS);
            assert_eq!(q.len(), horizon + 5);
            for (h, row) in q.iter().enumerate() {
                assert_eq!(row.len(), LEVELS.len());
                for w in row.windows(2) {
                    assert!(
                        w[0] <= w[1],
                        "step {t} horizon {h}: quantiles out of order {row:?}"
                    );
                }
                for &x in row {
                    assert!(x.is_finite() && x >= 0.0, "step {t} horizon {h}: {row:?}");
                }
            }
        }
    }
}

#[test]
fn empty_history_forecasts_zeros() {
    let f = forecaster(60, 10);
    let q = f.forecast(3, &LEVELS);
    assert_eq!(q, vec![vec![0.0; LEVELS.len()]; 3]);
    assert!(f.forecast(0, &LEVELS).is_empty());
    assert_eq!(f.forecast(2, &[]), vec![Vec::<f64>::new(); 2]);
}

#[test]
fn constant_history_forecasts_the_constant() {
    let values = vec![7.0; 3000];
    assert_sane(&values, 60, 30, 97);
    let mut f = forecaster(60, 30);
    values.iter().for_each(|&v| f.observe(v));
    for row in f.forecast(30, &LEVELS) {
        for x in row {
            assert!((x - 7.0).abs() < 0.05, "{x}");
        }
    }
}

#[test]
fn gaps_are_survived_and_widen_the_forecast() {
    let mut next = uniforms(1);
    let mut values: Vec<f64> = (0..4000).map(|_| 50.0 + 5.0 * next()).collect();
    for v in &mut values[1000..1200] {
        *v = f64::NAN;
    }
    values[2000] = f64::INFINITY;
    values[2001] = -3.0; // not a demand: read as zero
    assert_sane(&values, 60, 20, 13);

    let mut f = forecaster(60, 20);
    values[..3000].iter().for_each(|&v| f.observe(v));
    let before = f.forecast(1, &[0.01, 0.99])[0].clone();
    (0..50).for_each(|_| f.observe(f64::NAN));
    let after = f.forecast(1, &[0.01, 0.99])[0].clone();
    assert!(
        after[1] - after[0] > before[1] - before[0],
        "{before:?} then {after:?}"
    );
}

#[test]
fn spiky_tiny_and_huge_histories_stay_sane() {
    let mut next = uniforms(2);
    let spiky: Vec<f64> = (0..5000)
        .map(|_| {
            if next() < 0.01 {
                400.0 * next()
            } else {
                2.0 + next()
            }
        })
        .collect();
    assert_sane(&spiky, 60, 60, 31);
    let tiny: Vec<f64> = (0..3000).map(|_| 1e-9 * next()).collect();
    assert_sane(&tiny, 300, 12, 17);
    let huge: Vec<f64> = (0..3000).map(|_| 1e15 * (1.0 + next())).collect();
    assert_sane(&huge, 3600, 6, 17);
    let zeros_then_burst: Vec<f64> = (0..3000)
        .map(|t| if t < 2500 { 0.0 } else { 1e6 })
        .collect();
    assert_sane(&zeros_then_burst, 60, 10, 7);
}

#[test]
fn trending_history_is_followed() {
    let values: Vec<f64> = (0..3000).map(|t| 10.0 + 0.05 * t as f64).collect();
    assert_sane(&values, 60, 30, 101);
    let mut f = forecaster(60, 30);
    values.iter().for_each(|&v| f.observe(v));
    let median_in_20 = f.forecast(20, &[0.5])[19][0];
    let truth = 10.0 + 0.05 * (3000 + 19) as f64;
    assert!(
        (median_in_20 - truth).abs() / truth < 0.02,
        "{median_in_20} vs {truth}"
    );
}

/// A daily cycle at 5-minute steps with 5 % multiplicative noise.
fn seasonal(days: usize, seed: u64) -> Vec<f64> {
    let mut next = uniforms(seed);
    (0..days * 288)
        .map(|i| {
            let phase = std::f64::consts::TAU * i as f64 / 288.0;
            let noise = (next() + next() + next() - 1.5) * 0.1;
            100.0 * (1.0 + 0.6 * phase.sin()) * (1.0 + noise)
        })
        .collect()
}

#[test]
fn seasonal_quantiles_cover_at_their_nominal_rate() {
    let values = seasonal(21, 3);
    assert_sane(&values, 300, 24, 37);
    let levels = [0.1, 0.5, 0.9, 0.99];
    let horizons = [1usize, 6, 24];
    let mut f = forecaster(300, 24);
    let mut hits = [[0u32; 4]; 3];
    let mut n = 0u32;
    for (t, &v) in values.iter().enumerate() {
        // Score the last two weeks, once the daily profile has been learnt.
        if t >= 7 * 288 && t + 24 < values.len() {
            let q = f.forecast(24, &levels);
            for (i, &h) in horizons.iter().enumerate() {
                let truth = values[t + h - 1];
                for (j, &x) in q[h - 1].iter().enumerate() {
                    if truth <= x {
                        hits[i][j] += 1;
                    }
                }
            }
            n += 1;
        }
        f.observe(v);
    }
    for (i, &h) in horizons.iter().enumerate() {
        for (j, &level) in levels.iter().enumerate() {
            let coverage = f64::from(hits[i][j]) / f64::from(n);
            let tolerance = if level > 0.95 { 0.02 } else { 0.06 };
            assert!(
                (coverage - level).abs() < tolerance,
                "horizon {h}: quantile {level} covers {coverage:.3}"
            );
        }
    }
}

#[test]
fn seasonality_beats_no_seasonality_a_day_ahead() {
    // A day's profile seen for a week makes the forecast a day ahead much better than
    // the last value: the seasonal members must win the day-ahead horizon.
    let values = seasonal(8, 4);
    let mut f = forecaster(300, 288);
    values[..7 * 288 + 100].iter().for_each(|&v| f.observe(v));
    let q = f.forecast(144, &[0.5]);
    let t = 7 * 288 + 100;
    let mean_error: f64 = (0..144)
        .map(|h| (q[h][0] - values[t + h]).abs() / values[t + h])
        .sum::<f64>()
        / 144.0;
    assert!(mean_error < 0.1, "{mean_error}");
}
