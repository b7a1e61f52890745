//! Where "now" comes from. The mock cloud and the controller read time only through a
//! [`Clock`], so replay and tests drive them on a simulated clock, fast and repeatable.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to (replay).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    pub fn set(&self, now: SystemTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Wall-clock time as tokio sees it: follows `tokio::time::pause`/`advance`, so loop
/// tests on a paused runtime see the mock's boot delays pass with the tokio clock.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_instant: tokio::time::Instant,
    base_time: SystemTime,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock {
            base_instant: tokio::time::Instant::now(),
            base_time: SystemTime::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base_time + (tokio::time::Instant::now() - self.base_instant)
    }
}
