//! The spread of past forecast errors at each horizon, turned into quantiles.
//!
//! Each horizon keeps a smoothed bias and variance of its errors. The shape of the
//! distribution (its tails) is learnt once for all horizons: every error is standardised
//! by its horizon's bias and scale and added to one shared histogram, which therefore
//! fills `horizons` times faster than a per-horizon one and estimates deep quantiles
//! (the planner needs 0.999 and beyond) after a few days of history.

/// Standardised errors beyond this many scales fall in the outermost bins.
const Z_LIMIT: f64 = 24.0;
const BIN_WIDTH: f64 = 0.05;
/// Weight of the heavy-tailed prior shape, in samples.
const PRIOR_SAMPLES: f64 = 200.0;
/// A horizon's errors join the shared shape once its scale rests on this many samples.
const SHAPE_AFTER: u32 = 30;
/// Quantiles further out than this from 0 or 1 extrapolate an exponential tail.
const TAIL_FROM: f64 = 0.01;
/// Weight of each new one-step error in the recent volatility (about the last 8 steps).
const RECENT_WEIGHT: f64 = 0.125;
/// Recent volatility widens forecasts by at most this factor.
const MAX_VOLATILITY: f64 = 4.0;
/// Errors beyond this many scales are clipped before they update a horizon's scale.
const CLIP: f64 = 5.0;
/// Every horizon up to this one is tracked; beyond it, horizons about this ratio apart.
const EVERY_HORIZON_UP_TO: usize = 32;
const HORIZON_RATIO: f64 = 1.25;

/// The horizons whose errors are tracked, for forecasts up to `max` steps ahead: all of
/// the first few, then a geometric series, then `max`. Errors change slowly with the
/// horizon, so horizons between two tracked ones are interpolated; the time and memory
/// of every step then grow with the logarithm of `max`, not its square.
pub(crate) fn tracked_horizons(max: usize) -> Vec<usize> {
    let max = max.max(1);
    let mut tracked: Vec<usize> = (1..=max.min(EVERY_HORIZON_UP_TO)).collect();
    let mut next = EVERY_HORIZON_UP_TO as f64;
    loop {
        next *= HORIZON_RATIO;
        let h = next.round() as usize;
        if h >= max {
            break;
        }
        tracked.push(h);
    }
    if tracked.last() != Some(&max) {
        tracked.push(max);
    }
    tracked
}

#[derive(Debug, Clone)]
pub(crate) struct HorizonErrors {
    /// The horizons tracked, ascending from 1 (see [`tracked_horizons`]); the vectors
    /// below hold one entry for each.
    horizons: Vec<usize>,
    /// How many horizons each tracked one stands for (those since the tracked one
    /// before): its errors' weight in the shared shape, which then has the mix of
    /// horizons it would have if every horizon were tracked.
    stands_for: Vec<f64>,
    bias: Vec<f64>,
    variance: Vec<f64>,
    samples: Vec<u32>,
    /// Smoothing weight floor of bias and variance (1 / window in samples).
    smoothing: f64,
    prior_variance: f64,
    shape: Shape,
    /// Mean absolute one-step error over the last few steps, to widen every horizon as
    /// soon as demand turns volatile (a ramp, a burst), before the slower scales notice.
    recent_mad: f64,
}

impl HorizonErrors {
    /// Tracks the horizons of [`tracked_horizons`]`(max_horizon)`; `window` is the number
    /// of recent errors the scale remembers, `shape_window` the number of steps the
    /// shared shape remembers.
    pub(crate) fn new(
        max_horizon: usize,
        window: f64,
        shape_window: f64,
        prior_scale: f64,
    ) -> Self {
        let horizons = tracked_horizons(max_horizon);
        let n = horizons.len();
        let stands_for = horizons
            .iter()
            .scan(0, |before, &h| {
                Some((h - std::mem::replace(before, h)) as f64)
            })
            .collect();
        HorizonErrors {
            horizons,
            stands_for,
            bias: vec![0.0; n],
            variance: vec![prior_scale * prior_scale; n],
            samples: vec![0; n],
            smoothing: 1.0 / window.max(1.0),
            prior_variance: prior_scale * prior_scale,
            shape: Shape::new(shape_window),
            recent_mad: f64::NAN,
        }
    }

    /// The horizons tracked, ascending.
    pub(crate) fn horizons(&self) -> &[usize] {
        &self.horizons
    }

    /// Records the error of a forecast made `horizon` steps (1-based) before its target;
    /// errors of horizons that are not tracked are ignored.
    pub(crate) fn record(&mut self, horizon: usize, error: f64) {
        let Ok(i) = self.horizons.binary_search(&horizon) else {
            return;
        };
        if !error.is_finite() {
            return;
        }
        let volatility = self.volatility();
        let (Some(bias), Some(variance), Some(samples)) = (
            self.bias.get_mut(i),
            self.variance.get_mut(i),
            self.samples.get_mut(i),
        ) else {
            return;
        };
        let n = *samples;
        let scale = variance.sqrt() * volatility;
        if n >= SHAPE_AFTER && scale > 0.0 {
            let weight = self.stands_for.get(i).copied().unwrap_or(1.0);
            self.shape.add((error - *bias) / scale, weight);
        }
        // The prior counts as two samples, then an average, then exponential smoothing.
        // Once the scale rests on some errors, outliers are clipped before they update
        // it, so that one surge does not widen every forecast for hours: the shared
        // shape above has recorded them unclipped, and carries the tails.
        let weight = self.smoothing.max(1.0 / (f64::from(n) + 2.0));
        let mut deviation = error - *bias;
        if n >= SHAPE_AFTER {
            deviation = deviation.clamp(-CLIP * scale, CLIP * scale);
        }
        if i == 0 {
            let mad = (*variance / 2.0).sqrt();
            let absolute = (error - *bias).abs().min(CLIP * 4.0 * mad.max(1e-12));
            self.recent_mad = if self.recent_mad.is_finite() {
                self.recent_mad + RECENT_WEIGHT * (absolute - self.recent_mad)
            } else {
                absolute
            };
        }
        *bias += weight * deviation;
        let absolute = deviation.abs();
        // A mean absolute deviation, kept as the variance of a Laplace law with it.
        let mad = (*variance / 2.0).sqrt();
        let mad = mad + weight * (absolute - mad);
        *variance = 2.0 * mad * mad;
        *samples = n.saturating_add(1);
    }

    /// How much more volatile the last few one-step errors were than usual (at least 1).
    fn volatility(&self) -> f64 {
        let (Some(&variance), Some(&samples)) = (self.variance.first(), self.samples.first())
        else {
            return 1.0;
        };
        let usual = (variance / 2.0).sqrt();
        if samples < SHAPE_AFTER || usual.is_nan() || usual <= 0.0 || !self.recent_mad.is_finite() {
            return 1.0;
        }
        (self.recent_mad / usual).clamp(1.0, MAX_VOLATILITY)
    }

    /// Advances the shared shape's forgetting by one step.
    pub(crate) fn tick(&mut self) {
        self.shape.tick();
    }

    /// Bias and scale of errors `horizon` steps (1-based) ahead. A horizon between two
    /// tracked ones interpolates their bias and variance; horizons without enough errors
    /// borrow from the longest shorter horizon that has some, growing the variance in
    /// proportion to the horizon (a random walk).
    pub(crate) fn bias_and_scale(&self, horizon: usize) -> (f64, f64) {
        let horizon = horizon.max(1);
        let volatility = self.volatility();
        // The last tracked horizon at or below `horizon` (the first is 1).
        let below = self
            .horizons
            .partition_point(|&h| h <= horizon)
            .saturating_sub(1);
        let (bias, variance) = match self.horizons.get(below + 1) {
            Some(&above) if self.horizons.get(below) != Some(&horizon) => {
                let low = self.horizons.get(below).copied().unwrap_or(1);
                let w = (horizon - low) as f64 / (above - low).max(1) as f64;
                match (
                    self.bias_and_variance(below, low),
                    self.bias_and_variance(below + 1, horizon),
                ) {
                    ((Some(b0), v0), (Some(b1), v1)) => {
                        (Some(b0 + w * (b1 - b0)), v0 + w * (v1 - v0))
                    }
                    (below, _) => below,
                }
            }
            _ => self.bias_and_variance(below, horizon),
        };
        match bias {
            Some(bias) => (bias, variance.max(0.0).sqrt() * volatility),
            // No errors yet: the prior, growing a little with the horizon.
            None => (
                0.0,
                (self.prior_variance * (horizon as f64).min(4.0)).sqrt(),
            ),
        }
    }

    /// Bias and variance of the errors `horizon` steps ahead as tracked horizon `i` tells
    /// them: its own when it has enough errors (grown in proportion when `horizon` lies
    /// beyond the last tracked), else those of the longest shorter horizon that has
    /// some, grown alike; no bias when no horizon has any.
    fn bias_and_variance(&self, i: usize, horizon: usize) -> (Option<f64>, f64) {
        let known = (0..=i)
            .rev()
            .find(|&j| self.samples.get(j).is_some_and(|&n| n >= 5));
        let Some(j) = known else {
            let prior = self.prior_variance * (horizon as f64).min(4.0);
            return (None, prior);
        };
        let (bias, variance) = (
            self.bias.get(j).copied().unwrap_or(0.0),
            self.variance.get(j).copied().unwrap_or(self.prior_variance),
        );
        let tracked = self.horizons.get(j).copied().unwrap_or(1) as f64;
        let growth = if j == i {
            (horizon as f64 / tracked).max(1.0)
        } else {
            horizon as f64 / tracked
        };
        (Some(bias), variance * growth)
    }

    /// Standardised-error quantiles for sorted or unsorted levels, into `out`.
    pub(crate) fn standard_quantiles(&self, levels: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.resize(levels.len(), 0.0);
        self.shape.quantiles(levels, out);
    }
}

/// A histogram of standardised errors with exponential forgetting, starting from a
/// heavy-tailed (Laplace, unit variance) prior.
#[derive(Debug, Clone)]
struct Shape {
    counts: Vec<f64>,
    total: f64,
    /// Weight of the next sample; grows each step so that older samples fade.
    increment: f64,
    growth: f64,
}

impl Shape {
    fn new(window: f64) -> Self {
        let bins = (2.0 * Z_LIMIT / BIN_WIDTH).round() as usize;
        let b = 1.0 / std::f64::consts::SQRT_2;
        let cdf = |z: f64| {
            if z < 0.0 {
                0.5 * (z / b).exp()
            } else {
                1.0 - 0.5 * (-z / b).exp()
            }
        };
        let counts: Vec<f64> = (0..bins)
            .map(|i| {
                let lo = -Z_LIMIT + i as f64 * BIN_WIDTH;
                PRIOR_SAMPLES * (cdf(lo + BIN_WIDTH) - cdf(lo))
            })
            .collect();
        let total = counts.iter().sum();
        Shape {
            counts,
            total,
            increment: 1.0,
            growth: 1.0 / (1.0 - 1.0 / window.max(2.0)),
        }
    }

    /// Adds a standardised error `z`, counted `weight` times.
    fn add(&mut self, z: f64, weight: f64) {
        let bin = ((z + Z_LIMIT) / BIN_WIDTH).floor();
        let bin = bin.clamp(0.0, self.counts.len().saturating_sub(1) as f64) as usize;
        if let Some(count) = self.counts.get_mut(bin) {
            *count += self.increment * weight;
            self.total += self.increment * weight;
        }
    }

    fn tick(&mut self) {
        self.increment *= self.growth;
        if self.increment > 1e100 {
            let scale = 1.0 / self.increment;
            self.counts.iter_mut().for_each(|c| *c *= scale);
            self.total *= scale;
            self.increment = 1.0;
        }
    }

    /// Quantiles: from the histogram within the body, and beyond it an exponential tail
    /// whose rate comes from the body's own spread (between the 0.9 and 0.99 quantiles,
    /// and their mirror images). Rare surges then move the tails through the body's
    /// width, not through a handful of extreme samples that would dominate them.
    fn quantiles(&self, levels: &[f64], out: &mut [f64]) {
        let anchors = [
            1.0 - TAIL_FROM,
            1.0 - 10.0 * TAIL_FROM,
            10.0 * TAIL_FROM,
            TAIL_FROM,
        ];
        let mut body = [0.0; 4];
        self.histogram_quantiles(&anchors, &mut body);
        let upper_rate = ((body[0] - body[1]) / std::f64::consts::LN_10).max(0.0);
        let lower_rate = ((body[2] - body[3]) / std::f64::consts::LN_10).max(0.0);
        let clamped: Vec<f64> = levels
            .iter()
            .map(|&q| q.clamp(TAIL_FROM, 1.0 - TAIL_FROM))
            .collect();
        self.histogram_quantiles(&clamped, out);
        for (z, &q) in out.iter_mut().zip(levels) {
            let q = q.clamp(1e-12, 1.0 - 1e-12);
            if q > 1.0 - TAIL_FROM {
                *z = body[0] + upper_rate * (TAIL_FROM / (1.0 - q)).ln();
            } else if q < TAIL_FROM {
                *z = body[3] - lower_rate * (TAIL_FROM / q).ln();
            }
        }
    }

    /// Quantiles by linear interpolation within bins.
    fn histogram_quantiles(&self, levels: &[f64], out: &mut [f64]) {
        // Ascending levels, each with its place in `out` (a stable sort: equal levels keep
        // their order), answered in one pass over the bins.
        let mut order: Vec<(f64, &mut f64)> = levels.iter().copied().zip(out).collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut bins = self.counts.iter().copied().enumerate();
        let Some((mut bin, mut count)) = bins.next() else {
            return;
        };
        let mut cumulative = 0.0;
        for (level, z) in order {
            let target = level.clamp(1e-9, 1.0 - 1e-9) * self.total;
            // On to the bin where the count reaches the target, the last one at most.
            while cumulative + count < target {
                let Some(next) = bins.next() else {
                    break;
                };
                cumulative += count;
                (bin, count) = next;
            }
            let inside = if count > 0.0 {
                ((target - cumulative) / count).clamp(0.0, 1.0)
            } else {
                0.5
            };
            *z = -Z_LIMIT + (bin as f64 + inside) * BIN_WIDTH;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_shape_is_centred_and_heavy_tailed() {
        let e = HorizonErrors::new(3, 100.0, 1000.0, 0.5);
        let mut q = Vec::new();
        e.standard_quantiles(&[0.5, 0.999, 0.001], &mut q);
        assert!(q[0].abs() < 0.05, "{q:?}");
        // Laplace with unit variance: 0.999 quantile is ln(500) / sqrt(2) = 4.39.
        assert!((q[1] - 4.39).abs() < 0.1, "{q:?}");
        assert!((q[2] + 4.39).abs() < 0.1, "{q:?}");
        assert_eq!(e.bias_and_scale(2), (0.0, (0.25f64 * 2.0).sqrt()));
        assert_eq!(e.bias_and_scale(3), e.bias_and_scale(3));
    }

    #[test]
    fn tracks_the_first_horizons_then_a_geometric_series() {
        assert_eq!(tracked_horizons(1), vec![1]);
        assert_eq!(tracked_horizons(10), (1..=10).collect::<Vec<_>>());
        let long = tracked_horizons(360);
        let every = EVERY_HORIZON_UP_TO;
        assert_eq!(long[..every], (1..=every).collect::<Vec<_>>()[..]);
        assert_eq!(long.last(), Some(&360));
        assert!(long.len() < every + 15, "{long:?}");
        for pair in long.windows(2) {
            assert!(pair[0] < pair[1], "{long:?}");
            assert!(pair[1] as f64 <= 1.3 * pair[0] as f64 + 1.0, "{long:?}");
        }
    }

    #[test]
    fn horizons_between_tracked_ones_interpolate_their_spread() {
        let mut e = HorizonErrors::new(100, 1000.0, 1000.0, 1.0);
        let tracked = e.horizons().to_vec();
        let (below, above) = (
            tracked[EVERY_HORIZON_UP_TO],
            tracked[EVERY_HORIZON_UP_TO + 1],
        );
        assert!(above > below + 1, "{tracked:?}");
        for i in 0..2000 {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            for &h in &tracked {
                // Errors of a random walk: variance in proportion to the horizon.
                e.record(h, sign * 0.01 * (h as f64).sqrt() + 0.001 * h as f64);
            }
            // Untracked horizons are ignored.
            e.record(below + 1, 1000.0);
            e.tick();
        }
        let (b0, s0) = e.bias_and_scale(below);
        let (b1, s1) = e.bias_and_scale(above);
        let mid = (below + above) / 2;
        let (b, s) = e.bias_and_scale(mid);
        let w = (mid - below) as f64 / (above - below) as f64;
        assert!((b - (b0 + w * (b1 - b0))).abs() < 1e-9, "{b0} {b} {b1}");
        assert!(s0 < s && s < s1, "{s0} {s} {s1}");
        // The variance is linear in the horizon, and so is its interpolation.
        assert!((s * s - (s0 * s0 + w * (s1 * s1 - s0 * s0))).abs() < 1e-9);
        let r2 = 2f64.sqrt();
        assert!((s - 0.01 * (mid as f64).sqrt() * r2).abs() < 0.002, "{s}");
    }

    #[test]
    fn learns_scale_per_horizon_and_extrapolates() {
        let mut e = HorizonErrors::new(4, 1000.0, 1000.0, 1.0);
        for i in 0..2000 {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            e.record(1, 0.1 * sign);
            e.record(2, 0.2 * sign + 0.05);
            e.tick();
        }
        let (b1, s1) = e.bias_and_scale(1);
        let (b2, s2) = e.bias_and_scale(2);
        // Scales are those of a Laplace law with the errors' mean absolute deviation.
        let r2 = 2f64.sqrt();
        assert!(b1.abs() < 0.01 && (s1 - 0.1 * r2).abs() < 0.01, "{b1} {s1}");
        assert!(
            (b2 - 0.05).abs() < 0.01 && (s2 - 0.2 * r2).abs() < 0.01,
            "{b2} {s2}"
        );
        // Horizon 4 has no errors: horizon 2's variance, doubled.
        let (_, s4) = e.bias_and_scale(4);
        assert!((s4 - 0.4).abs() < 0.01, "{s4}");
        // One huge error widens every horizon for a few steps (recent volatility), and
        // barely moves the usual scale.
        e.record(1, 100.0);
        let (_, s1_surge) = e.bias_and_scale(1);
        let (_, s2_surge) = e.bias_and_scale(2);
        assert!(
            s1_surge > 2.0 * s1 && s2_surge > 2.0 * s2,
            "{s1_surge} {s2_surge}"
        );
        for i in 0..60 {
            e.record(1, if i % 2 == 0 { 0.1 } else { -0.1 });
        }
        let (_, s1_after) = e.bias_and_scale(1);
        assert!(s1_after < 1.1 * s1, "{s1_after}");
        e.record(0, 1.0);
        e.record(9, 1.0);
        e.record(1, f64::NAN);
    }
}
