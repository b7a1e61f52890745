//! Step scaling with AWS semantics (EC2 Auto Scaling step scaling policies).

use super::{clamp_to_bounds, latest_reading};
use crate::{Decision, Observation, Policy};
use serde::{Deserialize, Serialize};

/// How a step's `scaling_adjustment` changes the capacity (AWS `AdjustmentType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdjustmentType {
    /// Add `scaling_adjustment` instances (remove when negative).
    ChangeInCapacity,
    /// Add `scaling_adjustment` percent of the current capacity. AWS rounding: a change
    /// above 1 is rounded down, one between 0 and 1 becomes 1, one between -1 and 0
    /// becomes -1, one below -1 is rounded up; then at least `min_adjustment_magnitude`.
    PercentChangeInCapacity,
}

/// One row of a step table (AWS `StepAdjustment`). The bounds are distances of the metric
/// from the alarm threshold. Above the threshold a row covers `[lower, upper)`, below it
/// `(lower, upper]`; a missing bound is infinite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepAdjustment {
    /// `MetricIntervalLowerBound`; absent means minus infinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_bound: Option<f64>,
    /// `MetricIntervalUpperBound`; absent means plus infinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_bound: Option<f64>,
    /// `ScalingAdjustment`: instances or percent, by the table's `adjustment_type`.
    pub scaling_adjustment: i32,
}

impl StepAdjustment {
    fn new(lower_bound: Option<f64>, upper_bound: Option<f64>, scaling_adjustment: i32) -> Self {
        StepAdjustment {
            lower_bound,
            upper_bound,
            scaling_adjustment,
        }
    }

    /// Whether the metric's distance `x` from the threshold falls in this row.
    fn covers(&self, x: f64) -> bool {
        let lower = self.lower_bound.unwrap_or(f64::NEG_INFINITY);
        let upper = self.upper_bound.unwrap_or(f64::INFINITY);
        if x >= 0.0 {
            lower <= x && x < upper
        } else {
            lower < x && x <= upper
        }
    }
}

/// One step scaling policy: the table applied while its alarm is breached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepPolicy {
    pub adjustment_type: AdjustmentType,
    /// The least change a percent adjustment makes (AWS `MinAdjustmentMagnitude`).
    /// Default 1.
    #[serde(default = "one")]
    pub min_adjustment_magnitude: u32,
    /// Consecutive steps the alarm condition must hold before the policy acts (the
    /// alarm's `EvaluationPeriods`, one period per step). Default 1.
    #[serde(default = "one")]
    pub evaluation_periods: u32,
    /// The rows, in ascending order of their bounds, with no gap and no overlap.
    pub steps: Vec<StepAdjustment>,
}

fn one() -> u32 {
    1
}

/// Which side of the threshold a policy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Scale out: rows at or above the threshold, adjustments >= 0.
    Above,
    /// Scale in: rows at or below the threshold, adjustments <= 0.
    Below,
}

impl StepPolicy {
    /// Checks AWS's rules for a step table and the side it serves; the error names the
    /// field at fault, under `field` (e.g. `scale_out.steps[1].lower_bound`).
    fn validate(&self, field: &str, side: Side) -> Result<(), String> {
        if self.evaluation_periods == 0 {
            return Err(format!("{field}.evaluation_periods must be at least 1"));
        }
        let (Some(first), Some(last)) = (self.steps.first(), self.steps.last()) else {
            return Err(format!("{field}.steps must hold at least one step"));
        };
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("{field}.steps[{i}]");
            for (name, bound) in [
                ("lower_bound", step.lower_bound),
                ("upper_bound", step.upper_bound),
            ] {
                if bound.is_some_and(|b| !b.is_finite()) {
                    return Err(format!("{at}.{name} must be a finite number"));
                }
            }
            match (step.lower_bound, step.upper_bound) {
                (None, None) => {
                    return Err(format!(
                        "{at}: lower_bound and upper_bound can't both be absent"
                    ));
                }
                (Some(lower), Some(upper)) if lower >= upper => {
                    return Err(format!(
                        "{at}: lower_bound {lower} must be below upper_bound {upper}"
                    ));
                }
                _ => {}
            }
            match side {
                Side::Above if step.lower_bound.is_none_or(|b| b < 0.0) => {
                    return Err(format!(
                        "{at}.lower_bound must be at least 0: scale-out steps lie above the threshold"
                    ));
                }
                Side::Below if step.upper_bound.is_none_or(|b| b > 0.0) => {
                    return Err(format!(
                        "{at}.upper_bound must be at most 0: scale-in steps lie below the threshold"
                    ));
                }
                Side::Above if step.scaling_adjustment < 0 => {
                    return Err(format!(
                        "{at}.scaling_adjustment must not be negative in a scale-out policy"
                    ));
                }
                Side::Below if step.scaling_adjustment > 0 => {
                    return Err(format!(
                        "{at}.scaling_adjustment must not be positive in a scale-in policy"
                    ));
                }
                _ => {}
            }
            if self.adjustment_type == AdjustmentType::PercentChangeInCapacity
                && step.scaling_adjustment < -100
            {
                return Err(format!(
                    "{at}.scaling_adjustment can't remove more than 100 percent"
                ));
            }
            if let Some(next) = self.steps.get(i + 1)
                && step.upper_bound != next.lower_bound
            {
                return Err(format!(
                    "{field}.steps[{}].lower_bound must equal steps[{i}].upper_bound: steps go in ascending order with no gap or overlap",
                    i + 1
                ));
            }
        }
        match side {
            Side::Above if last.upper_bound.is_some() => Err(format!(
                "{field}.steps[{}].upper_bound must be absent: the last scale-out step reaches infinity",
                self.steps.len() - 1
            )),
            Side::Below if first.lower_bound.is_some() => Err(format!(
                "{field}.steps[0].lower_bound must be absent: the first scale-in step reaches minus infinity"
            )),
            _ => Ok(()),
        }
    }

    /// The row covering the metric's distance `x` from the threshold, if any.
    fn step_for(&self, x: f64) -> Option<&StepAdjustment> {
        self.steps.iter().find(|s| s.covers(x))
    }

    /// The change in instances that `step` makes to a capacity of `base`.
    fn change(&self, step: &StepAdjustment, base: u32) -> i64 {
        let adjustment = i64::from(step.scaling_adjustment);
        match self.adjustment_type {
            AdjustmentType::ChangeInCapacity => adjustment,
            AdjustmentType::PercentChangeInCapacity => {
                if adjustment == 0 {
                    return 0;
                }
                let raw = f64::from(base) * adjustment as f64 / 100.0;
                let rounded = if raw >= 1.0 {
                    raw.floor()
                } else if raw > -1.0 {
                    raw.signum()
                } else {
                    raw.ceil()
                } as i64;
                let least = i64::from(self.min_adjustment_magnitude);
                if rounded.abs() < least {
                    least * adjustment.signum()
                } else {
                    rounded
                }
            }
        }
    }
}

/// Settings of [`StepScaling`] (config: `name = "step-scaling"`).
///
/// The metric is the serving fleet's utilisation `u = demand / serving` (a fraction; with
/// nothing serving and some demand it is infinite). Both alarms share `threshold`: the
/// scale-out alarm is breached while `u > threshold`, the scale-in alarm while
/// `u < threshold`. The default tables (percent of the current capacity, at least 1
/// instance), as distances `u - threshold`:
///
/// | scale out (alarm `u > threshold`) | change |
/// | --- | --- |
/// | [0, 0.1) | +10 % |
/// | [0.1, 0.2) | +20 % |
/// | [0.2, 0.3) | +30 % |
/// | [0.3, 0.5) | +50 % |
/// | [0.5, inf) | +100 % |
///
/// | scale in (alarm `u < threshold` for 5 consecutive steps) | change |
/// | --- | --- |
/// | (-0.2, 0] | none |
/// | (-0.4, -0.2] | -10 % |
/// | (-inf, -0.4] | -20 % |
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StepScalingFields")]
pub struct StepScalingConfig {
    /// The alarms' threshold on utilisation, in (0, 1]. Default 0.7.
    pub threshold: f64,
    /// Applied while `u > threshold`. Default: the table above.
    pub scale_out: StepPolicy,
    /// Applied while `u < threshold`, and only when no instance is booting. Default: the
    /// table above.
    pub scale_in: StepPolicy,
}

impl Default for StepScalingConfig {
    fn default() -> Self {
        let percent = AdjustmentType::PercentChangeInCapacity;
        StepScalingConfig {
            threshold: 0.7,
            scale_out: StepPolicy {
                adjustment_type: percent,
                min_adjustment_magnitude: 1,
                evaluation_periods: 1,
                steps: vec![
                    StepAdjustment::new(Some(0.0), Some(0.1), 10),
                    StepAdjustment::new(Some(0.1), Some(0.2), 20),
                    StepAdjustment::new(Some(0.2), Some(0.3), 30),
                    StepAdjustment::new(Some(0.3), Some(0.5), 50),
                    StepAdjustment::new(Some(0.5), None, 100),
                ],
            },
            scale_in: StepPolicy {
                adjustment_type: percent,
                min_adjustment_magnitude: 1,
                evaluation_periods: 5,
                steps: vec![
                    StepAdjustment::new(None, Some(-0.4), -20),
                    StepAdjustment::new(Some(-0.4), Some(-0.2), -10),
                    StepAdjustment::new(Some(-0.2), Some(0.0), 0),
                ],
            },
        }
    }
}

/// The fields as written in a config, before their values are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepScalingFields {
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    scale_out: Option<StepPolicy>,
    #[serde(default)]
    scale_in: Option<StepPolicy>,
}

impl TryFrom<StepScalingFields> for StepScalingConfig {
    type Error = String;
    fn try_from(f: StepScalingFields) -> Result<Self, String> {
        let default = StepScalingConfig::default();
        let config = StepScalingConfig {
            threshold: f.threshold.unwrap_or(default.threshold),
            scale_out: f.scale_out.unwrap_or(default.scale_out),
            scale_in: f.scale_in.unwrap_or(default.scale_in),
        };
        config.validate()?;
        Ok(config)
    }
}

impl StepScalingConfig {
    /// Checks every value and AWS's rules for both tables; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(format!(
                "threshold must be in (0, 1], got {}",
                self.threshold
            ));
        }
        self.scale_out.validate("scale_out", Side::Above)?;
        self.scale_in.validate("scale_in", Side::Below)
    }
}

/// AWS step scaling over the fleet's utilisation (see [`StepScalingConfig`]).
///
/// Warm-up, as AWS applies it with the instance warm-up equal to the boot delay: booting
/// instances do not count in the utilisation nor in the capacity a scale-out percent is
/// taken of, so repeated breaches within one step of the table launch once (the fleet
/// grows to `serving + change` only when that is above its current size); and no scale-in
/// starts while any instance is booting. A step without a usable reading holds and resets
/// both alarms.
#[derive(Debug, Clone)]
pub struct StepScaling {
    config: StepScalingConfig,
    /// Consecutive steps with `u > threshold` and with `u < threshold`.
    above: u32,
    below: u32,
    /// The step the alarms were last evaluated at, so a repeated call counts once.
    evaluated_at: Option<u64>,
}

impl StepScaling {
    pub fn new(config: StepScalingConfig) -> Self {
        StepScaling {
            config,
            above: 0,
            below: 0,
            evaluated_at: None,
        }
    }

    fn evaluate_alarms(&mut self, at: u64, utilisation: Option<f64>) {
        if self.evaluated_at == Some(at) {
            return;
        }
        self.evaluated_at = Some(at);
        let threshold = self.config.threshold;
        match utilisation {
            Some(u) if u > threshold => {
                (self.above, self.below) = (self.above.saturating_add(1), 0)
            }
            Some(u) if u < threshold => {
                (self.above, self.below) = (0, self.below.saturating_add(1))
            }
            _ => (self.above, self.below) = (0, 0),
        }
    }
}

/// `step-scaling` in the policy registry: the benchmark sweeps `threshold` from 0.50 to
/// 1.00 by 0.05.
impl crate::PolicyKind for StepScalingConfig {
    fn defaults() -> Option<Self> {
        Some(StepScalingConfig::default())
    }

    fn validate(&self) -> Result<(), String> {
        StepScalingConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Policy>, String> {
        Ok(Box::new(StepScaling::new(self.clone())))
    }

    fn knob(&self) -> &'static str {
        "threshold"
    }

    fn knob_value(&self) -> f64 {
        self.threshold
    }

    fn set_knob(&mut self, value: f64) -> Result<(), String> {
        self.threshold = value;
        Ok(())
    }

    fn sweep_settings(&self) -> Vec<f64> {
        crate::registry::percent_sweep(50, 100)
    }
}

impl Policy for StepScaling {
    fn name(&self) -> &str {
        "step-scaling"
    }

    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        let current = obs.active;
        let reading = latest_reading(obs);
        let utilisation = reading.map(|d| match (obs.serving, d > 0.0) {
            (_, false) => 0.0,
            (0, true) => f64::INFINITY,
            (serving, true) => d / f64::from(serving),
        });
        self.evaluate_alarms(obs.steps_seen, utilisation);
        let (Some(demand), Some(u)) = (reading, utilisation) else {
            return Decision::new(
                clamp_to_bounds(f64::from(current), obs),
                format!("no usable demand reading for the latest step: keep {current}"),
            );
        };
        let threshold = self.config.threshold;
        let seen = format!(
            "utilisation {} (demand {demand:.1} over {} serving) vs threshold {threshold}",
            if u.is_infinite() {
                "inf".to_string()
            } else {
                format!("{u:.2}")
            },
            obs.serving
        );
        let x = u - threshold;
        let (wanted, why) = if self.above >= self.config.scale_out.evaluation_periods {
            let policy = &self.config.scale_out;
            match policy.step_for(x) {
                Some(step) => {
                    let change = policy.change(step, obs.serving);
                    let target = i64::from(obs.serving) + change;
                    let why = format!(
                        "scale-out step {} of {} serving: {change:+} -> {target}{}",
                        describe(step, policy.adjustment_type, x),
                        obs.serving,
                        if target <= i64::from(current) {
                            format!(", already {current}: keep")
                        } else {
                            String::new()
                        }
                    );
                    (target.max(i64::from(current)), why)
                }
                None => (
                    i64::from(current),
                    format!("no scale-out step covers {x:+.2}: keep {current}"),
                ),
            }
        } else if self.below >= self.config.scale_in.evaluation_periods {
            let policy = &self.config.scale_in;
            match policy.step_for(x) {
                Some(_) if obs.booting > 0 => (
                    i64::from(current),
                    format!(
                        "scale-in waits for {} booting instances: keep {current}",
                        obs.booting
                    ),
                ),
                Some(step) => {
                    let change = policy.change(step, current);
                    let target = (i64::from(current) + change).max(0);
                    let why = format!(
                        "scale-in step {} of {current}: {change:+} -> {target}",
                        describe(step, policy.adjustment_type, x)
                    );
                    (target, why)
                }
                None => (
                    i64::from(current),
                    format!("no scale-in step covers {x:+.2}: keep {current}"),
                ),
            }
        } else {
            (i64::from(current), format!("no alarm: keep {current}"))
        };
        let desired = clamp_to_bounds(wanted as f64, obs);
        let mut reason = format!("{seen}; {why}");
        if i64::from(desired) != wanted {
            reason.push_str(&format!("; bounds [{}, {}] -> {desired}", obs.min, obs.max));
        }
        Decision::new(desired, reason)
    }
}

/// A row as text, as it applies to the distance `x`: e.g. "[0.1, 0.2) +20%" above the
/// threshold, "(-0.4, -0.2] -10%" below it.
fn describe(step: &StepAdjustment, kind: AdjustmentType, x: f64) -> String {
    let lower = step
        .lower_bound
        .map_or("-inf".to_string(), |b| b.to_string());
    let upper = step
        .upper_bound
        .map_or("inf".to_string(), |b| b.to_string());
    let (open, close) = if x >= 0.0 { ('[', ')') } else { ('(', ']') };
    let unit = match kind {
        AdjustmentType::PercentChangeInCapacity => "%",
        AdjustmentType::ChangeInCapacity => "",
    };
    format!(
        "{open}{lower}, {upper}{close} {:+}{unit}",
        step.scaling_adjustment
    )
}
