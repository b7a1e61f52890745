//! One fleet's control loop. Each tick is five steps, each a function with a typed
//! result: [`observe`](FleetController::observe) (the fleet, formed into one
//! [`FleetAccount`], and the signal), [`decide`](FleetController::decide) (the policy's
//! wish), [`guard`](FleetController::guard) (bounds, limits, holds, stuck boots),
//! [`act`](FleetController::act) (through the adapter) and record (a log line and
//! metrics, once, whatever the earlier steps did).
//!
//! [`FleetController::tick`] is the reconcile step: it reads the world, acts once and
//! returns a [`TickReport`] that says what it did and why. [`next_wait`] is the pure
//! error policy that turns failures into backoff.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleetscale_adapters::{
    AdapterError, Clock, CloudAdapter, ErrorKind, InstanceId, InstanceState,
};
use fleetscale_policies::{Bounds, Decision, Observation, Policy};
use serde::Serialize;

use crate::account::{BootTimes, FleetAccount, Unseen};
use crate::coordination::{Alone, Fence, NotHolder, Permit};
use crate::drain::{Drains, DrainsDue};
use crate::guards::{self, Guard, GuardConfig, GuardState, Intervention};
use crate::operator::{FleetControls, Pause, Published};
use crate::scale_in;
use crate::schedule::{self, Schedule};
use crate::signal::{NamedSignal, SignalError, SignalSource, combine};
use crate::telemetry::Metrics;

/// Steps of bounds ahead a policy is shown when the fleet has schedules: the longest
/// plan the dp planner makes (a day at one-minute steps).
pub const BOUNDS_AHEAD_STEPS: usize = 1440;

/// At most this much history is kept (14 days at one-minute steps); forecasters need no
/// more, and a restart reads it again from the signal.
pub const MAX_HISTORY: usize = 14 * 24 * 60;

/// What a tick did to the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Nothing to do.
    None,
    Grow {
        requested: u32,
        launched: u32,
    },
    /// A scale-in: `removed` at once, `draining` marked and drained before their
    /// removal (a fleet with `[fleets.drain]`).
    Shrink {
        requested: u32,
        removed: u32,
        #[serde(default, skip_serializing_if = "is_zero")]
        draining: u32,
    },
    /// Removed instances stuck booting past `max_boot_time`.
    ReplaceStuck {
        removed: u32,
    },
    /// The fleet is suspended or backing off; nothing was attempted.
    Paused {
        until: String,
    },
    /// Paused by an operator (`crate::operator`): observed and decided, nothing changed.
    Held {
        by: String,
        reason: String,
    },
    /// The fence refused (coordinating through etcd, this agent may no longer hold the
    /// fleet): observed and decided, nothing changed.
    Fenced {
        reason: String,
    },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Everything one tick saw and did: the decision log line, as a value.
#[derive(Debug, Clone, Serialize)]
pub struct TickReport {
    pub fleet: String,
    /// Latest demand, in instances: the largest of the signals that were read.
    pub observed: Option<f64>,
    /// What failed, when any signal failed (`name: error`, `; `-separated).
    pub signal_error: Option<String>,
    /// Each signal's latest demand or failure, in the config's order.
    pub signals: Vec<SignalReading>,
    /// The bounds in force this tick, (min, max): the guards' (as an operator's
    /// overrides set them) within which the open windows of the fleet's schedules act.
    pub bounds: (u32, u32),
    /// The names of the schedules' windows open this tick.
    pub windows: Vec<String>,
    pub serving: u32,
    /// Everything the provider may still bill: serving, booting and leaving.
    pub billed: u32,
    /// Booting, launches in flight (not listed yet) included.
    pub booting: u32,
    /// Launched by this agent, not listed yet.
    pub in_flight: u32,
    /// Removed and still listed.
    pub leaving: u32,
    /// Being drained before their removal (billed, not serving capacity).
    pub draining: u32,
    /// Drained instances removed this tick, and of them those whose drain timed out.
    pub drained: u32,
    pub drain_timeouts: u32,
    /// The policy's wish, when it was asked.
    pub desired: Option<u32>,
    /// The size after the guards.
    pub applied: Option<u32>,
    pub reason: String,
    pub interventions: Vec<Intervention>,
    pub action: Action,
    /// The adapter call that failed this tick, if any.
    #[serde(serialize_with = "error_text")]
    pub error: Option<AdapterError>,
    #[serde(skip)]
    pub decision: Option<Decision>,
    /// Time the policy took.
    #[serde(skip)]
    pub decide_time: Duration,
}

/// One signal's reading at a tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalReading {
    pub name: String,
    /// Its demand, in instances, when it was read.
    pub demand: Option<f64>,
    /// Why it could not be read.
    pub error: Option<String>,
    /// The error's metric label (`missing`, `stale`, ...).
    #[serde(skip)]
    pub reason: Option<&'static str>,
}

impl TickReport {
    /// Serving plus booting: what the applied size is compared with.
    pub fn active(&self) -> u32 {
        self.billed - self.leaving - self.draining
    }
}

fn error_text<S: serde::Serializer>(error: &Option<AdapterError>, s: S) -> Result<S::Ok, S::Error> {
    match error {
        Some(e) => s.serialize_some(&e.to_string()),
        None => s.serialize_none(),
    }
}

/// The pure error policy: how long to wait before acting again after `consecutive`
/// failed ticks, the last with `error`. Capacity and throttling wait longer, and never
/// less than the provider asked.
/// The first failure of a kind that may pass waits for the next tick (a capacity error
/// in one zone, a throttle, a 5xx), and each further one doubles the wait.
pub fn next_wait(error: &AdapterError, consecutive: u32, tick: Duration) -> Duration {
    let base = match error.kind() {
        ErrorKind::Authentication | ErrorKind::Permission => tick.saturating_mul(4),
        _ => tick,
    };
    let backoff = base.saturating_mul(1 << consecutive.saturating_sub(1).min(6));
    // A provider's retry-after longer than the cap is still honoured, up to a day.
    backoff
        .min(Duration::from_secs(30 * 60))
        .max(error.retry_after().unwrap_or_default().min(DAY))
}

const DAY: Duration = Duration::from_secs(86_400);

/// The time window a grow token belongs to: four read lags (or ticks, if longer), so
/// that an agent restarted soon after its predecessor's launch sends that launch's token.
fn token_window(now: SystemTime, step: Duration, read_lag: Duration) -> u64 {
    let length = step.max(read_lag).as_secs().max(1) * 4;
    now.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / length
}

/// The demand and serving history a policy sees, bounded.
#[derive(Debug, Default)]
struct History {
    demand: VecDeque<f64>,
    serving: VecDeque<f64>,
    steps_seen: u64,
    /// Steps at the end of `demand` that are gaps to fill when the signal returns.
    gap: usize,
}

impl History {
    /// Keeps only the latest `steps` (and the gap at the end, still to be filled).
    fn keep_latest(&mut self, steps: usize) {
        let keep = steps.max(self.gap);
        let drop = self.demand.len().saturating_sub(keep);
        if drop == 0 {
            return;
        }
        self.demand.drain(..drop);
        self.serving.drain(..drop);
        let room = keep.max(64);
        if self.demand.capacity() > 2 * room {
            self.demand.shrink_to(room);
            self.serving.shrink_to(room);
        }
    }

    fn push(&mut self, demand: f64, serving: f64) {
        if self.demand.len() == MAX_HISTORY {
            self.demand.pop_front();
            self.serving.pop_front();
        } else if self.demand.len() == self.demand.capacity() {
            // Grow by an eighth, not double: a full history would otherwise hold room
            // for half as much again as it keeps, for every fleet.
            let more = (self.demand.len() / 8).clamp(64, MAX_HISTORY - self.demand.len());
            self.demand.reserve_exact(more);
            self.serving.reserve_exact(more);
        }
        self.demand.push_back(demand);
        self.serving.push_back(serving);
        self.steps_seen += 1;
    }
}

/// One fleet's controller. Reads the fleet from the cloud every tick and history from
/// the signal at start; what it keeps in memory besides (its own launches and removals
/// that reads do not show yet, guard timers, backoff) is described in [`crate::account`]
/// and [`GuardState`]: a restarted agent loses it and carries on safely without it.
#[derive(Debug)]
pub struct FleetController {
    name: String,
    adapter: Box<dyn CloudAdapter>,
    signals: Vec<SignalState>,
    policy: Box<dyn Policy>,
    guards: GuardConfig,
    guard_state: GuardState,
    clock: Arc<dyn Clock>,
    step: Duration,
    boot_steps: u32,
    history: History,
    warmed: bool,
    consecutive_failures: u32,
    paused_until: Option<SystemTime>,
    suspended: bool,
    replace_wait: Duration,
    replace_after: Option<SystemTime>,
    metrics: Option<Metrics>,
    history_steps: usize,
    /// Instances serving after the last tick's action: the capacity that serves the step
    /// whose demand the next tick reads.
    serving_after_act: f64,
    unseen: Unseen,
    boot_times: BootTimes,
    /// Whether the policy has decided once (its warm-up is done).
    decided: bool,
    /// Told when the agent stops: a decision in progress is then abandoned.
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// When the signal was first read, and the step (counted from then) of the last
    /// tick.
    first_read: Option<SystemTime>,
    last_step: Option<u128>,
    /// The first tick's time: for `read_lag` after it, a launch made before this
    /// controller existed may be in flight unseen.
    started: Option<SystemTime>,
    /// The operator's board: pauses and overrides in, each tick's report out.
    controls: Option<FleetControls>,
    /// The configured bounds, which overrides in force replace.
    configured_bounds: (u32, u32),
    /// The operator's pause, as read at the start of this tick.
    held_by: Option<Pause>,
    /// `[[fleets.schedules]]`: windows that change the bounds for a while.
    schedules: Vec<Schedule>,
    /// The bounds in force this tick, and at each step ahead (empty without schedules).
    bounds: Bounds,
    bounds_ahead: Vec<Bounds>,
    /// Asked before every mutating call ([`Alone`] unless coordinating).
    fence: Arc<dyn Fence>,
    /// `[fleets.drain]`: scale-in drains instances before removing them.
    drains: Option<Drains>,
}

/// Parts a controller is made of.
pub struct ControllerParts {
    pub name: String,
    pub adapter: Box<dyn CloudAdapter>,
    /// At least one; the fleet's demand is the largest of theirs.
    pub signals: Vec<NamedSignal>,
    pub policy: Box<dyn Policy>,
    pub guards: GuardConfig,
    pub clock: Arc<dyn Clock>,
    /// The tick, which is also the policy's step.
    pub step: Duration,
    pub boot_delay: Duration,
    pub metrics: Option<Metrics>,
    /// Steps of history read at start (capped at [`MAX_HISTORY`]).
    pub history_steps: usize,
}

/// What observe saw: the fleet's account, and the signals' latest demand (the largest
/// of those read) or, when none was read, why not.
#[derive(Debug)]
pub struct Observed {
    pub account: FleetAccount,
    /// Draining instances due for removal (drained, or past the drain's timeout).
    pub drains_due: DrainsDue,
    pub signal: Result<f64, SignalError>,
    /// Each signal's reading; the fleet holds scale-in while any has failed.
    pub readings: Vec<SignalReading>,
}

impl Observed {
    /// Whether every signal was read: only then may the fleet scale in.
    pub fn all_signals_read(&self) -> bool {
        self.signal.is_ok() && self.readings.iter().all(|r| r.error.is_none())
    }
}

/// One signal's source and what the controller keeps of it.
#[derive(Debug)]
struct SignalState {
    name: String,
    source: Box<dyn SignalSource>,
    /// Steps at the end of the history this signal has given no value for yet, to be
    /// read back when it answers again.
    gap: usize,
}

/// `name: error` for each failed reading, `; `-separated; `None` when none failed.
fn failures(readings: &[SignalReading]) -> Option<String> {
    let failed: Vec<String> = readings
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{:?}: {e}", r.name)))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// What the guards let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Bring the active fleet to this size.
    Resize(u32),
    /// Remove these instances, stuck booting past `max_boot_time`, to be replaced.
    ReplaceStuck(Vec<InstanceId>),
}

/// The fleet as a policy is shown it, apart from the history.
#[derive(Debug, Clone)]
struct FleetNow {
    serving: u32,
    active: u32,
    booting: u32,
    min: u32,
    max: u32,
    max_step_up: Option<u32>,
    max_step_down: Option<u32>,
    step: Duration,
    boot_steps: u32,
    bounds_ahead: Vec<Bounds>,
}

/// Asks `policy` for its decision on `history` and `fleet`.
fn ask(
    policy: &mut dyn Policy,
    history: &mut History,
    fleet: &FleetNow,
    boot_times: &[Duration],
) -> Decision {
    let observation = Observation {
        demand: history.demand.make_contiguous(),
        serving_history: history.serving.make_contiguous(),
        steps_seen: history.steps_seen,
        serving: fleet.serving,
        active: fleet.active,
        booting: fleet.booting,
        min: fleet.min,
        max: fleet.max,
        max_step_up: fleet.max_step_up,
        max_step_down: fleet.max_step_down,
        step: fleet.step,
        boot_steps: fleet.boot_steps,
        boot_times,
        bounds_ahead: &fleet.bounds_ahead,
    };
    policy.decide(&observation)
}

/// Whether policies decide on tokio's blocking pool: on a multi-threaded runtime (the
/// agent's), not on replay's current-thread one.
fn on_blocking_pool() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// The warm-ups that may run at once on the blocking pool: one per core.
fn warming_up() -> Arc<tokio::sync::Semaphore> {
    static DECIDING: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    DECIDING
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            Arc::new(tokio::sync::Semaphore::new(cores))
        })
        .clone()
}

/// Stands in for a fleet's policy while it decides on the blocking pool.
#[derive(Debug)]
struct Holding;

impl Policy for Holding {
    fn name(&self) -> &str {
        "holding"
    }
    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        Decision::new(obs.active, "holding")
    }
}

/// A step ended the tick early; the report says why.
struct Stop;

type StepResult<T> = Result<T, Stop>;

impl FleetController {
    pub fn new(parts: ControllerParts) -> Self {
        let step = parts.step.max(Duration::from_millis(1));
        let boot_steps = parts
            .boot_delay
            .as_nanos()
            .div_ceil(step.as_nanos())
            .min(u128::from(u32::MAX)) as u32;
        FleetController {
            replace_wait: parts.guards.replace_backoff,
            name: parts.name,
            adapter: parts.adapter,
            signals: parts
                .signals
                .into_iter()
                .map(|s| SignalState {
                    name: s.name,
                    source: s.source,
                    gap: 0,
                })
                .collect(),
            policy: parts.policy,
            guards: parts.guards,
            guard_state: GuardState::default(),
            clock: parts.clock,
            step,
            boot_steps,
            history: History::default(),
            warmed: false,
            consecutive_failures: 0,
            paused_until: None,
            suspended: false,
            replace_after: None,
            metrics: parts.metrics,
            history_steps: parts.history_steps.min(MAX_HISTORY),
            serving_after_act: f64::NAN,
            unseen: Unseen::default(),
            boot_times: BootTimes::default(),
            decided: false,
            stop: None,
            first_read: None,
            last_step: None,
            started: None,
            controls: None,
            configured_bounds: (0, 0),
            held_by: None,
            bounds: Bounds { min: 0, max: 0 },
            schedules: Vec::new(),
            bounds_ahead: Vec::new(),
            fence: Arc::new(Alone),
            drains: None,
        }
    }

    /// Drains instances through `drains` before removing them, from the next tick on.
    pub fn drain_with(&mut self, drains: Drains) {
        self.drains = Some(drains);
    }

    /// Asks `fence` before every mutating call from the next tick on (coordinating:
    /// the fleet's holding in etcd).
    pub fn fence_with(&mut self, fence: Arc<dyn Fence>) {
        self.fence = fence;
    }

    /// This agent holds the fleet again after another may have: what that holder did
    /// may not show in reads yet, so the start-up guard runs afresh from the next tick.
    pub fn holding_began(&mut self) {
        self.started = None;
    }

    /// The fence's answer before a mutating call; on a refusal the report says so and
    /// nothing is to change.
    async fn fenced(&mut self, report: &mut TickReport) -> Option<Permit> {
        match self.fence.may_act().await {
            Ok(permit) => Some(permit),
            Err(refusal) => {
                Self::refused(&self.name, report, &refusal);
                None
            }
        }
    }

    /// A fence's refusal, or a permit's deadline passed before the call started.
    fn refused(fleet: &str, report: &mut TickReport, refusal: &NotHolder) {
        tracing::warn!(fleet = %fleet, reason = %refusal, "fenced: not acting on the fleet");
        report
            .reason
            .push_str(&format!("; fenced ({refusal}): nothing changed"));
        report.action = Action::Fenced {
            reason: refusal.to_string(),
        };
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Abandons a decision in progress (on the blocking pool) once `stop` turns true,
    /// so that a stop never waits for a long plan or a warm-up.
    pub fn stop_on(&mut self, stop: tokio::sync::watch::Receiver<bool>) {
        self.stop = Some(stop);
    }

    pub fn step(&self) -> Duration {
        self.step
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// Takes an operator's pause and overrides from `controls` at the start of each tick
    /// (so a command applies from the next tick), and publishes each tick's report there.
    pub fn operate_with(&mut self, controls: FleetControls) {
        self.configured_bounds = (self.guards.min, self.guards.max);
        self.controls = Some(controls);
    }

    /// Applies `schedules`' windows to the bounds from the next tick on.
    pub fn schedule_with(&mut self, schedules: Vec<Schedule>) {
        self.schedules = schedules;
    }

    /// The bounds in force at `now` and at each step the planner may look ahead to
    /// ([`BOUNDS_AHEAD_STEPS`]), from the schedules' windows within the guards' bounds.
    fn read_schedules(&mut self, now: SystemTime, report: &mut TickReport) {
        let fixed = Bounds {
            min: self.guards.min,
            max: self.guards.max,
        };
        let in_force = schedule::in_force(&self.schedules, fixed, now);
        self.bounds = in_force.bounds;
        self.bounds_ahead =
            schedule::bounds_ahead(&self.schedules, fixed, now, self.step, BOUNDS_AHEAD_STEPS);
        report.bounds = (self.bounds.min, self.bounds.max);
        report.windows = in_force.open.into_iter().map(|w| w.name).collect();
    }

    pub fn controls(&self) -> Option<&FleetControls> {
        self.controls.as_ref()
    }

    /// The operator's commands in force at `now`: overrides replace the bounds for this
    /// tick; a pause holds every change.
    fn read_commands(&mut self, now: SystemTime) {
        let Some(controls) = &self.controls else {
            return;
        };
        let commands = controls.commands();
        (self.guards.min, self.guards.max) =
            crate::operator::bounds_in_force(self.configured_bounds, &commands, now);
        self.held_by = commands.pause;
    }

    fn publish(&self, now: SystemTime, report: &TickReport) {
        if let Some(controls) = &self.controls {
            controls.publish(Published {
                at: now,
                report: report.clone(),
                bounds: (self.guards.min, self.guards.max),
                paused: self.held_by.is_some(),
                suspended: self.suspended,
                step: self.step,
            });
        }
    }

    /// Observe, decide, guard, act, record: once.
    pub async fn tick(&mut self) -> TickReport {
        let now = self.clock.now();
        self.started.get_or_insert(now);
        self.read_commands(now);
        let mut report = TickReport {
            fleet: self.name.clone(),
            observed: None,
            signal_error: None,
            signals: Vec::new(),
            bounds: (self.guards.min, self.guards.max),
            windows: Vec::new(),
            serving: 0,
            billed: 0,
            booting: 0,
            in_flight: 0,
            leaving: 0,
            draining: 0,
            drained: 0,
            drain_timeouts: 0,
            desired: None,
            applied: None,
            reason: String::new(),
            interventions: Vec::new(),
            action: Action::None,
            error: None,
            decision: None,
            decide_time: Duration::ZERO,
        };
        self.read_schedules(now, &mut report);
        let _ = self.steps(now, &mut report).await;
        self.record(&report);
        self.publish(now, &report);
        report
    }

    async fn steps(&mut self, now: SystemTime, report: &mut TickReport) -> StepResult<()> {
        let permit = self.warm_up_permit(report).await?;
        let seen = self.observe(now, report).await?;
        self.check_paused(now, &seen.account, report)?;
        let wanted = self.decide(&seen, permit, report).await;
        let replacing = (self.replace_after, self.replace_wait);
        let intent = self.guard(now, &seen, wanted, report);
        if let Some(pause) = self.held_by.clone() {
            // Paused by an operator: no call that changes the fleet, and no round of
            // stuck-instance replacement counted.
            (self.replace_after, self.replace_wait) = replacing;
            let held = match &intent {
                Intent::Resize(size) if *size != seen.account.active() => {
                    format!("would resize to {size}")
                }
                Intent::Resize(_) => "no change due".to_string(),
                Intent::ReplaceStuck(stuck) => {
                    format!("would replace {} instance(s) stuck booting", stuck.len())
                }
            };
            report.reason.push_str(&format!(
                "; paused by {} ({}): {held}, nothing changed",
                pause.by, pause.reason
            ));
            report.action = Action::Held {
                by: pause.by,
                reason: pause.reason,
            };
            return Ok(());
        }
        let mutating = !seen.drains_due.is_empty()
            || match &intent {
                Intent::Resize(size) => *size != seen.account.active(),
                Intent::ReplaceStuck(_) => true,
            };
        let permit = if mutating {
            match self.fenced(report).await {
                Some(permit) => permit,
                None => {
                    (self.replace_after, self.replace_wait) = replacing;
                    return Ok(());
                }
            }
        } else {
            Permit::ALONE
        };
        self.act(now, &seen, intent, permit, report).await;
        Ok(())
    }

    /// Observe: read the fleet and form its account, then read the signal (history at
    /// start or after a gap, the latest value otherwise). Without the fleet there is
    /// nothing safe to do.
    async fn observe(&mut self, now: SystemTime, report: &mut TickReport) -> StepResult<Observed> {
        let fleet = match self.adapter.read_fleet().await {
            Ok(fleet) => fleet,
            Err(error) => {
                report.reason = "could not read the fleet".into();
                self.fail(report, now, error);
                return Err(Stop);
            }
        };
        let account = self.unseen.account(&fleet, now);
        self.boot_times.observe(&fleet, now);
        report.serving = account.serving;
        report.billed = account.billed();
        report.booting = account.booting;
        report.in_flight = account.in_flight;
        report.leaving = account.leaving;
        report.draining = account.draining;
        let drains_due = match &self.drains {
            Some(drains) => drains.due(&account.draining_instances, now).await,
            // Marked by an agent whose config drained: nothing drains them now.
            None => DrainsDue {
                drained: account
                    .draining_instances
                    .iter()
                    .map(|i| i.id.clone())
                    .collect(),
                timed_out: Vec::new(),
            },
        };

        let (signal, readings) = self.observe_signals(now, account.serving).await;
        self.serving_after_act = f64::from(account.serving);
        report.observed = signal.as_ref().ok().copied();
        report.signal_error = failures(&readings);
        if let Some(m) = &self.metrics {
            for reading in &readings {
                if let Some(reason) = reading.reason {
                    m.signal_errors
                        .with_label_values(&[&self.name, &reading.name, reason])
                        .inc();
                }
            }
        }
        report.signals = readings.clone();
        Ok(Observed {
            account,
            drains_due,
            signal,
            readings,
        })
    }

    /// A suspended or backing-off fleet observes (history stays whole) and does no more,
    /// except that backing off never keeps a fleet below its minimum (a lone instance
    /// that died is replaced at once).
    fn check_paused(
        &self,
        now: SystemTime,
        account: &FleetAccount,
        report: &mut TickReport,
    ) -> StepResult<()> {
        let Some(until) = self.paused_until.filter(|until| now < *until) else {
            return Ok(());
        };
        if !self.suspended && account.active() < self.bounds.min {
            return Ok(());
        }
        report.action = Action::Paused {
            until: humantime::format_rfc3339_seconds(until).to_string(),
        };
        report.reason = if self.suspended {
            format!(
                "suspended after {} consecutive failures",
                self.consecutive_failures
            )
        } else {
            "backing off after a failed call".into()
        };
        Err(Stop)
    }

    /// Warm-ups (a policy's first decision, over the whole history) run no more than one
    /// per core at once: a hundred fleets starting together then decide one after
    /// another rather than all at the end, and the fleets already running decide
    /// meanwhile without waiting. The wait comes before the tick reads anything, so that
    /// a fleet reads its history (the signal's, up to 20,160 steps) only once it may
    /// use it: fleets waiting their turn hold none.
    async fn warm_up_permit(
        &mut self,
        report: &mut TickReport,
    ) -> StepResult<Option<tokio::sync::OwnedSemaphorePermit>> {
        if self.decided || !on_blocking_pool() {
            return Ok(None);
        }
        match &mut self.stop {
            Some(stop) => tokio::select! {
                permit = warming_up().acquire_owned() => Ok(permit.ok()),
                _ = stop.wait_for(|stop| *stop) => {
                    report.reason = "stopping: no decision was started; nothing changed".into();
                    Err(Stop)
                }
            },
            None => Ok(warming_up().acquire_owned().await.ok()),
        }
    }

    /// Decide: the policy's wish for the active size, or, without a trustworthy signal,
    /// the size there is. On a multi-threaded runtime (the agent's) the policy runs on
    /// tokio's blocking pool, so that a long plan or warm-up never holds up the workers
    /// that run the other fleets, the signal handler and `/metrics`; a policy that panics
    /// there panics this fleet's task.
    async fn decide(
        &mut self,
        seen: &Observed,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        report: &mut TickReport,
    ) -> u32 {
        let account = &seen.account;
        if seen.signal.is_err() {
            report.reason = format!(
                "holding: no trustworthy signal ({})",
                failures(&seen.readings).unwrap_or_default()
            );
            return account.active();
        }
        let fleet = FleetNow {
            serving: account.serving,
            active: account.active(),
            booting: account.booting,
            min: self.bounds.min,
            max: self.bounds.max,
            max_step_up: self.guards.max_step_up,
            max_step_down: self.guards.max_step_down,
            step: self.step,
            boot_steps: self.boot_steps,
            bounds_ahead: self.bounds_ahead.clone(),
        };
        let boot_times = self.boot_times.recent().to_vec();
        let started = Instant::now();
        let decision = if on_blocking_pool() {
            let stop = self.stop.clone();
            let mut policy = std::mem::replace(&mut self.policy, Box::new(Holding));
            let mut history = std::mem::take(&mut self.history);
            let handle = tokio::task::spawn_blocking(move || {
                let decision = ask(policy.as_mut(), &mut history, &fleet, &boot_times);
                drop(permit);
                (policy, history, decision)
            });
            // Told to stop meanwhile (a warm-up can take seconds): the decision is
            // abandoned before anything was asked of the cloud.
            let done = match stop {
                Some(mut stop) => tokio::select! {
                    done = handle => done,
                    _ = stop.wait_for(|stop| *stop) => {
                        report.reason = "stopping: the decision in progress was abandoned; nothing changed".into();
                        return account.active();
                    }
                },
                None => handle.await,
            };
            match done {
                Ok((policy, history, decision)) => {
                    self.policy = policy;
                    self.history = history;
                    decision
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => {
                    // The runtime is shutting down: hold.
                    report.reason = format!("holding: the decision was cancelled ({e})");
                    return account.active();
                }
            }
        } else {
            ask(self.policy.as_mut(), &mut self.history, &fleet, &boot_times)
        };
        self.decided = true;
        if let Some(steps) = self.policy.history_kept() {
            self.history.keep_latest(steps);
        }
        report.decide_time = started.elapsed();
        report.desired = Some(decision.desired);
        report.reason = decision.reason.clone();
        // The others' word may grow the fleet, never shrink it (see `guard`).
        if let Some(failed) = failures(&seen.readings) {
            report
                .reason
                .push_str(&format!("; no scale-in while a signal fails ({failed})"));
        }
        let desired = decision.desired;
        report.decision = Some(decision);
        desired
    }

    /// Guard: instances stuck booting are replaced first (the policy then sees the gap
    /// next tick); otherwise the wish passes bounds, limits, cooldowns, stabilisation and
    /// the signal hold.
    fn guard(
        &mut self,
        now: SystemTime,
        seen: &Observed,
        wanted: u32,
        report: &mut TickReport,
    ) -> Intent {
        let stuck: Vec<InstanceId> = seen
            .account
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Pending && !i.protected)
            .filter(|i| {
                now.duration_since(i.launched_at).unwrap_or_default() > self.guards.max_boot_time
            })
            .map(|i| i.id.clone())
            .collect();
        let active = seen.account.active();
        let left = active.saturating_sub(stuck.len() as u32);
        let room = self.bounds.max.saturating_sub(active);
        if !stuck.is_empty()
            && left < self.bounds.min
            && room > 0
            && self.replace_after.is_none_or(|after| now >= after)
        {
            // Make before break: removing them would leave fewer than `min`, so the
            // replacements that keep it are launched first, and the stuck instances go at
            // the next round (then counted beside their replacements). A restarted agent
            // within its read lag may not see a predecessor's launch: it waits.
            if self.starting_up(now) {
                report.applied = Some(active);
                return Intent::Resize(active);
            }
            let target = active + (self.bounds.min - left).min(room);
            report.reason = format!(
                "{} instance(s) booting longer than {:?}: replacements launched first, to keep min {}",
                stuck.len(),
                self.guards.max_boot_time,
                self.bounds.min
            );
            report.applied = Some(target);
            return Intent::Resize(target);
        }
        if !stuck.is_empty() && self.replace_after.is_none_or(|after| now >= after) {
            // Replacements that get stuck again wait twice as long before the next round.
            if self.replace_after.is_some() {
                self.replace_wait = (self.replace_wait * 2).min(Duration::from_secs(3600));
            }
            self.replace_after = now.checked_add(self.replace_wait);
            return Intent::ReplaceStuck(stuck);
        }
        let guarded = guards::apply_within(
            &self.guards,
            self.bounds,
            &mut self.guard_state,
            now,
            seen.account.active(),
            wanted,
            seen.all_signals_read(),
        );
        let mut applied = guarded.applied;
        report.interventions = guarded.interventions;
        // Reads may not show yet what a predecessor launched or removed: no grow beyond
        // min (it would launch again) and no scale-in (a removed instance may still read
        // as serving, and the one removed in its place would be the last that serves).
        if self.starting_up(now) {
            let held = match applied.cmp(&active) {
                std::cmp::Ordering::Greater => applied.min(active.max(self.bounds.min)),
                // Above max is still brought down to it.
                std::cmp::Ordering::Less => active.min(self.bounds.max).max(applied),
                std::cmp::Ordering::Equal => applied,
            };
            if held != applied {
                report.interventions.push(Intervention {
                    guard: Guard::StartUp,
                    from: applied,
                    to: held,
                });
                applied = held;
            }
        }
        report.applied = Some(applied);
        Intent::Resize(applied)
    }

    /// Act: one call through the adapter (or none), its outcome noted in the account's
    /// memory and the guards' timers.
    async fn act(
        &mut self,
        now: SystemTime,
        seen: &Observed,
        intent: Intent,
        permit: Permit,
        report: &mut TickReport,
    ) {
        if !seen.drains_due.is_empty()
            && !self
                .finish_drains(now, &seen.drains_due, &permit, report)
                .await
        {
            return;
        }
        let active = seen.account.active();
        match intent {
            Intent::ReplaceStuck(stuck) => self.replace_stuck(now, &stuck, permit, report).await,
            Intent::Resize(target) if target > active => {
                self.grow(now, &seen.account, target - active, permit, report)
                    .await
            }
            Intent::Resize(target) if target < active => {
                self.shrink(
                    now,
                    &seen.account,
                    (active - target) as usize,
                    permit,
                    report,
                )
                .await
            }
            Intent::Resize(_) => self.succeed(),
        }
    }

    async fn grow(
        &mut self,
        now: SystemTime,
        account: &FleetAccount,
        count: u32,
        mut permit: Permit,
        report: &mut TickReport,
    ) {
        // The view's token, then salted ones while the provider answers with instances
        // long gone or (past the start-up window) with a conflict. The fence was asked
        // before the first call; it is asked again before each further one.
        let window = token_window(now, self.step, self.guards.read_lag());
        for attempt in 0..4 {
            if attempt > 0 {
                match self.fenced(report).await {
                    Some(next) => permit = next,
                    None => return,
                }
            }
            let token =
                self.unseen
                    .grow_token_under(&self.name, account, window, permit.identity.lease());
            let answer = match permit.start(self.adapter.grow(count, &token)).await {
                Ok(answer) => answer,
                Err(late) => return Self::refused(&self.name, report, &late),
            };
            match answer {
                Ok(outcome) => {
                    let new: Vec<InstanceId> = outcome
                        .launched
                        .iter()
                        .filter(|id| !account.lists(id) && !self.unseen.is_gone(id))
                        .cloned()
                        .collect();
                    if new.is_empty() && !outcome.launched.is_empty() {
                        // The token was used on an earlier fleet of the same instances.
                        self.unseen.spend(&token);
                        continue;
                    }
                    let launched = new.len() as u32;
                    self.unseen.launched(&new, now, self.guards.read_lag());
                    if launched < count {
                        if let Some(m) = &self.metrics {
                            m.launch_shortfall
                                .with_label_values(&[&self.name])
                                .inc_by(u64::from(count - launched));
                        }
                        tracing::warn!(fleet = %self.name, requested = count, launched, "the provider launched fewer instances than asked");
                    }
                    report.action = Action::Grow {
                        requested: count,
                        launched,
                    };
                    guards::record_change(
                        &mut self.guard_state,
                        now,
                        account.active(),
                        account.active() + launched,
                    );
                    self.succeed();
                    return;
                }
                Err(error) if error.kind() == ErrorKind::Conflict && self.starting_up(now) => {
                    report.reason.push_str(
                        "; a launch made before this agent started is still in flight: \
                         waiting for reads to show it",
                    );
                    self.succeed();
                    return;
                }
                Err(error) if error.kind() == ErrorKind::Conflict => self.unseen.spend(&token),
                Err(error) => {
                    self.fail(report, now, error);
                    return;
                }
            }
        }
        report.reason.push_str(
            "; the provider repeated old launches for four tokens: trying again next tick",
        );
        self.succeed();
    }

    async fn shrink(
        &mut self,
        now: SystemTime,
        account: &FleetAccount,
        count: usize,
        permit: Permit,
        report: &mut TickReport,
    ) {
        // Launches in flight go first, newest first: they serve nobody yet.
        let mut victims: Vec<InstanceId> = account
            .in_flight_ids
            .iter()
            .rev()
            .take(count)
            .cloned()
            .collect();
        victims.extend(scale_in::choose(&account.instances, count - victims.len()));
        if victims.is_empty() {
            report
                .reason
                .push_str(" (no removable instance: the rest are protected)");
            self.succeed();
            return;
        }
        // With a drain, serving instances are drained first; launches in flight and
        // instances still booting serve nobody and go at once.
        let (to_drain, at_once): (Vec<InstanceId>, Vec<InstanceId>) = match &self.drains {
            Some(_) => victims.iter().cloned().partition(|id| {
                account
                    .instances
                    .iter()
                    .any(|i| &i.id == id && i.state == InstanceState::Running)
            }),
            None => (Vec::new(), victims.clone()),
        };
        let mut removed = Vec::new();
        if !at_once.is_empty() {
            let answer = match permit.start(self.adapter.shrink(&at_once)).await {
                Ok(answer) => answer,
                Err(late) => return Self::refused(&self.name, report, &late),
            };
            match answer {
                Ok(outcome) => {
                    self.unseen
                        .removed(&outcome.removed, now, self.guards.read_lag());
                    removed = outcome.removed;
                }
                Err(error) => return self.fail(report, now, error),
            }
        }
        let mut draining = Vec::new();
        if !to_drain.is_empty() {
            match self
                .begin_drains(now, account, &to_drain, &permit, report)
                .await
            {
                Ok(begun) => draining = begun,
                Err(()) if removed.is_empty() => return,
                // What was removed stands; the drains are decided again next tick.
                Err(()) => {}
            }
        }
        let was_serving = account
            .instances
            .iter()
            .filter(|i| {
                i.state == InstanceState::Running
                    && (removed.contains(&i.id) || draining.contains(&i.id))
            })
            .count();
        self.serving_after_act -= was_serving as f64;
        let gone = (removed.len() + draining.len()) as u32;
        report.action = Action::Shrink {
            requested: victims.len() as u32,
            removed: removed.len() as u32,
            draining: draining.len() as u32,
        };
        guards::record_change(
            &mut self.guard_state,
            now,
            account.active(),
            account.active().saturating_sub(gone),
        );
        if report.error.is_none() {
            self.succeed();
        }
    }

    /// Marks `ids` as draining and begins their drains. The mark comes first: once it
    /// is written, the instances are draining for every agent that reads the fleet,
    /// whatever becomes of the drain calls (a drain that could not begin ends at the
    /// timeout).
    async fn begin_drains(
        &mut self,
        now: SystemTime,
        account: &FleetAccount,
        ids: &[InstanceId],
        permit: &Permit,
        report: &mut TickReport,
    ) -> Result<Vec<InstanceId>, ()> {
        let Some(drains) = &self.drains else {
            return Ok(Vec::new());
        };
        let marked = match permit.start(self.adapter.mark_draining(ids, now)).await {
            Ok(marked) => marked,
            Err(late) => {
                Self::refused(&self.name, report, &late);
                return Err(());
            }
        };
        if let Err(error) = marked {
            report
                .reason
                .push_str("; could not mark instances as draining");
            self.fail(report, now, error);
            return Err(());
        }
        self.unseen.marked(ids, now, self.guards.read_lag());
        let instances: Vec<fleetscale_adapters::Instance> = account
            .instances
            .iter()
            .filter(|i| ids.contains(&i.id))
            .map(|i| fleetscale_adapters::Instance {
                draining_since: Some(now),
                ..i.clone()
            })
            .collect();
        match permit.start(drains.begin(&instances)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => report.reason.push_str(&format!(
                "; a drain could not begin ({e}): it ends at the timeout"
            )),
            // Marked: the next holder finds the drain and times it out.
            Err(late) => Self::refused(&self.name, report, &late),
        }
        tracing::info!(fleet = %self.name, instances = ?ids, drain = %drains.describe(), "draining before removal");
        Ok(ids.to_vec())
    }

    /// Removes the drained instances (and those whose drain timed out). Returns whether
    /// the tick may go on to its own action.
    async fn finish_drains(
        &mut self,
        now: SystemTime,
        due: &DrainsDue,
        permit: &Permit,
        report: &mut TickReport,
    ) -> bool {
        let ids = due.all();
        let answer = match permit.start(self.adapter.shrink(&ids)).await {
            Ok(answer) => answer,
            Err(late) => {
                Self::refused(&self.name, report, &late);
                return false;
            }
        };
        match answer {
            Ok(outcome) => {
                self.unseen
                    .removed(&outcome.removed, now, self.guards.read_lag());
                let timed_out: Vec<&InstanceId> = due
                    .timed_out
                    .iter()
                    .filter(|id| outcome.removed.contains(id))
                    .collect();
                if !timed_out.is_empty() {
                    tracing::warn!(fleet = %self.name, instances = ?timed_out, timeout = ?self.drains.as_ref().map(|d| d.timeout), "drain timed out: removing the instances anyway");
                }
                report.drained = outcome.removed.len() as u32;
                report.drain_timeouts = timed_out.len() as u32;
                if let Some(m) = &self.metrics {
                    m.drains_finished
                        .with_label_values(&[&self.name, "drained"])
                        .inc_by(u64::from(report.drained - report.drain_timeouts));
                    m.drains_finished
                        .with_label_values(&[&self.name, "timed_out"])
                        .inc_by(u64::from(report.drain_timeouts));
                }
                true
            }
            Err(error) => {
                report.reason = "could not remove drained instances".into();
                self.fail(report, now, error);
                false
            }
        }
    }

    async fn replace_stuck(
        &mut self,
        now: SystemTime,
        stuck: &[InstanceId],
        permit: Permit,
        report: &mut TickReport,
    ) {
        let answer = match permit.start(self.adapter.shrink(stuck)).await {
            Ok(answer) => answer,
            Err(late) => return Self::refused(&self.name, report, &late),
        };
        match answer {
            Ok(outcome) => {
                let removed = outcome.removed.len() as u32;
                self.unseen
                    .removed(&outcome.removed, now, self.guards.read_lag());
                tracing::warn!(fleet = %self.name, removed, max_boot_time = ?self.guards.max_boot_time, "replacing instances stuck booting");
                if let Some(m) = &self.metrics {
                    m.stuck_replaced
                        .with_label_values(&[&self.name])
                        .inc_by(u64::from(removed));
                }
                report.reason = format!(
                    "{removed} instance(s) booting longer than {:?}: removed, to be replaced",
                    self.guards.max_boot_time
                );
                report.action = Action::ReplaceStuck { removed };
                self.succeed();
            }
            Err(error) => {
                report.reason = "could not remove instances stuck booting".into();
                self.fail(report, now, error);
            }
        }
    }

    /// Within `read_lag` of the first tick: a launch of a predecessor may be unseen, so
    /// a grow (beyond `min`) would launch it again.
    fn starting_up(&self, now: SystemTime) -> bool {
        self.started
            .is_some_and(|started| now < started + self.guards.read_lag())
    }

    /// Reads every signal, appending their step-wise largest to the history. Returns the
    /// latest demand (the largest read), or the first error when none was read, and each
    /// signal's reading.
    async fn observe_signals(
        &mut self,
        now: SystemTime,
        serving: u32,
    ) -> (Result<f64, SignalError>, Vec<SignalReading>) {
        let mut results = Vec::with_capacity(self.signals.len());
        if !self.warmed {
            let mut pasts = Vec::with_capacity(self.signals.len());
            for signal in &mut self.signals {
                pasts.push(
                    signal
                        .source
                        .history(now, self.step, self.history_steps, serving)
                        .await,
                );
            }
            let read: Vec<Vec<f64>> = pasts
                .iter()
                .filter_map(|p| p.as_ref().ok())
                .cloned()
                .collect();
            if read.is_empty() {
                // Nothing to warm from: the history is read again next tick.
                let results = pasts.into_iter().map(|p| p.map(|_| f64::NAN)).collect();
                return self.readings(results);
            }
            for value in combine::stepwise_largest(&read) {
                self.history.push(value, f64::NAN);
            }
            self.missed_steps(now);
            self.warmed = true;
            let steps = self.history.demand.len().min(MAX_HISTORY);
            for (signal, past) in self.signals.iter_mut().zip(pasts) {
                results.push(match past {
                    Ok(past) => past
                        .last()
                        .copied()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| {
                            SignalError::Missing("the signal's history is empty".into())
                        }),
                    // A signal that could not be read at start is read back, the whole
                    // history, once it answers: as after an outage.
                    Err(e) => {
                        signal.gap = steps;
                        Err(e)
                    }
                });
            }
            self.history.gap = self.signals.iter().map(|s| s.gap).max().unwrap_or(0);
            return self.readings(results);
        }
        // History is kept by time: a tick that came late (a slow call, a busy machine)
        // leaves gaps for the steps it missed, filled from the signal like an outage's.
        let missed = self.missed_steps(now);
        for _ in 0..missed {
            self.history.push(f64::NAN, f64::NAN);
        }
        for index in 0..self.signals.len() {
            let Some(signal) = self.signals.get_mut(index) else {
                continue;
            };
            signal.gap = (signal.gap + missed).min(MAX_HISTORY);
            let read = signal
                .source
                .latest(now, serving)
                .await
                .and_then(|value| crate::signal::checked(value, "demand"));
            match &read {
                Ok(_) if signal.gap > 0 => self.fill_gap(index, now, serving).await,
                Ok(_) => {}
                Err(_) => signal.gap = (signal.gap + 1).min(MAX_HISTORY),
            }
            results.push(read);
        }
        let latest = combine::largest(results.iter().map(|r| r.as_ref().ok().copied()));
        self.history
            .push(latest.unwrap_or(f64::NAN), self.serving_after_act);
        self.history.gap = self.signals.iter().map(|s| s.gap).max().unwrap_or(0);
        self.readings(results)
    }

    /// Each signal's reading from its result, and the fleet's: the largest demand read,
    /// or the first error when none was.
    fn readings(
        &self,
        results: Vec<Result<f64, SignalError>>,
    ) -> (Result<f64, SignalError>, Vec<SignalReading>) {
        let latest = combine::largest(results.iter().map(|r| r.as_ref().ok().copied()));
        let first_error = results.iter().find_map(|r| r.as_ref().err().cloned());
        let readings = self
            .signals
            .iter()
            .zip(results)
            .map(|(signal, result)| match result {
                Ok(demand) => SignalReading {
                    name: signal.name.clone(),
                    demand: Some(demand),
                    error: None,
                    reason: None,
                },
                Err(e) => SignalReading {
                    name: signal.name.clone(),
                    demand: None,
                    error: Some(e.to_string()),
                    reason: Some(e.reason()),
                },
            })
            .collect();
        let combined = match (latest, first_error) {
            (Some(latest), _) => Ok(latest),
            (None, Some(e)) => Err(e),
            (None, None) => Err(SignalError::Missing("the fleet has no signal".into())),
        };
        (combined, readings)
    }

    /// Steps that passed since the last tick without one, and notes this one. Ticks are
    /// counted in whole steps from the first (rounded: a tick a little early or late is
    /// still its step's).
    fn missed_steps(&mut self, now: SystemTime) -> usize {
        let step = self.step.as_nanos().max(1);
        let anchor = *self.first_read.get_or_insert(now);
        let since = now.duration_since(anchor).unwrap_or_default().as_nanos();
        let index = (since + step / 2) / step;
        let missed = self
            .last_step
            .map_or(0, |last| index.saturating_sub(last).saturating_sub(1));
        self.last_step = Some(index);
        missed.min(MAX_HISTORY as u128) as usize
    }

    /// After an outage of signal `index`, read its missed steps back (a range query)
    /// where the source can; each filled step keeps the larger of its value and the
    /// other signals' there.
    async fn fill_gap(&mut self, index: usize, now: SystemTime, serving: u32) {
        let Some(signal) = self.signals.get_mut(index) else {
            return;
        };
        let gap = std::mem::take(&mut signal.gap);
        // The history call returns the steps ending before now, the last being the
        // latest (pushed separately): the `gap` steps before it fill the holes.
        if let Ok(values) = signal
            .source
            .history(now, self.step, gap + 1, serving)
            .await
        {
            let filled = values.split_last().map_or(&[][..], |(_, before)| before);
            let filled = filled
                .get(filled.len().saturating_sub(gap)..)
                .unwrap_or_default();
            // The latest filled step goes to the history's last slot, and so on back.
            combine::merge_into(self.history.demand.iter_mut(), filled);
        }
    }

    fn succeed(&mut self) {
        if self.suspended {
            tracing::info!(fleet = %self.name, "fleet resumed: calls succeed again");
        }
        self.consecutive_failures = 0;
        self.paused_until = None;
        self.suspended = false;
        if let Some(m) = &self.metrics {
            m.suspended.with_label_values(&[&self.name]).set(0);
        }
    }

    fn fail(&mut self, report: &mut TickReport, now: SystemTime, error: AdapterError) {
        self.consecutive_failures += 1;
        if let Some(m) = &self.metrics {
            m.tick_failures
                .with_label_values(&[&self.name, error.kind().as_str()])
                .inc();
        }
        let wait = if self.consecutive_failures >= self.guards.failure_limit {
            if !self.suspended {
                tracing::error!(fleet = %self.name, failures = self.consecutive_failures, error = %error, suspend_for = ?self.guards.suspend_for,
                    "fleet suspended: its calls keep failing; no action until it is retried");
            }
            self.suspended = true;
            if let Some(m) = &self.metrics {
                m.suspended.with_label_values(&[&self.name]).set(1);
            }
            self.guards
                .suspend_for
                .max(error.retry_after().unwrap_or_default().min(DAY))
        } else {
            next_wait(&error, self.consecutive_failures, self.step)
        };
        self.paused_until = now.checked_add(wait);
        report.error = Some(error);
    }

    fn record(&self, report: &TickReport) {
        if tracing::enabled!(tracing::Level::WARN) {
            Self::log(report);
        }
        self.export(report);
    }

    fn log(report: &TickReport) {
        let interventions: Vec<String> = report
            .interventions
            .iter()
            .map(|i| format!("{} {}->{}", i.guard.as_str(), i.from, i.to))
            .collect();
        // Numbers stay numbers (in JSON logs too); a value there is none of is left out.
        let observed = report.observed.map(|v| (v * 100.0).round() / 100.0);
        let (desired, applied) = (report.desired, report.applied);
        let mut action = match &report.action {
            Action::None => "none".to_string(),
            Action::Grow {
                requested,
                launched,
            } => format!("grow +{launched}/{requested}"),
            Action::Shrink {
                requested,
                removed,
                draining: 0,
            } => format!("shrink -{removed}/{requested}"),
            Action::Shrink {
                requested,
                removed,
                draining,
            } => format!("shrink -{removed}/{requested}, draining {draining}"),
            Action::ReplaceStuck { removed } => format!("replace-stuck -{removed}"),
            Action::Paused { until } => format!("paused until {until}"),
            Action::Held { by, .. } => format!("held (paused by {by})"),
            Action::Fenced { .. } => "fenced (not acting)".to_string(),
        };
        if report.drained > 0 {
            action.push_str(&format!("; drained -{}", report.drained));
            if report.drain_timeouts > 0 {
                action.push_str(&format!(" ({} timed out)", report.drain_timeouts));
            }
        }
        let draining = report.draining;
        match (&report.error, &report.signal_error) {
            (Some(error), _) => tracing::warn!(
                fleet = %report.fleet, observed, serving = report.serving, billed = report.billed,
                desired, applied, action = %action, error = %error, error_kind = %error.kind(),
                "{}", report.reason
            ),
            (None, Some(signal_error)) => tracing::warn!(
                fleet = %report.fleet, observed, serving = report.serving, billed = report.billed,
                desired, applied, action = %action, signal_error = %signal_error,
                "{}", report.reason
            ),
            (None, None) => tracing::info!(
                fleet = %report.fleet, observed, serving = report.serving, billed = report.billed,
                booting = report.booting, leaving = report.leaving, draining,
                desired, applied, guards = %interventions.join(", "), action = %action,
                "{}", report.reason
            ),
        }
    }

    fn export(&self, report: &TickReport) {
        let Some(m) = &self.metrics else { return };
        let fleet = report.fleet.as_str();
        m.billed
            .with_label_values(&[fleet])
            .set(i64::from(report.billed));
        m.serving
            .with_label_values(&[fleet])
            .set(i64::from(report.serving));
        m.draining
            .with_label_values(&[fleet])
            .set(i64::from(report.draining));
        if let Some(desired) = report.desired {
            m.desired
                .with_label_values(&[fleet])
                .set(i64::from(desired));
            m.decide_seconds
                .with_label_values(&[fleet])
                .observe(report.decide_time.as_secs_f64());
        }
        if let Some(applied) = report.applied {
            m.applied
                .with_label_values(&[fleet])
                .set(i64::from(applied));
            let direction = match applied.cmp(&report.active()) {
                std::cmp::Ordering::Greater => "up",
                std::cmp::Ordering::Less => "down",
                std::cmp::Ordering::Equal => "none",
            };
            m.decisions.with_label_values(&[fleet, direction]).inc();
        }
        if let Some(observed) = report.observed {
            m.demand.with_label_values(&[fleet]).set(observed);
        }
        for reading in &report.signals {
            m.signal_demand
                .with_label_values(&[fleet, &reading.name])
                .set(reading.demand.unwrap_or(f64::NAN));
        }
        for i in &report.interventions {
            m.guard_interventions
                .with_label_values(&[fleet, i.guard.as_str()])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_history_holds_little_more_room_than_it_keeps() {
        let mut history = History::default();
        for i in 0..MAX_HISTORY + 100 {
            history.push(i as f64, 1.0);
        }
        assert_eq!(history.demand.len(), MAX_HISTORY);
        assert_eq!(history.steps_seen, (MAX_HISTORY + 100) as u64);
        assert_eq!(history.demand.front(), Some(&100.0));
        // A policy that keeps what it learnt lets the history go, but for the gap that
        // is still to be filled from the signal.
        let mut short = History::default();
        for i in 0..1000 {
            short.push(i as f64, 1.0);
        }
        short.gap = 3;
        short.keep_latest(0);
        assert_eq!(
            short.demand.iter().copied().collect::<Vec<_>>(),
            [997.0, 998.0, 999.0]
        );
        assert_eq!(short.serving.len(), 3);
        assert_eq!(short.steps_seen, 1000);
        assert!(
            short.demand.capacity() <= 128,
            "{}",
            short.demand.capacity()
        );
        // Doubling would leave room for 32,768 steps.
        for room in [history.demand.capacity(), history.serving.capacity()] {
            assert!(room < MAX_HISTORY + MAX_HISTORY / 7, "{room}");
        }
    }
}
