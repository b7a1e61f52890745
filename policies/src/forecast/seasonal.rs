//! A seasonal profile: one smoothed offset per slot of a period (a day or a week).

/// Offsets per slot of a period, learnt by exponential smoothing with a count-based start
/// (the first visits of a slot average its values rather than shrink them towards zero).
/// A slot spans `width` consecutive steps, so that short steps do not make a week's
/// profile large: each of its steps is a visit, with the smoothing per visit that gives
/// the slot the same smoothing per period as a slot of one step.
#[derive(Debug, Clone)]
pub(crate) struct SeasonalProfile {
    offsets: Vec<f64>,
    /// Visits so far, saturating: only the first few matter (the count-based start).
    visits: Vec<u8>,
    period: u64,
    width: u64,
    smoothing: f64,
}

impl SeasonalProfile {
    /// A profile of a `period` of steps (at least 2), in slots of `width` steps, smoothed
    /// with weight `smoothing` per period.
    pub(crate) fn new(period: usize, width: usize, smoothing: f64) -> Self {
        let period = period.max(2);
        let width = width.clamp(1, period);
        let slots = period.div_ceil(width);
        let per_visit = match width {
            1 => smoothing,
            _ => 1.0 - (1.0 - smoothing.clamp(0.0, 1.0)).powf(1.0 / width as f64),
        };
        SeasonalProfile {
            offsets: vec![0.0; slots],
            visits: vec![0; slots],
            period: period as u64,
            width: width as u64,
            smoothing: per_visit,
        }
    }

    /// The period, in steps.
    pub(crate) fn period(&self) -> usize {
        self.period as usize
    }

    fn slot(&self, step: u64) -> usize {
        ((step % self.period) / self.width) as usize
    }

    /// The offset of absolute step `step`.
    pub(crate) fn at(&self, step: u64) -> f64 {
        self.offsets.get(self.slot(step)).copied().unwrap_or(0.0)
    }

    /// Moves the offset of `step`'s slot towards `target`.
    pub(crate) fn learn(&mut self, step: u64, target: f64) {
        if !target.is_finite() {
            return;
        }
        let slot = self.slot(step);
        let (Some(offset), Some(visits)) = (self.offsets.get_mut(slot), self.visits.get_mut(slot))
        else {
            return;
        };
        *visits = visits.saturating_add(1);
        let weight = self.smoothing.max(1.0 / f64::from(*visits));
        *offset += weight * (target - *offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_visits_average_then_smooth() {
        let mut p = SeasonalProfile::new(3, 1, 0.1);
        p.learn(1, 2.0);
        assert_eq!(p.at(4), 2.0);
        p.learn(4, 4.0);
        assert_eq!(p.at(1), 3.0);
        p.learn(7, f64::NAN);
        assert_eq!(p.at(1), 3.0);
        assert_eq!(p.at(0), 0.0);
        assert_eq!(p.period(), 3);
    }

    #[test]
    fn wide_slots_smooth_per_period_as_narrow_ones_do() {
        // A slot of 4 steps sees 4 visits a period; after its start, a period of one
        // value moves it as far as one visit of a slot of one step does.
        let mut narrow = SeasonalProfile::new(10, 1, 0.2);
        let mut wide = SeasonalProfile::new(40, 4, 0.2);
        for period in 0..300u64 {
            narrow.learn(period * 10, 1.0);
            for s in 0..4 {
                wide.learn(period * 40 + s, 1.0);
            }
        }
        narrow.learn(3000, 2.0);
        (0..4).for_each(|s| wide.learn(12_000 + s, 2.0));
        assert!((narrow.at(0) - 1.2).abs() < 1e-9, "{}", narrow.at(0));
        assert!((wide.at(3) - narrow.at(0)).abs() < 1e-9, "{}", wide.at(3));
        // The period's last slot may be partial.
        let partial = SeasonalProfile::new(10, 4, 0.2);
        assert_eq!(partial.offsets.len(), 3);
        assert_eq!(partial.at(9), 0.0);
    }
}
