//! Outages: demand that collapses far below both the last hour and the same time a day
//! earlier, which usually means the service or its traffic is down for a while, not
//! that the fleet is no longer needed.
//!
//! A forecaster follows the collapse within a few steps, so a plan would scale the fleet
//! in, and when the traffic returns it would find no capacity for a whole boot delay:
//! `L` steps of the whole demand unserved, which for a target of 0.1 % is most of the
//! allowance of several days. So while an outage lasts, for at most the configured hold
//! (`outage_hold`, default two hours), the planner plans for demand at no less than its
//! level before the collapse; after the hold the fleet follows the forecast down.

use std::collections::VecDeque;

/// Demand below this share of the usual level (the last hour's mean, and the same time a
/// day earlier) is a collapse.
const COLLAPSE_SHARE: f64 = 0.2;
/// Demand back above this share of the level before the collapse ends the outage.
const RECOVERED_SHARE: f64 = 0.5;
/// Below this many instances of usual demand, a collapse is noise, not an outage.
const MIN_LEVEL: f64 = 2.0;

/// Watches demand for outages; see the module documentation.
#[derive(Debug, Clone)]
pub struct OutageWatch {
    /// The last day of demand (gaps as NaN), oldest first.
    day: VecDeque<f64>,
    steps_per_day: usize,
    steps_per_hour: usize,
    hold_steps: u64,
    /// Sum and count of the finite values among the last hour's.
    hour_sum: f64,
    hour_count: usize,
    /// Steps into the current outage and the level before it.
    outage: Option<(u64, f64)>,
}

impl OutageWatch {
    /// For steps of `step_secs` seconds, holding capacity through an outage for at most
    /// `hold_secs` (0: never).
    pub fn new(step_secs: f64, hold_secs: f64) -> Self {
        let step_secs = step_secs.max(1.0);
        let steps_per_day = (86_400.0 / step_secs).round().max(1.0) as usize;
        OutageWatch {
            day: VecDeque::with_capacity(steps_per_day + 1),
            steps_per_day,
            steps_per_hour: (3600.0 / step_secs).round().max(1.0) as usize,
            hold_steps: (hold_secs.max(0.0) / step_secs).ceil() as u64,
            hour_sum: 0.0,
            hour_count: 0,
            outage: None,
        }
    }

    /// Takes in the next step's demand (in instances; NaN for a gap).
    pub fn observe(&mut self, demand: f64) {
        let hour_mean = (2 * self.hour_count >= self.steps_per_hour)
            .then(|| self.hour_sum / self.hour_count as f64);
        let day_ago = if self.day.len() >= self.steps_per_day {
            self.day.front().copied().filter(|v| v.is_finite())
        } else {
            None
        };
        if demand.is_finite() {
            self.outage = match self.outage {
                Some((_, level)) if demand >= RECOVERED_SHARE * level => None,
                Some((steps, _)) if steps >= self.hold_steps => None,
                Some((steps, level)) => Some((steps + 1, level)),
                None => match (hour_mean, day_ago) {
                    (Some(hour), Some(day))
                        if self.hold_steps > 0
                            && hour >= MIN_LEVEL
                            && day >= MIN_LEVEL
                            && demand < COLLAPSE_SHARE * hour.min(day) =>
                    {
                        Some((1, hour))
                    }
                    _ => None,
                },
            };
        }
        self.push(demand);
    }

    fn push(&mut self, demand: f64) {
        self.day.push_back(demand);
        if demand.is_finite() {
            self.hour_sum += demand;
            self.hour_count += 1;
        }
        // The value leaving the hour's window, then the one leaving the day's.
        let leaving = self.day.len().checked_sub(self.steps_per_hour + 1);
        if let Some(&left) = leaving.and_then(|i| self.day.get(i))
            && left.is_finite()
        {
            self.hour_sum -= left;
            self.hour_count -= 1;
        }
        if self.day.len() > self.steps_per_day {
            self.day.pop_front();
        }
        if self.hour_count == 0 {
            // Re-zero so that rounding never accumulates across quiet stretches.
            self.hour_sum = 0.0;
        }
    }

    /// While an outage lasts: the level demand may return to, and the steps the hold
    /// has left.
    pub fn recovery(&self) -> Option<(f64, usize)> {
        self.outage
            .map(|(steps, level)| (level, self.hold_steps.saturating_sub(steps) as usize))
    }

    /// Raises every point of the first `stages` stages to at least `level`. `demand`
    /// holds `points` ascending points per stage.
    pub fn hold(demand: &mut [f64], points: usize, level: f64, stages: usize) {
        for stage in demand.chunks_mut(points.max(1)).take(stages) {
            for d in stage {
                *d = d.max(level);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: f64 = 7200.0;

    fn level(w: &OutageWatch) -> Option<f64> {
        w.recovery().map(|(level, _)| level)
    }

    fn watch_after(days: usize, level: f64) -> OutageWatch {
        let mut w = OutageWatch::new(60.0, HOLD);
        for _ in 0..days * 1440 {
            w.observe(level);
        }
        w
    }

    #[test]
    fn a_collapse_below_the_hour_and_yesterday_is_an_outage_until_demand_returns() {
        let mut w = watch_after(1, 50.0);
        w.observe(1.0);
        assert_eq!(level(&w), Some(50.0));
        for _ in 0..30 {
            w.observe(1.0);
        }
        assert_eq!(level(&w), Some(50.0));
        w.observe(40.0);
        assert_eq!(level(&w), None);
    }

    #[test]
    fn outages_expire_after_the_hold() {
        let mut w = watch_after(1, 50.0);
        for _ in 0..=(HOLD / 60.0) as usize {
            w.observe(0.5);
        }
        assert_eq!(level(&w), None);
        // The low demand is now the last hour's: no new outage.
        w.observe(0.5);
        assert_eq!(level(&w), None);
    }

    #[test]
    fn no_outage_without_a_day_of_history_on_tiny_demand_or_back_to_the_usual_level() {
        // Less than a day seen: no seasonal reference.
        let mut w = OutageWatch::new(60.0, HOLD);
        for _ in 0..600 {
            w.observe(50.0);
        }
        w.observe(1.0);
        assert_eq!(level(&w), None);
        // Tiny demand.
        let mut w = watch_after(1, 1.5);
        w.observe(0.0);
        assert_eq!(level(&w), None);
        // A surge that ends: yesterday at this time demand was as low as now.
        let mut w = watch_after(1, 10.0);
        for _ in 0..60 {
            w.observe(200.0);
        }
        w.observe(10.0);
        assert_eq!(level(&w), None);
    }

    #[test]
    fn gaps_neither_start_nor_end_an_outage() {
        let mut w = watch_after(1, 50.0);
        w.observe(f64::NAN);
        assert_eq!(level(&w), None);
        w.observe(2.0);
        assert_eq!(level(&w), Some(50.0));
        w.observe(f64::NAN);
        assert_eq!(level(&w), Some(50.0));
    }

    #[test]
    fn the_hold_counts_down_and_can_be_turned_off() {
        let mut w = watch_after(1, 50.0);
        w.observe(1.0);
        assert_eq!(w.recovery(), Some((50.0, 119)));
        w.observe(1.0);
        assert_eq!(w.recovery(), Some((50.0, 118)));
        let mut off = OutageWatch::new(60.0, 0.0);
        for _ in 0..1440 {
            off.observe(50.0);
        }
        off.observe(1.0);
        assert_eq!(off.recovery(), None);
    }

    #[test]
    fn hold_raises_the_first_stages_only() {
        let mut demand = vec![1.0, 2.0, 60.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0];
        OutageWatch::hold(&mut demand, 3, 50.0, 2);
        assert_eq!(demand, [50.0, 50.0, 60.0, 50.0, 50.0, 50.0, 1.0, 2.0, 3.0]);
    }
}
