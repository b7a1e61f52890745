//! A fixed fleet size.

use super::clamp_to_bounds;
use crate::{Decision, Observation, Policy};
use serde::{Deserialize, Serialize};

/// Settings of [`StaticSize`] (config: `name = "static"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// The fleet size to hold, in instances (clamped to the fleet's bounds). Required.
    pub size: u32,
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
