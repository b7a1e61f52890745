//! Faults of the mock cloud that tests and chaos runs switch at run time.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

use super::config::{FaultConfig, clamp_probability, clamp_rate};
use super::{MockCloud, State};
use crate::{AdapterError, Operation};

/// The fault settings in force, kept inside the cloud's state.
#[derive(Debug)]
pub(super) struct Faults {
    pub error_rate: f64,
    pub throttle_rate: f64,
    pub throttle_retry_after: Duration,
    pub throttle_retry_after_max: Duration,
    pub capacity_rate: f64,
    pub partial_launch_rate: f64,
    pub never_boot_rate: f64,
    pub death_rate: f64,
    /// Errors the next matching calls return, in order.
    pub scripted: VecDeque<ScriptedFault>,
    /// Mutating calls that take effect but answer with a transient error.
    pub lost_responses: u32,
    /// Operations the identity may not perform.
    pub denied: HashSet<Operation>,
}

#[derive(Debug)]
pub(super) struct ScriptedFault {
    /// `None` matches every operation.
    pub operation: Option<Operation>,
    pub remaining: u32,
    pub error: AdapterError,
}

impl Faults {
    pub fn new(config: &FaultConfig) -> Self {
        Faults {
            error_rate: clamp_probability(config.error_rate),
            throttle_rate: clamp_probability(config.throttle_rate),
            throttle_retry_after: config.throttle_retry_after,
            throttle_retry_after_max: config
                .throttle_retry_after_max
                .unwrap_or(config.throttle_retry_after),
            capacity_rate: clamp_probability(config.capacity_rate),
            partial_launch_rate: clamp_probability(config.partial_launch_rate),
            never_boot_rate: clamp_probability(config.never_boot_rate),
            death_rate: clamp_rate(config.death_rate),
            scripted: VecDeque::new(),
            lost_responses: 0,
            denied: HashSet::new(),
        }
    }

    /// The error a call of `operation` fails with before doing anything, if any: a denied
    /// permission, then a scripted error, then a throttle or transient error drawn at the
    /// configured rates.
    pub fn before_call(
        &mut self,
        operation: Operation,
        rng: &mut SmallRng,
    ) -> Option<AdapterError> {
        if operation != Operation::VerifyAccess && self.denied.contains(&operation) {
            return Some(AdapterError::permission(
                permission_name(operation),
                "the mock identity is denied this operation",
            ));
        }
        if let Some((pos, fault)) = self
            .scripted
            .iter_mut()
            .enumerate()
            .find(|(_, f)| f.operation.is_none_or(|op| op == operation))
        {
            let error = fault.error.clone();
            fault.remaining -= 1;
            if fault.remaining == 0 {
                self.scripted.remove(pos);
            }
            return Some(error);
        }
        if self.throttle_rate > 0.0 && rng.random_bool(self.throttle_rate) {
            let retry_after = super::uniform(
                rng,
                self.throttle_retry_after,
                self.throttle_retry_after_max,
            );
            return Some(AdapterError::throttled(
                Some(retry_after),
                format!("mock throttled {operation}"),
            ));
        }
        if self.error_rate > 0.0 && rng.random_bool(self.error_rate) {
            return Some(AdapterError::transient(format!("mock {operation} failed")));
        }
        None
    }

    /// Whether a mutating call that took effect should answer as if its response was lost.
    pub fn lose_response(&mut self) -> bool {
        if self.lost_responses > 0 {
            self.lost_responses -= 1;
            true
        } else {
            false
        }
    }
}

/// The permission name the mock reports for an operation.
pub(super) fn permission_name(operation: Operation) -> String {
    format!("mock:{operation}")
}

/// Switches the faults of a [`MockCloud`] at run time. Cheap to clone; every clone acts
/// on the same cloud.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    pub(super) cloud: MockCloud,
}

impl FaultHandle {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        self.cloud.with_state(f)
    }

    /// Chance (0 to 1) that each call fails with a transient error.
    pub fn set_error_rate(&self, rate: f64) {
        self.with(|s| s.faults.error_rate = clamp_probability(rate));
    }

    /// Chance (0 to 1) that each call is throttled, and the retry-after it carries.
    pub fn set_throttle_rate(&self, rate: f64, retry_after: Duration) {
        self.with(|s| {
            s.faults.throttle_rate = clamp_probability(rate);
            s.faults.throttle_retry_after = retry_after;
            s.faults.throttle_retry_after_max = retry_after;
        });
    }

    /// Chance (0 to 1) that an instance launched from now on never finishes booting.
    pub fn set_never_boot_rate(&self, rate: f64) {
        self.with(|s| s.faults.never_boot_rate = clamp_probability(rate));
    }

    /// Deaths per instance per hour, from now on, for every live instance.
    pub fn set_death_rate(&self, per_hour: f64) {
        let now = self.cloud.now();
        self.with(|s| {
            s.faults.death_rate = clamp_rate(per_hour);
            s.redraw_deaths(now);
        });
    }

    /// The next `n` calls, of any operation, are throttled with this retry-after.
    pub fn throttle_next(&self, n: u32, retry_after: Duration) {
        self.fail_next(
            n,
            AdapterError::throttled(Some(retry_after), "mock throttled the call"),
        );
    }

    /// The next `n` calls, of any operation, fail with `error` before doing anything.
    pub fn fail_next(&self, n: u32, error: AdapterError) {
        self.script(None, n, error);
    }

    /// The next `n` calls of `operation` fail with `error` before doing anything.
    pub fn fail_next_on(&self, operation: Operation, n: u32, error: AdapterError) {
        self.script(Some(operation), n, error);
    }

    fn script(&self, operation: Option<Operation>, n: u32, error: AdapterError) {
        if n == 0 {
            return;
        }
        self.with(|s| {
            s.faults.scripted.push_back(ScriptedFault {
                operation,
                remaining: n,
                error,
            })
        });
    }

    /// The next `n` grow or shrink calls take effect but answer with a transient error, as
    /// when a response is lost on the network. A retry with the same idempotency token
    /// then returns the first call's instances.
    pub fn lose_next_responses(&self, n: u32) {
        self.with(|s| s.faults.lost_responses += n);
    }

    /// Deny (or allow again) an operation: grow and shrink then fail with a permission
    /// error, and verify-access reports the permission as not allowed.
    pub fn set_denied(&self, operation: Operation, denied: bool) {
        self.with(|s| {
            if denied {
                s.faults.denied.insert(operation);
            } else {
                s.faults.denied.remove(&operation);
            }
        });
    }

    /// Kill an instance now: it vanishes from the fleet. Returns whether it was live.
    pub fn kill(&self, id: &str) -> bool {
        let now = self.cloud.now();
        self.with(|s| s.kill(id, now))
    }

    /// Clear every scripted error, lost response and denial, and set every rate to 0.
    pub fn clear(&self) {
        self.with(|s| {
            let retry_after = s.faults.throttle_retry_after;
            s.faults = Faults::new(&FaultConfig {
                throttle_retry_after: retry_after,
                ..FaultConfig::default()
            });
        });
    }
}

/// Draws an exponentially distributed lifetime for the given rate per hour.
pub(super) fn draw_lifetime(rate_per_hour: f64, rng: &mut SmallRng) -> Option<Duration> {
    if rate_per_hour <= 0.0 {
        return None;
    }
    // 1 - U lies in (0, 1], so the logarithm is finite.
    let u: f64 = 1.0 - rng.random::<f64>();
    let hours = -u.ln() / rate_per_hour;
    Duration::try_from_secs_f64(hours * 3600.0).ok()
}
