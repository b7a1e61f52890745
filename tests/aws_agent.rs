//! The agent on AWS: a replayed trace drives the controller, built from a config file's
//! `[fleets.adapter] kind = "aws"` section, to scale a tagged EC2 fleet up and down on
//! the local EC2 emulator (moto, IAM enforced); dry-run changes nothing there; and
//! `fleetscale check` prints the identity and each permission's result.
//!
//! Needs `moto_server` on PATH (`pip install 'moto[server]'`).
#![cfg(feature = "aws")]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../adapters/tests/support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleetscale::agent::{self, Wiring};
use fleetscale::config::{AdapterConfig, Config};
use fleetscale::controller::FleetController;
use fleetscale_adapters::aws::Ec2Fleet;
use fleetscale_adapters::{CloudAdapter, ManualClock};
use moto::{FLEET, Keys, Moto, Proxy, ZONES};

/// Requests per minute: quiet, a surge, quiet again.
fn trace() -> Vec<u32> {
    let mut rows = vec![2_000; 8];
    rows.extend([4_000, 6_000]);
    rows.extend(vec![7_000; 12]);
    rows.extend([5_000, 3_000]);
    rows.extend(vec![2_000; 20]);
    rows
}

fn write_trace(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("requests.csv");
    let csv: String = std::iter::once("minute,requests\n".to_owned())
        .chain(
            trace()
                .iter()
                .enumerate()
                .map(|(i, r)| format!("{i},{r}\n")),
        )
        .collect();
    std::fs::write(&path, csv).unwrap();
    path
}

/// The config an operator writes for an EC2 fleet; credentials are not in it.
fn config_text(endpoint: &str, subnets: &[(String, String)], trace: &Path) -> String {
    let subnets: Vec<String> = subnets.iter().map(|(id, _)| format!("{id:?}")).collect();
    format!(
        r#"
[agent]
tick = "60s"

[[fleets]]
name = "{FLEET}"
boot_delay = "60s"
history = "10m"

[fleets.adapter]
kind = "aws"
region = "{region}"
endpoint_url = "{endpoint}"
subnets = [{subnets}]
launch_template = {{ name = "{template}" }}

[fleets.adapter.extra_tags]
Name = "fleetscale-web"

[fleets.signal]
kind = "trace"
path = "{trace}"
column = "requests"
per_instance = 1000.0
step = "60s"
loop = false

[fleets.policy]
name = "target-tracking"
target_utilisation = 0.8

[fleets.guards]
min = 1
max = 12
"#,
        region = moto::REGION,
        template = moto::LAUNCH_TEMPLATE,
        subnets = subnets.join(", "),
        trace = trace.display(),
    )
}

/// The controller `agent::build_controller` builds, with the adapter given the agent
/// user's keys explicitly (the process environment is shared by parallel tests).
async fn controller(
    config: &Config,
    keys: &Keys,
    wiring: Wiring,
    clock: &ManualClock,
) -> FleetController {
    let fleet = &config.fleets[0];
    let AdapterConfig::Aws(aws) = &fleet.adapter else {
        panic!("the adapter section is not AWS: {:?}", fleet.adapter);
    };
    let clock: Arc<dyn fleetscale_adapters::Clock> = Arc::new(clock.clone());
    let ec2 = Ec2Fleet::connect_with_credentials(&fleet.name, aws, keys.credentials())
        .await
        .expect("connect");
    agent::controller_on(Box::new(ec2), fleet, &config.agent, wiring, None, clock)
        .expect("trace signal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_trace_scales_a_tagged_fleet_up_and_down() {
    let moto = Moto::start();
    let untagged = moto.launch_outside(1, &[]);
    let other_fleet = moto.launch_outside(1, &[("fleetscale:fleet", "batch")]);
    let dir = tempfile::tempdir().unwrap();
    let trace_path = write_trace(dir.path());
    let config = Config::parse(
        &config_text(&moto.endpoint, &moto.subnets, &trace_path),
        Path::new("aws-agent.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let AdapterConfig::Aws(aws) = &config.fleets[0].adapter else {
        panic!("not aws")
    };
    assert_eq!(aws.fleet_tag_key, "fleetscale:fleet");
    assert_eq!(aws.fleet_tag_value_for(FLEET), FLEET);
    assert_eq!(aws.launch_template.version, "$Latest");
    assert_eq!(
        aws.extra_tags.get("Name").map(String::as_str),
        Some("fleetscale-web")
    );

    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = ManualClock::new(start);
    let mut controller = controller(&config, &moto.agent, Wiring::default(), &clock).await;
    let observer = moto.agent_fleet().await;

    let rows = trace();
    let mut sizes = Vec::new();
    let mut peak_zones = BTreeMap::new();
    for t in 1..rows.len() as u32 {
        clock.set(start + Duration::from_secs(60) * t);
        let report = controller.tick().await;
        assert!(report.error.is_none(), "tick {t}: {:?}", report.error);
        let fleet = observer.read_fleet().await.unwrap();
        if fleet.instances.len() > sizes.iter().copied().max().unwrap_or(0) {
            peak_zones = BTreeMap::new();
            for instance in &fleet.instances {
                *peak_zones.entry(instance.zone.clone()).or_insert(0u32) += 1;
            }
        }
        sizes.push(fleet.instances.len());
    }
    println!("EC2 fleet size per tick: {sizes:?}");
    println!("zones at the peak: {peak_zones:?}");

    let peak = *sizes.iter().max().unwrap();
    let last = *sizes.last().unwrap();
    assert!(
        peak >= 8,
        "the surge (7 instances of work at 80 %) was not met: {sizes:?}"
    );
    assert!(peak <= 12, "the guard's max was passed: {sizes:?}");
    assert!(last <= 4, "the fleet did not come back down: {sizes:?}");
    let counts: Vec<u32> = ZONES
        .iter()
        .map(|z| peak_zones.get(*z).copied().unwrap_or(0))
        .collect();
    assert!(
        counts[0].abs_diff(counts[1]) <= 1,
        "zones unbalanced at the peak: {peak_zones:?}"
    );

    // Everything the agent launched carries the fleet's tags; the others were never touched.
    let instances = moto.instances();
    let launched: Vec<_> = instances
        .iter()
        .filter(|i| i["tags"]["fleetscale:fleet"] == FLEET)
        .collect();
    assert!(launched.len() >= peak);
    assert!(
        launched
            .iter()
            .all(|i| i["tags"]["Name"] == "fleetscale-web")
    );
    let terminated = launched
        .iter()
        .filter(|i| i["state"] == "terminated")
        .count();
    assert!(
        terminated >= peak - last,
        "scale-in terminated {terminated}"
    );
    for id in untagged.iter().chain(&other_fleet) {
        assert_eq!(moto.state_of(id), "running", "{id} is outside the fleet");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_in_the_emulator() {
    let moto = Moto::start();
    moto.launch_outside(1, &[]);
    let proxy = Proxy::start(&moto.endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let trace_path = write_trace(dir.path());
    let config = Config::parse(
        &config_text(&proxy.endpoint, &moto.subnets, &trace_path),
        Path::new("aws-agent.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = ManualClock::new(start);
    let mut controller = controller(&config, &moto.agent, Wiring { dry_run: true }, &clock).await;

    let before = moto.snapshot();
    let mut applied = Vec::new();
    for t in 1..20u32 {
        clock.set(start + Duration::from_secs(60) * t);
        let report = controller.tick().await;
        assert!(report.error.is_none(), "tick {t}: {:?}", report.error);
        applied.push(report.applied);
    }
    println!("dry-run sizes the agent would apply: {applied:?}");
    assert!(
        applied.iter().flatten().any(|size| *size >= 8),
        "the surge was planned: {applied:?}"
    );
    assert_eq!(moto.snapshot(), before, "dry-run changed the emulator");
    let actions: Vec<String> = proxy.recorded().into_iter().map(|r| r.action).collect();
    assert!(
        actions.iter().any(|a| a == "DescribeInstances"),
        "the fleet was read: {actions:?}"
    );
    assert!(
        actions
            .iter()
            .all(|a| a == "DescribeInstances" || a == "DescribeSubnets"),
        "dry-run made only reads: {actions:?}"
    );
}

/// `fleetscale check` as an operator runs it: keys in its environment, nothing else.
fn check(config: &Path, keys: &Keys, home: &Path) -> (i32, String) {
    // Empty shared files: the developer's own profiles stay out of the test.
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetscale"));
    command.args(["check", "--config"]).arg(config);
    keys.operator_env(&mut command, home);
    let output = command.output().expect("run fleetscale check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_identity_and_each_permission() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let trace_path = write_trace(dir.path());
    let config_path = dir.path().join("fleetscale.toml");
    std::fs::write(
        &config_path,
        config_text(&moto.endpoint, &moto.subnets, &trace_path),
    )
    .unwrap();

    let before = moto.snapshot();
    let (code, out) = check(&config_path, &moto.agent, dir.path());
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("authenticated as {}", moto.agent.arn)),
        "{out}"
    );
    for permission in fleetscale_adapters::aws::REQUIRED_PERMISSIONS {
        let line = out
            .lines()
            .find(|l| l.contains(permission))
            .unwrap_or_else(|| panic!("{permission}: {out}"));
        assert!(line.contains("allowed"), "{line}");
    }
    // The trace signal is loaded; it starts playing now, so it has no value yet.
    assert!(out.contains("signal (trace): loaded;"), "{out}");
    assert_eq!(
        moto.snapshot(),
        before,
        "check's DryRun probes changed the emulator"
    );

    // A wrong secret: an authentication failure an operator understands, no secret shown.
    let wrong = moto.agent.with_wrong_secret();
    let (code, out) = check(&config_path, &wrong, dir.path());
    println!("{out}");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("authentication failed"), "{out}");
    assert!(out.contains("secret access key"), "{out}");
    assert!(!out.contains(&wrong.secret_access_key), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_missing_terminate_permission() {
    let mut policy: serde_json::Value = serde_json::from_str(&moto::repo_policy()).unwrap();
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["Action"] != "ec2:TerminateInstances");
    let moto = Moto::builder().policy(policy.to_string()).start();
    let dir = tempfile::tempdir().unwrap();
    let trace_path = write_trace(dir.path());
    let config_path = dir.path().join("fleetscale.toml");
    std::fs::write(
        &config_path,
        config_text(&moto.endpoint, &moto.subnets, &trace_path),
    )
    .unwrap();

    let (code, out) = check(&config_path, &moto.agent, dir.path());
    println!("{out}");
    assert_ne!(code, 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("ec2:TerminateInstances"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("DENIED"), "{line}");
    for permission in ["ec2:DescribeInstances", "ec2:RunInstances"] {
        let line = out.lines().find(|l| l.contains(permission)).unwrap();
        assert!(line.contains("allowed"), "{line}");
    }
}
