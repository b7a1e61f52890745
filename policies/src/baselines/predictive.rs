//! Predictive scaling with AWS semantics.

use super::target_tracking::{
    TargetTracking, TargetTrackingConfig, check_target_utilisation, parse_window,
};
use super::{SeasonalForecast, clamp_to_bounds};
use crate::{Decision, Observation, Policy};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// Settings of [`Predictive`] (config: `name = "predictive"`). The forecast turns into
/// capacity at the same target utilisation as the target tracking that runs beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PredictiveFields")]
pub struct PredictiveConfig {
    /// `rho`, in (0, 1]: the forecast needs `ceil(forecast / rho)` instances, and the
    /// target tracking beside it aims at the same utilisation. Default 0.8.
    pub target_utilisation: f64,
    /// The target tracking's tolerance, in [0, 1). Default 0.1.
    pub tolerance: f64,
    /// The target tracking's scale-down stabilisation window. Default "5m".
    #[serde(with = "humantime_serde")]
    pub scale_down_window: Duration,
}

impl Default for PredictiveConfig {
    fn default() -> Self {
        let tracking = TargetTrackingConfig::default();
        PredictiveConfig {
            target_utilisation: tracking.target_utilisation,
            tolerance: tracking.tolerance,
            scale_down_window: tracking.scale_down_window,
        }
    }
}

/// The fields as written in a config, before their values are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictiveFields {
    #[serde(default)]
    target_utilisation: Option<f64>,
    #[serde(default)]
    tolerance: Option<f64>,
    #[serde(default)]
    scale_down_window: Option<String>,
}

impl TryFrom<PredictiveFields> for PredictiveConfig {
    type Error = String;
    fn try_from(f: PredictiveFields) -> Result<Self, String> {
        let default = PredictiveConfig::default();
        let config = PredictiveConfig {
            target_utilisation: f.target_utilisation.unwrap_or(default.target_utilisation),
            tolerance: f.tolerance.unwrap_or(default.tolerance),
            scale_down_window: parse_window(f.scale_down_window, default.scale_down_window)?,
        };
        config.validate()?;
        Ok(config)
    }
}

impl PredictiveConfig {
    /// Checks every value; the error names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        check_target_utilisation(self.target_utilisation)?;
        self.tracking().validate()
    }

    /// The target tracking that runs beside the forecast.
    pub fn tracking(&self) -> TargetTrackingConfig {
        TargetTrackingConfig {
            target_utilisation: self.target_utilisation,
            tolerance: self.tolerance,
            scale_down_window: self.scale_down_window,
        }
    }
}

/// AWS predictive scaling in "forecast and scale" mode, beside target tracking:
///
/// - a [`SeasonalForecast`] of demand from up to 14 days of history;
/// - capacity for the forecast of step `t + L` is requested at step `t` (`L` the boot
///   steps), so it serves when the forecast says it is needed; the forecast capacity is a
///   floor held for every step from now to `t + L`: the highest `ceil(forecast / rho)`
///   over those steps;
/// - the forecast never scales in: it only raises the floor. Target tracking (HPA
///   semantics, the same `rho`) handles everything else, scale-in included;
/// - desired = max(forecast floor, target tracking).
///
/// Before a day of history there is no forecast and it is target tracking alone.
#[derive(Debug, Clone)]
pub struct Predictive {
    config: PredictiveConfig,
    tracking: TargetTracking,
    forecast: Option<SeasonalForecast>,
    /// Forecast capacity (step, instances, forecast demand) for steps up to
    /// `floor_until`, decreasing in instances: its front is the highest over the window.
    floors: VecDeque<(u64, u32, f64)>,
    /// The last step whose forecast was turned into a floor.
    floor_until: Option<u64>,
}

impl Predictive {
    pub fn new(config: PredictiveConfig) -> Self {
        let tracking = TargetTracking::new(config.tracking());
        Predictive {
            config,
            tracking,
            forecast: None,
            floors: VecDeque::new(),
            floor_until: None,
        }
    }

    /// The forecast floor for the steps `now ..= now + L`: (step, instances, forecast).
    fn forecast_floor(&mut self, obs: &Observation<'_>) -> Option<(u64, u32, f64)> {
        if self.forecast.as_ref().is_none_or(|f| f.step() != obs.step) {
            self.forecast = Some(SeasonalForecast::new(obs.step));
            self.floors.clear();
            self.floor_until = None;
        }
        let forecast = self.forecast.as_mut()?;
        if obs.steps_seen < forecast.steps_seen() {
            // The history went back in time: forget the floors planned from the old one.
            self.floors.clear();
            self.floor_until = None;
        }
        forecast.ingest(obs);
        let now = obs.steps_seen;
        let horizon = now + u64::from(obs.boot_steps);
        let from = self.floor_until.map_or(now, |s| (s + 1).max(now));
        for at in from..=horizon {
            let Some(demand) = forecast.forecast(at) else {
                continue;
            };
            let instances = clamp_to_bounds((demand / self.config.target_utilisation).ceil(), obs);
            while self.floors.back().is_some_and(|&(_, n, _)| n <= instances) {
                self.floors.pop_back();
            }
            self.floors.push_back((at, instances, demand));
        }
        self.floor_until = Some(horizon.max(self.floor_until.unwrap_or(0)));
        while self.floors.front().is_some_and(|&(at, _, _)| at < now) {
            self.floors.pop_front();
        }
        self.floors.front().copied()
    }
}

/// `predictive` in the policy registry: the benchmark sweeps `target_utilisation` from
/// 0.50 to 0.95 by 0.05.
impl crate::PolicyKind for PredictiveConfig {
    fn defaults() -> Option<Self> {
        Some(PredictiveConfig::default())
    }

    fn validate(&self) -> Result<(), String> {
        PredictiveConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Policy>, String> {
        Ok(Box::new(Predictive::new(self.clone())))
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

impl Policy for Predictive {
    fn name(&self) -> &str {
        "predictive"
    }

    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        let floor = self.forecast_floor(obs);
        let recommendation = self.tracking.recommend(obs);
        let recommended = recommendation.size();
        let (stabilised, highest) = self.tracking.stabilise(obs, recommended);
        let tracked = clamp_to_bounds(f64::from(stabilised), obs);
        let rho = self.config.target_utilisation;
        let mut reason = format!(
            "target tracking: {}{}",
            recommendation.describe(rho),
            self.tracking
                .describe_move(obs.active, recommended, stabilised, highest)
        );
        let desired = match floor {
            Some((at, instances, demand)) => {
                let ahead = at - obs.steps_seen;
                reason.push_str(&format!(
                    "; forecast {demand:.1} at step +{ahead} -> floor {instances}; desired max({instances}, {tracked})"
                ));
                instances.max(tracked)
            }
            None => {
                reason.push_str("; no forecast yet (less than a day of history)");
                tracked
            }
        };
        Decision::new(desired, reason)
    }
}
