//! The baseline policies on hand-made traces with known answers, under the fleet model of
//! the replay benchmark, and the policy configs they are built from.

// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use fleetscale_policies::baselines::{
    AdjustmentType, Predictive, PredictiveConfig, SeasonalForecast, StaticConfig, StepAdjustment,
    StepPolicy, StepScaling, StepScalingConfig, TargetTracking, TargetTrackingConfig,
};
use fleetscale_policies::{Decision, DpConfig, Observation, Policy, PolicyConfig};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// The benchmark's fleet model (shared/BENCHMARK.md), small: the fleet starts with
/// `max(1, ceil(d_0))` serving instances; at each step t >= 1 the policy sees demand
/// `0 .. t-1`; a launch at t serves from `t + L` and is billed from t; scale-in removes the
/// newest first, at once.
struct Replay {
    billed: Vec<u32>,
    serving: Vec<u32>,
    /// `sum max(0, d_t - serving_t)`, in instance-steps.
    unserved: f64,
    decisions: Vec<Decision>,
}

fn replay(policy: &mut dyn Policy, demand: &[f64], step: Duration, boot_steps: u32) -> Replay {
    // Launch step of every instance, oldest first.
    let initial = (demand[0].ceil() as usize).max(1);
    let mut fleet: Vec<i64> = vec![-i64::from(boot_steps); initial];
    let serving_at = |fleet: &[i64], t: i64| {
        fleet
            .iter()
            .filter(|&&at| t - at >= i64::from(boot_steps))
            .count() as u32
    };
    let mut out = Replay {
        billed: vec![],
        serving: vec![],
        unserved: 0.0,
        decisions: vec![],
    };
    let mut serving_history = vec![];
    for t in 0..demand.len() {
        let now = t as i64;
        if t > 0 {
            let (billed, serving) = (fleet.len() as u32, serving_at(&fleet, now));
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
                step,
                boot_steps,
                boot_times: &[],
                bounds_ahead: &[],
            };
            let decision = policy.decide(&obs);
            fleet.resize(decision.desired as usize, now);
            out.decisions.push(decision);
        }
        let serving = serving_at(&fleet, now);
        serving_history.push(f64::from(serving));
        out.billed.push(fleet.len() as u32);
        out.serving.push(serving);
        if demand[t].is_finite() {
            out.unserved += (demand[t] - f64::from(serving)).max(0.0);
        }
    }
    out
}

/// One observation of a fleet, for single decisions.
fn observe(demand: &[f64], serving: u32, billed: u32) -> Observation<'_> {
    Observation {
        demand,
        serving_history: &[],
        steps_seen: demand.len() as u64,
        serving,
        active: billed,
        booting: billed.saturating_sub(serving),
        min: 1,
        max: 1000,
        max_step_up: None,
        max_step_down: None,
        step: MINUTE,
        boot_steps: 3,
        boot_times: &[],
        bounds_ahead: &[],
    }
}

fn tracking(rho: f64) -> TargetTracking {
    TargetTracking::new(TargetTrackingConfig {
        target_utilisation: rho,
        ..Default::default()
    })
}

/// `n` steps of `value`.
fn flat(value: f64, n: usize) -> Vec<f64> {
    vec![value; n]
}

// ---- target tracking ----

#[test]
fn target_tracking_scales_up_at_once_on_a_step_up() {
    let mut demand = flat(4.0, 10);
    demand.extend(flat(10.0, 10));
    let run = replay(&mut tracking(0.8), &demand, MINUTE, 3);
    // t=1 sees 4 on 4 serving: u = 1.25 -> ceil(4 / 0.8) = 5. t=11 sees 10 on 5 serving:
    // u = 2.5 -> ceil(12.5) = 13, serving from t=14.
    let mut billed = vec![4];
    billed.extend(vec![5; 10]);
    billed.extend(vec![13; 9]);
    assert_eq!(run.billed, billed);
    assert_eq!(run.serving[13], 5);
    assert_eq!(run.serving[14], 13);
    // Steps 10..=13 lack 5 instances each.
    assert_eq!(run.unserved, 20.0);
}

#[test]
fn target_tracking_scales_down_only_after_the_five_minute_window() {
    let mut demand = flat(10.0, 20);
    demand.extend(flat(2.0, 10));
    let run = replay(&mut tracking(0.8), &demand, MINUTE, 3);
    // 13 from t=1 (u = 1.25 -> 13), kept within tolerance (u = 0.96) until demand drops at
    // step 20. From t=21 the recommendation is 3, but 13 stays in the 5-minute window
    // (recommendations of t-4 ..= t) until t=25.
    assert!(
        run.billed[1..=24].iter().all(|&b| b == 13),
        "{:?}",
        run.billed
    );
    assert!(run.billed[25..].iter().all(|&b| b == 3), "{:?}", run.billed);
    assert!(
        run.decisions[23].reason.contains("hold 13"),
        "{}",
        run.decisions[23].reason
    );
    assert!(
        run.decisions[24].reason.contains("scale down to 3"),
        "{}",
        run.decisions[24].reason
    );
    assert_eq!(run.unserved, 0.0);
}

#[test]
fn target_tracking_window_is_measured_in_time() {
    let mut demand = flat(10.0, 6);
    demand.extend(flat(2.0, 6));
    // At 5-minute steps the window holds only the current recommendation: down at once.
    let run = replay(&mut tracking(0.8), &demand, Duration::from_secs(300), 1);
    assert_eq!(run.billed[6], 13);
    assert_eq!(run.billed[7], 3);
    // At 30-second steps it holds 10 recommendations.
    let mut demand = flat(10.0, 20);
    demand.extend(flat(2.0, 20));
    let run = replay(&mut tracking(0.8), &demand, Duration::from_secs(30), 6);
    assert_eq!(run.billed[29], 13);
    assert_eq!(run.billed[30], 3);
}

#[test]
fn target_tracking_misses_a_spike_shorter_than_the_boot_delay() {
    let mut demand = flat(4.0, 10);
    demand.push(20.0);
    demand.extend(flat(4.0, 12));
    let run = replay(&mut tracking(0.8), &demand, MINUTE, 3);
    // The spike at step 10 is seen at t=11 (u = 5 -> 25); the 20 launched serve from t=14,
    // after the spike: step 10 lacks 15. While they boot, 4 on 5 serving is within
    // tolerance, so the current 25 is kept and recorded; the window lets go at t=18.
    assert_eq!(run.unserved, 15.0);
    assert!(
        run.billed[11..=17].iter().all(|&b| b == 25),
        "{:?}",
        run.billed
    );
    assert_eq!(run.billed[18], 5);
}

#[test]
fn target_tracking_tolerance_band() {
    let cases = [
        // (demand on 10 serving, expected desired): rho 0.8 -> u = d / 8.
        (8.7, 10), // u = 1.0875: keep
        (8.9, 12), // u = 1.1125: ceil(8.9 / 0.8) = 12
        (7.3, 10), // u = 0.9125: keep
        (7.1, 9),  // u = 0.8875: ceil(7.1 / 0.8) = 9, the only recommendation in the window
    ];
    for (d, expected) in cases {
        let history = [d];
        let decision = tracking(0.8).decide(&observe(&history, 10, 10));
        assert_eq!(
            decision.desired, expected,
            "demand {d}: {}",
            decision.reason
        );
    }
    let history = [8.7];
    let reason = tracking(0.8).decide(&observe(&history, 10, 10)).reason;
    assert_eq!(
        reason,
        "demand 8.7 at rho 0.8 -> 11 (utilisation 1.09 within tolerance: keep 10)"
    );
}

#[test]
fn target_tracking_holds_through_gaps() {
    let mut policy = tracking(0.8);
    for history in [
        vec![],
        vec![5.0, f64::NAN],
        vec![5.0, -1.0],
        vec![5.0, f64::INFINITY],
    ] {
        let decision = policy.decide(&observe(&history, 6, 7));
        assert_eq!(decision.desired, 7, "{history:?}");
        assert!(
            decision.reason.contains("no usable demand reading"),
            "{}",
            decision.reason
        );
    }
    // Through a replay with a gap in the middle: nothing moves while the reading is missing.
    let mut demand = flat(4.0, 10);
    demand[5] = f64::NAN;
    let run = replay(&mut tracking(0.8), &demand, MINUTE, 3);
    assert_eq!(run.billed[6], run.billed[5]);
}

#[test]
fn target_tracking_zero_demand_keeps_the_minimum() {
    let run = replay(&mut tracking(0.8), &flat(0.0, 20), MINUTE, 3);
    assert!(run.billed.iter().all(|&b| b == 1), "{:?}", run.billed);
    assert_eq!(run.unserved, 0.0);
}

#[test]
fn target_tracking_with_nothing_serving() {
    // Demand and nothing serving: an infinite utilisation, scale to ceil(d / rho).
    let history = [5.0];
    let decision = tracking(0.8).decide(&observe(&history, 0, 3));
    assert_eq!(decision.desired, 7, "{}", decision.reason);
    assert!(decision.reason.contains("inf"), "{}", decision.reason);
    // No demand and nothing serving: utilisation 0, down to the minimum.
    let history = [0.0];
    let decision = tracking(0.8).decide(&observe(&history, 0, 3));
    assert_eq!(decision.desired, 1, "{}", decision.reason);
}

#[test]
fn target_tracking_respects_bounds() {
    let history = [100.0];
    let mut obs = observe(&history, 10, 10);
    obs.max = 20;
    let decision = tracking(0.8).decide(&obs);
    assert_eq!(decision.desired, 20);
    assert!(
        decision.reason.contains("bounds [1, 20]"),
        "{}",
        decision.reason
    );
    let history = [0.0];
    let mut obs = observe(&history, 10, 10);
    obs.min = 4;
    assert_eq!(tracking(0.8).decide(&obs).desired, 4);
}

// ---- step scaling ----

/// Change-in-capacity tables with bounds exact in binary, around threshold 0.5.
fn exact_step_config() -> StepScalingConfig {
    let step = |lower, upper, change| StepAdjustment {
        lower_bound: lower,
        upper_bound: upper,
        scaling_adjustment: change,
    };
    StepScalingConfig {
        threshold: 0.5,
        scale_out: StepPolicy {
            adjustment_type: AdjustmentType::ChangeInCapacity,
            min_adjustment_magnitude: 1,
            evaluation_periods: 1,
            steps: vec![step(Some(0.0), Some(0.25), 1), step(Some(0.25), None, 3)],
        },
        scale_in: StepPolicy {
            adjustment_type: AdjustmentType::ChangeInCapacity,
            min_adjustment_magnitude: 1,
            evaluation_periods: 1,
            steps: vec![
                step(None, Some(-0.25), -2),
                step(Some(-0.25), Some(0.0), -1),
            ],
        },
    }
}

#[test]
fn step_scaling_row_boundaries_follow_aws() {
    // 4 serving, threshold 0.5: u = d / 4.
    let cases = [
        (2.0, 4), // u = 0.5: no alarm
        (2.5, 5), // x = 0.125, [0, 0.25): +1
        (3.0, 7), // x = 0.25: the lower bound is inclusive above the threshold: +3
        (1.5, 3), // x = -0.125, (-0.25, 0]: -1
        (1.0, 2), // x = -0.25: the upper bound is inclusive below the threshold: -2
        (0.0, 2), // x = -0.5: -2
    ];
    for (d, expected) in cases {
        let history = [d];
        let decision = StepScaling::new(exact_step_config()).decide(&observe(&history, 4, 4));
        assert_eq!(
            decision.desired, expected,
            "demand {d}: {}",
            decision.reason
        );
    }
}

#[test]
fn step_scaling_percent_rounding_and_minimum_magnitude() {
    let config = |percent_out: i32, percent_in: i32, least: u32| {
        let mut c = exact_step_config();
        for (policy, percent) in [
            (&mut c.scale_out, percent_out),
            (&mut c.scale_in, percent_in),
        ] {
            policy.adjustment_type = AdjustmentType::PercentChangeInCapacity;
            policy.min_adjustment_magnitude = least;
            for step in &mut policy.steps {
                step.scaling_adjustment = percent;
            }
        }
        c
    };
    let decide = |c: StepScalingConfig, d: f64, fleet: u32| {
        let history = [d];
        StepScaling::new(c)
            .decide(&observe(&history, fleet, fleet))
            .desired
    };
    // Above the threshold (u = 0.6): +10 % of 15 = 1.5 -> 1; of 5 = 0.5 -> 1; of 30 = 3.
    assert_eq!(decide(config(10, -10, 1), 9.0, 15), 16);
    assert_eq!(decide(config(10, -10, 1), 3.0, 5), 6);
    assert_eq!(decide(config(10, -10, 1), 18.0, 30), 33);
    // With a minimum magnitude of 2: 0.5 -> 1 -> 2.
    assert_eq!(decide(config(10, -10, 2), 3.0, 5), 7);
    // Below (u = 0.2): -10 % of 5 = -0.5 -> -1; -20 % of 17 = -3.4 -> -3.
    assert_eq!(decide(config(10, -10, 1), 1.0, 5), 4);
    assert_eq!(decide(config(10, -20, 1), 3.4, 17), 14);
}

#[test]
fn step_scaling_warm_up_launches_once_and_blocks_scale_in() {
    let mut policy = StepScaling::new(exact_step_config());
    // x = 0.125 on 4 serving: +1 -> 5. Again while that one boots: 4 + 1 = 5 is already
    // the fleet: nothing more.
    let history = [2.5];
    assert_eq!(policy.decide(&observe(&history, 4, 4)).desired, 5);
    let history = [2.5, 2.5];
    let decision = policy.decide(&observe(&history, 4, 5));
    assert_eq!(decision.desired, 5, "{}", decision.reason);
    // Below the threshold with an instance booting: no scale-in.
    let history = [2.5, 2.5, 0.5];
    let decision = policy.decide(&observe(&history, 4, 5));
    assert_eq!(decision.desired, 5, "{}", decision.reason);
    assert!(decision.reason.contains("booting"), "{}", decision.reason);
}

#[test]
fn step_scaling_scale_in_waits_for_its_evaluation_periods() {
    // Default scale-in: 5 consecutive steps below the threshold (0.7).
    let demand = flat(20.0, 1)
        .into_iter()
        .chain(flat(2.0, 10))
        .collect::<Vec<_>>();
    let run = replay(
        &mut StepScaling::new(StepScalingConfig::default()),
        &demand,
        MINUTE,
        3,
    );
    // t=1 sees 20 on 20 serving: u = 1, x = 0.3: +50 % -> 30, booting until t=4.
    assert_eq!(run.billed[1], 30);
    assert_eq!(run.serving[4], 30);
    // Low from step 1, seen at t=2..=6: the fifth consecutive low reading acts, at t=6
    // (the boot had ended at t=4), by -20 % (x = 2/30 - 0.7 < -0.4).
    assert!(
        run.billed[1..6].iter().all(|&b| b == 30),
        "{:?}",
        run.billed
    );
    assert_eq!(run.billed[6], 24, "{:?}", run.billed);
    let reason = &run.decisions[5].reason;
    assert!(reason.contains("scale-in step"), "{reason}");
}

#[test]
fn step_scaling_with_nothing_serving_and_gaps() {
    let history = [5.0];
    let mut policy = StepScaling::new(StepScalingConfig::default());
    // Nothing serving, nothing booting: infinite utilisation, the top row, at least 1.
    let decision = policy.decide(&observe(&history, 0, 0));
    assert_eq!(decision.desired, 1, "{}", decision.reason);
    let history = [5.0, f64::NAN];
    let decision = policy.decide(&observe(&history, 3, 4));
    assert_eq!(decision.desired, 4, "{}", decision.reason);
    assert!(decision.reason.contains("no usable demand reading"));
}

#[test]
fn step_scaling_default_table_is_valid_and_scales_out_harder_further_out() {
    StepScalingConfig::default().validate().unwrap();
    let desired = |d: f64| {
        let history = [d];
        StepScaling::new(StepScalingConfig::default())
            .decide(&observe(&history, 100, 100))
            .desired
    };
    // Threshold 0.7 on 100 serving: rows +10 %, +20 %, +30 %, +50 %, +100 %.
    assert_eq!(desired(75.0), 110);
    assert_eq!(desired(85.0), 120);
    assert_eq!(desired(95.0), 130);
    assert_eq!(desired(110.0), 150);
    assert_eq!(desired(130.0), 200);
}

#[test]
fn step_tables_break_aws_rules_with_named_errors() {
    let broken = |edit: fn(&mut StepScalingConfig)| {
        let mut c = exact_step_config();
        edit(&mut c);
        c.validate().unwrap_err()
    };
    let gap = broken(|c| c.scale_out.steps[1].lower_bound = Some(0.3));
    assert!(gap.contains("scale_out.steps[1].lower_bound"), "{gap}");
    let overlap = broken(|c| c.scale_out.steps[1].lower_bound = Some(0.2));
    assert!(overlap.contains("no gap or overlap"), "{overlap}");
    let unbounded = broken(|c| c.scale_out.steps[1].upper_bound = Some(1.0));
    assert!(
        unbounded.contains("scale_out.steps[1].upper_bound"),
        "{unbounded}"
    );
    let wrong_side = broken(|c| c.scale_out.steps[0].lower_bound = Some(-0.1));
    assert!(
        wrong_side.contains("scale_out.steps[0].lower_bound"),
        "{wrong_side}"
    );
    let no_bounds = broken(|c| c.scale_in.steps[0].upper_bound = None);
    assert!(no_bounds.contains("scale_in.steps[0]"), "{no_bounds}");
    let growing_in = broken(|c| c.scale_in.steps[0].scaling_adjustment = 1);
    assert!(
        growing_in.contains("scale_in.steps[0].scaling_adjustment"),
        "{growing_in}"
    );
    let empty = broken(|c| c.scale_in.steps.clear());
    assert!(empty.contains("scale_in.steps"), "{empty}");
    let threshold = broken(|c| c.threshold = 0.0);
    assert!(threshold.contains("threshold"), "{threshold}");
}

// ---- predictive ----

/// Three days at 1-minute steps: 2 instances of demand, 20 from minute 600 to 719 on the
/// first two days; on the third, 20 from minute 600 to the end of the day.
fn seasonal_trace() -> Vec<f64> {
    (0..3 * 1440)
        .map(|t| {
            let (day, minute) = (t / 1440, t % 1440);
            let busy = minute >= 600 && (minute < 720 || day == 2);
            if busy { 20.0 } else { 2.0 }
        })
        .collect()
}

#[test]
fn predictive_launches_ahead_of_a_seasonal_rise() {
    let demand = seasonal_trace();
    let unserved_from = |run: &Replay, from: usize| -> f64 {
        (from..demand.len())
            .map(|t| (demand[t] - f64::from(run.serving[t])).max(0.0))
            .sum()
    };
    let predictive = replay(
        &mut Predictive::new(PredictiveConfig::default()),
        &demand,
        MINUTE,
        3,
    );
    let tracking_only = replay(&mut tracking(0.8), &demand, MINUTE, 3);
    // Day 1 has no forecast: both miss the rise. From day 2 the forecast for minute 600 is
    // launched at minute 597 and serves in time.
    assert!(unserved_from(&tracking_only, 1440) > 0.0);
    assert_eq!(unserved_from(&predictive, 1440), 0.0);
    assert_eq!(predictive.serving[1440 + 600], 25);
    let before_rise = &predictive.decisions[1440 + 597 - 1];
    assert!(
        before_rise.reason.contains("floor 25"),
        "{}",
        before_rise.reason
    );
}

#[test]
fn predictive_never_scales_in_on_the_forecast() {
    let demand = seasonal_trace();
    let run = replay(
        &mut Predictive::new(PredictiveConfig::default()),
        &demand,
        MINUTE,
        3,
    );
    // Day 3: the forecast falls to 2 at minute 720 but demand stays at 20; target tracking
    // keeps 25, and the fleet never drops below it.
    let day3 = 2 * 1440;
    assert!(
        run.billed[day3 + 600..].iter().all(|&b| b >= 25),
        "{:?}",
        &run.billed[day3 + 590..day3 + 760]
    );
    // Where the forecast is above what target tracking wants, the fleet follows the
    // forecast only up: every scale-in is target tracking's.
    for (t, decision) in run.decisions.iter().enumerate() {
        let billed_before = run.billed[t];
        if decision.desired < billed_before {
            assert!(
                decision.reason.contains("scale down"),
                "step {}: {}",
                t + 1,
                decision.reason
            );
        }
    }
}

#[test]
fn predictive_with_gaps_zero_demand_and_nothing_serving() {
    let mut demand = seasonal_trace();
    for t in (100..demand.len()).step_by(97) {
        demand[t] = f64::NAN;
    }
    let run = replay(
        &mut Predictive::new(PredictiveConfig::default()),
        &demand,
        MINUTE,
        3,
    );
    assert!(run.billed.iter().all(|&b| b >= 1));
    let run = replay(
        &mut Predictive::new(PredictiveConfig::default()),
        &flat(0.0, 3000),
        MINUTE,
        3,
    );
    assert!(
        run.billed.iter().all(|&b| b == 1),
        "zero demand keeps the minimum"
    );
    let history = [5.0];
    let decision = Predictive::new(PredictiveConfig::default()).decide(&observe(&history, 0, 2));
    assert_eq!(decision.desired, 7, "{}", decision.reason);
}

#[test]
fn seasonal_forecast_from_history() {
    let mut forecast = SeasonalForecast::new(Duration::from_secs(3600));
    assert_eq!(forecast.steps_per_day(), 24);
    for hour in 0..24 {
        forecast.push(f64::from(hour));
    }
    // Same hour yesterday.
    assert_eq!(forecast.forecast(24 + 5), Some(5.0));
    // Nothing a day back from the first day.
    assert_eq!(forecast.forecast(5), None);
    // Gaps are skipped: day 2 at hour 5 is a gap, day 1's value stands.
    for hour in 0..24 {
        forecast.push(if hour == 5 {
            f64::NAN
        } else {
            f64::from(hour) + 10.0
        });
    }
    assert_eq!(forecast.forecast(48 + 5), Some(5.0));
    assert_eq!(forecast.forecast(48 + 6), Some(11.0));
    // A week on, the same hour last week weighs half. Hour 6 of day 7: the last 7 days
    // hold 0, 0, 0, 0, 0, 16 and 6 (mean 22/7); a week back, 6.
    for _ in 2 * 24..7 * 24 {
        forecast.push(0.0);
    }
    let value = forecast.forecast(7 * 24 + 6).unwrap();
    assert!((value - 0.5 * (22.0 / 7.0 + 6.0)).abs() < 1e-12, "{value}");
    // A first look at a long history (steps_seen far beyond what is held) skips ahead.
    let mut fresh = SeasonalForecast::new(Duration::from_secs(3600));
    let recent: Vec<f64> = (0..48).map(f64::from).collect();
    let mut obs = observe(&recent, 1, 1);
    obs.steps_seen = u64::MAX / 2;
    fresh.ingest(&obs);
    assert_eq!(fresh.steps_seen(), u64::MAX / 2);
    // The same hour 1 and 2 days back: 24 and 0.
    assert_eq!(fresh.forecast(u64::MAX / 2), Some(12.0));
    // Too long a step for a daily season: no forecast, no panic.
    let mut daily = SeasonalForecast::new(Duration::from_secs(2 * 86_400));
    daily.push(1.0);
    assert_eq!(daily.forecast(1), None);
}

// ---- static ----

#[test]
fn static_size_and_static_peak() {
    let config = StaticConfig::peak_of(&[0.5, 3.2, f64::NAN, 7.01, 2.0]);
    assert_eq!(config.size, 8);
    assert_eq!(StaticConfig::peak_of(&[]).size, 1);
    let run = replay(
        &mut *PolicyConfig::Static(config).build(),
        &[1.0, 3.2, 7.01, 2.0],
        MINUTE,
        3,
    );
    assert_eq!(run.billed, vec![1, 8, 8, 8]);
    let history = [1.0];
    let mut obs = observe(&history, 1, 1);
    obs.max = 5;
    assert_eq!(
        PolicyConfig::Static(StaticConfig { size: 8 })
            .build()
            .decide(&obs)
            .desired,
        5
    );
}

// ---- configs ----

fn parse(text: &str) -> Result<PolicyConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

#[test]
fn configs_parse_with_defaults() {
    assert_eq!(parse("name = \"dp\"").unwrap(), PolicyConfig::default());
    assert_eq!(
        parse("name = \"dp\"\nmax_unserved = 0.01").unwrap(),
        PolicyConfig::Dp(DpConfig {
            max_unserved: 0.01,
            ..Default::default()
        })
    );
    assert_eq!(
        parse("name = \"target-tracking\"").unwrap(),
        PolicyConfig::TargetTracking(TargetTrackingConfig::default())
    );
    assert_eq!(
        parse("name = \"target-tracking\"\ntarget_utilisation = 0.7\nscale_down_window = \"10m\"")
            .unwrap(),
        PolicyConfig::TargetTracking(TargetTrackingConfig {
            target_utilisation: 0.7,
            tolerance: 0.1,
            scale_down_window: Duration::from_secs(600),
        })
    );
    assert_eq!(
        parse("name = \"step-scaling\"").unwrap(),
        PolicyConfig::StepScaling(StepScalingConfig::default())
    );
    assert_eq!(
        parse("name = \"predictive\"").unwrap(),
        PolicyConfig::Predictive(PredictiveConfig::default())
    );
    assert_eq!(
        parse("name = \"static\"\nsize = 4").unwrap(),
        PolicyConfig::Static(StaticConfig { size: 4 })
    );
    let table = r#"
        name = "step-scaling"
        threshold = 0.6
        [scale_out]
        adjustment_type = "change-in-capacity"
        steps = [{ lower_bound = 0.0, upper_bound = 0.2, scaling_adjustment = 1 },
                 { lower_bound = 0.2, scaling_adjustment = 4 }]
    "#;
    let PolicyConfig::StepScaling(config) = parse(table).unwrap() else {
        panic!("step-scaling")
    };
    assert_eq!(config.threshold, 0.6);
    assert_eq!(config.scale_out.steps.len(), 2);
    assert_eq!(config.scale_out.evaluation_periods, 1);
    assert_eq!(config.scale_in, StepScalingConfig::default().scale_in);
}

#[test]
fn configs_reject_unknown_fields() {
    for (text, field) in [
        ("name = \"target-tracking\"\nrho = 0.8", "rho"),
        ("name = \"predictive\"\nhistory = \"14d\"", "history"),
        ("name = \"static\"\nsize = 3\nmax = 4", "max"),
        (
            "name = \"dp\"\ntarget_utilisation = 0.8",
            "target_utilisation",
        ),
        (
            "name = \"step-scaling\"\n[scale_in]\nadjustment_type = \"change-in-capacity\"\ncooldown = 3\nsteps = []",
            "cooldown",
        ),
    ] {
        let error = parse(text).unwrap_err();
        assert!(
            error.contains("unknown field") && error.contains(field),
            "{text}: {error}"
        );
    }
    let error = parse("name = \"magic\"").unwrap_err();
    assert!(error.contains("magic"), "{error}");
    let error = parse("target_utilisation = 0.5").unwrap_err();
    assert!(error.contains("name"), "{error}");
}

#[test]
fn configs_reject_bad_values_naming_the_field() {
    for (text, field) in [
        ("name = \"dp\"\nmax_unserved = 1.5", "max_unserved"),
        ("name = \"dp\"\nhorizon = \"0s\"", "horizon"),
        (
            "name = \"target-tracking\"\ntarget_utilisation = 1.5",
            "target_utilisation",
        ),
        (
            "name = \"target-tracking\"\ntarget_utilisation = 0",
            "target_utilisation",
        ),
        ("name = \"target-tracking\"\ntolerance = -0.1", "tolerance"),
        (
            "name = \"predictive\"\ntarget_utilisation = -1",
            "target_utilisation",
        ),
        ("name = \"step-scaling\"\nthreshold = 2", "threshold"),
        ("name = \"static\"\nsize = -3", "size"),
        ("name = \"static\"", "size"),
        (
            "name = \"target-tracking\"\nscale_down_window = \"soon\"",
            "scale_down_window",
        ),
        (
            "name = \"step-scaling\"\n[scale_out]\nadjustment_type = \"percent-change-in-capacity\"\n\
             steps = [{ lower_bound = 0.0, upper_bound = 0.2, scaling_adjustment = 10 },\n\
             { lower_bound = 0.1, scaling_adjustment = 20 }]",
            "scale_out.steps[1].lower_bound",
        ),
    ] {
        let error = parse(text).unwrap_err();
        assert!(error.contains(field), "{text}: {error}");
    }
}

#[test]
fn sweeps_cover_each_baseline_knob() {
    let baselines = PolicyConfig::baselines();
    let names: Vec<_> = baselines.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["target-tracking", "step-scaling", "predictive"]);
    for config in &baselines {
        let settings = config.sweep_settings();
        assert!(settings.len() >= 10, "{}", config.name());
        assert!(settings.contains(&0.8), "{}: {settings:?}", config.name());
        for value in settings {
            let tuned = config.with_knob(value).unwrap();
            assert_eq!(tuned.knob_value(), value);
            assert_eq!(tuned.build().name(), config.name());
        }
        let error = config.with_knob(1.5).unwrap_err();
        assert!(error.contains(config.knob()), "{error}");
    }
    // dp is the policy of fleets that name none; it is judged at its defaults, not swept.
    let dp = PolicyConfig::default();
    assert_eq!(dp.name(), "dp");
    assert_eq!(PolicyConfig::from_name("dp"), Some(dp.clone()));
    assert!(dp.sweep_settings().is_empty());
    assert_eq!(dp.knob(), "max_unserved");
    assert_eq!(dp.with_knob(0.01).unwrap().knob_value(), 0.01);
    assert!(dp.with_knob(2.0).unwrap_err().contains("max_unserved"));
    assert_eq!(dp.build().name(), "dp");
    assert_eq!(PolicyConfig::from_name("nonsense"), None);
    let peak = PolicyConfig::static_peak(&[1.0, 9.5]);
    assert_eq!(peak.knob(), "size");
    assert_eq!(peak.knob_value(), 10.0);
    assert!(peak.sweep_settings().is_empty());
    assert_eq!(peak.with_knob(12.0).unwrap().knob_value(), 12.0);
    assert!(peak.with_knob(2.5).is_err());
}

#[test]
fn invalid_settings_made_in_code_hold_the_fleet() {
    let config = PolicyConfig::TargetTracking(TargetTrackingConfig {
        target_utilisation: 0.0,
        ..Default::default()
    });
    assert!(config.validate().is_err());
    let history = [50.0];
    let decision = config.build().decide(&observe(&history, 3, 4));
    assert_eq!(decision.desired, 4);
    assert!(
        decision.reason.contains("target_utilisation"),
        "{}",
        decision.reason
    );
}
