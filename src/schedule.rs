//! Schedules: `[[fleets.schedules]]`, windows that raise a fleet's minimum, lower its
//! maximum or pin its size for a while, opened by a cron expression in a time zone.
//!
//! Pure: every function takes the instant it evaluates; none reads a clock. A window
//! opens at each instant its cron expression names in its zone's wall-clock time and
//! stays open for `duration` of real time (a 10-hour window across a change of the
//! clocks still lasts 10 hours). Across daylight-saving changes:
//! - a wall-clock time the clocks skip (02:30 in Europe/Paris on the last Sunday of
//!   March) opens the window at the first instant after the gap (03:00 local);
//! - a wall-clock time the clocks pass twice (02:30 on the last Sunday of October)
//!   opens it once, at the first of the two.
//!
//! Windows open together combine: the highest minimum and the lowest maximum, each
//! within `[guards.min, guards.max]`. Where a minimum is then above a maximum (a `min`
//! or `size` of one window above the `max` or `size` of another), the lower maximum
//! wins: the fleet is held at it. A ceiling is what bounds the bill; `fleetscale check`
//! warns of such windows.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use fleetscale_policies::Bounds;
use serde::Deserialize;

/// The longest window: a year and a day.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

/// Most cron occurrences examined in one search (a window's end, a check's span): a
/// guard against patterns that fire every minute under a very long window.
const MAX_FIRES: usize = 10_000;

/// One `[[fleets.schedules]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    /// Shown in logs, `plan` and the API. Default: the cron expression.
    #[serde(default)]
    pub name: Option<String>,
    /// Five fields (minute hour day-of-month month day-of-week), e.g. `0 8 * * MON-FRI`.
    pub cron: String,
    /// An IANA zone the expression is read in, e.g. `Europe/Paris` or `UTC`.
    pub time_zone: String,
    /// How long each window stays open.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Raises the minimum while open.
    #[serde(default)]
    pub min: Option<u32>,
    /// Lowers the maximum while open.
    #[serde(default)]
    pub max: Option<u32>,
    /// Pins the size while open (min = max = size).
    #[serde(default)]
    pub size: Option<u32>,
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron_text: String,
    cron: croner::Cron,
    pub zone: Tz,
    pub duration: Duration,
    /// The minimum it sets while open (`size` sets both).
    pub min: Option<u32>,
    /// The maximum it sets while open.
    pub max: Option<u32>,
}

impl Schedule {
    /// Validates an entry against the fleet's static bounds (`guards.min`/`max`, when
    /// they could be read). Problems come as (field, message); an empty field names the
    /// entry itself.
    pub fn from_entry(
        entry: ScheduleEntry,
        fixed: Option<Bounds>,
    ) -> Result<Schedule, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let cron = match croner::Cron::new(&entry.cron).parse() {
            Ok(cron) => Some(cron),
            Err(e) => {
                problems.push((
                    "cron",
                    format!(
                        "{:?} is not a cron expression of five fields (minute hour \
                         day-of-month month day-of-week): {e}",
                        entry.cron
                    ),
                ));
                None
            }
        };
        let zone = match entry.time_zone.parse::<Tz>() {
            Ok(zone) => Some(zone),
            Err(_) => {
                problems.push((
                    "time_zone",
                    format!(
                        "unknown time zone {:?} (an IANA name, e.g. Europe/Paris or UTC)",
                        entry.time_zone
                    ),
                ));
                None
            }
        };
        if entry.duration.is_zero() {
            problems.push(("duration", "must be longer than 0s".into()));
        } else if entry.duration > MAX_WINDOW {
            problems.push(("duration", "must be at most 366d".into()));
        }
        let (min, max) = match (entry.size, entry.min, entry.max) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                problems.push((
                    "size",
                    "size pins both bounds: give size alone, or min and/or max".into(),
                ));
                (None, None)
            }
            (Some(size), None, None) => (Some(size), Some(size)),
            (None, None, None) => {
                problems.push((
                    "",
                    "give min, max or size: a window that changes no bound does nothing".into(),
                ));
                (None, None)
            }
            (None, min, max) => {
                if let (Some(lo), Some(hi)) = (min, max)
                    && lo > hi
                {
                    problems.push(("min", format!("min ({lo}) is above max ({hi})")));
                }
                (min, max)
            }
        };
        let field = |minimum: bool| match (entry.size.is_some(), minimum) {
            (true, _) => "size",
            (false, true) => "min",
            (false, false) => "max",
        };
        if let Some(fixed) = fixed {
            if let Some(lo) = min
                && lo > fixed.max
            {
                problems.push((
                    field(true),
                    format!("{lo} is above guards.max ({})", fixed.max),
                ));
            } else if let Some(hi) = max
                && hi < fixed.min
            {
                problems.push((
                    field(false),
                    format!("{hi} is below guards.min ({})", fixed.min),
                ));
            }
        }
        if let Some(name) = &entry.name
            && name.trim().is_empty()
        {
            problems.push(("name", "must not be empty".into()));
        }
        match (cron, zone) {
            (Some(cron), Some(zone)) if problems.is_empty() => Ok(Schedule {
                name: entry.name.unwrap_or_else(|| entry.cron.clone()),
                cron_text: entry.cron,
                cron,
                zone,
                duration: entry.duration,
                min,
                max,
            }),
            _ => Err(problems),
        }
    }

    /// The first instant after `after` at which a window of this schedule opens.
    pub fn next_opening_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // The search runs on wall-clock time (a naive time read as UTC, which has no
        // changes of the clocks); each wall-clock time is then placed in the zone.
        let local = after.with_timezone(&self.zone).naive_local();
        let mut wall = local.with_nanosecond(0).unwrap_or(local);
        for _ in 0..MAX_FIRES {
            let next = self
                .cron
                .find_next_occurrence(&Utc.from_utc_datetime(&wall), false)
                .ok()?
                .naive_utc();
            // Wall-clock times passed twice map to the first pass, which may be before
            // `after` (it already opened): look further.
            if let Some(at) = instant_of(self.zone, next)
                && at > after
            {
                return Some(at);
            }
            wall = next;
        }
        None
    }

    /// The window of this schedule open at `at`, if any: (opened, closes). Overlapping
    /// windows of one schedule count as one, open from the first to the last's end.
    pub fn open_at(&self, at: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let length = TimeDelta::from_std(self.duration).ok()?;
        let opened = self.next_opening_after(at.checked_sub_signed(length)?)?;
        if opened > at {
            return None;
        }
        let mut last = opened;
        for _ in 0..MAX_FIRES {
            match self.next_opening_after(last) {
                Some(next) if next <= at => last = next,
                _ => break,
            }
        }
        Some((opened, last.checked_add_signed(length)?))
    }
}

/// Where a wall-clock time of `zone` falls: the first of two instants when the clocks
/// pass it twice, the end of the gap when they skip it.
fn instant_of(zone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    if let Some(at) = zone.from_local_datetime(&wall).earliest() {
        return Some(at.with_timezone(&Utc));
    }
    // In a gap: the first wall-clock minute after it that exists (gaps begin and end
    // on whole minutes, and last at most a day).
    (1..=24 * 60 + 1).find_map(|minutes| {
        let later = wall.checked_add_signed(TimeDelta::minutes(minutes))?;
        let later = later.with_second(0).unwrap_or(later);
        zone.from_local_datetime(&later)
            .earliest()
            .map(|at| at.with_timezone(&Utc))
    })
}

/// A window open at some instant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OpenWindow {
    pub name: String,
    #[serde(serialize_with = "rfc3339")]
    pub opened: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub closes: SystemTime,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*at).to_string())
}

/// The bounds in force at an instant and the windows that set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    pub bounds: Bounds,
    pub open: Vec<OpenWindow>,
}

/// The bounds of `fixed` (the guards' `min`/`max`) as the open windows `open` change
/// them: the highest minimum and the lowest maximum, within `fixed`; where the minimum
/// ends above the maximum, the maximum wins.
pub fn combine<'a>(fixed: Bounds, open: impl IntoIterator<Item = &'a Schedule>) -> Bounds {
    let (mut lo, mut hi) = (fixed.min, fixed.max);
    for schedule in open {
        if let Some(min) = schedule.min {
            lo = lo.max(min);
        }
        if let Some(max) = schedule.max {
            hi = hi.min(max);
        }
    }
    let hi = hi.clamp(fixed.min.min(fixed.max), fixed.max);
    Bounds {
        min: lo.min(hi),
        max: hi,
    }
}

/// The bounds in force at `at`, and the windows open then.
pub fn in_force(schedules: &[Schedule], fixed: Bounds, at: SystemTime) -> InForce {
    let instant = DateTime::<Utc>::from(at);
    let mut open = Vec::new();
    let mut setting = Vec::new();
    for schedule in schedules {
        if let Some((opened, closes)) = schedule.open_at(instant) {
            setting.push(schedule);
            open.push(OpenWindow {
                name: schedule.name.clone(),
                opened: opened.into(),
                closes: closes.into(),
                min: schedule.min,
                max: schedule.max,
            });
        }
    }
    InForce {
        bounds: combine(fixed, setting),
        open,
    }
}

/// The bounds in force at `now + k * step` for `k` in `0..steps`; empty without
/// schedules (a policy then reads the bounds of now throughout).
pub fn bounds_ahead(
    schedules: &[Schedule],
    fixed: Bounds,
    now: SystemTime,
    step: Duration,
    steps: usize,
) -> Vec<Bounds> {
    if schedules.is_empty() {
        return Vec::new();
    }
    let now = DateTime::<Utc>::from(now);
    let step = TimeDelta::from_std(step).unwrap_or(TimeDelta::MAX);
    let times: Vec<DateTime<Utc>> = (0..steps)
        .map_while(|k| now.checked_add_signed(step.checked_mul(i32::try_from(k).ok()?)?))
        .collect();
    // open[s][k]: schedule s is open at step k.
    let open: Vec<Vec<bool>> = schedules.iter().map(|s| opens(s, &times)).collect();
    (0..times.len())
        .map(|k| {
            let setting = schedules
                .iter()
                .zip(&open)
                .filter(|(_, open)| open.get(k).copied().unwrap_or(false))
                .map(|(s, _)| s);
            combine(fixed, setting)
        })
        .collect()
}

/// Whether `schedule` is open at each of `times` (ascending), in one forward sweep:
/// the first opening after `t - duration` is searched again only once it falls at or
/// before a later step's `t - duration`.
fn opens(schedule: &Schedule, times: &[DateTime<Utc>]) -> Vec<bool> {
    let Ok(length) = TimeDelta::from_std(schedule.duration) else {
        return vec![false; times.len()];
    };
    let mut first: Option<Option<DateTime<Utc>>> = None;
    times
        .iter()
        .map(|&t| {
            let Some(from) = t.checked_sub_signed(length) else {
                return false;
            };
            let found = match first {
                Some(Some(f)) if f > from => Some(f),
                // No opening after an earlier point: none after a later one.
                Some(None) => None,
                _ => schedule.next_opening_after(from),
            };
            first = Some(found);
            found.is_some_and(|f| f <= t)
        })
        .collect()
}

/// Windows that open after `now` and up to `until`: their first opening each.
pub fn opening_within(
    schedules: &[Schedule],
    now: SystemTime,
    until: SystemTime,
) -> Vec<OpenWindow> {
    let (now, until) = (DateTime::<Utc>::from(now), DateTime::<Utc>::from(until));
    let mut found: Vec<OpenWindow> = schedules
        .iter()
        .filter_map(|s| {
            let opens = s.next_opening_after(now).filter(|at| *at <= until)?;
            let closes = opens.checked_add_signed(TimeDelta::from_std(s.duration).ok()?)?;
            Some(OpenWindow {
                name: s.name.clone(),
                opened: opens.into(),
                closes: closes.into(),
                min: s.min,
                max: s.max,
            })
        })
        .collect();
    found.sort_by_key(|w| w.opened);
    found
}

/// Two schedules whose windows are open together at `at` while one's minimum is above
/// the other's maximum: the lower maximum then wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub raising: String,
    pub min: u32,
    pub lowering: String,
    pub max: u32,
    pub at: SystemTime,
}

/// Conflicts between windows within `span` after `from`: the first instant of each
/// conflicting pair found open together.
pub fn conflicts(schedules: &[Schedule], from: SystemTime, span: Duration) -> Vec<Conflict> {
    let from = DateTime::<Utc>::from(from);
    let Some(until) = TimeDelta::from_std(span)
        .ok()
        .and_then(|span| from.checked_add_signed(span))
    else {
        return Vec::new();
    };
    let windows: Vec<Vec<(DateTime<Utc>, DateTime<Utc>)>> = schedules
        .iter()
        .map(|s| windows_between(s, from, until))
        .collect();
    let mut found = Vec::new();
    for (a, a_windows) in schedules.iter().zip(&windows) {
        for (b, b_windows) in schedules.iter().zip(&windows) {
            let (Some(min), Some(max)) = (a.min, b.max) else {
                continue;
            };
            if min <= max || std::ptr::eq(a, b) {
                continue;
            }
            let first = a_windows
                .iter()
                .flat_map(|wa| {
                    b_windows
                        .iter()
                        .filter(move |wb| wa.0 < wb.1 && wb.0 < wa.1)
                        .map(move |wb| wa.0.max(wb.0))
                })
                .min();
            if let Some(at) = first {
                found.push(Conflict {
                    raising: a.name.clone(),
                    min,
                    lowering: b.name.clone(),
                    max,
                    at: at.into(),
                });
            }
        }
    }
    found
}

/// How far ahead `fleetscale check` looks for windows that conflict.
pub const CONFLICT_SPAN: Duration = Duration::from_secs(14 * 86_400);

/// `fleetscale check`'s warnings for `fleet`: windows open together within
/// [`CONFLICT_SPAN`] of `now` whose minimum is above another's maximum.
pub fn conflict_warnings(fleet: &crate::config::FleetConfig, now: SystemTime) -> Vec<String> {
    conflicts(&fleet.schedules, now, CONFLICT_SPAN)
        .into_iter()
        .map(|c| {
            format!(
                "fleet {}: schedules {:?} (min {}) and {:?} (max {}) are open together from {}: \
                 the lower maximum wins, the fleet is held at {}",
                fleet.name,
                c.raising,
                c.min,
                c.lowering,
                c.max,
                humantime::format_rfc3339_seconds(c.at),
                c.max
            )
        })
        .collect()
}

/// The windows of `schedule` that overlap `[from, until]`, as (opens, closes).
fn windows_between(
    schedule: &Schedule,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let Ok(length) = TimeDelta::from_std(schedule.duration) else {
        return Vec::new();
    };
    let mut windows = Vec::new();
    let mut after = from.checked_sub_signed(length).unwrap_or(from);
    while windows.len() < MAX_FIRES {
        match schedule.next_opening_after(after) {
            Some(opens) if opens <= until => {
                windows.push((opens, opens.checked_add_signed(length).unwrap_or(opens)));
                after = opens;
            }
            _ => break,
        }
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(
        cron: &str,
        zone: &str,
        duration: &str,
        min: Option<u32>,
        max: Option<u32>,
    ) -> Schedule {
        Schedule::from_entry(
            ScheduleEntry {
                name: None,
                cron: cron.into(),
                time_zone: zone.into(),
                duration: humantime::parse_duration(duration).unwrap(),
                min,
                max,
                size: None,
            },
            None,
        )
        .unwrap()
    }

    fn utc(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    fn fixed() -> Bounds {
        Bounds { min: 1, max: 100 }
    }

    #[test]
    fn a_window_is_open_from_its_opening_for_its_duration() {
        let s = [schedule("0 8 * * MON-FRI", "UTC", "10h", Some(20), None)];
        // Monday 2 June 2025.
        let before = in_force(&s, fixed(), utc("2025-06-02T07:59:59Z"));
        assert_eq!(before.bounds, fixed());
        assert!(before.open.is_empty());
        let opening = in_force(&s, fixed(), utc("2025-06-02T08:00:00Z"));
        assert_eq!(opening.bounds, Bounds { min: 20, max: 100 });
        assert_eq!(opening.open[0].opened, utc("2025-06-02T08:00:00Z"));
        assert_eq!(opening.open[0].closes, utc("2025-06-02T18:00:00Z"));
        assert_eq!(opening.open[0].name, "0 8 * * MON-FRI");
        assert_eq!(
            in_force(&s, fixed(), utc("2025-06-02T17:59:59Z"))
                .bounds
                .min,
            20
        );
        assert_eq!(
            in_force(&s, fixed(), utc("2025-06-02T18:00:00Z"))
                .bounds
                .min,
            1
        );
        // Saturday: none.
        assert_eq!(
            in_force(&s, fixed(), utc("2025-06-07T09:00:00Z"))
                .bounds
                .min,
            1
        );
    }

    #[test]
    fn an_eight_oclock_window_opens_at_eight_local_on_both_sides_of_each_change() {
        let s = [schedule("0 8 * * *", "Europe/Paris", "1h", Some(5), None)];
        // Spring forward on Sunday 30 March 2025 (CET, +1, to CEST, +2); fall back on
        // Sunday 26 October 2025.
        for (day, offset) in [
            ("2025-03-29", 1),
            ("2025-03-30", 2),
            ("2025-03-31", 2),
            ("2025-10-25", 2),
            ("2025-10-26", 1),
            ("2025-10-27", 1),
        ] {
            let opens = utc(&format!("{day}T{:02}:00:00Z", 8 - offset));
            let before = opens - Duration::from_secs(1);
            assert_eq!(in_force(&s, fixed(), before).bounds.min, 1, "{day}");
            let open = in_force(&s, fixed(), opens);
            assert_eq!(open.bounds.min, 5, "{day}");
            assert_eq!(open.open[0].opened, opens, "{day}");
            // An hour of real time.
            assert_eq!(
                open.open[0].closes,
                opens + Duration::from_secs(3600),
                "{day}"
            );
        }
    }

    #[test]
    fn a_window_in_the_skipped_hour_opens_when_the_gap_ends_and_in_the_repeated_hour_once() {
        let s = [schedule("30 2 * * *", "Europe/Paris", "2h", Some(7), None)];
        // 02:30 does not exist on 30 March 2025: the window opens at 03:00 CEST (01:00
        // UTC), the first instant after the gap, for two hours.
        let day_before = s[0].next_opening_after(DateTime::from(utc("2025-03-29T12:00:00Z")));
        assert_eq!(
            day_before.map(SystemTime::from),
            Some(utc("2025-03-30T01:00:00Z"))
        );
        assert_eq!(
            in_force(&s, fixed(), utc("2025-03-30T00:59:59Z"))
                .bounds
                .min,
            1
        );
        let open = in_force(&s, fixed(), utc("2025-03-30T01:00:00Z"));
        assert_eq!(open.bounds.min, 7);
        assert_eq!(open.open[0].closes, utc("2025-03-30T03:00:00Z"));
        // The next day, 02:30 CEST again.
        assert_eq!(
            s[0].next_opening_after(DateTime::from(utc("2025-03-30T01:00:00Z")))
                .map(SystemTime::from),
            Some(utc("2025-03-31T00:30:00Z"))
        );
        // 02:30 is passed twice on 26 October 2025: the window opens once, at the
        // first (02:30 CEST, 00:30 UTC), and not again at 02:30 CET.
        let first = s[0].next_opening_after(DateTime::from(utc("2025-10-25T12:00:00Z")));
        assert_eq!(
            first.map(SystemTime::from),
            Some(utc("2025-10-26T00:30:00Z"))
        );
        let again = s[0].next_opening_after(DateTime::from(utc("2025-10-26T00:30:00Z")));
        assert_eq!(
            again.map(SystemTime::from),
            Some(utc("2025-10-27T01:30:00Z"))
        );
        // From inside the second pass of the hour, the next is the next day's.
        let inside = s[0].next_opening_after(DateTime::from(utc("2025-10-26T01:40:00Z")));
        assert_eq!(
            inside.map(SystemTime::from),
            Some(utc("2025-10-27T01:30:00Z"))
        );
    }

    #[test]
    fn overlapping_windows_take_the_highest_min_and_lowest_max_and_the_max_wins() {
        let raise = schedule("0 8 * * *", "UTC", "4h", Some(10), None);
        let raise_more = schedule("0 9 * * *", "UTC", "1h", Some(30), None);
        let cap = schedule("0 10 * * *", "UTC", "4h", None, Some(20));
        let all = [raise, raise_more, cap];
        let at = |t: &str| in_force(&all, fixed(), utc(&format!("2025-06-02T{t}Z"))).bounds;
        assert_eq!(at("08:30:00"), Bounds { min: 10, max: 100 });
        assert_eq!(at("09:30:00"), Bounds { min: 30, max: 100 });
        assert_eq!(at("10:30:00"), Bounds { min: 10, max: 20 });
        assert_eq!(at("12:30:00"), Bounds { min: 1, max: 20 });
        // A minimum above a maximum: the maximum wins.
        let pin_high = schedule("0 8 * * *", "UTC", "4h", Some(50), None);
        let low_cap = schedule("0 9 * * *", "UTC", "1h", None, Some(5));
        let both = [pin_high, low_cap];
        assert_eq!(
            in_force(&both, fixed(), utc("2025-06-02T09:30:00Z")).bounds,
            Bounds { min: 5, max: 5 }
        );
        let found = conflicts(
            &both,
            utc("2025-06-02T00:00:00Z"),
            Duration::from_secs(86_400),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].at, utc("2025-06-02T09:00:00Z"));
        assert_eq!((found[0].min, found[0].max), (50, 5));
        // Windows that never meet do not conflict.
        let apart = [
            schedule("0 8 * * *", "UTC", "1h", Some(50), None),
            schedule("0 12 * * *", "UTC", "1h", None, Some(5)),
        ];
        assert!(
            conflicts(
                &apart,
                utc("2025-06-02T00:00:00Z"),
                Duration::from_secs(86_400)
            )
            .is_empty()
        );
        // Within the static bounds, whatever a window says.
        let tight = Bounds { min: 2, max: 8 };
        assert_eq!(combine(tight, &all[..1]), Bounds { min: 8, max: 8 });
        assert_eq!(combine(tight, &all[2..]), Bounds { min: 2, max: 8 });
    }

    #[test]
    fn bounds_ahead_match_bounds_in_force_at_every_step() {
        let s = [
            schedule("*/20 * * * *", "Europe/Paris", "7m", Some(4), None),
            schedule("0 2 * * *", "Europe/Paris", "3h", None, Some(50)),
            schedule("15 * * * *", "America/New_York", "45m", Some(9), Some(60)),
        ];
        let step = Duration::from_secs(60);
        // Across the October change in Paris.
        for start in ["2025-10-25T22:00:00Z", "2025-03-29T23:30:00Z"] {
            let now = utc(start);
            let ahead = bounds_ahead(&s, fixed(), now, step, 600);
            assert_eq!(ahead.len(), 600);
            for (k, b) in ahead.iter().enumerate() {
                let expect = in_force(&s, fixed(), now + step * k as u32).bounds;
                assert_eq!(*b, expect, "{start} step {k}");
            }
        }
        assert!(bounds_ahead(&[], fixed(), utc("2025-01-01T00:00:00Z"), step, 60).is_empty());
        let soon = opening_within(&s, utc("2025-06-02T07:50:00Z"), utc("2025-06-02T08:30:00Z"));
        let names: Vec<&str> = soon.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["*/20 * * * *", "15 * * * *"]);
    }

    #[test]
    fn bad_entries_name_their_fields() {
        let entry = |cron: &str, zone: &str, duration: u64| ScheduleEntry {
            name: None,
            cron: cron.into(),
            time_zone: zone.into(),
            duration: Duration::from_secs(duration),
            min: Some(3),
            max: None,
            size: None,
        };
        let fields = |e: ScheduleEntry, fixed: Option<Bounds>| -> Vec<&'static str> {
            Schedule::from_entry(e, fixed)
                .unwrap_err()
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(fields(entry("0 25 * * *", "UTC", 60), None), ["cron"]);
        assert_eq!(fields(entry("0 8 * *", "UTC", 60), None), ["cron"]);
        assert_eq!(
            fields(entry("0 8 * * *", "Europe/Pariss", 60), None),
            ["time_zone"]
        );
        assert_eq!(fields(entry("0 8 * * *", "UTC", 0), None), ["duration"]);
        let pinned_and_min = ScheduleEntry {
            size: Some(4),
            ..entry("0 8 * * *", "UTC", 60)
        };
        assert_eq!(fields(pinned_and_min, None), ["size"]);
        let nothing = ScheduleEntry {
            min: None,
            ..entry("0 8 * * *", "UTC", 60)
        };
        assert_eq!(fields(nothing, None), [""]);
        let above = ScheduleEntry {
            min: Some(30),
            ..entry("0 8 * * *", "UTC", 60)
        };
        assert_eq!(fields(above, Some(Bounds { min: 1, max: 20 })), ["min"]);
    }
}
