use std::time::Duration;

/// Everything a policy may know when it decides. The controller builds one per tick.
///
/// Histories are in instance units (demand already divided by what one instance serves)
/// and hold one value per step, oldest first; the last value is the most recent complete
/// step. A step with no reading is `NaN` (a gap): policies must tolerate gaps.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Demand per step, in instances.
    pub demand: &'a [f64],
    /// Instances that were serving during each step of `demand` (same length); `NaN`
    /// where unknown (history read from the signal before the agent ran).
    pub serving_history: &'a [f64],
    /// How many steps have ever been appended to the history, counting those that have
    /// since dropped off the front of `demand`. Lets a policy ingest only new steps.
    pub steps_seen: u64,
    /// Instances serving now.
    pub serving: u32,
    /// The fleet's size as far as decisions go: serving plus booting, launches that reads
    /// do not show yet included, and instances already leaving (removed, still listed)
    /// left out. `desired` is compared with it.
    pub active: u32,
    /// Instances launched and not yet serving (launches in flight included).
    pub booting: u32,
    /// Fleet bounds in force now, inclusive.
    pub min: u32,
    pub max: u32,
    /// The bounds in force at each step ahead (entry `k` for the step that starts `k`
    /// steps from now; entry 0 is now), where a schedule changes them. Empty, or
    /// shorter than a policy's horizon, means `min`/`max` beyond its end: a fleet
    /// without schedules passes nothing.
    pub bounds_ahead: &'a [Bounds],
    /// Most instances one tick may add or remove, when limited.
    pub max_step_up: Option<u32>,
    pub max_step_down: Option<u32>,
    /// Length of one step (one tick).
    pub step: Duration,
    /// Steps from launch until an instance serves (`ceil(boot_delay / step)`).
    pub boot_steps: u32,
    /// How long recent launches took to serve, as observed (oldest first; empty when
    /// unknown). Boots vary; a policy may plan with their spread.
    pub boot_times: &'a [Duration],
}

/// A fleet's bounds at one step, inclusive (`min <= max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

impl Observation<'_> {
    /// The bounds in force `k` steps from now (0: now).
    pub fn bounds_at(&self, k: usize) -> Bounds {
        self.bounds_ahead.get(k).copied().unwrap_or(Bounds {
            min: self.min,
            max: self.max,
        })
    }

    /// The most recent known demand, if any.
    pub fn latest_demand(&self) -> Option<f64> {
        self.demand.iter().rev().copied().find(|d| d.is_finite())
    }
}

/// The planner's view of the future behind a decision, for logs, metrics and `plan`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Planned serving capacity for each of the next steps; the first is applied now.
    pub trajectory: Vec<u32>,
    /// Forecast demand per planned step: (quantile, value) pairs, in instances.
    pub forecast: Vec<Vec<(f64, f64)>>,
    /// The plan's expected cost, in instance-steps (including the launch cost).
    pub expected_cost: f64,
    /// Expected unserved demand over the plan, in instance-steps.
    pub expected_unserved: f64,
}

/// A policy's answer: the active fleet size it wants (serving and booting instances; those
/// already leaving are not counted) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    /// Human-readable: what the policy saw and why it chose `desired`.
    pub reason: String,
    /// The plan behind the decision, for planners that make one.
    pub plan: Option<Plan>,
}

impl Decision {
    pub fn new(desired: u32, reason: impl Into<String>) -> Self {
        Decision {
            desired,
            reason: reason.into(),
            plan: None,
        }
    }
}

/// A scaling policy: observation in, desired size and reason out.
///
/// `decide` takes `&mut self` so that a policy may keep incremental state (a forecaster's
/// level, a recommendation window); it must still be a pure function of the observations
/// it has been given, with no I/O and no clock.
pub trait Policy: Send + std::fmt::Debug {
    /// The name it is selected by in configs and on the command line.
    fn name(&self) -> &str;
    fn decide(&mut self, obs: &Observation<'_>) -> Decision;

    /// How many steps of the history shown at this decision the policy reads at its
    /// later ones (besides the steps added after it): `None`, the default, when it may
    /// read all it is given. A policy that keeps what it has learnt needs only the new
    /// steps, and the controller then keeps no more history than that between decisions.
    fn history_kept(&self) -> Option<usize> {
        None
    }
}
