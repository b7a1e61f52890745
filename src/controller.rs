//! One fleet's control loop. Each tick: observe (the fleet and the signal), decide (the
//! policy), guard, act (through the adapter), record (a log line and metrics).
//!
//! [`FleetController::tick`] is the reconcile step: it reads the world, acts once and
//! returns a [`TickReport`] that says what it did and why. [`next_wait`] is the pure
//! error policy that turns failures into backoff.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleetscale_adapters::{
    AdapterError, Clock, CloudAdapter, ErrorKind, Fleet, IdempotencyToken, InstanceState,
};
use fleetscale_policies::{Decision, Observation, Policy};
use serde::Serialize;

use crate::guards::{self, GuardConfig, GuardState, Intervention};
use crate::scale_in;
use crate::signal::{SignalError, SignalSource};
use crate::telemetry::Metrics;

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
    Shrink {
        requested: u32,
        removed: u32,
    },
    /// Removed instances stuck booting past `max_boot_time`.
    ReplaceStuck {
        removed: u32,
    },
    /// The fleet is suspended or backing off; nothing was attempted.
    Paused {
        until: String,
    },
}

/// Everything one tick saw and did: the decision log line, as a value.
#[derive(Debug, Clone, Serialize)]
pub struct TickReport {
    pub fleet: String,
    /// Latest demand, in instances, when the signal was read.
    pub observed: Option<f64>,
    pub signal_error: Option<String>,
    pub serving: u32,
    pub billed: u32,
    pub booting: u32,
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

fn error_text<S: serde::Serializer>(error: &Option<AdapterError>, s: S) -> Result<S::Ok, S::Error> {
    match error {
        Some(e) => s.serialize_some(&e.to_string()),
        None => s.serialize_none(),
    }
}

/// The pure error policy: how long to wait before acting again after `consecutive`
/// failed ticks, the last with `error`. Capacity and throttling wait longer, and never
/// less than the provider asked.
pub fn next_wait(error: &AdapterError, consecutive: u32, tick: Duration) -> Duration {
    let base = match error.kind() {
        ErrorKind::Throttled | ErrorKind::Capacity => tick * 2,
        ErrorKind::Authentication | ErrorKind::Permission => tick * 4,
        _ => tick,
    };
    let backoff = base.saturating_mul(1 << consecutive.saturating_sub(1).min(6));
    backoff
        .min(Duration::from_secs(30 * 60))
        .max(error.retry_after().unwrap_or_default())
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
    fn push(&mut self, demand: f64, serving: f64) {
        if self.demand.len() == MAX_HISTORY {
            self.demand.pop_front();
            self.serving.pop_front();
        }
        self.demand.push_back(demand);
        self.serving.push_back(serving);
        self.steps_seen += 1;
    }
}

/// One fleet's controller. Holds no state that cannot be read again: the fleet is read
/// from the cloud every tick and history from the signal at start.
#[derive(Debug)]
pub struct FleetController {
    name: String,
    adapter: Box<dyn CloudAdapter>,
    signal: Box<dyn SignalSource>,
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
}

/// Parts a controller is made of.
pub struct ControllerParts {
    pub name: String,
    pub adapter: Box<dyn CloudAdapter>,
    pub signal: Box<dyn SignalSource>,
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

impl FleetController {
    pub fn new(parts: ControllerParts) -> Self {
        let boot_steps = parts
            .boot_delay
            .as_nanos()
            .div_ceil(parts.step.as_nanos().max(1)) as u32;
        FleetController {
            replace_wait: parts.guards.replace_backoff,
            name: parts.name,
            adapter: parts.adapter,
            signal: parts.signal,
            policy: parts.policy,
            guards: parts.guards,
            guard_state: GuardState::default(),
            clock: parts.clock,
            step: parts.step,
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
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn step(&self) -> Duration {
        self.step
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// Observe, decide, guard, act, record: once.
    pub async fn tick(&mut self) -> TickReport {
        let now = self.clock.now();
        let mut report = TickReport {
            fleet: self.name.clone(),
            observed: None,
            signal_error: None,
            serving: 0,
            billed: 0,
            booting: 0,
            desired: None,
            applied: None,
            reason: String::new(),
            interventions: Vec::new(),
            action: Action::None,
            error: None,
            decision: None,
            decide_time: Duration::ZERO,
        };

        // Observe the fleet. Without it there is nothing safe to do.
        let fleet = match self.adapter.read_fleet().await {
            Ok(fleet) => fleet,
            Err(error) => {
                report.reason = "could not read the fleet".into();
                self.fail(&mut report, now, error);
                self.record(&report);
                return report;
            }
        };
        report.serving = fleet.serving();
        report.billed = fleet.billed();
        report.booting = fleet.booting();

        // Observe the signal: history at start or after a gap, the latest value otherwise.
        let signal = self.observe_signal(now, report.serving).await;
        self.serving_after_act = f64::from(report.serving);
        match &signal {
            Ok(value) => report.observed = Some(*value),
            Err(e) => {
                report.signal_error = Some(e.to_string());
                if let Some(m) = &self.metrics {
                    m.signal_errors
                        .with_label_values(&[&self.name, e.reason()])
                        .inc();
                }
            }
        }

        if let Some(until) = self.paused_until.filter(|until| now < *until) {
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
            self.record(&report);
            return report;
        }

        // Replace instances stuck booting, before deciding (the policy then sees the gap).
        if let Some(removed) = self.replace_stuck(&fleet, now, &mut report).await {
            report.action = Action::ReplaceStuck { removed };
            self.record(&report);
            return report;
        }
        if report.error.is_some() {
            self.record(&report);
            return report;
        }

        // Decide.
        let wanted = if signal.is_ok() {
            let demand: &[f64] = self.history.demand.make_contiguous();
            let serving_history: &[f64] = self.history.serving.make_contiguous();
            let observation = Observation {
                demand,
                serving_history,
                steps_seen: self.history.steps_seen,
                serving: report.serving,
                billed: report.billed,
                booting: report.booting,
                min: self.guards.min,
                max: self.guards.max,
                max_step_up: self.guards.max_step_up,
                max_step_down: self.guards.max_step_down,
                step: self.step,
                boot_steps: self.boot_steps,
            };
            let started = Instant::now();
            let decision = self.policy.decide(&observation);
            report.decide_time = started.elapsed();
            report.desired = Some(decision.desired);
            report.reason = decision.reason.clone();
            let desired = decision.desired;
            report.decision = Some(decision);
            desired
        } else {
            report.reason = "holding: no trustworthy signal".into();
            report.billed
        };

        // Guard.
        let guarded = guards::apply(
            &self.guards,
            &mut self.guard_state,
            now,
            report.billed,
            wanted,
            signal.is_ok(),
        );
        report.applied = Some(guarded.applied);
        report.interventions = guarded.interventions;

        // Act.
        let target = guarded.applied;
        if target > report.billed {
            let count = target - report.billed;
            let token = self.grow_token(now, report.billed, target);
            match self.adapter.grow(count, &token).await {
                Ok(outcome) => {
                    let launched = outcome.launched.len() as u32;
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
                        report.billed,
                        report.billed + launched,
                    );
                    self.succeed();
                }
                Err(error) => self.fail(&mut report, now, error),
            }
        } else if target < report.billed {
            let count = (report.billed - target) as usize;
            let victims = scale_in::choose(&fleet.instances, count);
            if victims.is_empty() {
                report.action = Action::None;
                report
                    .reason
                    .push_str(" (no removable instance: the rest are protected)");
                self.succeed();
            } else {
                match self.adapter.shrink(&victims).await {
                    Ok(outcome) => {
                        let removed = outcome.removed.len() as u32;
                        let was_serving = fleet
                            .instances
                            .iter()
                            .filter(|i| {
                                i.state == InstanceState::Running && outcome.removed.contains(&i.id)
                            })
                            .count();
                        self.serving_after_act -= was_serving as f64;
                        report.action = Action::Shrink {
                            requested: victims.len() as u32,
                            removed,
                        };
                        guards::record_change(
                            &mut self.guard_state,
                            now,
                            report.billed,
                            report.billed - removed,
                        );
                        self.succeed();
                    }
                    Err(error) => self.fail(&mut report, now, error),
                }
            }
        } else {
            self.succeed();
        }
        self.record(&report);
        report
    }

    /// Reads the signal, appending to the history. Returns the latest demand.
    async fn observe_signal(&mut self, now: SystemTime, serving: u32) -> Result<f64, SignalError> {
        if !self.warmed {
            let past = self
                .signal
                .history(now, self.step, self.history_steps, serving)
                .await?;
            for value in past {
                self.history.push(value, f64::NAN);
            }
            self.warmed = true;
            return self
                .history
                .demand
                .back()
                .copied()
                .filter(|v| v.is_finite())
                .ok_or_else(|| SignalError::Missing("the signal's history is empty".into()));
        }
        match self.signal.latest(now, serving).await {
            Ok(value) => {
                let value = crate::signal::checked(value, "demand")?;
                if self.history.gap > 0 {
                    self.fill_gap(now, serving).await;
                }
                self.history.push(value, self.serving_after_act);
                Ok(value)
            }
            Err(e) => {
                self.history.push(f64::NAN, self.serving_after_act);
                self.history.gap = (self.history.gap + 1).min(MAX_HISTORY);
                Err(e)
            }
        }
    }

    /// After an outage, read the missed steps back (a range query) where the source can.
    async fn fill_gap(&mut self, now: SystemTime, serving: u32) {
        let gap = std::mem::take(&mut self.history.gap);
        // The history call returns the steps ending before now, the last being the
        // latest (pushed separately): the `gap` steps before it fill the holes.
        if let Ok(values) = self.signal.history(now, self.step, gap + 1, serving).await {
            let filled = &values[..values.len().saturating_sub(1)];
            let len = self.history.demand.len();
            for (k, value) in filled.iter().rev().enumerate().take(gap.min(len)) {
                if value.is_finite() && *value >= 0.0 {
                    self.history.demand[len - 1 - k] = *value;
                }
            }
        }
    }

    async fn replace_stuck(
        &mut self,
        fleet: &Fleet,
        now: SystemTime,
        report: &mut TickReport,
    ) -> Option<u32> {
        let stuck: Vec<String> = fleet
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Pending && !i.protected)
            .filter(|i| {
                now.duration_since(i.launched_at).unwrap_or_default() > self.guards.max_boot_time
            })
            .map(|i| i.id.clone())
            .collect();
        if stuck.is_empty() || self.replace_after.is_some_and(|after| now < after) {
            return None;
        }
        // Replacements that get stuck again wait twice as long before the next round.
        if self.replace_after.is_some() {
            self.replace_wait = (self.replace_wait * 2).min(Duration::from_secs(3600));
        }
        self.replace_after = Some(now + self.replace_wait);
        match self.adapter.shrink(&stuck).await {
            Ok(outcome) => {
                let removed = outcome.removed.len() as u32;
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
                self.succeed();
                Some(removed)
            }
            Err(error) => {
                report.reason = "could not remove instances stuck booting".into();
                self.fail(report, now, error);
                None
            }
        }
    }

    /// A grow's token: the same fleet, decision time, current size and target give the
    /// same token, so a retried call, or a restart within the same tick, never launches
    /// twice. (A restart in a later tick reads the launched instances first.)
    fn grow_token(&self, now: SystemTime, billed: u32, target: u32) -> IdempotencyToken {
        let tick = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            / self.step.as_nanos().max(1);
        let mut hasher = DefaultHasher::new();
        (self.name.as_str(), tick, billed, target).hash(&mut hasher);
        IdempotencyToken::new(format!(
            "fleetscale-{}-{tick}-{:016x}",
            billed,
            hasher.finish()
        ))
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
                .max(error.retry_after().unwrap_or_default())
        } else {
            next_wait(&error, self.consecutive_failures, self.step)
        };
        self.paused_until = Some(now + wait);
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
        let observed = report
            .observed
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into());
        let desired = report
            .desired
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let applied = report
            .applied
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let action = match &report.action {
            Action::None => "none".to_string(),
            Action::Grow {
                requested,
                launched,
            } => format!("grow +{launched}/{requested}"),
            Action::Shrink { requested, removed } => format!("shrink -{removed}/{requested}"),
            Action::ReplaceStuck { removed } => format!("replace-stuck -{removed}"),
            Action::Paused { until } => format!("paused until {until}"),
        };
        match (&report.error, &report.signal_error) {
            (Some(error), _) => tracing::warn!(
                fleet = %report.fleet, observed = %observed, serving = report.serving, billed = report.billed,
                desired = %desired, applied = %applied, action = %action, error = %error, error_kind = %error.kind(),
                "{}", report.reason
            ),
            (None, Some(signal_error)) => tracing::warn!(
                fleet = %report.fleet, observed = %observed, serving = report.serving, billed = report.billed,
                desired = %desired, applied = %applied, action = %action, signal_error = %signal_error,
                "{}", report.reason
            ),
            (None, None) => tracing::info!(
                fleet = %report.fleet, observed = %observed, serving = report.serving, billed = report.billed,
                desired = %desired, applied = %applied, guards = %interventions.join(", "), action = %action,
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
            let direction = match applied.cmp(&report.billed) {
                std::cmp::Ordering::Greater => "up",
                std::cmp::Ordering::Less => "down",
                std::cmp::Ordering::Equal => "none",
            };
            m.decisions.with_label_values(&[fleet, direction]).inc();
        }
        if let Some(observed) = report.observed {
            m.demand.with_label_values(&[fleet]).set(observed);
        }
        for i in &report.interventions {
            m.guard_interventions
                .with_label_values(&[fleet, i.guard.as_str()])
                .inc();
        }
    }
}
