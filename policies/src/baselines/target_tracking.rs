//! Target tracking with Kubernetes HPA semantics, as shared/BENCHMARK.md states them.

use super::{clamp_to_bounds, latest_reading, steps_within};
use crate::{Decision, Observation, Policy};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// Settings of [`TargetTracking`] (config: `name = "target-tracking"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TargetTrackingFields")]
pub struct TargetTrackingConfig {
    /// `rho`: the utilisation each serving instance is kept at, in (0, 1]. Default 0.8.
    pub target_utilisation: f64,
    /// No change while the utilisation ratio is within this of 1 (HPA's
    /// `--horizontal-pod-autoscaler-tolerance`), in [0, 1). Default 0.1.
    pub tolerance: f64,
    /// Scale down only to the highest recommendation made within this window
    /// (HPA's `behavior.scaleDown.stabilizationWindowSeconds`). Default "5m".
    #[serde(with = "humantime_serde")]
    pub scale_down_window: Duration,
}

impl Default for TargetTrackingConfig {
    fn default() -> Self {
        TargetTrackingConfig {
            target_utilisation: 0.8,
            tolerance: 0.1,
            scale_down_window: Duration::from_secs(300),
        }
    }
}

/// The fields as written in a config, before their values are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetTrackingFields {
    #[serde(default)]
    target_utilisation: Option<f64>,
    #[serde(default)]
    tolerance: Option<f64>,
    #[serde(default)]
    scale_down_window: Option<String>,
}

impl TryFrom<TargetTrackingFields> for TargetTrackingConfig {
    type Error = String;
    fn try_from(f: TargetTrackingFields) -> Result<Self, String> {
        let default = TargetTrackingConfig::default();
        let config = TargetTrackingConfig {
            target_utilisation: f.target_utilisation.unwrap_or(default.target_utilisation),
            tolerance: f.tolerance.unwrap_or(default.tolerance),
            scale_down_window: parse_window(f.scale_down_window, default.scale_down_window)?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Reads a `scale_down_window` written like "5m" or "90s"; the error names the field.
pub(crate) fn parse_window(text: Option<String>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(text) => humantime_serde::re::humantime::parse_duration(&text).map_err(|e| {
            format!("scale_down_window must be a duration like \"5m\", got {text:?}: {e}")
        }),
    }
}

impl TargetTrackingConfig {
    /// Checks every value; the error names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        check_target_utilisation(self.target_utilisation)?;
        if !(0.0..1.0).contains(&self.tolerance) {
            return Err(format!(
                "tolerance must be in [0, 1), got {}",
                self.tolerance
            ));
        }
        Ok(())
    }
}

/// `target_utilisation` must be in (0, 1]; shared by the policies that track a target.
pub(crate) fn check_target_utilisation(rho: f64) -> Result<(), String> {
    if rho > 0.0 && rho <= 1.0 {
        Ok(())
    } else {
        Err(format!("target_utilisation must be in (0, 1], got {rho}"))
    }
}

/// Kubernetes HPA semantics over the fleet (shared/BENCHMARK.md):
///
/// at step `t`, with `d = d_{t-1}` and `u = d / (serving * rho)`, the recommendation is
/// `ceil(d / rho)` when `|u - 1| > tolerance`, else the current size; the fleet scales up
/// to a recommendation at once, and down only to the highest recommendation made within
/// the scale-down window (measured in time: `window / step` steps, counting this one).
///
/// The utilisation is measured over the *serving* instances only (HPA ignores pods that
/// are not ready), while the current size is the *billed* fleet (HPA's
/// `spec.replicas`, booting instances included): so while launched instances boot, a high
/// utilisation recommends `ceil(d / rho)` again, which the booting fleet already reaches,
/// and nothing more is launched.
///
/// Edge cases: no serving instance and some demand is an infinite utilisation (scale to
/// `ceil(d / rho)`); no demand and no serving instance is utilisation 0. A missing,
/// non-finite or negative reading for the latest step recommends the current size (hold).
#[derive(Debug, Clone)]
pub struct TargetTracking {
    config: TargetTrackingConfig,
    /// (step index, recommendation) for the steps still inside the scale-down window.
    recommendations: VecDeque<(u64, u32)>,
}

/// What target tracking recommends at one step, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Recommendation {
    /// No usable reading for the latest step: keep the current size.
    NoReading { current: u32 },
    /// Utilisation within tolerance: keep the current size.
    WithinTolerance {
        demand: f64,
        utilisation: f64,
        wanted: u32,
        current: u32,
    },
    /// Utilisation outside tolerance: `ceil(d / rho)`.
    Rescale {
        demand: f64,
        utilisation: f64,
        wanted: u32,
    },
}

impl Recommendation {
    pub(crate) fn size(&self) -> u32 {
        match *self {
            Recommendation::NoReading { current } => current,
            Recommendation::WithinTolerance { current, .. } => current,
            Recommendation::Rescale { wanted, .. } => wanted,
        }
    }

    /// What was seen and recommended, e.g. "demand 12.4 at rho 0.8 -> 16 (utilisation
    /// 1.03 within tolerance: keep 15)".
    pub(crate) fn describe(&self, rho: f64) -> String {
        match *self {
            Recommendation::NoReading { current } => {
                format!("no usable demand reading for the latest step: keep {current}")
            }
            Recommendation::WithinTolerance {
                demand,
                utilisation,
                wanted,
                current,
            } => format!(
                "demand {demand:.1} at rho {rho} -> {wanted} (utilisation {} within tolerance: keep {current})",
                Ratio(utilisation)
            ),
            Recommendation::Rescale {
                demand,
                utilisation,
                wanted,
            } => {
                format!(
                    "demand {demand:.1} at rho {rho} -> {wanted} (utilisation {})",
                    Ratio(utilisation)
                )
            }
        }
    }
}

impl TargetTracking {
    pub fn new(config: TargetTrackingConfig) -> Self {
        TargetTracking {
            config,
            recommendations: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &TargetTrackingConfig {
        &self.config
    }

    /// HPA's recommendation from the latest reading, before stabilisation.
    pub(crate) fn recommend(&self, obs: &Observation<'_>) -> Recommendation {
        let current = obs.active;
        let Some(demand) = latest_reading(obs) else {
            return Recommendation::NoReading { current };
        };
        let rho = self.config.target_utilisation;
        // `as` saturates; the bounds apply to the final decision.
        let wanted = (demand / rho).ceil() as u32;
        let utilisation = match (obs.serving, demand > 0.0) {
            (_, false) => 0.0,
            (0, true) => f64::INFINITY,
            (serving, true) => demand / (f64::from(serving) * rho),
        };
        if (utilisation - 1.0).abs() <= self.config.tolerance {
            Recommendation::WithinTolerance {
                demand,
                utilisation,
                wanted,
                current,
            }
        } else {
            Recommendation::Rescale {
                demand,
                utilisation,
                wanted,
            }
        }
    }

    /// Records `recommended` for the current step and returns the stabilised size before
    /// the bounds: `recommended` when it is above the current size, else the highest
    /// recommendation in the window (never above the current size). Also returns that
    /// window maximum.
    pub(crate) fn stabilise(&mut self, obs: &Observation<'_>, recommended: u32) -> (u32, u32) {
        let now = obs.steps_seen;
        let window = steps_within(self.config.scale_down_window, obs.step);
        if self
            .recommendations
            .back()
            .is_some_and(|&(at, _)| at >= now)
        {
            // Decided again within the same step: the newer recommendation replaces it.
            self.recommendations.pop_back();
        }
        self.recommendations.push_back((now, recommended));
        while self
            .recommendations
            .front()
            .is_some_and(|&(at, _)| now - at >= window)
        {
            self.recommendations.pop_front();
        }
        let highest = self
            .recommendations
            .iter()
            .map(|&(_, r)| r)
            .max()
            .unwrap_or(recommended);
        let current = obs.active;
        let desired = if recommended > current {
            recommended
        } else {
            highest.min(current)
        };
        (desired, highest)
    }

    /// Describes the move from the current size to `stabilised`, for the reason string.
    pub(crate) fn describe_move(
        &self,
        current: u32,
        recommended: u32,
        stabilised: u32,
        highest: u32,
    ) -> String {
        let window = self.config.scale_down_window;
        if stabilised > current {
            format!("; scale up to {stabilised}")
        } else if stabilised < current {
            format!(
                "; scale down to {stabilised}, the highest recommendation in the last {window:?}"
            )
        } else if recommended < current {
            format!("; hold {current}: recommended {highest} within the last {window:?}")
        } else {
            String::new()
        }
    }
}

/// `target-tracking` in the policy registry: the benchmark sweeps `target_utilisation`
/// from 0.50 to 0.95 by 0.05.
impl crate::PolicyKind for TargetTrackingConfig {
    fn defaults() -> Option<Self> {
        Some(TargetTrackingConfig::default())
    }

    fn validate(&self) -> Result<(), String> {
        TargetTrackingConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Policy>, String> {
        Ok(Box::new(TargetTracking::new(self.clone())))
    }

    fn knob(&self) -> &'static str {
        "target_utilisation"
    }

    fn knob_value(&self) -> f64 {
        self.target_utilisation
    }

    fn set_knob(&mut self, value: f64) -> Result<(), String> {
        self.target_utilisation = value;
        Ok(())
    }

    fn sweep_settings(&self) -> Vec<f64> {
        crate::registry::percent_sweep(50, 95)
    }
}

impl Policy for TargetTracking {
    fn name(&self) -> &str {
        "target-tracking"
    }

    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        let recommendation = self.recommend(obs);
        let recommended = recommendation.size();
        let (stabilised, highest) = self.stabilise(obs, recommended);
        let desired = clamp_to_bounds(f64::from(stabilised), obs);
        let mut reason = recommendation.describe(self.config.target_utilisation);
        reason.push_str(&self.describe_move(obs.active, recommended, stabilised, highest));
        if desired != stabilised {
            reason.push_str(&format!("; bounds [{}, {}] -> {desired}", obs.min, obs.max));
        }
        Decision::new(desired, reason)
    }
}

/// Formats a utilisation ratio, infinity included.
struct Ratio(f64);

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_infinite() {
            f.write_str("inf (nothing serving)")
        } else {
            write!(f, "{:.2}", self.0)
        }
    }
}
