//! Guards: what stands between a policy's wish and the cloud. Pure functions of their
//! inputs (time is an argument), so every guard is tested without a clock.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use fleetscale_policies::Bounds;
use serde::{Deserialize, Serialize};

/// `[fleets.guards]`: the limits every decision passes through, whatever the policy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Fewest billed instances. Default 1.
    #[serde(default = "defaults::min")]
    pub min: u32,
    /// Most billed instances. Required: a fleet without a ceiling is a bill without one.
    pub max: u32,
    /// Most instances added in one tick. Default: no limit.
    #[serde(default)]
    pub max_step_up: Option<u32>,
    /// Most instances removed in one tick. Default: no limit.
    #[serde(default)]
    pub max_step_down: Option<u32>,
    /// After a scale-up, no further scale-up for this long. Default 0s.
    #[serde(default, with = "humantime_serde")]
    pub scale_up_cooldown: Duration,
    /// After any scale change, no scale-in for this long. Default 0s.
    #[serde(default, with = "humantime_serde")]
    pub scale_down_cooldown: Duration,
    /// Scale in only to the highest size wanted within this window. Default 0s (the DP
    /// planner prices churn itself; target tracking keeps its own 5-minute window).
    #[serde(default, with = "humantime_serde")]
    pub scale_down_stabilisation: Duration,
    /// An instance still booting after this long is replaced. Default 15m.
    #[serde(default = "defaults::max_boot_time", with = "humantime_serde")]
    pub max_boot_time: Duration,
    /// Wait after replacing stuck instances before replacing again; doubles each time
    /// replacements get stuck too, up to an hour. Default 5m.
    #[serde(default = "defaults::replace_backoff", with = "humantime_serde")]
    pub replace_backoff: Duration,
    /// Consecutive failed ticks after which the fleet is suspended. Default 5.
    #[serde(default = "defaults::failure_limit")]
    pub failure_limit: u32,
    /// How long a suspended fleet rests before one more try. Default 10m.
    #[serde(default = "defaults::suspend_for", with = "humantime_serde")]
    pub suspend_for: Duration,
    /// How long the provider's reads may lag behind a launch or a removal. A launch is
    /// counted as booting until reads list it or this has passed; a removal as leaving
    /// while reads still show the instance as before, as long as this; and for this long
    /// after it starts, an agent takes a refused grow token as a launch of its
    /// predecessor's still in flight, grows no further than `min` and does not scale in
    /// (what its predecessor did may not show yet). Default: 30s on
    /// AWS and Azure ([`CLOUD_READ_LAG`]); on the mock, its own longest read lag.
    #[serde(default, with = "humantime_serde")]
    pub read_lag: Option<Duration>,
}

mod defaults {
    use std::time::Duration;
    pub fn min() -> u32 {
        1
    }
    pub fn max_boot_time() -> Duration {
        Duration::from_secs(15 * 60)
    }
    pub fn replace_backoff() -> Duration {
        Duration::from_secs(5 * 60)
    }
    pub fn failure_limit() -> u32 {
        5
    }
    pub fn suspend_for() -> Duration {
        Duration::from_secs(10 * 60)
    }
}

/// How long reads of a real cloud are taken to lag behind writes unless a fleet says
/// otherwise: EC2's eventual consistency is documented in seconds.
pub const CLOUD_READ_LAG: Duration = Duration::from_secs(30);

impl GuardConfig {
    /// The read lag in force: the fleet's, or [`CLOUD_READ_LAG`].
    pub fn read_lag(&self) -> Duration {
        self.read_lag.unwrap_or(CLOUD_READ_LAG)
    }

    /// Default guards with the given ceiling.
    pub fn with_max(max: u32) -> Self {
        GuardConfig {
            min: defaults::min(),
            max,
            max_step_up: None,
            max_step_down: None,
            scale_up_cooldown: Duration::ZERO,
            scale_down_cooldown: Duration::ZERO,
            scale_down_stabilisation: Duration::ZERO,
            max_boot_time: defaults::max_boot_time(),
            replace_backoff: defaults::replace_backoff(),
            failure_limit: defaults::failure_limit(),
            suspend_for: defaults::suspend_for(),
            read_lag: None,
        }
    }

    /// Problems with the values, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.min > self.max {
            problems.push((
                "min",
                format!("min ({}) is above max ({})", self.min, self.max),
            ));
        }
        if self.max == 0 {
            problems.push(("max", "must be at least 1".into()));
        }
        if self.max_step_up == Some(0) {
            problems.push((
                "max_step_up",
                "0 would forbid every scale-up; leave it out for no limit".into(),
            ));
        }
        if self.max_step_down == Some(0) {
            problems.push((
                "max_step_down",
                "0 would forbid every scale-in; leave it out for no limit".into(),
            ));
        }
        if self.failure_limit == 0 {
            problems.push(("failure_limit", "must be at least 1".into()));
        }
        if self.max_boot_time.is_zero() {
            problems.push(("max_boot_time", "must be longer than 0s".into()));
        }
        problems
    }
}

/// What the guards remember between ticks. Lost on restart by design: every guard then
/// starts permissive-but-bounded (no cooldown running), which can only delay nothing.
#[derive(Debug, Clone, Default)]
pub struct GuardState {
    last_scale_up: Option<SystemTime>,
    last_change: Option<SystemTime>,
    /// Sizes wanted recently, for the stabilisation window.
    wanted: VecDeque<(SystemTime, u32)>,
}

/// A guard that changed the policy's wish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Intervention {
    pub guard: Guard,
    pub from: u32,
    pub to: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    Min,
    Max,
    MaxStepUp,
    MaxStepDown,
    ScaleUpCooldown,
    ScaleDownCooldown,
    Stabilisation,
    SignalHold,
    /// A schedule's window raised the minimum above `min`.
    ScheduleMin,
    /// A schedule's window lowered the maximum below `max`.
    ScheduleMax,
    /// Within `read_lag` of the agent's start, no grow beyond `min` and no scale-in: a
    /// launch or removal made just before a restart may not show in reads yet.
    StartUp,
}

impl Guard {
    pub fn as_str(self) -> &'static str {
        match self {
            Guard::Min => "min",
            Guard::Max => "max",
            Guard::MaxStepUp => "max_step_up",
            Guard::MaxStepDown => "max_step_down",
            Guard::ScaleUpCooldown => "scale_up_cooldown",
            Guard::ScaleDownCooldown => "scale_down_cooldown",
            Guard::Stabilisation => "stabilisation",
            Guard::SignalHold => "signal_hold",
            Guard::ScheduleMin => "schedule_min",
            Guard::ScheduleMax => "schedule_max",
            Guard::StartUp => "start_up",
        }
    }
}

/// The size the guards allow, and which guard changed what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    pub applied: u32,
    pub interventions: Vec<Intervention>,
}

/// Passes the policy's `wanted` size (or, with `signal_ok` false, no wish at all: hold)
/// through every guard, given the fleet's `current` active size at `now` (serving and
/// booting; instances already leaving are not counted).
pub fn apply(
    config: &GuardConfig,
    state: &mut GuardState,
    now: SystemTime,
    current: u32,
    wanted: u32,
    signal_ok: bool,
) -> Guarded {
    let bounds = Bounds {
        min: config.min,
        max: config.max,
    };
    apply_within(config, bounds, state, now, current, wanted, signal_ok)
}

/// [`apply`] within `bounds`, the bounds in force now (the guards' `min` and `max` as a
/// schedule's open windows change them: see [`crate::schedule`]). A bound a window set
/// is reported as [`Guard::ScheduleMin`] or [`Guard::ScheduleMax`].
pub fn apply_within(
    config: &GuardConfig,
    bounds: Bounds,
    state: &mut GuardState,
    now: SystemTime,
    current: u32,
    wanted: u32,
    signal_ok: bool,
) -> Guarded {
    let mut size = wanted;
    let mut interventions = Vec::new();
    let mut set = |size: &mut u32, guard: Guard, to: u32| {
        if *size != to {
            interventions.push(Intervention {
                guard,
                from: *size,
                to,
            });
            *size = to;
        }
    };

    // Without a trustworthy signal, never scale in.
    if !signal_ok && size < current {
        set(&mut size, Guard::SignalHold, current);
    }

    // Stabilisation: scale in only to the highest size wanted within the window. While
    // the signal is missing the size held counts as wanted, so that an outage longer
    // than the window does not end in a scale-in with no window at all.
    let window = config.scale_down_stabilisation;
    state
        .wanted
        .retain(|(at, _)| now.duration_since(*at).unwrap_or_default() < window);
    if !window.is_zero() {
        state
            .wanted
            .push_back((now, if signal_ok { wanted } else { size }));
    }
    if signal_ok {
        let highest = state.wanted.iter().map(|(_, w)| *w).max().unwrap_or(size);
        if size < current && highest > size {
            set(&mut size, Guard::Stabilisation, highest.min(current));
        }
    }

    let since = |at: Option<SystemTime>| at.map(|at| now.duration_since(at).unwrap_or_default());
    if size > current && since(state.last_scale_up).is_some_and(|d| d < config.scale_up_cooldown) {
        set(&mut size, Guard::ScaleUpCooldown, current);
    }
    if size < current && since(state.last_change).is_some_and(|d| d < config.scale_down_cooldown) {
        set(&mut size, Guard::ScaleDownCooldown, current);
    }
    if let Some(step) = config.max_step_up
        && size > current.saturating_add(step)
    {
        set(&mut size, Guard::MaxStepUp, current.saturating_add(step));
    }
    if let Some(step) = config.max_step_down
        && size < current.saturating_sub(step)
    {
        set(&mut size, Guard::MaxStepDown, current.saturating_sub(step));
    }
    // Bounds last: they win over everything, including a hold. Where a window's
    // minimum met another's lower maximum, the bounds already hold the maximum.
    if size > bounds.max {
        let guard = if bounds.max < config.max {
            Guard::ScheduleMax
        } else {
            Guard::Max
        };
        set(&mut size, guard, bounds.max);
    }
    if size < bounds.min {
        let guard = if bounds.min > config.min {
            Guard::ScheduleMin
        } else {
            Guard::Min
        };
        set(&mut size, guard, bounds.min);
    }
    Guarded {
        applied: size,
        interventions,
    }
}

/// Tells the guards that the fleet changed size at `now` (after the change was made).
pub fn record_change(state: &mut GuardState, now: SystemTime, from: u32, to: u32) {
    if to > from {
        state.last_scale_up = Some(now);
    }
    if to != from {
        state.last_change = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn bounds_and_step_limits_hold() {
        let config = GuardConfig {
            max_step_up: Some(3),
            max_step_down: Some(2),
            ..GuardConfig::with_max(10)
        };
        let mut state = GuardState::default();
        assert_eq!(apply(&config, &mut state, at(0), 5, 50, true).applied, 8);
        assert_eq!(apply(&config, &mut state, at(0), 9, 50, true).applied, 10);
        assert_eq!(apply(&config, &mut state, at(0), 5, 0, true).applied, 3);
        assert_eq!(apply(&config, &mut state, at(0), 2, 0, true).applied, 1);
        let g = apply(&config, &mut state, at(0), 9, 50, true);
        assert_eq!(
            g.interventions.iter().map(|i| i.guard).collect::<Vec<_>>(),
            vec![Guard::MaxStepUp, Guard::Max]
        );
    }

    #[test]
    fn holds_without_signal_but_still_grows_to_min() {
        let config = GuardConfig {
            min: 4,
            ..GuardConfig::with_max(10)
        };
        let mut state = GuardState::default();
        let g = apply(&config, &mut state, at(0), 6, 2, false);
        assert_eq!(g.applied, 6);
        assert_eq!(g.interventions[0].guard, Guard::SignalHold);
        assert_eq!(apply(&config, &mut state, at(0), 2, 2, false).applied, 4);
    }

    #[test]
    fn stabilisation_scales_in_to_the_highest_recent_wish() {
        let config = GuardConfig {
            scale_down_stabilisation: Duration::from_secs(300),
            ..GuardConfig::with_max(100)
        };
        let mut state = GuardState::default();
        assert_eq!(apply(&config, &mut state, at(0), 10, 10, true).applied, 10);
        assert_eq!(apply(&config, &mut state, at(60), 10, 4, true).applied, 10);
        assert_eq!(apply(&config, &mut state, at(240), 10, 6, true).applied, 10);
        // 10 left the window at 300 s; 6 (at 240 s) is the highest wish since.
        assert_eq!(apply(&config, &mut state, at(301), 10, 4, true).applied, 6);
        assert_eq!(apply(&config, &mut state, at(541), 6, 4, true).applied, 4);
    }

    #[test]
    fn scheduled_bounds_replace_the_static_ones_and_say_so() {
        let config = GuardConfig {
            min: 2,
            max_step_up: Some(50),
            ..GuardConfig::with_max(40)
        };
        let mut state = GuardState::default();
        let window = Bounds { min: 12, max: 30 };
        let g = apply_within(&config, window, &mut state, at(0), 5, 3, true);
        assert_eq!(g.applied, 12);
        assert_eq!(g.interventions[0].guard, Guard::ScheduleMin);
        let g = apply_within(&config, window, &mut state, at(0), 5, 35, true);
        assert_eq!(g.applied, 30);
        assert_eq!(g.interventions[0].guard, Guard::ScheduleMax);
        // Step limits still apply; the bounds win over them, as the static ones do.
        let limited = GuardConfig {
            max_step_down: Some(1),
            ..config.clone()
        };
        let g = apply_within(&limited, window, &mut state, at(0), 36, 1, true);
        assert_eq!(g.applied, 30);
        // The static bounds, as `apply` has them, report Min and Max.
        let fixed = Bounds { min: 2, max: 40 };
        let g = apply_within(&config, fixed, &mut state, at(0), 5, 1, true);
        assert_eq!((g.applied, g.interventions[0].guard), (2, Guard::Min));
    }

    #[test]
    fn cooldowns_block_repeated_moves() {
        let config = GuardConfig {
            scale_up_cooldown: Duration::from_secs(120),
            scale_down_cooldown: Duration::from_secs(300),
            ..GuardConfig::with_max(100)
        };
        let mut state = GuardState::default();
        assert_eq!(apply(&config, &mut state, at(0), 5, 8, true).applied, 8);
        record_change(&mut state, at(0), 5, 8);
        assert_eq!(apply(&config, &mut state, at(60), 8, 12, true).applied, 8);
        assert_eq!(apply(&config, &mut state, at(130), 8, 12, true).applied, 12);
        record_change(&mut state, at(130), 8, 12);
        assert_eq!(apply(&config, &mut state, at(200), 12, 3, true).applied, 12);
        assert_eq!(apply(&config, &mut state, at(431), 12, 3, true).applied, 3);
    }
}
