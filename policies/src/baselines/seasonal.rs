//! The seasonal forecast behind the predictive baseline.

use crate::Observation;
use std::collections::VecDeque;
use std::time::Duration;

/// Days of history kept (AWS predictive scaling learns from up to 14 days).
const HISTORY_DAYS: u64 = 14;
/// The last days averaged at the same time of day.
const DAILY_LAGS: u64 = 7;
/// The last weeks averaged at the same time of week.
const WEEKLY_LAGS: u64 = 2;
/// Most steps of history kept, whatever the step length (bounds memory at tiny steps).
const MAX_HISTORY_STEPS: u64 = 1 << 21;

/// A seasonal forecast of demand in the manner of AWS predictive scaling: from up to 14
/// days of history, the value for a step is the mean of the same time of day over the
/// last 7 days, blended half and half with the mean of the same time of week over the
/// last 2 weeks once a week of history exists. Gaps are skipped. There is no forecast
/// before a day of history (AWS needs 24 hours of data too), nor when a day is not at
/// least two steps long.
///
/// Incremental: each new step is appended to a ring buffer of 14 days; a forecast reads
/// at most 9 past values, whatever the history's length.
#[derive(Debug, Clone)]
pub struct SeasonalForecast {
    step: Duration,
    /// Steps per day; 0 when there is no usable daily season.
    day: u64,
    capacity: usize,
    /// Demand for the steps `seen - values.len() .. seen`.
    values: VecDeque<f64>,
    seen: u64,
}

impl SeasonalForecast {
    pub fn new(step: Duration) -> Self {
        let day = match step.as_nanos() {
            0 => 0,
            nanos => (Duration::from_secs(86_400).as_nanos() as f64 / nanos as f64).round() as u64,
        };
        let day = if day < 2 { 0 } else { day };
        let capacity = day.saturating_mul(HISTORY_DAYS).min(MAX_HISTORY_STEPS) as usize;
        SeasonalForecast {
            step,
            day,
            capacity,
            values: VecDeque::with_capacity(capacity),
            seen: 0,
        }
    }

    /// The step length this forecast was built for.
    pub fn step(&self) -> Duration {
        self.step
    }

    /// Steps per day, 0 when the step is too long for a daily season.
    pub fn steps_per_day(&self) -> u64 {
        self.day
    }

    /// How many steps have been ingested.
    pub fn steps_seen(&self) -> u64 {
        self.seen
    }

    /// Appends the steps of `obs` not seen yet (by `obs.steps_seen`). Steps that dropped
    /// off the observation's history before being seen become gaps; a history that went
    /// back in time starts the forecast afresh.
    pub fn ingest(&mut self, obs: &Observation<'_>) {
        if obs.steps_seen < self.seen {
            self.values.clear();
            self.seen = obs.steps_seen.saturating_sub(obs.demand.len() as u64);
        }
        let new = obs.steps_seen - self.seen;
        let available = obs.demand.len() as u64;
        let missing = new.saturating_sub(available);
        if missing >= self.capacity as u64 {
            // Everything held is older than 14 days by now (or a first look at a long
            // history): skip ahead rather than count through the gap.
            self.values.clear();
            self.seen += missing;
        } else {
            for _ in 0..missing {
                self.push(f64::NAN);
            }
        }
        let from = obs.demand.len() - new.min(available) as usize;
        for &value in obs.demand.iter().skip(from) {
            self.push(value);
        }
    }

    /// Appends the next step's demand (`NaN` or a negative value is a gap).
    pub fn push(&mut self, value: f64) {
        self.seen += 1;
        if self.capacity == 0 {
            return;
        }
        if self.values.len() == self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(if value.is_finite() && value >= 0.0 {
            value
        } else {
            f64::NAN
        });
    }

    /// The value recorded for absolute step `at`, when still held and not a gap.
    fn value_at(&self, at: u64) -> Option<f64> {
        let first = self.seen - self.values.len() as u64;
        if at < first || at >= self.seen {
            return None;
        }
        self.values
            .get((at - first) as usize)
            .copied()
            .filter(|v| !v.is_nan())
    }

    /// Mean of the values `lag, 2 lag, .. count lag` steps before `at`, skipping gaps.
    fn mean_of_lags(&self, at: u64, lag: u64, count: u64) -> Option<f64> {
        let (sum, n) = (1..=count)
            .filter_map(|k| at.checked_sub(k * lag).and_then(|s| self.value_at(s)))
            .fold((0.0, 0u32), |(sum, n), v| (sum + v, n + 1));
        (n > 0).then(|| sum / f64::from(n))
    }

    /// The forecast demand for absolute step `at` (in instances), from the history
    /// ingested so far; `None` before a day of history.
    pub fn forecast(&self, at: u64) -> Option<f64> {
        if self.day == 0 {
            return None;
        }
        let daily = self.mean_of_lags(at, self.day, DAILY_LAGS)?;
        Some(match self.mean_of_lags(at, 7 * self.day, WEEKLY_LAGS) {
            Some(weekly) => 0.5 * (daily + weekly),
            None => daily,
        })
    }
}
