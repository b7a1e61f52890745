//! Forecasters: from a signal's own history to a distribution (quantiles) for each of the
//! next steps.
//!
//! [`AdaptiveForecaster`] is the planner's forecaster. It works in a log space (so that
//! errors are relative for large values and absolute for values below a chosen unit),
//! runs a small ensemble of level/trend models with and without daily and weekly
//! seasonality, weighs them per horizon by their recent errors, and turns the spread of
//! its own past errors at each horizon into quantiles. Every update is incremental.

mod adaptive;
mod errors;
mod seasonal;

pub use adaptive::{AdaptiveForecaster, ForecastSettings};

/// A forecaster that learns from the values it is shown, one step at a time.
pub trait Forecaster: Send + std::fmt::Debug {
    /// Appends the next step's value; `NaN` (or any non-finite value) marks a gap.
    fn observe(&mut self, value: f64);

    /// Quantiles of each of the next `horizon` steps: `out[h][i]` is quantile
    /// `quantiles[i]` of the value `h + 1` steps after the last observed step. Values
    /// are finite and non-negative; quantile levels outside (0, 1) are clamped.
    fn forecast(&self, horizon: usize, quantiles: &[f64]) -> Vec<Vec<f64>> {
        if quantiles.is_empty() {
            return vec![Vec::new(); horizon];
        }
        let mut flat = Vec::new();
        self.forecast_into(horizon, quantiles, &mut flat);
        flat.chunks(quantiles.len()).map(<[f64]>::to_vec).collect()
    }

    /// As [`forecast`](Self::forecast), into one flat buffer (`horizon * quantiles.len()`
    /// values, step-major) that the caller may reuse.
    fn forecast_into(&self, horizon: usize, quantiles: &[f64], out: &mut Vec<f64>);
}
