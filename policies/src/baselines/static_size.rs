//! A fixed fleet size.

use super::clamp_to_bounds;
use crate::{Decision, Observation, Policy};
use serde::{Deserialize, Serialize};

/// Settings of [`StaticSize`] (config: `name = "static"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StaticFields")]
pub struct StaticConfig {
    /// The fleet size to hold, in instances (clamped to the fleet's bounds). Required.
    pub size: u32,
}

/// The fields as written in a config, before their values are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticFields {
    size: i64,
}

impl TryFrom<StaticFields> for StaticConfig {
    type Error = String;
    fn try_from(f: StaticFields) -> Result<Self, String> {
        u32::try_from(f.size)
            .map(|size| StaticConfig { size })
            .map_err(|_| {
                format!(
                    "size must be a whole number of instances from 0 to {}, got {}",
                    u32::MAX,
                    f.size
                )
            })
    }
}

impl StaticConfig {
    /// The benchmark's static-peak: the peak of a whole demand trace, `ceil(max d)`, at
    /// least 1. It knows the future, so it is a ceiling to compare with, not a rival.
    /// Gaps and negative values are ignored.
    pub fn peak_of(demand: &[f64]) -> Self {
        let peak = demand
            .iter()
            .copied()
            .filter(|d| d.is_finite())
            .fold(0.0, f64::max);
        // `as` saturates for a peak beyond u32::MAX.
        StaticConfig {
            size: (peak.ceil() as u32).max(1),
        }
    }
}

/// Always wants the same size.
#[derive(Debug, Clone)]
pub struct StaticSize {
    size: u32,
}

impl StaticSize {
    pub fn new(config: &StaticConfig) -> Self {
        StaticSize { size: config.size }
    }
}

/// `static` in the policy registry: no default (`size` is required), and not swept (the
/// benchmark's static-peak takes its size from the trace).
impl crate::PolicyKind for StaticConfig {
    fn defaults() -> Option<Self> {
        None
    }

    fn build(&self) -> Result<Box<dyn Policy>, String> {
        Ok(Box::new(StaticSize::new(self)))
    }

    fn knob(&self) -> &'static str {
        "size"
    }

    fn knob_value(&self) -> f64 {
        f64::from(self.size)
    }

    fn set_knob(&mut self, value: f64) -> Result<(), String> {
        if !(value.is_finite()
            && value >= 0.0
            && value <= f64::from(u32::MAX)
            && value.fract() == 0.0)
        {
            return Err(format!(
                "size must be a whole number of instances, got {value}"
            ));
        }
        self.size = value as u32;
        Ok(())
    }
}

impl Policy for StaticSize {
    fn name(&self) -> &str {
        "static"
    }

    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        let desired = clamp_to_bounds(f64::from(self.size), obs);
        let reason = if desired == self.size {
            format!("static size {}", self.size)
        } else {
            format!(
                "static size {} -> {desired} within bounds [{}, {}]",
                self.size, obs.min, obs.max
            )
        };
        Decision::new(desired, reason)
    }
}
