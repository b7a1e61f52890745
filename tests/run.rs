//! `fleetscale run` as a user runs it: the demo config, /metrics and /healthz served, the
//! fleet following the load, and SIGTERM stopping it with exit 0.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/ports.rs"]
mod ports;
use ports::free_port;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let response = client.get(url).send().ok()?;
    Some((response.status().as_u16(), response.text().ok()?))
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_demo_runs_serves_metrics_and_stops_on_sigterm() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    // The README's first command's config, on a free port.
    let config = std::fs::read_to_string(repo.join("examples/dry-run.toml"))
        .unwrap()
        .replace("127.0.0.1:9910", &format!("127.0.0.1:{port}"));
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, config).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetscale"))
        .args([
            "run",
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fleetscale starts");

    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut metrics = String::new();
    let decisions = |text: &str, direction: &str| {
        metric(
            text,
            &format!("fleetscale_decisions_total{{direction=\"{direction}\",fleet=\"web\"}}"),
        )
        .unwrap_or(0.0)
    };
    // Within its first minute the planner both grows and shrinks the fleet.
    while started.elapsed() < Duration::from_secs(60) {
        if let Some((200, text)) = get(&format!("{url}/metrics"))
            && metric(&text, "fleetscale_serving_instances{fleet=\"web\"}").unwrap_or(0.0) > 0.0
        {
            metrics = text;
            if decisions(&metrics, "up") > 0.0
                && decisions(&metrics, "down") > 0.0
                && started.elapsed() > Duration::from_secs(6)
            {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        decisions(&metrics, "up") > 0.0 && decisions(&metrics, "down") > 0.0,
        "no grow and shrink within 60 s:\n{metrics}"
    );
    for name in [
        "fleetscale_desired_instances{fleet=\"web\"}",
        "fleetscale_billed_instances{fleet=\"web\"}",
        "fleetscale_serving_instances{fleet=\"web\"}",
        "fleetscale_observed_demand_instances{fleet=\"web\"}",
        "fleetscale_decisions_total{",
        "fleetscale_adapter_calls_total{",
        "fleetscale_adapter_call_duration_seconds_bucket{",
        "fleetscale_decide_duration_seconds_bucket{",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    // The fleet follows the load: what serves is close to what is wanted.
    let demand = metric(
        &metrics,
        "fleetscale_observed_demand_instances{fleet=\"web\"}",
    )
    .unwrap();
    let serving = metric(&metrics, "fleetscale_serving_instances{fleet=\"web\"}").unwrap();
    assert!(
        serving >= demand * 0.7 && serving <= demand * 2.5 + 2.0,
        "demand {demand}, serving {serving}"
    );
    let (status, health) = get(&format!("{url}/healthz")).expect("healthz answers");
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("\"fleet\":\"web\""), "{health}");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("SIGTERM received") && log.contains("fleetscale stopped"),
        "{log}"
    );
    // One JSON line per decision, with the documented fields.
    let decision = log
        .lines()
        .find(|l| l.contains("\"applied\""))
        .expect("a decision line");
    let line: serde_json::Value = serde_json::from_str(decision).expect("JSON log line");
    for field in [
        "fleet", "observed", "serving", "billed", "desired", "applied", "action", "message",
    ] {
        assert!(line.get(field).is_some(), "{field} missing in {decision}");
    }
    for field in ["observed", "serving", "billed", "desired", "applied"] {
        assert!(
            line[field].is_number(),
            "{field} is not a number in {decision}"
        );
    }
    // The planner decided: its reason names its forecast and its penalty.
    let message = line["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("dp: demand in") && message.contains("penalty"),
        "{decision}"
    );
}
