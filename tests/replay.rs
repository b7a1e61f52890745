//! Replay under BENCHMARK.md's model, on hand-made traces whose answers are known, and on
//! bad traces.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fleetscale::replay::{self, Figures, Scenario, UNBOUNDED_MAX};
use fleetscale_policies::{OraclePolicy, PolicyConfig};

fn scenario(demand: &[f64]) -> Scenario {
    Scenario {
        path: PathBuf::from("hand-made.csv"),
        demand: demand.to_vec(),
        step: Duration::from_secs(60),
        boot: Duration::from_secs(180),
        min: 1,
        max: UNBOUNDED_MAX,
    }
}

fn replay_with(scenario: &Scenario, config: &PolicyConfig) -> replay::Run {
    replay::run(scenario, config.name(), None, &|| config.build(), &|_| {})
}

fn target_tracking(rho: f64) -> PolicyConfig {
    PolicyConfig::from_name("target-tracking")
        .unwrap()
        .with_knob(rho)
        .unwrap()
}

/// 2 instances of demand for 10 steps, then 5 for 10.
fn step_up() -> Vec<f64> {
    [vec![2.0; 10], vec![5.0; 10]].concat()
}

#[test]
fn static_peak_on_a_step_up() {
    let s = scenario(&step_up());
    // From the model's start, t=0 holds ceil(d_0) = 2; the policy asks for 5 at t=1,
    // serving from t=4.
    let run = replay_with(&s, &PolicyConfig::static_peak(&s.demand));
    assert_eq!(run.billed, [vec![2], vec![5; 19]].concat());
    assert_eq!(run.serving, [vec![2; 4], vec![5; 16]].concat());
    let f = Figures::of(&run, &s, 1.0);
    assert_eq!(f.instance_minutes, 97.0);
    assert_eq!(f.unserved_pct, 0.0);
    assert_eq!(f.actions, 1);
    // As the benchmark counts static-peak: the peak from the first step.
    let setup = replay::Setup {
        initial: Some(s.peak()),
        ..replay::Setup::ideal()
    };
    let run = replay::run_in(
        &s,
        &setup,
        "static-peak",
        None,
        &|| PolicyConfig::static_peak(&s.demand).build(),
        &|_| {},
    );
    assert_eq!(run.billed, vec![5; 20]);
    assert_eq!(Figures::of(&run, &s, 1.0).actions, 0);
}

#[test]
fn target_tracking_on_a_step_up_serves_late_by_the_boot_delay() {
    let s = scenario(&step_up());
    let run = replay_with(&s, &target_tracking(0.5));
    // rho 0.5: demand 2 wants 4 from t=1 (serving from t=4); demand 5 is seen at t=11 and
    // wants 10 (serving from t=14), so 5 - 4 = 1 instance of demand is unserved at t=10..13.
    assert_eq!(run.billed[..12], [2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 10]);
    assert_eq!(run.serving[10..15], [4, 4, 4, 4, 10]);
    let f = Figures::of(&run, &s, 1.0);
    let unserved = 4.0; // 1 instance short at each of t = 10..13
    assert!(
        (f.unserved_pct - 100.0 * unserved / 70.0).abs() < 1e-9,
        "{f:?}"
    );
    assert!(
        (f.under_time_pct - 100.0 * 4.0 / 20.0).abs() < 1e-9,
        "{f:?}"
    );
}

#[test]
fn target_tracking_scales_down_only_after_its_window() {
    // 8 for 10 steps, then 2: at rho 1.0 it keeps 8 for the 5-minute window.
    let demand = [vec![8.0; 10], vec![2.0; 15]].concat();
    let s = scenario(&demand);
    let run = replay_with(&s, &target_tracking(0.95));
    assert_eq!(run.billed[..12], [8; 12]);
    let first_lower = run
        .billed
        .iter()
        .position(|b| *b < 8)
        .expect("it scales down");
    // demand 2 is first seen at t=11; the highest recommendation of the last 5 minutes
    // keeps 8 until the window has passed.
    assert!(
        first_lower >= 15,
        "scaled down at {first_lower}: {:?}",
        run.billed
    );
    assert_eq!(*run.billed.last().unwrap(), 3);
}

#[test]
fn a_spike_shorter_than_the_boot_delay_is_unserved_by_reactive_policies() {
    let mut demand = vec![3.0; 20];
    demand[10] = 9.0;
    demand[11] = 9.0;
    let s = scenario(&demand);
    let static_peak = replay_with(&s, &PolicyConfig::static_peak(&s.demand));
    assert_eq!(Figures::of(&static_peak, &s, 1.0).unserved_pct, 0.0);
    let tt = replay_with(&s, &target_tracking(0.95));
    let f = Figures::of(&tt, &s, 1.0);
    // Launched at t=11 after seeing the spike, serving at t=14: both spike steps unserved.
    let expected = 100.0 * 2.0 * (9.0 - 3.0) / demand.iter().sum::<f64>();
    assert!(
        (f.unserved_pct - expected).abs() < 1e-9,
        "{f:?} vs {expected}"
    );
    // And it paid for instances that arrived after the spike.
    assert_eq!(tt.billed[11], 10);
}

#[test]
fn the_oracle_replayed_through_the_controller_bills_exactly_its_optimum() {
    let demand: Vec<f64> = (0..300)
        .map(|t| 5.0 + 4.0 * ((t as f64) / 20.0).sin() + if t % 37 == 0 { 6.0 } else { 0.0 })
        .collect();
    let s = scenario(&demand);
    let schedule =
        fleetscale_policies::oracle::solve(&s.demand, s.boot_steps(), s.min, s.max).unwrap();
    let run = replay::run(
        &s,
        "oracle",
        None,
        &|| Box::new(OraclePolicy::from_schedule(&schedule)),
        &|_| {},
    );
    let f = Figures::of(&run, &s, schedule.instance_minutes(60.0));
    assert_eq!(f.instance_minutes, schedule.instance_minutes(60.0));
    assert_eq!(f.unserved_pct, 0.0);
    assert_eq!(f.cost_ratio, 1.0);
}

fn replay_cli(trace: &str, extra: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.csv");
    std::fs::write(&path, trace).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fleetscale"))
        .args([
            "replay",
            "--trace",
            path.to_str().unwrap(),
            "--column",
            "rps",
            "--per-instance",
            "10",
        ])
        .args(extra)
        .output()
        .expect("fleetscale runs");
    drop(dir);
    output
}

#[test]
fn bad_traces_name_the_file_and_line() {
    let cases = [
        (
            "time,other\n0,1\n1,2\n2,3\n3,4\n4,5\n",
            "no column named \"rps\" (columns: time, other)",
        ),
        (
            "time,rps\n0,1\n1,2\n2,abc\n3,4\n4,5\n",
            "trace.csv:4: \"rps\" is \"abc\", not a number",
        ),
        (
            "time,rps\n0,1\n1,-2\n2,3\n3,4\n4,5\n",
            "trace.csv:3: \"rps\" is -2, not a finite non-negative number",
        ),
        (
            "time,rps\n0,1\n1,NaN\n2,3\n3,4\n4,5\n",
            "trace.csv:3: \"rps\" is NaN, not a finite non-negative number",
        ),
        (
            "time,rps\n0,1\n1,\n2,3\n3,4\n4,5\n",
            "trace.csv:3: \"rps\" is \"\", not a number",
        ),
        (
            "time,rps\n0,1\n1,2\n",
            "2 data rows, but a boot delay of 3 steps needs at least 5",
        ),
        ("time,rps\n", "the trace has no data rows"),
    ];
    for (trace, expected) in cases {
        let output = replay_cli(trace, &["--policy", "target-tracking"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{trace:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{trace:?}: expected {expected:?} in {stderr}"
        );
    }
}

#[test]
fn json_output_has_every_figure_for_every_policy() {
    let trace: String = std::iter::once("t,rps\n".to_string())
        // Flat at first: the oracle's schedule assumes launches before the first decision.
        .chain((0..400).map(|t| {
            format!(
                "{t},{}\n",
                40.0 + 30.0 * ((t.max(10) - 10) as f64 / 30.0).sin()
            )
        }))
        .collect();
    let output = replay_cli(&trace, &["--policy", "all", "--format", "json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("JSON array");
    let policies: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    for name in [
        "target-tracking",
        "step-scaling",
        "predictive",
        "static-peak",
        "oracle",
    ] {
        assert!(policies.contains(&name), "{policies:?}");
    }
    for row in &rows {
        for key in [
            "policy",
            "setting",
            "instance_minutes",
            "unserved_pct",
            "under_time_pct",
            "over_provisioning_pct",
            "actions",
            "cost_ratio",
            "oracle_instance_minutes",
            "decide_ms_median",
            "decide_ms_p99",
        ] {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
        let ratio = row["cost_ratio"].as_f64().unwrap();
        let unserved = row["unserved_pct"].as_f64().unwrap();
        // Nothing can be cheaper than the oracle without leaving demand unserved.
        assert!(ratio >= 1.0 - 1e-9 || unserved > 0.0, "{row}");
    }
    let oracle = rows.iter().find(|r| r["policy"] == "oracle").unwrap();
    assert_eq!(oracle["cost_ratio"].as_f64().unwrap(), 1.0);
}

#[test]
fn sweep_reports_the_cheapest_setting_within_the_headline_limit() {
    let trace: String = std::iter::once("t,rps\n".to_string())
        .chain((0..600).map(|t| format!("{t},{}\n", 60.0 + 40.0 * ((t as f64) / 45.0).sin())))
        .collect();
    let output = replay_cli(
        &trace,
        &["--policy", "target-tracking", "--sweep", "--format", "json"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(rows.len() >= 8, "the whole sweep: {} rows", rows.len());
    for key in [
        "scenario",
        "zero_serving_steps",
        "worst_hour_served",
        "double_launches",
        "blind_scale_ins",
        "bound_violations",
    ] {
        assert!(rows[0].get(key).is_some(), "JSON lacks {key}: {}", rows[0]);
    }
    assert_eq!(rows[0]["scenario"], "ideal");
    let figures: Vec<Figures> = serde_json::from_slice(&output.stdout).unwrap();
    let best = replay::best_settings(&figures);
    assert_eq!(best.len(), 1);
    assert!(best[0].unserved_pct <= replay::HEADLINE_UNSERVED_PCT);
    for f in &figures {
        if f.unserved_pct <= replay::HEADLINE_UNSERVED_PCT {
            assert!(best[0].instance_minutes <= f.instance_minutes);
        }
    }
    let table = replay_cli(&trace, &["--policy", "target-tracking", "--sweep"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("target-tracking"))
            .count(),
        1,
        "{text}"
    );
}

#[test]
fn the_plot_is_an_svg_with_labels_and_legend() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("out.svg");
    let trace: String = std::iter::once("t,rps\n".to_string())
        .chain((0..3000).map(|t| format!("{t},{}\n", 50.0 + 30.0 * ((t as f64) / 200.0).sin())))
        .collect();
    let output = replay_cli(
        &trace,
        &[
            "--policy",
            "target-tracking",
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"));
    for label in [
        "busiest day",
        "instances",
        "hours",
        "demand",
        "target-tracking serving",
        "target-tracking billed",
    ] {
        assert!(text.contains(label), "{label} missing from the plot");
    }
}

#[test]
fn a_policy_no_setting_serves_is_named_once() {
    // Spikes no reactive policy sees coming: no target-tracking setting keeps unserved
    // demand within 0.1 %.
    let trace: String = std::iter::once("t,rps\n".to_string())
        .chain((0..2000).map(|t| format!("{t},{}\n", if t % 37 == 0 { 5000 } else { 100 })))
        .collect();
    let table = replay_cli(&trace, &["--policy", "target-tracking", "--sweep"]);
    let text = String::from_utf8_lossy(&table.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("no setting kept"))
        .unwrap_or_else(|| panic!("no such line in:\n{text}"));
    assert_eq!(line.matches("target-tracking").count(), 1, "{line}");
}
