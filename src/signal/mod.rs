//! Where demand comes from. A [`SignalSource`] turns a recorded trace, a generator or a
//! Prometheus query into demand in instance units.

pub mod prometheus;
pub mod synthetic;
pub mod trace;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

/// Why a signal could not be read. The controller holds the fleet (never scales in) while
/// it has no trustworthy signal, and counts each error by its [`SignalError::reason`].
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SignalError {
    /// The source has no value for now (an empty result, a trace that has ended).
    #[error("no value: {0}")]
    Missing(String),
    /// The newest value is older than the staleness limit.
    #[error("stale: newest value is {age:?} old (limit {limit:?})")]
    Stale { age: Duration, limit: Duration },
    /// NaN, infinite or negative.
    #[error("absurd value {value}: {detail}")]
    Absurd { value: f64, detail: String },
    /// The source answered with something that is not one series (a query returning
    /// several series, a wrong type).
    #[error("ambiguous: {0}")]
    Ambiguous(String),
    /// The source could not be reached or refused us (down, slow, unauthorised).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl SignalError {
    /// Label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SignalError::Missing(_) => "missing",
            SignalError::Stale { .. } => "stale",
            SignalError::Absurd { .. } => "absurd",
            SignalError::Ambiguous(_) => "ambiguous",
            SignalError::Unavailable(_) => "unavailable",
        }
    }
}

/// Checks a raw value before it becomes demand: finite and non-negative.
pub fn checked(value: f64, what: &str) -> Result<f64, SignalError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(SignalError::Absurd {
            value,
            detail: format!("{what} must be a finite, non-negative number"),
        })
    }
}

/// A source of demand, in instance units (how many instances the work needs at their
/// service-level limit).
#[async_trait]
pub trait SignalSource: Send + std::fmt::Debug {
    /// Short name for logs (`trace`, `synthetic`, `prometheus`).
    fn kind(&self) -> &'static str;

    /// Up to `steps` values at spacing `step`, oldest first, the last one being the most
    /// recent complete step before `now`. `NaN` marks a step without data. Used to warm
    /// the policy at start and to fill a gap after an outage.
    async fn history(
        &mut self,
        now: SystemTime,
        step: Duration,
        steps: usize,
        serving: u32,
    ) -> Result<Vec<f64>, SignalError>;

    /// The most recent complete step's demand.
    async fn latest(&mut self, now: SystemTime, serving: u32) -> Result<f64, SignalError>;
}
