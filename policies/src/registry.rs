//! Policies by name: the `policy` section of a fleet's config, and the knob sweeps of the
//! replay benchmark.
//!
//! A config names its policy with `name` and sets that policy's fields beside it; every
//! field has a default, unknown fields are errors, and bad values are errors that name the
//! field:
//!
//! ```toml
//! policy = { name = "dp", max_unserved = 0.001 }
//! policy = { name = "target-tracking", target_utilisation = 0.7 }
//! policy = { name = "static", size = 4 }
//! ```
//!
//! The replay builds each baseline for each setting of its knob:
//!
//! ```
//! use fleetscale_policies::PolicyConfig;
//!
//! for config in PolicyConfig::baselines() {
//!     for value in config.sweep_settings() {
//!         let tuned = config.with_knob(value).expect("sweep settings are valid");
//!         let _policy = tuned.build();
//!     }
//! }
//! ```

use crate::baselines::{
    Predictive, PredictiveConfig, StaticConfig, StaticSize, StepScaling, StepScalingConfig,
    TargetTracking, TargetTrackingConfig,
};
use crate::planner::{DpConfig, DpPlanner};
use crate::{Decision, Observation, Policy};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A policy and its settings, as a config states it (`name` selects the variant).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PolicyConfig {
    /// The DP planner, the default; fields in [`DpConfig`]: `max_unserved` (0.001),
    /// `horizon` (the longer of an hour and four boot delays).
    #[serde(deserialize_with = "checked_dp_config")]
    Dp(DpConfig),
    /// Kubernetes HPA semantics; fields in [`TargetTrackingConfig`]: `target_utilisation`
    /// (0.8), `tolerance` (0.1), `scale_down_window` ("5m").
    TargetTracking(TargetTrackingConfig),
    /// AWS step scaling; fields in [`StepScalingConfig`]: `threshold` (0.7), `scale_out`,
    /// `scale_in` (the tables documented there).
    StepScaling(StepScalingConfig),
    /// AWS predictive scaling beside target tracking; fields in [`PredictiveConfig`]:
    /// `target_utilisation` (0.8), `tolerance` (0.1), `scale_down_window` ("5m").
    Predictive(PredictiveConfig),
    /// A fixed size; fields in [`StaticConfig`]: `size` (required).
    Static(StaticConfig),
}

impl Default for PolicyConfig {
    /// The policy of a fleet whose config names none: the DP planner.
    fn default() -> Self {
        PolicyConfig::Dp(DpConfig::default())
    }
}

/// Reads `dp`'s settings and checks them as they are read, every problem at once.
fn checked_dp_config<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DpConfig, D::Error> {
    let config = DpConfig::deserialize(deserializer)?;
    check_dp_config(&config).map_err(D::Error::custom)?;
    Ok(config)
}

fn check_dp_config(config: &DpConfig) -> Result<(), String> {
    config.validate().map_err(|errors| {
        let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
        problems.join("; ")
    })
}

/// Settings from `from` to `to` percent by 5, as fractions (0.5, 0.55, ..).
fn percent_sweep(from: u32, to: u32) -> Vec<f64> {
    (from..=to)
        .step_by(5)
        .map(|p| f64::from(p) / 100.0)
        .collect()
}

impl PolicyConfig {
    /// Every name a config may give, in the order they are listed to users.
    pub const NAMES: &[&str] = &[
        "dp",
        "target-tracking",
        "step-scaling",
        "predictive",
        "static",
    ];

    /// The name it is selected by (`name = ...` in a config, `--policy` on the command
    /// line).
    pub fn name(&self) -> &'static str {
        match self {
            PolicyConfig::Dp(_) => "dp",
            PolicyConfig::TargetTracking(_) => "target-tracking",
            PolicyConfig::StepScaling(_) => "step-scaling",
            PolicyConfig::Predictive(_) => "predictive",
            PolicyConfig::Static(_) => "static",
        }
    }

    /// The policy named `name` with its default settings; `None` for an unknown name and
    /// for `static`, which has no default size (see [`StaticConfig::peak_of`]).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "dp" => Some(PolicyConfig::Dp(DpConfig::default())),
            "target-tracking" => {
                Some(PolicyConfig::TargetTracking(TargetTrackingConfig::default()))
            }
            "step-scaling" => Some(PolicyConfig::StepScaling(StepScalingConfig::default())),
            "predictive" => Some(PolicyConfig::Predictive(PredictiveConfig::default())),
            _ => None,
        }
    }

    /// The benchmark's baselines that have a knob to sweep, at their default settings.
    /// (static-peak is built from the trace: [`StaticConfig::peak_of`].)
    pub fn baselines() -> Vec<Self> {
        ["target-tracking", "step-scaling", "predictive"]
            .into_iter()
            .filter_map(PolicyConfig::from_name)
            .collect()
    }

    /// The benchmark's static-peak for a demand trace: `static` at `ceil(max d)`.
    pub fn static_peak(demand: &[f64]) -> Self {
        PolicyConfig::Static(StaticConfig::peak_of(demand))
    }

    /// Checks every value; the error names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            PolicyConfig::Dp(c) => check_dp_config(c),
            PolicyConfig::TargetTracking(c) => c.validate(),
            PolicyConfig::StepScaling(c) => c.validate(),
            PolicyConfig::Predictive(c) => c.validate(),
            PolicyConfig::Static(_) => Ok(()),
        }
    }

    /// The policy these settings describe, ready to decide.
    ///
    /// Settings read from a config were checked as they were read; settings made in code
    /// that fail [`validate`](Self::validate) build a policy that keeps the fleet as it is
    /// and gives the problem as the reason of every decision, rather than a panic.
    pub fn build(&self) -> Box<dyn Policy> {
        if let Err(problem) = self.validate() {
            return Box::new(InvalidSettings {
                name: self.name(),
                problem,
            });
        }
        match self {
            PolicyConfig::Dp(c) => match DpPlanner::new(c.clone()) {
                Ok(planner) => Box::new(planner),
                Err(errors) => {
                    let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    Box::new(InvalidSettings {
                        name: self.name(),
                        problem: problems.join("; "),
                    })
                }
            },
            PolicyConfig::TargetTracking(c) => Box::new(TargetTracking::new(c.clone())),
            PolicyConfig::StepScaling(c) => Box::new(StepScaling::new(c.clone())),
            PolicyConfig::Predictive(c) => Box::new(Predictive::new(c.clone())),
            PolicyConfig::Static(c) => Box::new(StaticSize::new(c)),
        }
    }

    /// The field the benchmark sweeps for this policy (`target_utilisation` for target
    /// tracking and predictive, `threshold` for step scaling, `size` for static), or the
    /// setting that steers it (`max_unserved` for dp, which is not swept).
    pub fn knob(&self) -> &'static str {
        match self {
            PolicyConfig::Dp(_) => "max_unserved",
            PolicyConfig::TargetTracking(_) | PolicyConfig::Predictive(_) => "target_utilisation",
            PolicyConfig::StepScaling(_) => "threshold",
            PolicyConfig::Static(_) => "size",
        }
    }

    /// The knob's current value.
    pub fn knob_value(&self) -> f64 {
        match self {
            PolicyConfig::Dp(c) => c.max_unserved,
            PolicyConfig::TargetTracking(c) => c.target_utilisation,
            PolicyConfig::Predictive(c) => c.target_utilisation,
            PolicyConfig::StepScaling(c) => c.threshold,
            PolicyConfig::Static(c) => f64::from(c.size),
        }
    }

    /// The knob's settings the benchmark tries: target utilisations 0.50 to 0.95 by
    /// 0.05; step scaling's threshold 0.50 to 1.00 by 0.05; none for static (its size
    /// comes from the trace) nor for dp (judged at its defaults).
    pub fn sweep_settings(&self) -> Vec<f64> {
        match self {
            PolicyConfig::TargetTracking(_) | PolicyConfig::Predictive(_) => percent_sweep(50, 95),
            PolicyConfig::StepScaling(_) => percent_sweep(50, 100),
            PolicyConfig::Static(_) | PolicyConfig::Dp(_) => Vec::new(),
        }
    }

    /// A copy with the knob set to `value`, every other setting kept; an error naming the
    /// knob when the value is out of its range.
    pub fn with_knob(&self, value: f64) -> Result<Self, String> {
        let mut tuned = self.clone();
        match &mut tuned {
            PolicyConfig::Dp(c) => c.max_unserved = value,
            PolicyConfig::TargetTracking(c) => c.target_utilisation = value,
            PolicyConfig::Predictive(c) => c.target_utilisation = value,
            PolicyConfig::StepScaling(c) => c.threshold = value,
            PolicyConfig::Static(c) => {
                if !(value.is_finite()
                    && value >= 0.0
                    && value <= f64::from(u32::MAX)
                    && value.fract() == 0.0)
                {
                    return Err(format!(
                        "size must be a whole number of instances, got {value}"
                    ));
                }
                c.size = value as u32;
            }
        }
        tuned.validate()?;
        Ok(tuned)
    }
}

/// Stands in for a policy whose settings are invalid: holds the fleet and says why.
#[derive(Debug)]
struct InvalidSettings {
    name: &'static str,
    problem: String,
}

impl Policy for InvalidSettings {
    fn name(&self) -> &str {
        self.name
    }

    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        let current = obs.active.clamp(obs.min.min(obs.max), obs.max);
        Decision::new(
            current,
            format!(
                "invalid {} settings ({}): keep {current}",
                self.name, self.problem
            ),
        )
    }
}
