//! A seasonal profile: one smoothed offset per slot of a period (a day or a week).

/// Offsets per slot of a period, learnt by exponential smoothing with a count-based start
/// (the first visits of a slot average its values rather than shrink them towards zero).
#[derive(Debug, Clone)]
pub(crate) struct SeasonalProfile {
    offsets: Vec<f64>,
    visits: Vec<u32>,
    smoothing: f64,
}

impl SeasonalProfile {
    /// A profile of `period` slots (at least 2), smoothed with weight `smoothing` per visit.
    pub(crate) fn new(period: usize, smoothing: f64) -> Self {
        let period = period.max(2);
        SeasonalProfile {
            offsets: vec![0.0; period],
            visits: vec![0; period],
            smoothing,
        }
    }

    pub(crate) fn period(&self) -> usize {
        self.offsets.len()
    }

    /// The offset of absolute step `step`.
    pub(crate) fn at(&self, step: u64) -> f64 {
        self.offsets[(step % self.offsets.len() as u64) as usize]
    }

    /// Moves the offset of `step`'s slot towards `target`.
    pub(crate) fn learn(&mut self, step: u64, target: f64) {
        if !target.is_finite() {
            return;
        }
        let slot = (step % self.offsets.len() as u64) as usize;
        self.visits[slot] = self.visits[slot].saturating_add(1);
        let weight = self.smoothing.max(1.0 / f64::from(self.visits[slot]));
        self.offsets[slot] += weight * (target - self.offsets[slot]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_visits_average_then_smooth() {
        let mut p = SeasonalProfile::new(3, 0.1);
        p.learn(1, 2.0);
        assert_eq!(p.at(4), 2.0);
        p.learn(4, 4.0);
        assert_eq!(p.at(1), 3.0);
        p.learn(7, f64::NAN);
        assert_eq!(p.at(1), 3.0);
        assert_eq!(p.at(0), 0.0);
        assert_eq!(p.period(), 3);
    }
}
