//! The benchmark's oracle: the cheapest fleet with perfect foresight and nothing unserved.
//!
//! With `D_t = max(min, ceil(d_t))` (clamped to `max` when the fleet may not grow that
//! far) and `L` boot steps, the oracle solves
//!
//! ```text
//!     OPT = min over integer s_0 .. s_{T-1} of  sum_t s_t + L * sum_{t>=1} max(0, s_t - s_{t-1})
//!           subject to s_0 = D_0 and D_t <= s_t <= max
//! ```
//!
//! where `s_t` is the serving count and every increase is a launch billed for its boot
//! steps. It is the shared [`dp`](crate::dp) program with stage cost `s` and launch cost
//! `L`. Each stage is restricted to the sizes an optimal plan can use: the cost splits
//! into one independent problem per unit of capacity (per "level" k: be on whenever
//! `D_t >= k`, bridge an off-gap only when it is at most `L` steps), so an optimal `s_t`
//! never exceeds the demand seen within `L` steps on both sides. That keeps the program
//! small on long traces.

use std::collections::VecDeque;
use std::fmt;

use crate::dp::{self, Stage};
use crate::{Decision, Observation, Policy};

/// The oracle's serving schedule and its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct OracleSchedule {
    /// Instances serving at each step.
    pub serving: Vec<u32>,
    /// The optimum, in instance-steps (multiply by the step in minutes for
    /// instance-minutes).
    pub opt_instance_steps: u64,
    /// Boot steps `L` the schedule was planned with.
    pub boot_steps: u32,
}

/// Input the oracle cannot plan for.
#[derive(Debug, Clone, PartialEq)]
pub enum OracleError {
    /// The trace has no steps.
    EmptyDemand,
    /// A demand value is negative, NaN or infinite (index from 0).
    BadDemand { step: usize, value: f64 },
    /// `min` is above `max`.
    BadBounds { min: u32, max: u32 },
}

impl fmt::Display for OracleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OracleError::EmptyDemand => write!(f, "the demand trace is empty"),
            OracleError::BadDemand { step, value } => {
                write!(
                    f,
                    "demand at step {step} is {value}, not a finite non-negative number"
                )
            }
            OracleError::BadBounds { min, max } => {
                write!(f, "fleet bounds are inverted: min {min} is above max {max}")
            }
        }
    }
}

impl std::error::Error for OracleError {}

/// The instances needed at each step: `max(min, ceil(d_t))`, at most `max`.
pub fn required_instances(demand: &[f64], min: u32, max: u32) -> Result<Vec<u32>, OracleError> {
    if min > max {
        return Err(OracleError::BadBounds { min, max });
    }
    demand
        .iter()
        .enumerate()
        .map(|(step, &value)| {
            if !value.is_finite() || value < 0.0 {
                return Err(OracleError::BadDemand { step, value });
            }
            let need = value.ceil().min(f64::from(max)) as u32;
            Ok(need.clamp(min, max))
        })
        .collect()
}

/// Solves the oracle for a demand trace in instance units.
pub fn solve(
    demand: &[f64],
    boot_steps: u32,
    min: u32,
    max: u32,
) -> Result<OracleSchedule, OracleError> {
    let need = required_instances(demand, min, max)?;
    let Some(&initial) = need.first() else {
        return Err(OracleError::EmptyDemand);
    };
    let reach = boot_steps as usize;
    let behind = window_max(&need, reach, false);
    let ahead = window_max(&need, reach, true);
    let later = need.iter().zip(behind.iter().zip(&ahead)).skip(1);
    let stages: Vec<Stage> = std::iter::once(Stage::new(initial, initial))
        .chain(later.map(|(&need, (&behind, &ahead))| Stage::new(need, behind.min(ahead))))
        .collect();
    let solution = dp::solve(initial, &stages, f64::from(boot_steps), |_, lo, costs| {
        for (i, c) in costs.iter_mut().enumerate() {
            *c = f64::from(lo) + i as f64;
        }
    })
    .map_err(from_dp_error)?;
    Ok(OracleSchedule {
        serving: solution.sizes,
        opt_instance_steps: solution.cost as u64,
        boot_steps,
    })
}

/// The oracle's stages always contain their own requirement and steps are unlimited, so
/// the program cannot fail; map its errors anyway rather than panic.
fn from_dp_error(e: dp::DpError) -> OracleError {
    match e {
        dp::DpError::NoStages => OracleError::EmptyDemand,
        dp::DpError::EmptyBounds { lo, hi, .. } | dp::DpError::Unreachable { lo, hi, .. } => {
            OracleError::BadBounds { min: lo, max: hi }
        }
    }
}

/// For each t, the largest of `values[t - reach ..= t]` (or `values[t ..= t + reach]`
/// when `ahead`), clipped at the ends.
fn window_max(values: &[u32], reach: usize, ahead: bool) -> Vec<u32> {
    // Candidates for the maximum, as (index, value): values decrease from front to back.
    let mut queue: VecDeque<(usize, u32)> = VecDeque::new();
    let mut window = |(t, &value): (usize, &u32)| {
        while queue.back().is_some_and(|&(_, v)| v <= value) {
            queue.pop_back();
        }
        queue.push_back((t, value));
        while queue.front().is_some_and(|&(j, _)| j.abs_diff(t) > reach) {
            queue.pop_front();
        }
        queue.front().map_or(value, |&(_, v)| v)
    };
    if ahead {
        let mut out: Vec<u32> = values.iter().enumerate().rev().map(&mut window).collect();
        out.reverse();
        out
    } else {
        values.iter().enumerate().map(window).collect()
    }
}

impl OracleSchedule {
    /// The optimum in instance-minutes for a step of `step_seconds`.
    pub fn instance_minutes(&self, step_seconds: f64) -> f64 {
        self.opt_instance_steps as f64 * step_seconds / 60.0
    }

    /// The billed fleet size to ask for at each step so that the schedule is served:
    /// `s_t` plus the launches already under way for steps `t+1 ..= t+L` (an increase at
    /// step `t'` is launched at `t' - L`).
    ///
    /// Played through the benchmark's controller (launches serve `L` steps later,
    /// newest-first scale-in), this bills exactly `OPT` and leaves nothing unserved,
    /// except that an increase in steps `1 ..= L` cannot be launched in time: decisions
    /// start at step 1, so such a launch starts at step 1 and serves late.
    pub fn desired_billed(&self) -> Vec<u32> {
        let l = self.boot_steps as usize;
        let s = &self.serving;
        let increase = |t: usize| match (t.checked_sub(1).and_then(|p| s.get(p)), s.get(t)) {
            (Some(&before), Some(&now)) => now.saturating_sub(before),
            _ => 0,
        };
        // Running sum of the increases in (t, t + L].
        let mut under_way: u64 = (1..=l.min(s.len().saturating_sub(1)))
            .map(|t| u64::from(increase(t)))
            .sum();
        let mut out = Vec::with_capacity(s.len());
        for (t, &serving) in s.iter().enumerate() {
            out.push(u32::try_from(u64::from(serving) + under_way).unwrap_or(u32::MAX));
            if t + 1 + l < s.len() {
                under_way += u64::from(increase(t + 1 + l));
            }
            if t + 1 < s.len() {
                under_way -= u64::from(increase(t + 1));
            }
        }
        out
    }
}

/// Plays the oracle's precomputed schedule: it knows the whole trace in advance.
///
/// At step `t` (`obs.steps_seen == t`) it asks for the billed size of
/// [`OracleSchedule::desired_billed`] at `t`.
#[derive(Debug, Clone)]
pub struct OraclePolicy {
    desired: Vec<u32>,
    opt_instance_steps: u64,
}

impl OraclePolicy {
    /// Plans for the whole demand trace (instance units) at once.
    pub fn new(demand: &[f64], boot_steps: u32, min: u32, max: u32) -> Result<Self, OracleError> {
        let schedule = solve(demand, boot_steps, min, max)?;
        Ok(Self::from_schedule(&schedule))
    }

    pub fn from_schedule(schedule: &OracleSchedule) -> Self {
        OraclePolicy {
            desired: schedule.desired_billed(),
            opt_instance_steps: schedule.opt_instance_steps,
        }
    }
}

impl Policy for OraclePolicy {
    fn name(&self) -> &str {
        "oracle"
    }

    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        let t = usize::try_from(obs.steps_seen).unwrap_or(usize::MAX);
        let Some(&desired) = self.desired.get(t).or(self.desired.last()) else {
            return Decision::new(obs.active, "oracle: no schedule, holding");
        };
        Decision::new(
            desired,
            format!(
                "oracle: step {t} of a perfect-foresight schedule costing {} instance-steps",
                self.opt_instance_steps
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_max_looks_both_ways() {
        let v = [1, 5, 2, 2, 7, 1];
        assert_eq!(window_max(&v, 1, false), vec![1, 5, 5, 2, 7, 7]);
        assert_eq!(window_max(&v, 1, true), vec![5, 5, 2, 7, 7, 1]);
        assert_eq!(window_max(&v, 0, true), v.to_vec());
    }

    #[test]
    fn desired_billed_launches_ahead() {
        let schedule = OracleSchedule {
            serving: vec![1, 1, 1, 3, 3, 2, 4],
            opt_instance_steps: 0,
            boot_steps: 2,
        };
        // Increase of 2 at step 3 launched at step 1; increase of 2 at step 6 at step 4.
        assert_eq!(schedule.desired_billed(), vec![1, 3, 3, 3, 5, 4, 4]);
    }
}
