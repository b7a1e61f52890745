//! The DP planner (`policy = "dp"`): forecast the demand's distribution over the next
//! steps, plan integer serving capacities against it with the shared dynamic program,
//! apply the first step, and plan again next tick.
//!
//! Each tick the planner minimises, over the next `H` steps,
//!
//! ```text
//!     sum_k kept_k  +  penalty * sum_k E[max(0, D_k - serving_k)]  +  L * launches
//! ```
//!
//! where `D_k` is the forecast demand of step `k` (a discrete distribution over quantile
//! points), `kept_k` the instances kept in step `k`, and `L` the boot steps a launched
//! instance is billed before it serves. Instances already booting serve from their
//! (estimated) arrival step; nothing launched now serves before step `L`; the fleet's
//! bounds and step limits hold at every step. The plan's first step becomes the billed
//! size wanted now: the instances kept now plus the launches whose capacity is needed at
//! step `L`.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::dp::{DpError, Solver, Stage};
use crate::forecast::{AdaptiveForecaster, ForecastSettings, Forecaster};
use crate::outage::OutageWatch;
use crate::{Bounds, Decision, Observation, Plan, Policy};

/// Settings of the `dp` policy.
///
/// ```toml
/// policy = { name = "dp", max_unserved = 0.001, horizon = "2h" }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpConfig {
    /// How far ahead each plan looks. Default: the longer of one hour and four boot
    /// delays (always at least one step beyond the boot delay, at most 1,440 steps).
    #[serde(with = "humantime_serde")]
    pub horizon: Option<Duration>,
    /// The service target: the largest fraction of demand that may go unserved, over
    /// time (default 0.001, i.e. 0.1 %). The planner turns it into its penalty on
    /// unserved demand and corrects that penalty from the unserved demand it observes;
    /// see [`ServiceTarget`].
    pub max_unserved: f64,
    /// When demand collapses far below both the last hour and the same time a day
    /// earlier (an outage), keep capacity for its earlier level for at most this long,
    /// so that returning traffic finds the fleet serving (default 2 hours; "0s": never).
    /// See [`crate::outage`].
    #[serde(with = "humantime_serde")]
    pub outage_hold: Duration,
}

impl Default for DpConfig {
    fn default() -> Self {
        DpConfig {
            horizon: None,
            max_unserved: 0.001,
            outage_hold: Duration::from_secs(2 * 3600),
        }
    }
}

/// A `dp` setting that cannot be used, naming the field.
#[derive(Debug, Clone, PartialEq)]
pub struct DpConfigError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for DpConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for DpConfigError {}

impl DpConfig {
    /// Checks every field, reporting all problems.
    pub fn validate(&self) -> Result<(), Vec<DpConfigError>> {
        let mut errors = Vec::new();
        if !(self.max_unserved > 0.0 && self.max_unserved < 1.0) {
            errors.push(DpConfigError {
                field: "max_unserved",
                message: format!(
                    "must be a fraction of demand above 0 and below 1 (e.g. 0.001), got {}",
                    self.max_unserved
                ),
            });
        }
        if self.horizon.is_some_and(|h| h.is_zero()) {
            errors.push(DpConfigError {
                field: "horizon",
                message: "must be longer than zero".into(),
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Steps per plan for a step length and boot delay in steps.
    pub fn horizon_steps(&self, step: Duration, boot_steps: u32) -> usize {
        let step = step.as_secs_f64().max(1e-3);
        let wanted = match self.horizon {
            Some(h) => (h.as_secs_f64() / step).ceil(),
            None => (3600.0 / step).ceil().max(4.0 * f64::from(boot_steps)),
        };
        (wanted.min(MAX_HORIZON_STEPS) as usize)
            .max(boot_steps as usize + 1)
            .max(2)
    }
}

/// The longest plan, in steps (a day at one-minute steps).
const MAX_HORIZON_STEPS: f64 = 1440.0;

/// Probability bins of the forecast distribution each stage is planned against: finer in
/// the upper tail, where a service target of 0.1 % is decided.
const BIN_EDGES: [f64; 26] = [
    0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98,
    0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995, 1.0,
];

/// Quantile levels shown in a plan's forecast.
const SHOWN: [f64; 4] = [0.05, 0.5, 0.95, 0.999];

/// The quantile levels (bin midpoints) and probability weights of the planning grid.
pub fn planning_grid() -> (Vec<f64>, Vec<f64>) {
    BIN_EDGES
        .windows(2)
        .filter_map(|w| match *w {
            [lo, hi] => Some(((lo + hi) / 2.0, hi - lo)),
            _ => None,
        })
        .unzip()
}

/// One plan's inputs, in instance units.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// Instances billed now that the plan may keep: serving plus booting.
    pub pool: u32,
    /// For each step `k < boot_steps`: instances of the pool serving by step `k`
    /// (serving now plus booting ones due by then), nondecreasing. Missing entries count
    /// the whole pool.
    pub arrivals: &'a [u32],
    /// `L`: steps from launch to serving; also the launch cost per instance.
    pub boot_steps: u32,
    pub min: u32,
    pub max: u32,
    /// Bounds per stage where they differ from `min`/`max` (a schedule's windows): entry
    /// `k` for stage `k`; empty, or shorter than the plan, means `min`/`max` beyond.
    pub bounds: &'a [Bounds],
    pub max_step_up: Option<u32>,
    pub max_step_down: Option<u32>,
    /// Cost of one unserved instance-step, in instance-steps.
    pub penalty: f64,
    /// Demand distribution of each stage: `weights.len()` points per stage, ascending.
    pub demand: &'a [f64],
    /// Probability of each point (the same for every stage), summing to 1.
    pub weights: &'a [f64],
}

/// The plan the program chose.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityPlan {
    /// Instances kept (billed, excluding boot time of new launches) at each stage.
    pub kept: Vec<u32>,
    /// Instances serving at each stage.
    pub serving: Vec<u32>,
    /// Instances to launch now (they serve from stage `L`).
    pub launch_now: u32,
    /// Billed size wanted now: instances kept now plus launches now.
    pub desired_billed: u32,
    /// Instance-steps billed over the plan, launches' boot steps included.
    pub expected_cost: f64,
    /// Expected unserved instance-steps over the plan.
    pub expected_unserved: f64,
    /// The minimised objective (cost plus penalty times expected unserved).
    pub objective: f64,
}

impl PlanInput<'_> {
    fn stages(&self) -> usize {
        if self.weights.is_empty() {
            0
        } else {
            self.demand.len() / self.weights.len()
        }
    }

    fn points(&self, k: usize) -> &[f64] {
        let m = self.weights.len();
        self.demand.get(k * m..(k + 1) * m).unwrap_or_default()
    }

    /// The bounds of stage `k` (`min` at most `max`).
    fn bounds_at(&self, k: usize) -> (u32, u32) {
        let b = self
            .bounds
            .get(k)
            .map_or((self.min, self.max), |b| (b.min, b.max));
        (b.0.min(b.1), b.1)
    }

    /// Serving capacity of `kept` instances at stage `k`.
    fn serving(&self, k: usize, kept: u32) -> u32 {
        if k < self.boot_steps as usize {
            kept.min(self.arrivals.get(k).copied().unwrap_or(self.pool))
        } else {
            kept
        }
    }
}

/// `E[max(0, D - x)]` for a stage's points, at every integer `x` from `lo`, into `out`.
fn expected_shortfall(points: &[f64], weights: &[f64], lo: u32, out: &mut [f64]) {
    // Sweep upward, dropping points at or below x from the sums over points above x.
    let (mut above_sum, mut above_weight) = (0.0, 0.0);
    for (&d, &w) in points.iter().zip(weights) {
        above_sum += w * d;
        above_weight += w;
    }
    let mut remaining = points.iter().zip(weights).peekable();
    for (i, slot) in out.iter_mut().enumerate() {
        let x = f64::from(lo) + i as f64;
        while let Some((&d, &w)) = remaining.next_if(|&(&d, _)| d <= x) {
            above_sum -= w * d;
            above_weight -= w;
        }
        *slot = if remaining.peek().is_none() {
            0.0
        } else {
            (above_sum - x * above_weight).max(0.0)
        };
    }
}

/// Stage costs of keeping `lo + i` instances, serving at most `cap` of them: the
/// instances plus `penalty` times the expected shortfall, in one upward sweep.
fn fill_stage_costs(
    points: &[f64],
    weights: &[f64],
    lo: u32,
    cap: u32,
    penalty: f64,
    out: &mut [f64],
) {
    let (mut above_sum, mut above_weight) = (0.0, 0.0);
    for (&d, &w) in points.iter().zip(weights) {
        above_sum += w * d;
        above_weight += w;
    }
    // Sizes counted in f64 (exact below 2^53): no conversion per size.
    let (mut kept, cap) = (f64::from(lo), f64::from(cap));
    let mut remaining = points.iter().zip(weights).peekable();
    for slot in out.iter_mut() {
        let x = kept.min(cap);
        while let Some((&d, &w)) = remaining.next_if(|&(&d, _)| d <= x) {
            above_sum -= w * d;
            above_weight -= w;
        }
        let short = if remaining.peek().is_none() {
            0.0
        } else {
            (above_sum - x * above_weight).max(0.0)
        };
        *slot = kept + penalty * short;
        kept += 1.0;
    }
}

fn shortfall_at(points: &[f64], weights: &[f64], x: u32) -> f64 {
    let mut out = [0.0];
    expected_shortfall(points, weights, x, &mut out);
    out[0]
}

/// The sizes each stage may take without excluding an optimal plan.
///
/// Without step limits the cost splits into one problem per unit of capacity: a unit is
/// surely kept at a stage where its expected saving `penalty * P(D >= j)` exceeds one
/// step plus a launch (`1 + L`), which bounds the plan from below; and a unit nobody
/// could need at a stage is kept only to bridge, for at most `L` steps, to a stage
/// where some quantile point needs it, which bounds it from above. With step limits the
/// units interact, so every stage gets the union of the windows, unless the limits are
/// too wide to bind any move within it.
fn stage_windows(input: &PlanInput<'_>) -> Vec<(u32, u32)> {
    let h = input.stages();
    let l = input.boot_steps as usize;
    let threshold = (f64::from(input.boot_steps) + 1.0) / input.penalty;
    let tops: Vec<u32> = (0..h)
        .map(|k| to_size(input.points(k).last().copied().unwrap_or(0.0).ceil()))
        .collect();
    let mut windows: Vec<(u32, u32)> = (0..h)
        .map(|k| {
            let points = input.points(k);
            let mut tail = 0.0;
            let mut lo = 0;
            for (&d, &w) in points.iter().zip(input.weights).rev() {
                tail += w;
                if tail > threshold {
                    lo = to_size(d.floor());
                    break;
                }
            }
            if k < l {
                lo = lo.min(input.serving(k, u32::MAX));
            }
            let near = k.saturating_sub(l)..(k + l + 1).min(h);
            // A stage's scheduled minimum is a need like a quantile's: a unit may be
            // kept to bridge to it (the bounds clamp each window afterwards).
            let scheduled = if input.bounds.is_empty() {
                0
            } else {
                near.clone()
                    .map(|m| input.bounds_at(m).0)
                    .max()
                    .unwrap_or(0)
            };
            let hi = tops
                .get(near)
                .unwrap_or_default()
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
                .max(scheduled)
                .max(lo);
            (lo, hi)
        })
        .collect();
    if input.max_step_up.is_some() || input.max_step_down.is_some() {
        let lo = windows.iter().map(|w| w.0).min().unwrap_or(0);
        let hi = windows.iter().map(|w| w.1).max().unwrap_or(0);
        // Limits at least as wide as every move within the union, as the bounds keep it
        // (from the pool too), bind no plan there, and the best plan without them lies
        // within the windows.
        let (mut lo_kept, mut hi_kept) = {
            let (min, max) = input.bounds_at(0);
            (lo.clamp(min, max), hi.clamp(min, max))
        };
        for k in 1..input.bounds.len().min(h) {
            let (min, max) = input.bounds_at(k);
            lo_kept = lo_kept.min(lo.clamp(min, max));
            hi_kept = hi_kept.max(hi.clamp(min, max));
        }
        let widest = hi_kept.max(input.pool) - lo_kept.min(input.pool);
        let binds = |limit: Option<u32>| limit.is_some_and(|l| l < widest);
        if binds(input.max_step_up) || binds(input.max_step_down) {
            // Under binding limits a stage's scheduled maximum may force the sizes
            // before it down towards it, as its minimum forces them up.
            let stages = 0..input.bounds.len().min(h);
            let lo = stages
                .clone()
                .map(|k| input.bounds_at(k).1)
                .fold(lo, u32::min);
            let hi = stages.map(|k| input.bounds_at(k).0).fold(hi, u32::max);
            windows.iter_mut().for_each(|w| *w = (lo, hi));
        }
    }
    windows
}

fn to_size(x: f64) -> u32 {
    if x.is_nan() {
        0
    } else {
        x.clamp(0.0, f64::from(u32::MAX)) as u32
    }
}

/// Plans serving capacity for every stage of `input`; see the module documentation.
pub fn plan_capacity(input: &PlanInput<'_>, solver: &mut Solver) -> Result<CapacityPlan, DpError> {
    let h = input.stages();
    let l = input.boot_steps as usize;
    let windows = stage_windows(input);

    // Stages: the window within the bounds, moved inside what the step limits reach.
    let mut stages = Vec::with_capacity(h);
    let (mut reach_lo, mut reach_hi) = (input.pool, input.pool);
    for (k, &(lo, hi)) in windows.iter().enumerate() {
        let up = if k < l { Some(0) } else { input.max_step_up };
        let down = input.max_step_down;
        let (rlo, rhi) = (
            reach_lo.saturating_sub(down.unwrap_or(u32::MAX)),
            reach_hi.saturating_add(up.unwrap_or(u32::MAX)),
        );
        let (min, max) = input.bounds_at(k);
        let (blo, bhi) = (lo.clamp(min, max), hi.clamp(min, max));
        let (slo, shi) = (blo.clamp(rlo, rhi), bhi.clamp(rlo, rhi));
        stages.push(Stage::new(slo, shi).with_limits(up, down));
        (reach_lo, reach_hi) = (slo, shi);
    }

    let penalty = input.penalty;
    let solution = solver.solve(
        input.pool,
        &stages,
        f64::from(input.boot_steps),
        |k, lo, out| {
            // Serving is capped by arrivals before the boot delay.
            let cap = if k < l {
                input.serving(k, u32::MAX)
            } else {
                u32::MAX
            };
            fill_stage_costs(input.points(k), input.weights, lo, cap, penalty, out);
        },
    )?;

    let kept = solution.sizes;
    let serving: Vec<u32> = kept
        .iter()
        .enumerate()
        .map(|(k, &s)| input.serving(k, s))
        .collect();
    let mut launches = 0u64;
    let mut prev = input.pool;
    for &s in &kept {
        launches += u64::from(s.saturating_sub(prev));
        prev = s;
    }
    let expected_unserved: f64 = serving
        .iter()
        .enumerate()
        .map(|(k, &s)| shortfall_at(input.points(k), input.weights, s))
        .sum();
    let expected_cost = kept.iter().map(|&s| f64::from(s)).sum::<f64>()
        + f64::from(input.boot_steps) * launches as f64;
    let launch_now = match l {
        0 => 0,
        l => match (kept.get(l - 1), kept.get(l)) {
            (Some(before), Some(&at)) => at.saturating_sub(*before),
            _ => 0,
        },
    };
    Ok(CapacityPlan {
        desired_billed: kept
            .first()
            .copied()
            .unwrap_or(input.pool)
            .saturating_add(launch_now),
        launch_now,
        kept,
        serving,
        expected_cost,
        expected_unserved,
        objective: solution.cost,
    })
}

/// How the planner turns `max_unserved` into its penalty on unserved demand, and keeps
/// it honest.
///
/// A penalty `p` makes the plan keep, at each step, about the demand's `1 - 1/p`
/// quantile (the newsvendor rule). Penalties run on a ladder from `L + 2` (just above
/// the cost of launching an instance to serve one step) to `1/max_unserved`:
/// at that top price, avoiding the target's share of unserved demand would cost as much
/// as serving all of it, which no plan should exceed.
///
/// 1. **From the target, through the forecast.** For every penalty on the ladder the
///    planner adds up, tick after tick, the unserved demand it would leave in
///    expectation at the first step a launch can still serve (`L` steps ahead), and the
///    expected demand itself, over a discounted window of about three days. It plans
///    with the smallest penalty whose expected unserved demand is at most the aimed
///    fraction of the expected demand (interpolated on the ladder). That is one price
///    for the whole window, not one per step: for a target on the total unserved demand
///    it costs least, and quiet hours (where one instance serves everything) neither
///    inflate nor deflate it.
/// 2. **Corrected by what was observed.** For each step it commits capacity to, the
///    planner notes the unserved demand the rule above expects at the penalty in use,
///    and the serving capacity its plan had for that step, less the instances later
///    decisions let go before it. The controller reports what served each step, so the
///    planner later sees what actually went unserved; it charges the forecast only with
///    the demand above both what served and what was planned,
///    `max(0, demand - max(serving, planned))`. A fleet short of its plan (it started
///    too small, launches failed, instances died or booted late) is no error of the
///    forecast, and no higher price would have avoided it; capacity the planner itself
///    released is charged. Over a window of about six hours it divides what occurred by
///    what was expected (both plus a pseudo-count of a quarter of the allowance of a
///    whole window at the mean demand seen, so that before the window has filled one
///    early miss does not send it to its ceiling),
///    giving a ratio `c` bounded to [1/4, 16], and aims at `0.7 * max_unserved / c^2`
///    (0.7: unserved demand comes in bursts, so what a fleet ends up with scatters
///    around its aim, and the target is a ceiling). With `c` alone the aim would be
///    right if unserved demand shrank in proportion as plans grow more careful; it
///    shrinks more slowly, because part of it comes from surges no forecast sees
///    coming, so the correction is squared: a persistent excess tightens the aim
///    quickly, and a forecast that proves too cautious is let loose as quickly.
///
///
///    What the fleet's shortfalls did leave unserved (demand within the plan's
///    capacity, above what served) is counted apart, over about three hours: the target
///    is on all unserved demand, so the forecast is aimed at what remains of the aim
///    after that share (at least a quarter of it). In a cloud where boots run late and
///    instances die, the plans keep that much more margin.
///
///    The window is shorter than the penalty's: a genuine surprise (a jump no forecast
///    saw) drives `c` up within a few steps, and with three days of memory it would
///    keep the penalty near its top, and the fleet over-provisioned, for days. Over six
///    hours the excess fades within about twice that (the penalty is back within twice
///    its level after half a day). A much shorter memory forgets a bursty signal's
///    unserved demand between its bursts: on the worldcup98 trace a four-hour window
///    let unserved demand above 0.1 %.
/// 3. **Rehearsed at start.** Neither sum survives a restart, and a neutral start
///    (`c = 1`) plans loosely for hours where the forecast had been found short: a
///    fresh planner first plans through the last twelve hours of the history it is
///    given, on a fleet of its own (see `DpPlanner::rehearse`), and warms the ladder
///    with the forecasts of the three days before.
#[derive(Debug, Clone)]
pub struct ServiceTarget {
    target: f64,
    discount: f64,
    ladder: Vec<f64>,
    /// Discounted expected unserved demand at each ladder penalty, and expected demand.
    ladder_unserved: Vec<f64>,
    ladder_demand: f64,
    /// For each step capacity was committed to: the unserved demand expected at the
    /// penalty in use, and the serving capacity the plan had for it.
    committed: VecDeque<Commitment>,
    /// Discount per step of the calibration's window.
    calibration_discount: f64,
    expected_unserved: f64,
    observed_unserved: f64,
    /// Demand of the committed steps observed, over the calibration's window.
    observed_demand: f64,
    /// Committed steps observed, over the same window (discounted alike).
    observed_steps: f64,
    /// Demand the plan had capacity for that went unserved because the fleet fell short
    /// of the plan (late boots, deaths, failed launches), over the calibration's window.
    supply_unserved: f64,
    /// Demand over the supply's window, and its discount per step.
    supply_demand: f64,
    supply_discount: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Commitment {
    step: u64,
    expected: f64,
    planned: f64,
}

/// The penalty and how it was formed, for the decision's reason.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalty {
    pub value: f64,
    /// Unserved demand observed over unserved demand expected (recent, discounted).
    pub calibration: f64,
    /// The fraction of demand the plans aim to leave unserved.
    pub aim: f64,
    /// The unserved demand the rule expects at this penalty, at the step it was asked
    /// for.
    pub expected_unserved: f64,
}

/// The lowest penalty exceeds the cost of launching an instance for one step (`L + 1`)
/// by one: below it, leaving demand unserved would be cheaper than serving it.
const LADDER_ABOVE_LAUNCH: f64 = 2.0;
const LADDER_RATIO: f64 = 1.25;
const CALIBRATION_RANGE: (f64, f64) = (0.25, 16.0);
/// The share of `max_unserved` the plans aim at. Unserved demand comes in bursts, so the
/// fraction a fleet ends up with scatters around its aim; the target is a ceiling, so the
/// aim sits below it.
const AIM_SHARE: f64 = 0.7;
/// Days of history behind the penalty.
const WINDOW_DAYS: f64 = 3.0;
/// Shortfalls of supply shrink the aim to no less than this fraction of it.
const SUPPLY_FLOOR: f64 = 4.0;
/// Hours of history behind the share of shortfalls of supply: long enough to see boots
/// that run late now and then, short enough that a one-off loss (a third of the fleet
/// dying at once) widens the margin for hours, not a day.
const SUPPLY_HOURS: f64 = 3.0;
/// Hours of history behind its calibration.
const CALIBRATION_HOURS: f64 = 6.0;

/// The lowest of `points` with at most `p` of the probability mass above it.
fn upper_point(points: &[f64], weights: &[f64], p: f64) -> f64 {
    let mut above = 1.0;
    for (i, (&d, &w)) in points.iter().zip(weights).enumerate() {
        above -= w;
        if above <= p || i + 1 == points.len() {
            return d;
        }
    }
    0.0
}

impl ServiceTarget {
    /// `steps_per_day` sets the window; `boot_steps` the lowest penalty.
    pub fn new(max_unserved: f64, steps_per_day: f64, boot_steps: u32) -> Self {
        let top = 1.0 / max_unserved;
        let mut ladder = vec![(f64::from(boot_steps) + LADDER_ABOVE_LAUNCH).min(top)];
        while let Some(&p) = ladder.last().filter(|&&p| p < top) {
            ladder.push((p * LADDER_RATIO).min(top));
        }
        ServiceTarget {
            target: max_unserved,
            discount: 1.0 - 1.0 / (WINDOW_DAYS * steps_per_day.max(1.0)).max(2.0),
            ladder_unserved: vec![0.0; ladder.len()],
            ladder,
            ladder_demand: 0.0,
            committed: VecDeque::new(),
            calibration_discount: 1.0
                - 1.0 / (CALIBRATION_HOURS / 24.0 * steps_per_day.max(1.0)).max(2.0),
            expected_unserved: 0.0,
            observed_unserved: 0.0,
            observed_demand: 0.0,
            observed_steps: 0.0,
            supply_unserved: 0.0,
            supply_demand: 0.0,
            supply_discount: 1.0 - 1.0 / (SUPPLY_HOURS / 24.0 * steps_per_day.max(1.0)).max(2.0),
        }
    }

    /// Records absolute step `step`: its demand and the instances that served it.
    ///
    /// A committed step is charged only for demand above both what served it and what
    /// the plan had planned to serve it with: a fleet short of its plan (it started too
    /// small, a launch failed, an instance died or booted late) is no error of the
    /// forecast, and no higher price would have avoided it.
    pub fn observe(&mut self, step: u64, demand: f64, serving: f64) {
        while self.committed.front().is_some_and(|c| c.step < step) {
            self.committed.pop_front();
        }
        if self.committed.front().is_none_or(|c| c.step != step) {
            return;
        }
        let Some(c) = self.committed.pop_front() else {
            return;
        };
        if !(demand.is_finite() && serving.is_finite()) {
            return;
        }
        let covered = if c.planned.is_finite() {
            serving.max(c.planned)
        } else {
            serving
        };
        let d = self.calibration_discount;
        self.expected_unserved = d * self.expected_unserved + c.expected;
        self.observed_unserved = d * self.observed_unserved + (demand - covered).max(0.0);
        self.observed_demand = d * self.observed_demand + demand.max(0.0);
        self.observed_steps = d * self.observed_steps + 1.0;
        let supply = if c.planned.is_finite() {
            (demand.min(c.planned) - serving).max(0.0)
        } else {
            0.0
        };
        let ds = self.supply_discount;
        self.supply_unserved = ds * self.supply_unserved + supply;
        self.supply_demand = ds * self.supply_demand + demand.max(0.0);
    }

    /// Records that the decision at absolute step `step` removes `count` instances: the
    /// steps already committed to, from `step` on, were planned that much smaller (what
    /// goes unserved for want of them is an error of the forecast that let them go).
    pub fn release(&mut self, step: u64, count: u32) {
        for c in self.committed.iter_mut().filter(|c| c.step >= step) {
            c.planned -= f64::from(count);
        }
    }

    /// Records the plan made at the penalty [`penalty`](Self::penalty) returned for
    /// absolute step `step`: the capacity it planned to serve that step with.
    pub fn commit(&mut self, step: u64, penalty: &Penalty, planned_serving: f64) {
        while self.committed.back().is_some_and(|c| c.step >= step) {
            self.committed.pop_back();
        }
        self.committed.push_back(Commitment {
            step,
            expected: penalty.expected_unserved,
            planned: planned_serving,
        });
        if self.committed.len() > 4096 {
            self.committed.pop_front();
        }
    }

    /// Adds the forecast distribution of the first step a launch now can serve to the
    /// ladder, and returns the penalty to plan with.
    pub fn penalty(&mut self, points: &[f64], weights: &[f64]) -> Penalty {
        let mean: f64 = points.iter().zip(weights).map(|(d, w)| d * w).sum();
        let d = self.discount;
        if mean.is_finite() && mean >= 0.0 {
            self.ladder_demand = d * self.ladder_demand + mean;
            for (unserved, &p) in self.ladder_unserved.iter_mut().zip(&self.ladder) {
                let keep = upper_point(points, weights, 1.0 / p).ceil();
                *unserved = d * *unserved + shortfall_at(points, weights, to_size(keep));
            }
        }
        // A quarter of the allowance of a whole window of the demand seen: before the
        // window has filled (a cold start), one early miss is no proof of a bad forecast.
        let window = 1.0 / (1.0 - self.calibration_discount);
        let mean = if self.observed_steps > 0.0 {
            self.observed_demand / self.observed_steps
        } else {
            0.0
        };
        let prior = 0.25 * self.target * mean * window;
        let calibration = ((self.observed_unserved + prior) / (self.expected_unserved + prior))
            .clamp(CALIBRATION_RANGE.0, CALIBRATION_RANGE.1);
        let calibration = if calibration.is_finite() {
            calibration
        } else {
            1.0
        };
        let aim = AIM_SHARE * self.target / (calibration * calibration);
        // The target is on all unserved demand: what the fleet's shortfalls took is not
        // left to the forecast (within a quarter of the aim: no margin makes up for a
        // cloud that loses most of what is launched).
        let aim = if self.supply_demand > 0.0 {
            let supply = self.supply_unserved / self.supply_demand;
            (aim - supply).max(aim / SUPPLY_FLOOR)
        } else {
            aim
        };
        let allowed = aim * self.ladder_demand;
        let top = self.ladder.last().copied().unwrap_or(1.0 / self.target);
        let first_within = self.ladder_unserved.iter().position(|&u| u <= allowed);
        let value = match first_within.and_then(|j| j.checked_sub(1)) {
            // Log-linear between the last penalty above the allowance and this one.
            Some(above) => match (
                self.ladder_unserved.get(above..=above + 1),
                self.ladder.get(above..=above + 1),
            ) {
                (Some(&[hi, lo]), Some(&[p_hi, p_lo])) => {
                    let frac = if hi > lo && lo > 0.0 {
                        ((hi / allowed).ln() / (hi / lo).ln()).clamp(0.0, 1.0)
                    } else {
                        1.0
                    };
                    p_hi * (p_lo / p_hi).powf(frac)
                }
                _ => top,
            },
            None if first_within == Some(0) => self.ladder.first().copied().unwrap_or(top),
            None => top,
        };
        // What the rule expects at this penalty, to compare with what will occur.
        let keep = upper_point(points, weights, 1.0 / value).ceil();
        let expected_unserved = shortfall_at(points, weights, to_size(keep));
        Penalty {
            value,
            calibration,
            aim,
            expected_unserved,
        }
    }
}

/// Booting instances grouped by the step they were (probably) launched, to estimate when
/// each will serve. The observation only says how many are booting; launches are dated
/// from the ticks at which the count grew, and shrinking removes the newest first, as
/// the controller's scale-in does.
#[derive(Debug, Clone, Default)]
struct BootingCohorts {
    cohorts: VecDeque<(u64, u32)>,
}

impl BootingCohorts {
    fn update(&mut self, now: u64, booting: u32, boot_steps: u32) {
        self.cohorts
            .retain(|&(launched, _)| launched + u64::from(boot_steps) > now);
        let mut total: u32 = self.cohorts.iter().map(|c| c.1).sum();
        while total > booting {
            let Some(newest) = self.cohorts.back_mut() else {
                break;
            };
            let drop = newest.1.min(total - booting);
            newest.1 -= drop;
            total -= drop;
            if newest.1 == 0 {
                self.cohorts.pop_back();
            }
        }
        if booting > total {
            // Launched at the previous tick at the latest.
            self.cohorts
                .push_back((now.saturating_sub(1), booting - total));
        }
    }

    /// Instances serving at each of the next `boot_steps` steps without new launches.
    fn arrivals(&self, now: u64, serving: u32, boot_steps: u32, out: &mut Vec<u32>) {
        out.clear();
        for k in 0..u64::from(boot_steps) {
            let due: u32 = self
                .cohorts
                .iter()
                .filter(|&&(launched, _)| launched + u64::from(boot_steps) <= now + k)
                .map(|c| c.1)
                .sum();
            out.push(serving.saturating_add(due));
        }
    }
}

/// The `dp` policy: forecast, plan, apply the first step. See the module documentation.
///
/// Each tick it takes in only the steps it has not seen (by `Observation::steps_seen`;
/// the whole history at the first tick), forecasts the next `H` steps with
/// [`AdaptiveForecaster`] (demand in instances, so errors are absolute below one
/// instance and relative above), prices unserved demand with [`ServiceTarget`], and
/// plans with [`plan_capacity`]. Its decision carries the whole plan (planned serving,
/// forecast quantiles, expected cost and unserved demand) and a reason that names the
/// forecast at the first step a launch can serve, the capacity change and the penalty.
/// No forecast quantile, planned with or shown, exceeds twice the highest demand of the
/// last week (halving weekly), plus ten instances; during the first day of history, the
/// highest demand seen plus a margin that shrinks as history grows (see
/// `PlannerState::ceiling`): a guard against a forecaster thrown off by a cold start.
#[derive(Debug, Clone)]
pub struct DpPlanner {
    config: DpConfig,
    /// Forecaster and target, built at the first tick (they need the step length).
    state: Option<PlannerState>,
    solver: Solver,
    levels: Vec<f64>,
    weights: Vec<f64>,
    // Scratch buffers, reused by the plans of one decision (a rehearsal makes many).
    quantiles: Vec<f64>,
    demand: Vec<f64>,
    arrivals: Vec<u32>,
}

#[derive(Debug, Clone)]
struct PlannerState {
    step: Duration,
    boot_steps: u32,
    horizon: usize,
    forecaster: AdaptiveForecaster,
    target: ServiceTarget,
    booting: BootingCohorts,
    outage: OutageWatch,
    /// Highest demand seen, halving over a week.
    recent_peak: f64,
    peak_decay: f64,
    steps_seen: u64,
    /// Steps with a demand value ingested (gaps not counted), and steps in a day.
    values_seen: u64,
    steps_per_day: f64,
}

/// Boots observed before the planner plans with their spread rather than the nominal
/// delay alone.
const BOOT_SAMPLES_NEEDED: usize = 8;
/// Which of the observed boot times plans count on (the median).
const BOOT_LEAD_QUANTILE: f64 = 0.5;

/// Steps from launch to serving that plans count on: the nominal boot delay, or, once
/// enough boots have been seen, their median, if longer (at most four times the nominal
/// delay): a fleet whose boots take longer than configured launches that much earlier.
/// Their spread is left to the service target, which sees what late boots leave
/// unserved and keeps a margin for it (planning every launch for a late boot instead
/// cost more for the same unserved demand in replay under the `aws` cloud).
fn lead_steps(obs: &Observation<'_>) -> u32 {
    let nominal = obs.boot_steps;
    if obs.boot_times.len() < BOOT_SAMPLES_NEEDED {
        return nominal;
    }
    let mut secs: Vec<f64> = obs.boot_times.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    let rank = ((BOOT_LEAD_QUANTILE * secs.len() as f64).ceil() as usize).clamp(1, secs.len());
    let step = obs.step.as_secs_f64().max(1e-3);
    let Some(&at_rank) = secs.get(rank - 1) else {
        return nominal;
    };
    let observed = (at_rank / step - 1e-9).ceil();
    let most = nominal.saturating_mul(4).max(1);
    (observed.clamp(0.0, f64::from(most)) as u32).max(nominal)
}

/// Hours of history a fresh planner plans through before its first decision: twice the
/// calibration's window, so that what it rehearsed outweighs its neutral start.
const REHEARSAL_HOURS: f64 = 2.0 * CALIBRATION_HOURS;

/// The most plan steps a rehearsal solves for: 720 plans of an hour of one-minute steps.
/// Longer plans (shorter steps) rehearse fewer plans, evenly spread.
const REHEARSED_PLAN_STEPS: usize = 720 * 60;

/// The long-history ceiling: twice the recent peak, plus this many instances.
const CEILING_SLACK: f64 = 10.0;
/// The short-history margin above the peak never falls below this fraction.
const SHORT_MARGIN_FLOOR: f64 = 0.25;

impl PlannerState {
    /// The highest demand any forecast quantile (planned with or shown) may take.
    ///
    /// A safety net against a forecaster gone wild (a cold start on a signal that then
    /// jumps): never beyond twice the recent peak demand, plus ten. While less than a
    /// day of values has been seen, the forecaster's spread rests on its prior rather
    /// than on errors it has measured (after two steps its 99.9 % quantile three steps
    /// ahead is about 45 times the median), so the bound is what the history supports:
    /// the peak seen, plus a margin of `1/sqrt(n)` of it after `n` values (at least a
    /// quarter), plus one instance. Rises are still followed at once: the peak moves
    /// with every new high.
    fn ceiling(&self) -> f64 {
        let long = 2.0 * self.recent_peak.max(1.0) + CEILING_SLACK;
        if (self.values_seen as f64) >= self.steps_per_day {
            return long;
        }
        let margin = (1.0 / (self.values_seen.max(1) as f64).sqrt()).max(SHORT_MARGIN_FLOOR);
        long.min(self.recent_peak * (1.0 + margin) + 1.0)
    }
}

impl DpPlanner {
    pub fn new(config: DpConfig) -> Result<Self, Vec<DpConfigError>> {
        config.validate()?;
        let (mut levels, weights) = planning_grid();
        levels.extend_from_slice(&SHOWN);
        Ok(DpPlanner {
            config,
            state: None,
            solver: Solver::default(),
            levels,
            weights,
            quantiles: Vec::new(),
            demand: Vec::new(),
            arrivals: Vec::new(),
        })
    }

    pub fn config(&self) -> &DpConfig {
        &self.config
    }

    /// Whether `obs` starts the planner afresh: its first tick, or a history that is not
    /// the continuation of the one seen.
    fn is_fresh(&self, obs: &Observation<'_>) -> bool {
        match &self.state {
            Some(s) => {
                s.step != obs.step
                    || s.boot_steps != obs.boot_steps
                    || obs.steps_seen < s.steps_seen
            }
            None => true,
        }
    }

    /// A fresh planner given more than a day of history plans through its last hours
    /// first, on a fleet of its own (boots of the nominal delay, nothing failing), so
    /// that its service target starts calibrated by what its plans would have left
    /// unserved, rather than at the neutral guess that every start, and every restart,
    /// would otherwise begin from. The fleet is not touched; only the planner's state
    /// is.
    fn rehearse(&mut self, obs: &Observation<'_>) {
        let len = obs.demand.len();
        if obs.steps_seen < len as u64 {
            return;
        }
        let step_secs = obs.step.as_secs_f64().max(1e-3);
        let wanted = (REHEARSAL_HOURS * 3600.0 / step_secs).ceil() as usize;
        // The first day of the history is the forecaster's own: rehearsed on, a forecast
        // that has seen nothing yet would say little about the one that has.
        let per_day = (86_400.0 / step_secs).ceil() as usize;
        let steps = wanted.min(len.saturating_sub(1 + per_day));
        if steps == 0 {
            return;
        }
        let start = len - steps - 1;
        // Short steps give long rehearsals: plan at most so many of them, evenly spread
        // (the fleet holds between), so that a hundred fleets starting at once decide
        // within seconds.
        let horizon = self.config.horizon_steps(obs.step, obs.boot_steps).max(60);
        let plans = (REHEARSED_PLAN_STEPS / horizon).max(1);
        let stride = steps.div_ceil(plans);
        let l = obs.boot_steps as usize;
        let first_known = obs
            .demand
            .iter()
            .take(start + 1)
            .rev()
            .copied()
            .find(|d| d.is_finite())
            .unwrap_or(0.0);
        let mut serving = to_size(first_known.ceil()).clamp(obs.min.min(obs.max), obs.max);
        // Launches by the step they serve from, as (step, count).
        let mut booting: VecDeque<(usize, u32)> = VecDeque::new();
        let mut served = vec![f64::NAN; len];
        for (slot, &was) in served.iter_mut().zip(obs.serving_history) {
            *slot = was;
        }
        for i in start..len - 1 {
            while booting.front().is_some_and(|&(at, _)| at <= i) {
                serving += booting.pop_front().map_or(0, |b| b.1);
            }
            let in_boot: u32 = booting.iter().map(|b| b.1).sum();
            let (Some(demand), Some(serving_history)) = (obs.demand.get(..=i), served.get(..=i))
            else {
                break;
            };
            let rehearsed = Observation {
                demand,
                serving_history,
                steps_seen: obs.steps_seen - (len - 1 - i) as u64,
                serving,
                active: serving + in_boot,
                booting: in_boot,
                boot_times: &[],
                bounds_ahead: &[],
                ..*obs
            };
            let active = serving + in_boot;
            let desired = if (i - start).is_multiple_of(stride) {
                self.plan(&rehearsed).desired
            } else {
                active
            };
            if desired > active {
                booting.push_back((i + l.max(1), desired - active));
            } else {
                let mut surplus = active - desired;
                while surplus > 0 {
                    let Some(newest) = booting.back_mut() else {
                        break;
                    };
                    let drop = newest.1.min(surplus);
                    newest.1 -= drop;
                    surplus -= drop;
                    if newest.1 == 0 {
                        booting.pop_back();
                    }
                }
                serving -= surplus.min(serving);
            }
            if let Some(slot) = served.get_mut(i + 1) {
                *slot = f64::from(serving);
            }
        }
    }

    /// Brings the forecaster and the service target up to date with the observation's
    /// new steps (all of its history at the first tick).
    fn ingest(&mut self, obs: &Observation<'_>) -> &mut PlannerState {
        let fresh = self.is_fresh(obs);
        if fresh {
            let horizon = self.config.horizon_steps(obs.step, obs.boot_steps);
            let step_secs = obs.step.as_secs_f64().max(1e-3);
            self.state = Some(PlannerState {
                step: obs.step,
                boot_steps: obs.boot_steps,
                horizon,
                forecaster: AdaptiveForecaster::new(ForecastSettings {
                    step: obs.step,
                    max_horizon: horizon,
                    unit: 1.0,
                }),
                target: ServiceTarget::new(
                    self.config.max_unserved,
                    86_400.0 / step_secs,
                    obs.boot_steps,
                ),
                booting: BootingCohorts::default(),
                outage: OutageWatch::new(step_secs, self.config.outage_hold.as_secs_f64()),
                recent_peak: 0.0,
                peak_decay: 0.5f64.powf(step_secs / (7.0 * 86_400.0)),
                steps_seen: obs.steps_seen.saturating_sub(obs.demand.len() as u64),
                values_seen: 0,
                steps_per_day: 86_400.0 / step_secs,
            });
        }
        let DpPlanner {
            state,
            levels,
            weights,
            quantiles,
            ..
        } = self;
        let Some(state) = state.as_mut() else {
            unreachable!("state was just set")
        };
        // A fresh planner (a started or restarted agent) prices unserved demand from the
        // forecasts it would have made over the history it is given (the penalty's
        // window of it), not from its first tick alone.
        let warm_from = if fresh {
            obs.demand
                .len()
                .saturating_sub((WINDOW_DAYS * state.steps_per_day) as usize)
        } else {
            usize::MAX
        };
        let m = weights.len();
        let at = (obs.boot_steps as usize).min(state.horizon - 1);
        let new = obs
            .steps_seen
            .saturating_sub(state.steps_seen)
            .min(obs.demand.len() as u64) as usize;
        let from = obs.demand.len() - new;
        let first_step = obs.steps_seen.saturating_sub(obs.demand.len() as u64);
        let len = obs.demand.len();
        let levels = levels.get(..m).unwrap_or(levels);
        for (i, &demand) in obs.demand.iter().enumerate().skip(from) {
            state.forecaster.observe(demand);
            state.outage.observe(demand);
            let serving = obs.serving_history.get(i).copied().unwrap_or(f64::NAN);
            state.target.observe(first_step + i as u64, demand, serving);
            state.recent_peak *= state.peak_decay;
            if demand.is_finite() {
                state.recent_peak = state.recent_peak.max(demand);
                state.values_seen += 1;
            }
            if i >= warm_from && i + 1 < len {
                state
                    .forecaster
                    .forecast_step_into(at + 1, levels, quantiles);
                let ceiling = state.ceiling();
                quantiles.iter_mut().for_each(|d| *d = d.min(ceiling));
                state.target.penalty(quantiles, weights);
            }
        }
        state.steps_seen = obs.steps_seen;
        state
    }
}

/// `dp` in the policy registry: steered by `max_unserved`, judged at its defaults (not
/// swept).
impl crate::PolicyKind for DpConfig {
    fn defaults() -> Option<Self> {
        Some(DpConfig::default())
    }

    fn validate(&self) -> Result<(), String> {
        DpConfig::validate(self).map_err(|errors| crate::registry::dp_problems(&errors))
    }

    fn build(&self) -> Result<Box<dyn Policy>, String> {
        match DpPlanner::new(self.clone()) {
            Ok(planner) => Ok(Box::new(planner)),
            Err(errors) => Err(crate::registry::dp_problems(&errors)),
        }
    }

    fn knob(&self) -> &'static str {
        "max_unserved"
    }

    fn knob_value(&self) -> f64 {
        self.max_unserved
    }

    fn set_knob(&mut self, value: f64) -> Result<(), String> {
        self.max_unserved = value;
        Ok(())
    }
}

impl Policy for DpPlanner {
    fn name(&self) -> &str {
        "dp"
    }

    /// Once warmed up, the planner reads only the steps added since its last decision:
    /// its forecaster, target and peak hold what it learnt from the others.
    fn history_kept(&self) -> Option<usize> {
        self.state.as_ref().map(|_| 0)
    }

    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        if self.is_fresh(obs) {
            self.rehearse(obs);
        }
        let decision = self.plan(obs);
        // The plan's buffers (quantiles of every step, the program's back-pointers) are
        // reused within a decision, and let go between: a fleet waiting for its next
        // tick holds only what it learnt, which matters when one agent runs many.
        self.quantiles = Vec::new();
        self.demand = Vec::new();
        self.solver = Solver::default();
        decision
    }
}

impl DpPlanner {
    /// One tick's plan; see [`DpPlanner`].
    fn plan(&mut self, obs: &Observation<'_>) -> Decision {
        self.ingest(obs);
        let Some(state) = self.state.as_mut() else {
            return Decision::new(obs.active, "dp: no state");
        };
        let h = state.horizon;
        let l = lead_steps(obs).min(h as u32 - 1);
        let m = self.weights.len();
        let shown = SHOWN.len();
        state
            .forecaster
            .forecast_into(h, &self.levels, &mut self.quantiles);
        let ceiling = state.ceiling();
        self.demand.clear();
        for row in self.quantiles.chunks_exact_mut(m + shown).take(h) {
            row.iter_mut().for_each(|d| *d = d.min(ceiling));
            self.demand.extend(row.iter().take(m));
        }
        state.booting.update(obs.steps_seen, obs.booting, l);
        state
            .booting
            .arrivals(obs.steps_seen, obs.serving, l, &mut self.arrivals);
        let first_launch_stage = (l as usize).min(h - 1);
        let first_served = self
            .demand
            .get(first_launch_stage * m..(first_launch_stage + 1) * m)
            .unwrap_or_default();
        let penalty = state.target.penalty(first_served, &self.weights);
        // After the penalty, which is calibrated on the forecast alone.
        let recovery = state
            .outage
            .recovery()
            .map(|(level, left)| (level.min(ceiling), left));
        if let Some((level, left)) = recovery {
            OutageWatch::hold(&mut self.demand, m, level, left);
        }
        let input = PlanInput {
            pool: obs.serving.saturating_add(obs.booting),
            arrivals: &self.arrivals,
            boot_steps: l,
            min: obs.min,
            max: obs.max,
            bounds: obs.bounds_ahead,
            max_step_up: obs.max_step_up,
            max_step_down: obs.max_step_down,
            penalty: penalty.value,
            demand: &self.demand,
            weights: &self.weights,
        };
        let plan = match plan_capacity(&input, &mut self.solver) {
            Ok(plan) => plan,
            Err(e) => return Decision::new(obs.active, format!("dp: cannot plan ({e}); holding")),
        };
        let at = first_launch_stage;
        let desired = plan.desired_billed.clamp(obs.min.min(obs.max), obs.max);
        state
            .target
            .release(obs.steps_seen, input.pool.saturating_sub(desired));
        let serving_at = plan.serving.get(at).copied().unwrap_or(obs.serving);
        let serving_first = plan.serving.first().copied().unwrap_or(obs.serving);
        let kept_first = plan.kept.first().copied().unwrap_or(input.pool);
        state
            .target
            .commit(obs.steps_seen + at as u64, &penalty, f64::from(serving_at));
        let forecast: Vec<Vec<(f64, f64)>> = self
            .quantiles
            .chunks_exact(m + shown)
            .take(h)
            .map(|row| {
                SHOWN
                    .iter()
                    .copied()
                    .zip(row.iter().skip(m).copied())
                    .collect()
            })
            .collect();
        // The shown quantiles at the first step a launch can serve: 0.5, 0.95, 0.999.
        let shown_at = |i: usize| {
            forecast
                .get(at)
                .and_then(|row| row.get(i))
                .map_or(f64::NAN, |q| q.1)
        };
        let reason = format!(
            "dp: demand in {at} steps p50 {:.2} p95 {:.2} p99.9 {:.2}; serving {} -> {} then {}; \
             launch {}, keep {} of {}; penalty {:.1} (aiming at {:.3}% unserved: unserved \
             seen/expected {:.2}); expected unserved {:.3} instance-steps over {h} steps",
            shown_at(1),
            shown_at(2),
            shown_at(3),
            obs.serving,
            serving_first,
            serving_at,
            plan.launch_now,
            kept_first,
            input.pool,
            penalty.value,
            100.0 * penalty.aim,
            penalty.calibration,
            plan.expected_unserved,
        );
        let reason = match recovery {
            Some((level, left)) => format!(
                "{reason}; outage: holding capacity for {level:.1} (the demand before it fell) \
                 for up to {left} more steps"
            ),
            None => reason,
        };
        Decision {
            desired,
            reason,
            plan: Some(Plan {
                trajectory: plan.serving,
                forecast,
                expected_cost: plan.expected_cost,
                expected_unserved: plan.expected_unserved,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn config_defaults_and_errors() {
        let c: DpConfig = toml::from_str("").unwrap();
        assert!(toml::from_str::<DpConfig>("max_unservd = 0.1").is_err());
        let c2: DpConfig = toml::from_str("horizon = \"2h\"\nmax_unserved = 0.01").unwrap();
        assert_eq!(c2.horizon, Some(Duration::from_secs(7200)));
        assert_eq!(c, DpConfig::default());
        let bad = DpConfig {
            max_unserved: 0.0,
            horizon: Some(Duration::ZERO),
            ..DpConfig::default()
        };
        let errors = bad.validate().unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.field).collect::<Vec<_>>(),
            ["max_unserved", "horizon"]
        );
        assert_eq!(
            DpConfig::default().horizon_steps(Duration::from_secs(60), 3),
            60
        );
        assert_eq!(
            DpConfig::default().horizon_steps(Duration::from_secs(300), 1),
            12
        );
        assert_eq!(
            DpConfig::default().horizon_steps(Duration::from_secs(3600), 1),
            4
        );
        assert_eq!(
            DpConfig::default().horizon_steps(Duration::from_secs(60), 30),
            120
        );
    }

    proptest! {
        #[test]
        fn stage_costs_match_direct_sums(
            mut points in prop::collection::vec(0.0f64..60.0, 1..8),
            lo in 0u32..40,
            cap in 0u32..60,
            penalty in 1.0f64..500.0,
        ) {
            points.sort_by(f64::total_cmp);
            let weights = vec![1.0 / points.len() as f64; points.len()];
            let mut out = vec![0.0; 50];
            fill_stage_costs(&points, &weights, lo, cap, penalty, &mut out);
            for (i, &got) in out.iter().enumerate() {
                let kept = lo + i as u32;
                let x = f64::from(kept.min(cap));
                let short: f64 = points
                    .iter()
                    .zip(&weights)
                    .map(|(d, w)| w * (d - x).max(0.0))
                    .sum();
                let want = f64::from(kept) + penalty * short;
                prop_assert!((got - want).abs() <= 1e-9 * want.max(1.0), "{kept}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn step_limits_too_wide_to_bind_keep_each_stage_to_its_window() {
        let (levels, weights) = planning_grid();
        // Demand climbing from 10 to 40 over 12 steps, a spread of a tenth.
        let demand: Vec<f64> = (0..12)
            .flat_map(|k| {
                let centre = 10.0 + 2.5 * k as f64;
                levels.iter().map(move |q| centre * (1.0 + 0.1 * (q - 0.5)))
            })
            .collect();
        let input = |limit: Option<u32>| PlanInput {
            pool: 12,
            arrivals: &[12, 12],
            boot_steps: 2,
            min: 1,
            max: 1000,
            bounds: &[],
            max_step_up: limit,
            max_step_down: limit,
            penalty: 50.0,
            demand: &demand,
            weights: &weights,
        };
        let free = stage_windows(&input(None));
        assert!(free.windows(2).any(|w| w[0] != w[1]), "{free:?}");
        assert_eq!(stage_windows(&input(Some(1_000))), free);
        let union = stage_windows(&input(Some(3)));
        assert!(union.iter().all(|&w| w == union[0]), "{union:?}");
        let plan = |limit| plan_capacity(&input(limit), &mut Solver::default()).unwrap();
        assert_eq!(plan(Some(1_000)), plan(None));
        // Limits that bind still hold.
        let limited = plan(Some(3));
        let mut prev = 12;
        for &kept in &limited.kept {
            assert!(kept.abs_diff(prev) <= 3, "{:?}", limited.kept);
            prev = kept;
        }
    }

    #[test]
    fn shortfall_sweeps_match_direct_sums() {
        let points = [0.5, 1.0, 2.5, 4.0];
        let weights = [0.25, 0.25, 0.25, 0.25];
        let mut out = [0.0; 6];
        expected_shortfall(&points, &weights, 0, &mut out);
        for (x, &got) in out.iter().enumerate() {
            let want: f64 = points
                .iter()
                .zip(&weights)
                .map(|(d, w)| w * (d - x as f64).max(0.0))
                .sum();
            assert!((got - want).abs() < 1e-12, "{x}: {got} vs {want}");
        }
    }

    #[test]
    fn cohorts_date_launches_and_drop_newest() {
        let mut c = BootingCohorts::default();
        let mut out = Vec::new();
        c.update(10, 2, 3); // launched at 9, serve from 12
        c.update(11, 5, 3); // 3 more launched at 10, serve from 13
        c.arrivals(11, 4, 3, &mut out);
        assert_eq!(out, vec![4, 6, 9]);
        c.update(12, 2, 3); // the 2 from step 9 serve now; one of the newest was removed
        c.arrivals(12, 6, 3, &mut out);
        assert_eq!(out, vec![6, 8, 8]);
    }

    #[test]
    fn cohorts_booting_late_are_not_counted_as_arriving() {
        let mut c = BootingCohorts::default();
        let mut out = Vec::new();
        c.update(10, 4, 3); // launched at 9, due at 12
        c.arrivals(10, 5, 3, &mut out);
        assert_eq!(out, vec![5, 5, 9]);
        // At 12 all four still boot: they are not taken to serve now, but as if launched
        // at the tick before, a boot delay from then.
        c.update(12, 4, 3);
        c.arrivals(12, 5, 3, &mut out);
        assert_eq!(out, vec![5, 5, 9]);
        // Still late at 14: pushed back again.
        c.update(14, 4, 3);
        c.arrivals(14, 5, 3, &mut out);
        assert_eq!(out, vec![5, 5, 9]);
    }
}
