//! A seeded generator of realistic load: a daily cycle, noise, and a flash crowd now and
//! then. It needs no file, so the demo and the tests run from a clean clone alone.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::{SignalError, SignalSource};

const DAY: f64 = 86_400.0;

/// `[fleets.signal] kind = "synthetic"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Mean demand over a day, in instances.
    #[serde(default = "defaults::mean")]
    pub mean: f64,
    /// Daily swing as a fraction of the mean (0.6: from 0.4x to 1.6x the mean).
    #[serde(default = "defaults::daily_amplitude")]
    pub daily_amplitude: f64,
    /// Standard deviation of the multiplicative noise per step (0.05 = 5 %).
    #[serde(default = "defaults::noise")]
    pub noise: f64,
    /// Expected flash crowds per simulated day.
    #[serde(default = "defaults::flash_crowds_per_day")]
    pub flash_crowds_per_day: f64,
    /// How much a flash crowd multiplies demand at its height.
    #[serde(default = "defaults::flash_crowd_factor")]
    pub flash_crowd_factor: f64,
    /// Simulated seconds per wall second: 360 plays a day in four minutes.
    #[serde(default = "defaults::speedup")]
    pub speedup: f64,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
}

mod defaults {
    pub fn mean() -> f64 {
        20.0
    }
    pub fn daily_amplitude() -> f64 {
        0.6
    }
    pub fn noise() -> f64 {
        0.05
    }
    pub fn flash_crowds_per_day() -> f64 {
        1.0
    }
    pub fn flash_crowd_factor() -> f64 {
        2.0
    }
    pub fn speedup() -> f64 {
        1.0
    }
    pub fn seed() -> u64 {
        1
    }
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            mean: defaults::mean(),
            daily_amplitude: defaults::daily_amplitude(),
            noise: defaults::noise(),
            flash_crowds_per_day: defaults::flash_crowds_per_day(),
            flash_crowd_factor: defaults::flash_crowd_factor(),
            speedup: defaults::speedup(),
            seed: defaults::seed(),
        }
    }
}

/// `synthetic` among the signal kinds.
impl super::SignalKind for SyntheticConfig {
    fn problems(&self) -> Vec<(&'static str, String)> {
        SyntheticConfig::problems(self)
    }

    fn build(
        &self,
        clock: &dyn fleetscale_adapters::Clock,
    ) -> anyhow::Result<Box<dyn SignalSource>> {
        Ok(Box::new(SyntheticSignal::new(self.clone(), clock.now())))
    }

    fn may_start_empty(&self) -> bool {
        true
    }
}

impl SyntheticConfig {
    /// Problems with the values, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let mut positive = |field, value: f64| {
            if !(value.is_finite() && value > 0.0) {
                problems.push((field, format!("must be a positive number, not {value}")));
            }
        };
        positive("mean", self.mean);
        positive("speedup", self.speedup);
        positive("flash_crowd_factor", self.flash_crowd_factor);
        if !(0.0..1.0).contains(&self.daily_amplitude) {
            problems.push((
                "daily_amplitude",
                format!("must be in [0, 1), not {}", self.daily_amplitude),
            ));
        }
        if !(0.0..=1.0).contains(&self.noise) {
            problems.push(("noise", format!("must be in [0, 1], not {}", self.noise)));
        }
        if !(self.flash_crowds_per_day.is_finite() && self.flash_crowds_per_day >= 0.0) {
            problems.push(("flash_crowds_per_day", "must be zero or more".into()));
        }
        problems
    }
}

/// The generator. Demand at a simulated second is a pure function of the seed, so any
/// past value can be read again (history after a restart is the same).
#[derive(Debug, Clone)]
pub struct SyntheticSignal {
    config: SyntheticConfig,
    start: SystemTime,
}

impl SyntheticSignal {
    pub fn new(config: SyntheticConfig, start: SystemTime) -> Self {
        SyntheticSignal { config, start }
    }

    /// Demand, in instances, at `seconds` of simulated time (resolution: one minute).
    pub fn demand_at(&self, seconds: f64) -> f64 {
        let c = &self.config;
        let minute = (seconds / 60.0).floor().max(0.0) as u64;
        // The daily peak falls in the afternoon.
        let phase = 2.0 * std::f64::consts::PI * (seconds / DAY - 0.375);
        let daily = 1.0 + c.daily_amplitude * phase.sin();
        let noise = 1.0 + c.noise * standard_normal(c.seed, minute);
        (c.mean * daily * noise.max(0.0) * self.flash_crowd(seconds)).max(0.0)
    }

    /// A flash crowd may start in each hour; it ramps up in minutes and decays over about
    /// half an hour.
    fn flash_crowd(&self, seconds: f64) -> f64 {
        let c = &self.config;
        let hour = (seconds / 3600.0).floor() as i64;
        let mut factor = 1.0_f64;
        for h in (hour - 2).max(0)..=hour {
            let draw = uniform(c.seed ^ 0xF1A5_C0DE, h as u64);
            if draw >= c.flash_crowds_per_day / 24.0 {
                continue;
            }
            let begins = h as f64 * 3600.0 + uniform(c.seed ^ 0xBE61, h as u64) * 3600.0;
            let age = seconds - begins;
            if age < 0.0 {
                continue;
            }
            let rise = (age / 300.0).min(1.0);
            let fall = (-(age - 300.0).max(0.0) / 1800.0).exp();
            factor = factor.max(1.0 + (c.flash_crowd_factor - 1.0) * rise * fall);
        }
        factor
    }

    fn simulated_seconds(&self, now: SystemTime) -> f64 {
        now.duration_since(self.start)
            .unwrap_or_default()
            .as_secs_f64()
            * self.config.speedup
    }
}

#[async_trait]
impl SignalSource for SyntheticSignal {
    fn kind(&self) -> &'static str {
        "synthetic"
    }

    async fn history(
        &mut self,
        now: SystemTime,
        step: Duration,
        steps: usize,
        _serving: u32,
    ) -> Result<Vec<f64>, SignalError> {
        // The generator has a past before the agent started: warm up from it.
        let now_s = self.simulated_seconds(now);
        let step_s = step.as_secs_f64() * self.config.speedup;
        Ok((1..=steps)
            .rev()
            .map(|back| self.demand_at(now_s - step_s * back as f64 + DAY))
            .collect())
    }

    async fn latest(&mut self, now: SystemTime, _serving: u32) -> Result<f64, SignalError> {
        Ok(self.demand_at(self.simulated_seconds(now) + DAY))
    }
}

/// splitmix64: a tiny, well-mixed hash, so values depend only on (seed, index).
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(seed: u64, index: u64) -> f64 {
    (mix(seed, index) >> 11) as f64 / (1u64 << 53) as f64
}

/// Box-Muller from two hashed uniforms.
fn standard_normal(seed: u64, index: u64) -> f64 {
    let u1 = uniform(seed, index.wrapping_mul(2)).max(1e-12);
    let u2 = uniform(seed, index.wrapping_mul(2) + 1);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_is_finite_non_negative_and_cycles_daily() {
        let signal = SyntheticSignal::new(
            SyntheticConfig {
                noise: 0.0,
                flash_crowds_per_day: 0.0,
                ..Default::default()
            },
            SystemTime::UNIX_EPOCH,
        );
        let values: Vec<f64> = (0..1440)
            .map(|m| signal.demand_at(m as f64 * 60.0))
            .collect();
        assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0));
        let (min, max) = values
            .iter()
            .fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        assert!((max - 32.0).abs() < 0.1, "peak {max}");
        assert!((min - 8.0).abs() < 0.1, "trough {min}");
        assert_eq!(signal.demand_at(3600.0), signal.demand_at(3600.0 + DAY));
    }

    #[test]
    fn the_same_seed_gives_the_same_load() {
        let a = SyntheticSignal::new(SyntheticConfig::default(), SystemTime::UNIX_EPOCH);
        let b = SyntheticSignal::new(SyntheticConfig::default(), SystemTime::UNIX_EPOCH);
        let c = SyntheticSignal::new(
            SyntheticConfig {
                seed: 2,
                ..Default::default()
            },
            SystemTime::UNIX_EPOCH,
        );
        let at = |s: &SyntheticSignal| {
            (0..500)
                .map(|m| s.demand_at(m as f64 * 60.0))
                .collect::<Vec<_>>()
        };
        assert_eq!(at(&a), at(&b));
        assert_ne!(at(&a), at(&c));
    }

    #[test]
    fn flash_crowds_happen_at_the_configured_rate() {
        let signal = SyntheticSignal::new(
            SyntheticConfig {
                noise: 0.0,
                daily_amplitude: 0.0,
                flash_crowds_per_day: 2.0,
                ..Default::default()
            },
            SystemTime::UNIX_EPOCH,
        );
        // Crowds that start over 100 days at 2 a day: about 200 expected.
        let seed = signal.config.seed;
        let starts = (0..2400u64)
            .filter(|h| uniform(seed ^ 0xF1A5_C0DE, *h) < 2.0 / 24.0)
            .count();
        assert!((150..250).contains(&starts), "{starts} crowds");
        // Each one lifts demand above the calm level.
        let lifted = (0..2400u64)
            .filter(|h| uniform(seed ^ 0xF1A5_C0DE, *h) < 2.0 / 24.0)
            .filter(|h| {
                (0..120).any(|m| signal.flash_crowd(*h as f64 * 3600.0 + m as f64 * 60.0) > 1.5)
            })
            .count();
        assert_eq!(lifted, starts);
        let peak = (0..144_000)
            .map(|m| signal.demand_at(m as f64 * 60.0))
            .fold(0.0_f64, f64::max);
        assert!(peak > 35.0 && peak <= 40.0 + 1e-9, "peak {peak}");
    }
}
