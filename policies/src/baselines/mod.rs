//! The baseline policies fleetscale is measured against (shared/BENCHMARK.md), each a
//! [`Policy`](crate::Policy) driven through the same controller as the planner:
//!
//! - [`TargetTracking`]: Kubernetes HPA semantics (tolerance band, scale up at once, scale
//!   down to the highest recommendation of a stabilisation window);
//! - [`StepScaling`]: AWS step scaling (a table of adjustments keyed on the utilisation's
//!   distance from an alarm threshold);
//! - [`Predictive`]: AWS predictive scaling (a seasonal forecast launched ahead by the boot
//!   delay as a floor, target tracking for everything else);
//! - [`StaticSize`]: a fixed fleet size (the benchmark's static-peak is one).

mod predictive;
mod seasonal;
mod static_size;
mod step_scaling;
mod target_tracking;

pub use predictive::{Predictive, PredictiveConfig};
pub use seasonal::SeasonalForecast;
pub use static_size::{StaticConfig, StaticSize};
pub use step_scaling::{
    AdjustmentType, StepAdjustment, StepPolicy, StepScaling, StepScalingConfig,
};
pub use target_tracking::{TargetTracking, TargetTrackingConfig};

use crate::Observation;
use std::time::Duration;

/// Clamps a wanted fleet size (possibly fractional, huge or not a number) to the fleet's
/// bounds. `NaN` becomes the minimum.
pub(crate) fn clamp_to_bounds(wanted: f64, obs: &Observation<'_>) -> u32 {
    let (min, max) = (obs.min.min(obs.max), obs.max);
    if wanted.is_nan() {
        return min;
    }
    // `as` saturates: negative to 0, huge to u32::MAX.
    (wanted as u32).clamp(min, max)
}

/// The most recent step's demand when it is a usable reading (finite, non-negative).
pub(crate) fn latest_reading(obs: &Observation<'_>) -> Option<f64> {
    obs.demand
        .last()
        .copied()
        .filter(|d| d.is_finite() && *d >= 0.0)
}

/// How many steps of length `step` fit in `window` when counting the current one:
/// a recommendation made `k` steps ago is inside the window when `k * step < window`.
pub(crate) fn steps_within(window: Duration, step: Duration) -> u64 {
    if step.is_zero() {
        return 1;
    }
    window.as_nanos().div_ceil(step.as_nanos()).max(1) as u64
}
