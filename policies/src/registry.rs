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

use crate::baselines::{PredictiveConfig, StaticConfig, StepScalingConfig, TargetTrackingConfig};
use crate::planner::DpConfig;
use crate::{Decision, Observation, Policy};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// What the registry needs of one policy's settings. Each policy implements it once,
/// beside its config type, and is registered by one line of the list below
/// ([`PolicyConfig`]'s variants): its name, its config type and its serde attributes.
/// Config parsing, `--policy` on the command line, the replay's candidates and the
/// benchmark's sweeps all read that list.
pub trait PolicyKind: std::fmt::Debug {
    /// The settings of a config that names the policy and nothing else; `None` when a
    /// field is required (static's `size`).
    fn defaults() -> Option<Self>
    where
        Self: Sized;

    /// Checks every value; the error names the field at fault.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// The policy these settings describe (they passed [`validate`](Self::validate)); an
    /// error for settings it still refuses.
    fn build(&self) -> Result<Box<dyn Policy>, String>;

    /// The field the benchmark sweeps, or the setting that steers the policy.
    fn knob(&self) -> &'static str;

    /// The knob's current value.
    fn knob_value(&self) -> f64;

    /// Sets the knob, or says why `value` cannot be one (the range is checked after, by
    /// [`validate`](Self::validate)).
    fn set_knob(&mut self, value: f64) -> Result<(), String>;

    /// The knob's settings the benchmark tries; none for a policy it does not sweep.
    fn sweep_settings(&self) -> Vec<f64> {
        Vec::new()
    }
}

/// Declares [`PolicyConfig`] from the list of policies, and everything that matches on
/// it: its names, its defaults by name, reading by name, and the dispatch to each
/// variant's [`PolicyKind`].
macro_rules! policies {
    ($(
        $(#[$attr:meta])*
        $variant:ident($config:ty) = $name:literal,
    )*) => {
        /// A policy and its settings, as a config states it (`name` selects the variant).
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        #[serde(tag = "name", deny_unknown_fields)]
        pub enum PolicyConfig {
            $(
                $(#[$attr])*
                #[serde(rename = $name)]
                $variant($config),
            )*
        }

        impl PolicyConfig {
            /// Every name a config may give, in the order they are listed to users.
            pub const NAMES: &[&str] = &[$($name),*];

            /// The name it is selected by (`name = ...` in a config, `--policy` on the
            /// command line).
            pub fn name(&self) -> &'static str {
                match self {
                    $(PolicyConfig::$variant(_) => $name,)*
                }
            }

            /// The policy named `name` with its default settings; `None` for an unknown
            /// name and for `static`, which has no default size (see
            /// [`StaticConfig::peak_of`]).
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => <$config as PolicyKind>::defaults().map(PolicyConfig::$variant),)*
                    _ => None,
                }
            }

            /// Reads the settings of the policy named `name` (the fields beside `name`
            /// in a config), without checking their values: see
            /// [`validate`](Self::validate).
            pub fn deserialize_named<'de, D: Deserializer<'de>>(
                name: &str,
                deserializer: D,
            ) -> Result<Self, D::Error> {
                match name {
                    $($name => <$config>::deserialize(deserializer).map(PolicyConfig::$variant),)*
                    _ => Err(D::Error::unknown_variant(name, Self::NAMES)),
                }
            }

            fn kind(&self) -> &dyn PolicyKind {
                match self {
                    $(PolicyConfig::$variant(c) => c,)*
                }
            }

            fn kind_mut(&mut self) -> &mut dyn PolicyKind {
                match self {
                    $(PolicyConfig::$variant(c) => c,)*
                }
            }
        }
    };
}

// The policies, one line each. Adding one: its config type implements `PolicyKind`
// (beside the type), and it gets a line here.
policies! {
    /// The DP planner, the default; fields in [`DpConfig`]: `max_unserved` (0.001),
    /// `horizon` (the longer of an hour and four boot delays).
    #[serde(deserialize_with = "checked_dp_config")]
    Dp(DpConfig) = "dp",
    /// Kubernetes HPA semantics; fields in [`TargetTrackingConfig`]: `target_utilisation`
    /// (0.8), `tolerance` (0.1), `scale_down_window` ("5m").
    TargetTracking(TargetTrackingConfig) = "target-tracking",
    /// AWS step scaling; fields in [`StepScalingConfig`]: `threshold` (0.7), `scale_out`,
    /// `scale_in` (the tables documented there).
    StepScaling(StepScalingConfig) = "step-scaling",
    /// AWS predictive scaling beside target tracking; fields in [`PredictiveConfig`]:
    /// `target_utilisation` (0.8), `tolerance` (0.1), `scale_down_window` ("5m").
    Predictive(PredictiveConfig) = "predictive",
    /// A fixed size; fields in [`StaticConfig`]: `size` (required).
    Static(StaticConfig) = "static",
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
    config
        .validate()
        .map_err(|errors| D::Error::custom(dp_problems(&errors)))?;
    Ok(config)
}

/// Settings from `from` to `to` percent by 5, as fractions (0.5, 0.55, ..).
pub(crate) fn percent_sweep(from: u32, to: u32) -> Vec<f64> {
    (from..=to)
        .step_by(5)
        .map(|p| f64::from(p) / 100.0)
        .collect()
}

impl PolicyConfig {
    /// The benchmark's baselines that have a knob to sweep, at their default settings, in
    /// the order of [`NAMES`](Self::NAMES). (static-peak is built from the trace:
    /// [`StaticConfig::peak_of`].)
    pub fn baselines() -> Vec<Self> {
        Self::NAMES
            .iter()
            .filter_map(|name| PolicyConfig::from_name(name))
            .filter(|config| !config.sweep_settings().is_empty())
            .collect()
    }

    /// The benchmark's static-peak for a demand trace: `static` at `ceil(max d)`.
    pub fn static_peak(demand: &[f64]) -> Self {
        PolicyConfig::Static(StaticConfig::peak_of(demand))
    }

    /// Checks every value; the error names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        self.kind().validate()
    }

    /// The policy these settings describe, ready to decide.
    ///
    /// Settings read from a config were checked as they were read; settings made in code
    /// that fail [`validate`](Self::validate) build a policy that keeps the fleet as it is
    /// and gives the problem as the reason of every decision, rather than a panic.
    pub fn build(&self) -> Box<dyn Policy> {
        match self.validate().and_then(|()| self.kind().build()) {
            Ok(policy) => policy,
            Err(problem) => Box::new(InvalidSettings {
                name: self.name(),
                problem,
            }),
        }
    }

    /// The field the benchmark sweeps for this policy (`target_utilisation` for target
    /// tracking and predictive, `threshold` for step scaling, `size` for static), or the
    /// setting that steers it (`max_unserved` for dp, which is not swept).
    pub fn knob(&self) -> &'static str {
        self.kind().knob()
    }

    /// The knob's current value.
    pub fn knob_value(&self) -> f64 {
        self.kind().knob_value()
    }

    /// The knob's settings the benchmark tries: target utilisations 0.50 to 0.95 by
    /// 0.05; step scaling's threshold 0.50 to 1.00 by 0.05; none for static (its size
    /// comes from the trace) nor for dp (judged at its defaults).
    pub fn sweep_settings(&self) -> Vec<f64> {
        self.kind().sweep_settings()
    }

    /// A copy with the knob set to `value`, every other setting kept; an error naming the
    /// knob when the value is out of its range.
    pub fn with_knob(&self, value: f64) -> Result<Self, String> {
        let mut tuned = self.clone();
        tuned.kind_mut().set_knob(value)?;
        tuned.validate()?;
        Ok(tuned)
    }
}

/// The problems of a `dp` setting, joined as one message.
pub(crate) fn dp_problems(errors: &[crate::planner::DpConfigError]) -> String {
    let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
    problems.join("; ")
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
