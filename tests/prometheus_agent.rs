//! The agent on a Prometheus signal, against a real `prometheus` server: a live exporter
//! scraped every second drives the mock fleet up and down on the real clock; the server
//! stopped mid-run, wrong credentials and faulty series hold the fleet; `fleetscale plan`
//! prints a forecast built from a backfilled history; the example scrape config scrapes
//! the running agent; of two queries the larger drives, and one failing holds the fleet.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/prometheus.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetscale::agent::{Wiring, build_controller};
use fleetscale::config::Config;
use fleetscale::controller::{Action, FleetController, TickReport};
use fleetscale::telemetry::Metrics;
use fleetscale_adapters::SystemClock;
use support::{Exporter, Prometheus, PrometheusOptions, openmetrics_gauge};

const TICK: Duration = Duration::from_secs(1);

/// A one-fleet config: tick 1s, the mock cloud with `initial` instances booting in 1s,
/// target tracking at 0.8 with a 1s scale-down window, and the given signal lines.
fn config(initial: u32, signal: &str) -> Config {
    config_with(
        initial,
        &format!("[fleets.signal]\nkind = \"prometheus\"\n{signal}"),
    )
}

/// The same fleet with the given signal sections (`[fleets.signal]` or
/// `[[fleets.signals]]`).
fn config_with(initial: u32, signals: &str) -> Config {
    let text = format!(
        r#"
[agent]
tick = "1s"
metrics_address = "127.0.0.1:0"

[[fleets]]
name = "shop"
boot_delay = "1s"
history = "30s"

[fleets.adapter]
kind = "mock"
boot_delay = "1s"
launch_latency = "0s"
terminate_latency = "0s"
zones = ["zone-a", "zone-b"]
initial_size = {initial}

{signals}

[fleets.policy]
name = "target-tracking"
target_utilisation = 0.8
scale_down_window = "1s"

[fleets.guards]
min = 1
max = 30
"#
    );
    Config::parse(&text, "test.toml".as_ref()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn throughput(address: &str, query: &str, extra: &str) -> String {
    format!(
        "address = {address:?}\nquery = {query:?}\nmeaning = \"throughput\"\nper_instance = 10.0\ntimeout = \"2s\"\n{extra}"
    )
}

async fn controller(config: &Config, metrics: &Metrics) -> FleetController {
    build_controller(
        &config.fleets[0],
        &config.agent,
        Wiring::default(),
        Some(metrics),
        Arc::new(SystemClock),
    )
    .await
    .expect("controller builds")
}

/// Ticks once a second until `done` holds for a report, at most `ticks` times.
async fn tick_until(
    controller: &mut FleetController,
    ticks: usize,
    done: impl Fn(&TickReport) -> bool,
) -> Vec<TickReport> {
    let mut reports = Vec::new();
    for _ in 0..ticks {
        let started = Instant::now();
        let report = controller.tick().await;
        let finished = done(&report);
        reports.push(report);
        if finished {
            return reports;
        }
        tokio::time::sleep(TICK.saturating_sub(started.elapsed())).await;
    }
    let summary: Vec<String> = reports
        .iter()
        .map(|r| {
            format!(
                "billed {} serving {} observed {:?} {:?} {}",
                r.billed, r.serving, r.observed, r.signal_error, r.reason
            )
        })
        .collect();
    panic!("not done within {ticks} ticks:\n{}", summary.join("\n"));
}

fn signal_errors(metrics: &Metrics, reason: &str) -> u64 {
    metrics
        .signal_errors
        .with_label_values(&["shop", "prometheus", reason])
        .get()
}

fn load(requests_per_second: f64) -> String {
    format!(
        "# TYPE shop_requests_per_second gauge\nshop_requests_per_second {requests_per_second}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_exporter_drives_the_fleet_up_and_down_and_an_outage_holds_it() {
    let exporter = Exporter::start(&load(40.0)).await;
    let mut prometheus = Prometheus::start(PrometheusOptions {
        scrape_targets: vec![exporter.target()],
        ..Default::default()
    });
    prometheus
        .wait_for("shop_requests_per_second", Duration::from_secs(20))
        .await;
    let config = config(
        2,
        &throughput(&prometheus.address(), "shop_requests_per_second", ""),
    );
    let metrics = Metrics::new().unwrap();
    let mut shop = controller(&config, &metrics).await;

    // 40 requests/s at 10 per instance: demand 4, 5 instances at 0.8.
    tick_until(&mut shop, 15, |r| r.billed == 5 && r.serving == 5).await;
    // The load doubles: 10 instances.
    exporter.set(&load(80.0));
    let reports = tick_until(&mut shop, 15, |r| r.billed == 10 && r.serving == 10).await;
    assert!(
        reports
            .iter()
            .any(|r| matches!(r.action, Action::Grow { .. }))
    );
    // One range query at start, an instant query per tick after that.
    let range_queries = prometheus.requests_to("/api/v1/query_range").await;
    let instant_queries = prometheus.requests_to("/api/v1/query").await;
    assert_eq!(range_queries, 1.0, "the history is read once, at start");
    assert!(instant_queries >= 4.0, "{instant_queries} instant queries");

    // The server stops while the load falls: the fleet holds at 10, counting why.
    exporter.set(&load(10.0));
    prometheus.stop();
    for _ in 0..4 {
        let report = shop.tick().await;
        let error = report
            .signal_error
            .clone()
            .expect("no signal while the server is down");
        assert!(error.contains("cannot connect"), "{error}");
        assert_eq!(report.billed, 10, "the fleet must hold: {report:?}");
        assert!(
            !matches!(report.action, Action::Shrink { .. }),
            "{report:?}"
        );
        tokio::time::sleep(TICK).await;
    }
    assert!(signal_errors(&metrics, "unavailable") >= 4);

    // It comes back on the same port and data: the agent follows the load down by itself.
    prometheus.launch();
    let reports = tick_until(&mut shop, 20, |r| r.billed == 2).await;
    assert!(
        reports
            .iter()
            .any(|r| r.signal_error.is_none() && r.observed == Some(1.0)),
        "{reports:?}"
    );
}

/// Two `[[fleets.signals]]` on one Prometheus: requests (throughput) and a queue's depth.
fn two_signals(address: &str) -> String {
    format!(
        r#"[[fleets.signals]]
name = "requests"
kind = "prometheus"
address = {address:?}
query = "shop_requests_per_second"
meaning = "throughput"
per_instance = 10.0
timeout = "2s"

[[fleets.signals]]
name = "queue"
kind = "prometheus"
address = {address:?}
query = "shop_queue_depth"
meaning = "queue_depth"
items_per_instance = 5.0
timeout = "2s"
"#
    )
}

fn requests_and_queue(requests_per_second: f64, queue: Option<f64>) -> String {
    let mut text = load(requests_per_second);
    if let Some(depth) = queue {
        text.push_str(&format!(
            "# TYPE shop_queue_depth gauge\nshop_queue_depth {depth}\n"
        ));
    }
    text
}

fn demand_of(report: &TickReport, signal: &str) -> Option<f64> {
    let reading = report.signals.iter().find(|s| s.name == signal);
    reading
        .unwrap_or_else(|| panic!("no {signal} in {report:?}"))
        .demand
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_queries_the_larger_drives_and_one_failing_mid_run_holds_the_fleet() {
    // Requests want 4 instances, the queue 6: the queue drives (8 at 0.8).
    let exporter = Exporter::start(&requests_and_queue(40.0, Some(30.0))).await;
    let prometheus = Prometheus::start(PrometheusOptions {
        scrape_targets: vec![exporter.target()],
        ..Default::default()
    });
    prometheus
        .wait_for("shop_queue_depth", Duration::from_secs(20))
        .await;
    let config = config_with(2, &two_signals(&prometheus.address()));
    let metrics = Metrics::new().unwrap();
    let mut shop = controller(&config, &metrics).await;
    let reports = tick_until(&mut shop, 15, |r| r.billed == 8 && r.serving == 8).await;
    let last = reports.last().unwrap();
    assert_eq!(demand_of(last, "requests"), Some(4.0), "{last:?}");
    assert_eq!(demand_of(last, "queue"), Some(6.0), "{last:?}");
    assert_eq!(last.observed, Some(6.0), "the larger is the fleet's demand");

    // The queue's series disappears (its exporter stops exposing it) while requests fall
    // to 1 instance's worth: the queue's word is missing, so the fleet holds at 8.
    exporter.set(&requests_and_queue(10.0, None));
    let reports = tick_until(&mut shop, 15, |r| {
        r.signals
            .iter()
            .any(|s| s.name == "queue" && s.error.is_some())
    })
    .await;
    let first_failed = reports.last().unwrap();
    assert_eq!(first_failed.billed, 8, "{first_failed:?}");
    for _ in 0..4 {
        tokio::time::sleep(TICK).await;
        let report = shop.tick().await;
        assert_eq!(demand_of(&report, "requests"), Some(1.0), "{report:?}");
        assert_eq!(demand_of(&report, "queue"), None, "{report:?}");
        assert_eq!(report.billed, 8, "the fleet must hold: {report:?}");
        assert!(
            !matches!(report.action, Action::Shrink { .. }),
            "{report:?}"
        );
        assert!(
            report
                .reason
                .contains("no scale-in while a signal fails (\"queue\""),
            "the decision line names the failing signal: {}",
            report.reason
        );
        assert!(
            report
                .signal_error
                .as_deref()
                .unwrap_or("")
                .contains("queue"),
            "{report:?}"
        );
    }
    let failed_reads: u64 = ["missing", "stale"]
        .iter()
        .map(|reason| {
            metrics
                .signal_errors
                .with_label_values(&["shop", "queue", reason])
                .get()
        })
        .sum();
    assert!(failed_reads >= 4, "the queue's failures are counted");
    assert_eq!(
        metrics
            .signal_errors
            .with_label_values(&["shop", "requests", "missing"])
            .get(),
        0
    );
    assert!(
        metrics
            .signal_demand
            .with_label_values(&["shop", "queue"])
            .get()
            .is_nan(),
        "the failing signal's demand gauge reads NaN"
    );

    // The others' word may still grow the fleet: requests rise to 12 instances' worth.
    exporter.set(&requests_and_queue(120.0, None));
    tick_until(&mut shop, 15, |r| r.billed == 15).await;

    // The queue comes back empty: the fleet follows requests down again.
    exporter.set(&requests_and_queue(10.0, Some(0.0)));
    let reports = tick_until(&mut shop, 20, |r| r.billed == 2).await;
    assert!(
        reports
            .iter()
            .any(|r| r.signal_error.is_none() && r.observed == Some(1.0)),
        "{reports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_give_a_clear_error_and_no_scaling() {
    let files = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("correct horse", 4).unwrap();
    let prometheus = Prometheus::start(PrometheusOptions {
        web_config: Some(format!("basic_auth_users:\n  fleetscale: '{hash}'\n")),
        ..Default::default()
    });
    let auth = |password: &str| {
        let file = files.path().join(password.replace(' ', "-"));
        std::fs::write(&file, password).unwrap();
        format!(
            "[fleets.signal.basic_auth]\nusername = \"fleetscale\"\npassword_file = {:?}\n",
            file.display().to_string()
        )
    };
    // 10 requests/s: demand 1, so 2 instances would do; the fleet has 6.
    let metrics = Metrics::new().unwrap();
    let wrong = config(
        6,
        &throughput(&prometheus.address(), "vector(10)", &auth("battery staple")),
    );
    let mut shop = controller(&wrong, &metrics).await;
    for _ in 0..3 {
        let report = shop.tick().await;
        let error = report.signal_error.clone().expect("refused");
        assert!(
            error.contains("401 Unauthorized") && error.contains("basic_auth"),
            "{error}"
        );
        assert!(!error.contains("battery"), "the password leaked: {error}");
        assert_eq!(
            (report.billed, &report.action),
            (6, &Action::None),
            "{report:?}"
        );
    }
    assert_eq!(signal_errors(&metrics, "unavailable"), 3);

    let right = config(
        6,
        &throughput(&prometheus.address(), "vector(10)", &auth("correct horse")),
    );
    let mut shop = controller(&right, &Metrics::new().unwrap()).await;
    let report = shop.tick().await;
    assert_eq!(report.signal_error, None);
    assert_eq!(report.observed, Some(1.0));
    assert!(
        matches!(report.action, Action::Shrink { removed: 4, .. }),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_series_nan_and_stale_series_hold_the_fleet() {
    let now = SystemTime::now();
    let stale_end = UNIX_EPOCH
        + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap().as_secs() / 60 * 60 - 60);
    let exporter = Exporter::start(
        "# TYPE shop_zone_load gauge\nshop_zone_load{zone=\"a\"} 5\nshop_zone_load{zone=\"b\"} 5\n# TYPE shop_broken gauge\nshop_broken NaN\n",
    )
    .await;
    let prometheus = Prometheus::start(PrometheusOptions {
        scrape_targets: vec![exporter.target()],
        backfill: Some(openmetrics_gauge(
            "shop_old",
            stale_end,
            Duration::from_secs(600),
            Duration::from_secs(60),
            |_| 10.0,
        )),
        ..Default::default()
    });
    prometheus
        .wait_for("shop_broken", Duration::from_secs(20))
        .await;
    for (query, reason, extra) in [
        ("shop_zone_load", "ambiguous", ""),
        ("shop_broken", "absurd", ""),
        ("shop_old", "stale", "staleness_limit = \"20s\"\n"),
    ] {
        let metrics = Metrics::new().unwrap();
        let mut shop = controller(
            &config(6, &throughput(&prometheus.address(), query, extra)),
            &metrics,
        )
        .await;
        // Demand is at most 1 instance: without the hold these would shrink the fleet.
        for _ in 0..3 {
            let report = shop.tick().await;
            assert!(report.signal_error.is_some(), "{query}: {report:?}");
            assert_eq!(
                (report.billed, &report.action),
                (6, &Action::None),
                "{query}: {report:?}"
            );
            assert_eq!(report.observed, None, "{query}");
        }
        assert!(
            signal_errors(&metrics, reason) >= 2,
            "{query}: {reason} not counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_prints_a_forecast_built_from_the_backfilled_history() {
    let now = SystemTime::now();
    let end = UNIX_EPOCH
        + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap().as_secs() / 60 * 60 - 60);
    let daily = |t: f64| 200.0 + 100.0 * (2.0 * std::f64::consts::PI * t / 86_400.0).sin();
    let prometheus = Prometheus::start(PrometheusOptions {
        backfill: Some(openmetrics_gauge(
            "shop_requests_per_second",
            end,
            Duration::from_secs(7 * 86_400),
            Duration::from_secs(60),
            daily,
        )),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.toml");
    let text = format!(
        "[agent]\ntick = \"60s\"\n\n[[fleets]]\nname = \"shop\"\nboot_delay = \"180s\"\nhistory = \"7d\"\n\n\
         [fleets.adapter]\nkind = \"mock\"\nboot_delay = \"180s\"\nzones = [\"zone-a\"]\ninitial_size = 3\n\n\
         [fleets.signal]\nkind = \"prometheus\"\naddress = {:?}\nquery = \"shop_requests_per_second\"\n\
         meaning = \"throughput\"\nper_instance = 20.0\n\n[fleets.policy]\nname = \"predictive\"\n\n[fleets.guards]\nmin = 1\nmax = 40\n",
        prometheus.address()
    );
    std::fs::write(&path, text).unwrap();
    let plan = |format: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_fleetscale"))
            .args(["plan", "--config"])
            .arg(&path)
            .args(["--fleet", "shop", "--format", format])
            .output()
            .expect("run fleetscale plan");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "plan failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };

    let report: serde_json::Value = serde_json::from_str(&plan("json")).expect("json");
    let observation = &report["observation"];
    assert_eq!(observation["signal"], "prometheus");
    assert_eq!(observation["history_steps"], 7 * 1440);
    assert!(
        observation["history_values"].as_u64().unwrap() >= 7 * 1440 - 2,
        "{observation}"
    );
    assert_eq!(observation["billed"], 3);
    let latest = observation["latest_demand"]
        .as_f64()
        .expect("a latest value");
    let end_s = end.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(
        (latest - daily(end_s) / 20.0).abs() < 0.01,
        "latest {latest}"
    );
    // The forecast for the next steps follows the backfilled daily cycle.
    let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let forecast = report["forecast"].as_array().expect("a forecast");
    assert!(forecast.len() >= 12, "{forecast:?}");
    for step in forecast {
        let ahead = step["ahead"].as_f64().unwrap();
        let values = step["demand"].as_array().unwrap();
        let median = values
            .iter()
            .find(|pair| pair[0].as_f64() == Some(0.5))
            .map(|pair| pair[1].as_f64().unwrap());
        let median = median.expect("a median");
        let expected = daily(now_s + 60.0 * ahead) / 20.0;
        assert!(
            (median - expected).abs() < 0.2,
            "+{ahead}: forecast {median}, load {expected}"
        );
    }
    let decision = &report["decision"];
    assert!(decision["desired"].as_u64().unwrap() >= 1);
    assert!(
        decision["reason"].as_str().unwrap().contains("forecast"),
        "{decision}"
    );

    let table = plan("table");
    for needle in [
        "observation",
        "latest demand",
        "decision (predictive)",
        "forecast",
        "nothing is changed",
    ] {
        assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
    }

    // The DP planner: its own forecast, with quantiles, and the planned trajectory.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("name = \"predictive\"", "name = \"dp\"");
    std::fs::write(&path, text).unwrap();
    let report: serde_json::Value = serde_json::from_str(&plan("json")).expect("json");
    assert_eq!(report["forecast_source"], "policy", "{report}");
    assert_eq!(report["decision"]["policy"], "dp");
    let forecast = report["forecast"].as_array().expect("a forecast");
    assert!(forecast.len() >= 12, "{report}");
    for step in forecast {
        let ahead = step["ahead"].as_f64().unwrap();
        let quantiles: Vec<(f64, f64)> = step["demand"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap()))
            .collect();
        assert!(quantiles.len() >= 3, "+{ahead}: {quantiles:?}");
        assert!(
            quantiles
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "+{ahead}: {quantiles:?}"
        );
        let median = quantiles
            .iter()
            .find(|(q, _)| *q == 0.5)
            .expect("a median")
            .1;
        let expected = daily(now_s + 60.0 * ahead) / 20.0;
        assert!(
            (median - expected).abs() < 0.5,
            "+{ahead}: dp forecast {median}, load {expected}"
        );
        assert!(
            step["planned"].as_u64().is_some(),
            "+{ahead}: no planned size"
        );
    }
    let desired = report["decision"]["desired"].as_u64().unwrap() as f64;
    let demand_now = daily(now_s) / 20.0;
    assert!(
        desired >= demand_now.floor(),
        "desired {desired} for a demand of {demand_now}"
    );
    let table = plan("table");
    for needle in [
        "decision (dp)",
        "forecast and plan (the policy's)",
        "q0.5",
        "planned",
    ] {
        assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
    }

    // A fleet that does not exist: exit 2, naming the fleets there are.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fleetscale"))
        .args(["plan", "--config"])
        .arg(&path)
        .args(["--fleet", "nope"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("fleets: shop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_scrape_config_scrapes_the_running_agent() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let exporter =
        Exporter::start("# TYPE http_requests_total counter\nhttp_requests_total 0\n").await;
    let agent_port = support::free_port();
    // The examples with their ports moved to free ones and a one-second tick.
    let scrape = std::fs::read_to_string(root.join("examples/prometheus-scrape.yml"))
        .unwrap()
        .replace("127.0.0.1:9910", &format!("127.0.0.1:{agent_port}"))
        .replace("127.0.0.1:8080", &exporter.target())
        .replace("15s", "1s");
    let prometheus = Prometheus::start(PrometheusOptions {
        config: Some(scrape),
        ..Default::default()
    });
    let example = std::fs::read_to_string(root.join("examples/prometheus.toml"))
        .unwrap()
        .replace("127.0.0.1:9910", &format!("127.0.0.1:{agent_port}"))
        .replace("http://127.0.0.1:9090", &prometheus.address())
        .replace("tick = \"60s\"", "tick = \"1s\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prometheus.toml");
    std::fs::write(&path, example).unwrap();

    struct Agent(std::process::Child);
    impl Drop for Agent {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = Agent(
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetscale"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the agent"),
    );
    // A counter that rises 50 a second: 50 requests/s is one instance's worth.
    let started = Instant::now();
    let feeder = tokio::spawn({
        let body = exporter.body();
        async move {
            loop {
                let total = started.elapsed().as_secs_f64() * 50.0;
                *body.lock().unwrap() =
                    format!("# TYPE http_requests_total counter\nhttp_requests_total {total}\n");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    prometheus
        .wait_for("up{job=\"fleetscale\"} == 1", Duration::from_secs(30))
        .await;
    prometheus
        .wait_for(
            "fleetscale_billed_instances{fleet=\"web\"}",
            Duration::from_secs(30),
        )
        .await;
    prometheus
        .wait_for(
            "fleetscale_observed_demand_instances{fleet=\"web\"} > 0",
            Duration::from_secs(30),
        )
        .await;
    feeder.abort();
}
