//! Where demand comes from. A [`SignalSource`] turns a recorded trace, a generator or a
//! Prometheus query into demand in instance units.

pub mod combine;
pub mod prometheus;
pub mod synthetic;
pub mod trace;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use fleetscale_adapters::Clock;

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

/// How a source's raw value becomes demand in instances: the one place every source's
/// conversion is done.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Conversion {
    /// Work per unit of time: demand = value / per_instance.
    Throughput { per_instance: f64 },
    /// The fleet's mean utilisation (CPU, memory or disk; a fraction or a percentage):
    /// demand = value x serving / target, `serving` being the fleet account's serving
    /// count at the step read.
    Utilisation { target: f64 },
    /// Items waiting (a queue's depth): demand = value / items_per_instance.
    QueueDepth { items_per_instance: f64 },
}

impl Conversion {
    /// Demand in instances for a raw value, with `serving` instances serving.
    pub fn demand(&self, value: f64, serving: u32) -> f64 {
        match *self {
            Conversion::Throughput { per_instance } => value / per_instance,
            Conversion::Utilisation { target } => value * f64::from(serving) / target,
            Conversion::QueueDepth { items_per_instance } => value / items_per_instance,
        }
    }

    /// Whether demand depends on the serving count (and so says nothing while none serve).
    pub fn needs_serving(&self) -> bool {
        matches!(self, Conversion::Utilisation { .. })
    }
}

/// One of a fleet's signals, under the name that its reports and metrics use.
#[derive(Debug)]
pub struct NamedSignal {
    pub name: String,
    pub source: Box<dyn SignalSource>,
}

/// What the agent needs of one kind of signal's settings (`kind = ...` in
/// `[fleets.signal]`). Each kind implements it once, beside its config type, and is
/// registered by one line of the list of kinds in `crate::config` (`SignalConfig`).
pub trait SignalKind: std::fmt::Debug {
    /// Problems with the values, as (field, message); reported under the signal's path.
    fn problems(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The source these settings describe, starting at the clock's now.
    fn build(&self, clock: &dyn Clock) -> anyhow::Result<Box<dyn SignalSource>>;

    /// Whether a source just built may have no complete step yet (a trace or a generator
    /// starts playing when it is loaded): `check` then says it is loaded rather than
    /// failing. A query that returns nothing is a mistake worth failing on.
    fn may_start_empty(&self) -> bool {
        false
    }
}

impl<T: SignalKind + ?Sized> SignalKind for Box<T> {
    fn problems(&self) -> Vec<(&'static str, String)> {
        (**self).problems()
    }

    fn build(&self, clock: &dyn Clock) -> anyhow::Result<Box<dyn SignalSource>> {
        (**self).build(clock)
    }

    fn may_start_empty(&self) -> bool {
        (**self).may_start_empty()
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
