//! `[[fleets.schedules]]` end to end: a config with a window, wired by the agent into a
//! controller over the mock cloud on a manual clock. The dp planner launches a boot delay
//! before the window opens, so that its minimum is serving when it does; the fleet comes
//! back within its bounds after it closes, and the window keeps its local hour across a
//! change to summer time. Bad schedules are reported by path, and
//! `fleetscale check` warns of windows that conflict.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleetscale::agent::{self, Wiring};
use fleetscale::config::{AdapterConfig, Config};
use fleetscale::controller::TickReport;
use fleetscale_adapters::mock::MockCloud;
use fleetscale_adapters::{Clock, ManualClock};

const TICK: Duration = Duration::from_secs(60);

fn utc(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap()
}

/// A fleet of low, steady demand (2 instances), 3-minute boots, one-minute ticks, and a
/// window at 10:00 in Paris (08:00 UTC in June) raising the minimum to 12 for 30 minutes.
fn config(dir: &Path, policy: &str) -> Config {
    let trace = dir.join("demand.csv");
    let rows: String = (0..600).map(|_| "2.0\n").collect();
    std::fs::write(&trace, format!("demand\n{rows}")).unwrap();
    let text = format!(
        r#"
        [agent]
        tick = "1m"

        [[fleets]]
        name = "web"
        boot_delay = "3m"
        history = "2h"
        [fleets.adapter]
        kind = "mock"
        boot_delay = "3m"
        initial_size = 2
        [fleets.signal]
        kind = "trace"
        path = {trace:?}
        column = "demand"
        per_instance = 1.0
        step = "1m"
        start_row = 120
        loop = true
        [fleets.policy]
        name = "{policy}"
        [fleets.guards]
        min = 1
        max = 50
        read_lag = "0s"

        [[fleets.schedules]]
        name = "morning"
        cron = "0 10 * * MON-FRI"
        time_zone = "Europe/Paris"
        duration = "30m"
        min = 12
        "#
    );
    Config::parse(&text, Path::new("schedules.toml")).unwrap()
}

/// Ticks the fleet of `config` every minute from 07:00 to 09:00 UTC on Monday 2 June 2025;
/// returns each tick's time and report.
async fn run_morning(config: &Config) -> Vec<(SystemTime, TickReport)> {
    run_spans(config, &[("2025-06-02T07:00:00Z", 120)]).await
}

/// Ticks the fleet of `config` every minute through each span (its start, then so many
/// ticks), the clock jumping from one span to the next; returns each tick's time and
/// report.
async fn run_spans(config: &Config, spans: &[(&str, usize)]) -> Vec<(SystemTime, TickReport)> {
    let clock = ManualClock::new(utc(spans[0].0));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let fleet = &config.fleets[0];
    let AdapterConfig::Mock(mock_config) = &fleet.adapter else {
        panic!("a mock fleet")
    };
    let mock = MockCloud::new(mock_config.clone(), shared.clone());
    let mut controller = agent::controller_on(
        Box::new(mock),
        fleet,
        &config.agent,
        Wiring { dry_run: false },
        None,
        shared,
    )
    .unwrap();
    let mut reports = Vec::new();
    for (start, ticks) in spans {
        clock.advance(utc(start).duration_since(clock.now()).unwrap_or_default());
        for _ in 0..*ticks {
            clock.advance(TICK);
            let report = controller.tick().await;
            assert!(report.error.is_none(), "{report:?}");
            reports.push((clock.now(), report));
        }
    }
    reports
}

fn at<'a>(reports: &'a [(SystemTime, TickReport)], time: &str) -> &'a TickReport {
    let time = utc(time);
    &reports.iter().find(|(t, _)| *t == time).unwrap().1
}

#[tokio::test]
async fn dp_launches_a_boot_delay_ahead_so_the_windows_minimum_serves_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let reports = run_morning(&config(dir.path(), "dp")).await;

    // Before the window: the static bounds, and a small fleet for the demand.
    let early = at(&reports, "2025-06-02T07:30:00Z");
    assert_eq!(early.bounds, (1, 50));
    assert!(early.windows.is_empty());
    assert!(early.billed < 12, "{early:?}");
    // No launch for the window before its instances need to boot (3 one-minute steps,
    // and one step of slack).
    for (t, r) in &reports {
        if *t <= utc("2025-06-02T07:55:00Z") {
            assert!(r.applied.unwrap() < 12, "at {t:?}: {r:?}");
        }
    }
    // When it opens, its minimum is serving already.
    let opening = at(&reports, "2025-06-02T08:00:00Z");
    assert_eq!(opening.bounds, (12, 50), "{opening:?}");
    assert_eq!(opening.windows, ["morning"]);
    assert!(opening.serving >= 12, "{opening:?}");
    // Held throughout the window.
    for (t, r) in &reports {
        if (utc("2025-06-02T08:00:00Z")..utc("2025-06-02T08:30:00Z")).contains(t) {
            assert_eq!(r.bounds, (12, 50), "at {t:?}");
            assert!(
                r.applied.unwrap() >= 12 && r.serving >= 12,
                "at {t:?}: {r:?}"
            );
        }
    }
    // Closed: back to the static bounds, and to a fleet of the demand's size.
    let closed = at(&reports, "2025-06-02T08:30:00Z");
    assert_eq!(closed.bounds, (1, 50));
    assert!(closed.windows.is_empty());
    let later = at(&reports, "2025-06-02T08:50:00Z");
    assert!(
        (1..12).contains(&later.billed),
        "the fleet returns to its demand: {later:?}"
    );
}

#[tokio::test]
async fn the_window_opens_at_ten_in_paris_on_both_sides_of_the_change_to_summer_time() {
    // Paris moves from UTC+1 to UTC+2 on Sunday 30 March 2025: the weekday window at
    // 10:00 local opens at 09:00 UTC on Friday 28 and at 08:00 UTC on Monday 31.
    let dir = tempfile::tempdir().unwrap();
    let reports = run_spans(
        &config(dir.path(), "dp"),
        &[("2025-03-28T07:30:00Z", 150), ("2025-03-31T07:00:00Z", 120)],
    )
    .await;
    for (before, opening, closed) in [
        (
            "2025-03-28T08:59:00Z",
            "2025-03-28T09:00:00Z",
            "2025-03-28T09:30:00Z",
        ),
        (
            "2025-03-31T07:59:00Z",
            "2025-03-31T08:00:00Z",
            "2025-03-31T08:30:00Z",
        ),
    ] {
        let report = at(&reports, before);
        assert_eq!(report.bounds, (1, 50), "{before}: {report:?}");
        let report = at(&reports, opening);
        assert_eq!(report.bounds, (12, 50), "{opening}: {report:?}");
        assert_eq!(report.windows, ["morning"], "{opening}");
        // Planned across the jump in the clock too: its minimum serves as it opens.
        assert!(report.serving >= 12, "{opening}: {report:?}");
        let report = at(&reports, closed);
        assert_eq!(report.bounds, (1, 50), "{closed}: {report:?}");
    }
    // Friday's 08:00 UTC and Monday's 09:00 UTC (the other offset's hour) are outside.
    assert_eq!(at(&reports, "2025-03-28T08:00:00Z").bounds, (1, 50));
    assert_eq!(at(&reports, "2025-03-31T09:00:00Z").bounds, (1, 50));
}

#[tokio::test]
async fn a_baseline_reaches_the_windows_minimum_only_once_it_is_open() {
    // Baselines see the bounds in force now (and the guards would clamp them): the fleet
    // grows when the window opens, and its launches serve a boot delay later. Only dp
    // plans ahead.
    let dir = tempfile::tempdir().unwrap();
    let reports = run_morning(&config(dir.path(), "target-tracking")).await;
    let opening = at(&reports, "2025-06-02T08:00:00Z");
    assert_eq!(opening.bounds, (12, 50));
    assert_eq!(opening.applied, Some(12), "{opening:?}");
    assert!(opening.serving < 12, "{opening:?}");
    assert!(at(&reports, "2025-06-02T08:03:00Z").serving >= 12);
}

fn problems(text: &str) -> Vec<String> {
    match Config::parse(text, Path::new("test.toml")) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

const FLEET: &str = r#"
    [[fleets]]
    name = "web"
    [fleets.adapter]
    kind = "mock"
    [fleets.signal]
    kind = "synthetic"
    [fleets.guards]
    min = 2
    max = 20
"#;

#[test]
fn bad_schedules_are_named_by_path() {
    let found = problems(&format!(
        r#"{FLEET}
        [[fleets.schedules]]
        cron = "0 8 * * FUNDAY"
        time_zone = "UTC"
        duration = "1h"
        min = 4

        [[fleets.schedules]]
        cron = "0 8 * * *"
        time_zone = "Mars/Olympus"
        duration = "1h"
        min = 4

        [[fleets.schedules]]
        cron = "0 8 * * *"
        time_zone = "UTC"
        duration = "0s"
        min = 4

        [[fleets.schedules]]
        cron = "0 8 * * *"
        time_zone = "UTC"
        duration = "1h"
        size = 4
        max = 6

        [[fleets.schedules]]
        cron = "0 8 * * *"
        time_zone = "UTC"
        duration = "1h"
        min = 40

        [[fleets.schedules]]
        cron = "0 8 * * *"
        time_zone = "UTC"
        duration = "1h"
        min = 4
        colour = "blue"

        [[fleets.schedules]]
        cron = "0 8 * * *"
        time_zone = "UTC"
        duration = "1h"

        [[fleets.schedules]]
        cron = "0 8 * * *"
        duration = "1h"
        max = 1
        "#
    ));
    let text = found.join("\n");
    for expected in [
        "fleets[0].schedules[0].cron: \"0 8 * * FUNDAY\" is not a cron expression",
        "fleets[0].schedules[1].time_zone: unknown time zone \"Mars/Olympus\"",
        "fleets[0].schedules[2].duration: must be longer than 0s",
        "fleets[0].schedules[3].size: size pins both bounds",
        "fleets[0].schedules[4].min: 40 is above guards.max (20)",
        "fleets[0].schedules[5].colour: unknown field",
        "fleets[0].schedules[6]: give min, max or size",
        "fleets[0].schedules[7]: missing field `time_zone`",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(found.len(), 8, "{text}");
    let low = problems(&format!(
        r#"{FLEET}
        [[fleets.schedules]]
        cron = "0 8 * * *"
        time_zone = "UTC"
        duration = "1h"
        max = 1
        "#
    ));
    assert_eq!(
        low,
        ["fleets[0].schedules[0].max: 1 is below guards.min (2)"]
    );
}

#[test]
fn check_warns_of_windows_that_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conflict.toml");
    std::fs::write(
        &path,
        format!(
            r#"{FLEET}
            [[fleets.schedules]]
            name = "busy"
            cron = "0 * * * *"
            time_zone = "UTC"
            duration = "1h"
            min = 15

            [[fleets.schedules]]
            name = "frugal"
            cron = "30 * * * *"
            time_zone = "Europe/Paris"
            duration = "10m"
            max = 5

            [[fleets.schedules]]
            name = "pinned"
            cron = "0 3 * * *"
            time_zone = "UTC"
            duration = "1h"
            size = 10
            "#
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetscale"))
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    // busy over frugal, busy over pinned (15 > 10), pinned over frugal (10 > 5).
    assert_eq!(warnings.len(), 3, "{stdout}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"busy\" (min 15) and \"frugal\" (max 5)")
                && w.contains("the fleet is held at 5")),
        "{stdout}"
    );
}
