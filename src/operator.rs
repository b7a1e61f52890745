//! What an operator asks of a fleet (a pause, time-limited overrides of its bounds) and
//! what the fleet's controller publishes back (its latest report, a short history).
//!
//! One [`FleetControls`] per fleet is shared by the controller and the management API
//! (`crate::api`). The controller reads the commands at the start of each tick and
//! publishes after recording; it knows nothing of HTTP, and the API nothing of ticks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::controller::{Action, TickReport};

/// How far back the published history reaches, and how many points it holds at most
/// (whichever is less): enough for a status page's picture of the last hours, and a
/// fixed bound on memory per fleet.
pub const HISTORY_SPAN: Duration = Duration::from_secs(6 * 3600);
pub const HISTORY_POINTS: usize = 1440;

/// How many of a fleet's latest decisions are kept for the status page (repeats of the
/// same decision are folded into one).
pub const DECISIONS_KEPT: usize = 12;

/// A fleet paused by an operator: the controller still observes, decides and records,
/// but makes no mutating call (no grow, no shrink, no replacement of stuck instances).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    /// The name of the token that paused it.
    pub by: String,
    pub reason: String,
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
}

/// A time-limited change of a fleet's bounds. `size` holds the fleet at one size (min and
/// max both); otherwise `min` and/or `max` replace the configured ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub id: String,
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub size: Option<u32>,
    pub reason: String,
    /// The name of the token that set it.
    pub by: String,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub expires_at: SystemTime,
}

impl Override {
    pub fn in_force(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }
}

/// An operator's standing commands for one fleet: what the state file keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commands {
    pub pause: Option<Pause>,
    /// Oldest first; a later one wins where two set the same bound.
    pub overrides: Vec<Override>,
}

impl Commands {
    /// The overrides not yet expired at `now`.
    pub fn in_force(&self, now: SystemTime) -> impl Iterator<Item = &Override> {
        self.overrides.iter().filter(move |o| o.in_force(now))
    }

    /// Drops the overrides expired at `now`.
    pub fn prune(&mut self, now: SystemTime) {
        self.overrides.retain(|o| o.in_force(now));
    }

    pub fn is_empty(&self) -> bool {
        self.pause.is_none() && self.overrides.is_empty()
    }
}

/// The bounds in force at `now`: the configured `(min, max)` with each override in force
/// applied in the order they were set. Where two overrides leave min above max (one that
/// raised max expired before one that raised min on top of it), min wins: the fleet is
/// held at the larger size rather than starved.
pub fn bounds_in_force(configured: (u32, u32), commands: &Commands, now: SystemTime) -> (u32, u32) {
    let (mut min, mut max) = configured;
    for o in commands.in_force(now) {
        if let Some(size) = o.size {
            (min, max) = (size, size);
        }
        if let Some(m) = o.min {
            min = m;
        }
        if let Some(m) = o.max {
            max = m;
        }
    }
    (min, max.max(min))
}

/// One point of a fleet's published history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HistoryPoint {
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// Demand in instances, when the signal was read.
    pub demand: Option<f64>,
    pub serving: u32,
    pub billed: u32,
}

/// What a controller published after its latest tick.
#[derive(Debug, Clone)]
pub struct Published {
    pub at: SystemTime,
    pub report: TickReport,
    /// The bounds the tick ran with (overrides applied).
    pub bounds: (u32, u32),
    /// Whether the tick ran paused by an operator.
    pub paused: bool,
    pub suspended: bool,
    /// The controller's step (its tick): how far apart the plan's steps are.
    pub step: Duration,
}

/// One of a fleet's latest decisions, as the status page lists them: the same decision
/// made at consecutive ticks is one record, from `first_at` to `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRecord {
    /// The latest tick that made it.
    pub at: SystemTime,
    /// The first of the consecutive ticks that made it.
    pub first_at: SystemTime,
    /// How many consecutive ticks made it.
    pub ticks: u32,
    pub desired: Option<u32>,
    pub applied: Option<u32>,
    pub reason: String,
    pub action: Action,
    /// The adapter call that failed, if any.
    pub error: Option<String>,
    pub paused: bool,
}

impl DecisionRecord {
    fn of(published: &Published) -> Self {
        let r = &published.report;
        DecisionRecord {
            at: published.at,
            first_at: published.at,
            ticks: 1,
            desired: r.desired,
            applied: r.applied,
            reason: r.reason.clone(),
            action: r.action.clone(),
            error: r.error.as_ref().map(|e| e.to_string()),
            paused: published.paused,
        }
    }

    fn same_as(&self, other: &DecisionRecord) -> bool {
        (
            self.desired,
            self.applied,
            &self.reason,
            &self.action,
            &self.error,
            self.paused,
        ) == (
            other.desired,
            other.applied,
            &other.reason,
            &other.action,
            &other.error,
            other.paused,
        )
    }
}

#[derive(Debug, Default)]
struct Board {
    commands: Commands,
    latest: Option<Published>,
    history: VecDeque<HistoryPoint>,
    /// Oldest first, at most [`DECISIONS_KEPT`].
    decisions: VecDeque<DecisionRecord>,
}

/// The shared board of one fleet: commands in, the latest report out. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct FleetControls(Arc<Mutex<Board>>);

impl FleetControls {
    /// A board holding `commands` (read from the state file at start).
    pub fn new(commands: Commands) -> Self {
        FleetControls(Arc::new(Mutex::new(Board {
            commands,
            ..Board::default()
        })))
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn commands(&self) -> Commands {
        self.board().commands.clone()
    }

    pub fn set_commands(&self, commands: Commands) {
        self.board().commands = commands;
    }

    /// Publishes a tick's report and adds it to the bounded history.
    pub fn publish(&self, published: Published) {
        let point = HistoryPoint {
            at: published.at,
            demand: published.report.observed,
            serving: published.report.serving,
            billed: published.report.billed,
        };
        let decision = DecisionRecord::of(&published);
        let mut board = self.board();
        push_bounded(&mut board.history, point);
        match board.decisions.back_mut() {
            Some(last) if last.same_as(&decision) => {
                last.at = decision.at;
                last.ticks = last.ticks.saturating_add(1);
            }
            _ => {
                board.decisions.push_back(decision);
                while board.decisions.len() > DECISIONS_KEPT {
                    board.decisions.pop_front();
                }
            }
        }
        board.latest = Some(published);
    }

    pub fn latest(&self) -> Option<Published> {
        self.board().latest.clone()
    }

    pub fn history(&self) -> Vec<HistoryPoint> {
        self.board().history.iter().copied().collect()
    }

    /// The latest decisions, oldest first (repeats folded).
    pub fn decisions(&self) -> Vec<DecisionRecord> {
        self.board().decisions.iter().cloned().collect()
    }
}

/// Appends `point`, dropping what is older than [`HISTORY_SPAN`] before it or beyond
/// [`HISTORY_POINTS`].
fn push_bounded(history: &mut VecDeque<HistoryPoint>, point: HistoryPoint) {
    history.push_back(point);
    let oldest = point.at.checked_sub(HISTORY_SPAN);
    while history.len() > HISTORY_POINTS
        || history
            .front()
            .is_some_and(|p| oldest.is_some_and(|oldest| p.at < oldest))
    {
        history.pop_front();
    }
}

/// Times as RFC 3339 strings (UTC, milliseconds), as the API and the state file show them.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(time: SystemTime) -> String {
        humantime::format_rfc3339_millis(time).to_string()
    }

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn over(min: Option<u32>, max: Option<u32>, size: Option<u32>, ends: u64) -> Override {
        Override {
            id: "x".into(),
            min,
            max,
            size,
            reason: "test".into(),
            by: "t".into(),
            created_at: at(0),
            expires_at: at(ends),
        }
    }

    #[test]
    fn overrides_apply_in_order_until_they_expire() {
        let commands = Commands {
            pause: None,
            overrides: vec![
                over(None, Some(200), None, 100),
                over(Some(150), None, None, 200),
            ],
        };
        assert_eq!(bounds_in_force((2, 80), &commands, at(10)), (150, 200));
        // The raised max expired first: min wins over the configured max.
        assert_eq!(bounds_in_force((2, 80), &commands, at(100)), (150, 150));
        assert_eq!(bounds_in_force((2, 80), &commands, at(200)), (2, 80));
        let size = Commands {
            pause: None,
            overrides: vec![over(None, None, Some(7), 50)],
        };
        assert_eq!(bounds_in_force((2, 80), &size, at(49)), (7, 7));
        assert_eq!(bounds_in_force((2, 80), &size, at(50)), (2, 80));
    }

    #[test]
    fn repeated_decisions_fold_and_only_the_latest_are_kept() {
        let published = |secs: u64, desired: u32| Published {
            at: at(secs),
            report: TickReport {
                fleet: "web".into(),
                observed: Some(3.0),
                signal_error: None,
                signals: Vec::new(),
                bounds: (1, 10),
                windows: Vec::new(),
                serving: 3,
                billed: 3,
                draining: 0,
                drained: 0,
                drain_timeouts: 0,
                booting: 0,
                in_flight: 0,
                leaving: 0,
                desired: Some(desired),
                applied: Some(desired),
                reason: format!("want {desired}"),
                interventions: Vec::new(),
                action: Action::None,
                error: None,
                decision: None,
                decide_time: Duration::ZERO,
            },
            bounds: (1, 10),
            paused: false,
            suspended: false,
            step: Duration::from_secs(60),
        };
        let controls = FleetControls::default();
        for secs in 0..3 {
            controls.publish(published(secs, 3));
        }
        controls.publish(published(3, 4));
        let decisions = controls.decisions();
        assert_eq!(decisions.len(), 2);
        assert_eq!(
            (decisions[0].first_at, decisions[0].at, decisions[0].ticks),
            (at(0), at(2), 3)
        );
        assert_eq!(decisions[1].desired, Some(4));
        for secs in 4..(4 + 2 * DECISIONS_KEPT as u64) {
            controls.publish(published(secs, secs as u32));
        }
        let decisions = controls.decisions();
        assert_eq!(decisions.len(), DECISIONS_KEPT);
        assert_eq!(
            decisions.last().map(|d| d.at),
            Some(at(3 + 2 * DECISIONS_KEPT as u64))
        );
    }

    #[test]
    fn the_history_is_bounded_by_span_and_count() {
        let point = |secs| HistoryPoint {
            at: at(secs),
            demand: Some(1.0),
            serving: 1,
            billed: 1,
        };
        let mut history = VecDeque::new();
        for i in 0..(HISTORY_POINTS as u64 + 10) {
            push_bounded(&mut history, point(i));
        }
        assert_eq!(history.len(), HISTORY_POINTS);
        assert_eq!(history.front().map(|p| p.at), Some(at(10)));
        // A point far later pushes out everything older than the span.
        let later = HISTORY_POINTS as u64 + 10 + HISTORY_SPAN.as_secs();
        push_bounded(&mut history, point(later));
        assert_eq!(history.len(), 1);
    }
}
