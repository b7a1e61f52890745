//! The agent on Azure: a replayed trace drives the controller, built from a config file's
//! `[fleets.adapter] kind = "azure"` section, to scale a VM Scale Set up and down on the
//! local ARM and Entra ID stand-in.
#![cfg(feature = "azure")]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../adapters/tests/support/arm_standin.rs"]
mod arm_standin;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arm_standin::{
    ArmStandin, CLIENT_ID, CLIENT_SECRET, RESOURCE_GROUP, Route, SCALE_SET, SUBSCRIPTION_ID,
    TENANT_ID,
};
use fleetscale::agent::{self, Wiring};
use fleetscale::config::{AdapterConfig, Config};
use fleetscale_adapters::ManualClock;
use fleetscale_adapters::azure::{CredentialConfig, GROW_TAG};

/// Requests per minute: quiet, a surge, quiet again.
fn trace() -> Vec<u32> {
    let mut rows = vec![2_000; 8];
    rows.extend([4_000, 6_000]);
    rows.extend(vec![7_000; 12]);
    rows.extend([5_000, 3_000]);
    rows.extend(vec![2_000; 20]);
    rows
}

fn config_text(
    standin: &ArmStandin,
    trace: &Path,
    secret: &Path,
    operation_timeout: &str,
) -> String {
    let url = standin.url();
    format!(
        r#"
[agent]
tick = "60s"

[[fleets]]
name = "web"
boot_delay = "60s"
history = "10m"

[fleets.adapter]
kind = "azure"
subscription_id = "{SUBSCRIPTION_ID}"
resource_group = "{RESOURCE_GROUP}"
scale_set = "{SCALE_SET}"
arm_endpoint = "{url}"
authority_host = "{url}"
operation_timeout = "{operation_timeout}"
poll_interval = "20ms"
request_timeout = "5s"

[fleets.adapter.credential]
kind = "client-secret"
tenant_id = "{TENANT_ID}"
client_id = "{CLIENT_ID}"
secret_file = "{secret}"

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
        secret = secret.display(),
        trace = trace.display(),
    )
}

#[tokio::test]
async fn a_replayed_trace_scales_a_scale_set_up_and_down() {
    let standin = ArmStandin::start(3).await;
    scales_up_and_down(&standin).await;
}

/// The least-privilege role at its scopes, operations of several polls, a VM list that
/// lags the capacity, overprovisioning: no grow is repeated for VMs the list does not show
/// yet, and overprovisioned extras are not counted.
#[tokio::test]
async fn a_replayed_trace_scales_a_scale_set_that_behaves_as_resource_manager_does() {
    let standin = ArmStandin::start(3).await;
    standin.behave_as_arm();
    scales_up_and_down(&standin).await;
}

/// The agent's controller for the stand-in's scale set, from a config file's text, on a
/// manual clock at `start`.
struct Agent {
    controller: fleetscale::controller::FleetController,
    clock: ManualClock,
    start: SystemTime,
    _dir: tempfile::TempDir,
}

async fn agent_on(standin: &ArmStandin, operation_timeout: &str) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let trace_path = dir.path().join("requests.csv");
    let csv: String = std::iter::once("minute,requests\n".to_owned())
        .chain(
            trace()
                .iter()
                .enumerate()
                .map(|(i, r)| format!("{i},{r}\n")),
        )
        .collect();
    std::fs::write(&trace_path, csv).unwrap();
    let secret_path = dir.path().join("azure-secret");
    std::fs::write(&secret_path, format!("{CLIENT_SECRET}\n")).unwrap();

    let config = Config::parse(
        &config_text(standin, &trace_path, &secret_path, operation_timeout),
        Path::new("azure-agent.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let fleet = &config.fleets[0];
    let AdapterConfig::Azure(azure) = &fleet.adapter else {
        panic!("the adapter section is not Azure: {:?}", fleet.adapter);
    };
    assert_eq!(azure.scale_set, SCALE_SET);
    assert!(matches!(
        &azure.credential,
        CredentialConfig::ClientSecret {
            secret_file: Some(_),
            ..
        }
    ));

    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = ManualClock::new(start);
    let controller = agent::build_controller(
        fleet,
        &config.agent,
        Wiring::default(),
        None,
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    Agent {
        controller,
        clock,
        start,
        _dir: dir,
    }
}

async fn scales_up_and_down(standin: &ArmStandin) {
    let Agent {
        mut controller,
        clock,
        start,
        ..
    } = agent_on(standin, "10s").await;
    let rows = trace();
    let mut capacities = vec![standin.capacity()];
    for t in 1..rows.len() as u32 {
        clock.set(start + Duration::from_secs(60) * t);
        let report = controller.tick().await;
        assert!(report.error.is_none(), "tick {t}: {:?}", report.error);
        capacities.push(standin.capacity());
        // Capacity grows to the size decided, never beyond it by a grow repeated for VMs
        // the list did not show yet.
        let applied = report.applied.unwrap_or(0);
        assert!(
            standin.capacity() <= applied.max(*capacities.iter().rev().nth(1).unwrap()),
            "tick {t}: capacity {} beyond the size decided, {applied}: {capacities:?}",
            standin.capacity()
        );
    }
    println!("scale set capacity per tick: {capacities:?}");

    let peak = *capacities.iter().max().unwrap();
    let last = *capacities.last().unwrap();
    assert!(
        peak >= 8,
        "the surge (7 instances of work at 80 %) was not met: {capacities:?}"
    );
    assert!(peak <= 12, "the guard's max was passed: {capacities:?}");
    assert!(
        last <= 4,
        "the fleet did not come back down: {capacities:?}"
    );
    assert!(standin.count(Route::UpdateScaleSet) >= 1);
    assert!(standin.count(Route::DeleteInstances) >= 1);
    assert_eq!(
        standin.count(Route::Token),
        1,
        "one token served every tick"
    );
    assert_eq!(standin.running_operations(), 0);
    assert!(standin.tags().contains_key(GROW_TAG));
    // Every VM left is one the agent wants: capacity and VMs agree.
    assert_eq!(standin.vms().len() as u32, last);
}

/// Operations that outlast the adapter's patience, and a VM list that shows none of their
/// VMs until they end: the controller counts the scale set's capacity, so the VMs not
/// listed yet are not launched again at the next tick.
#[tokio::test]
async fn launches_the_vm_list_does_not_show_yet_are_not_repeated() {
    let standin = ArmStandin::start(3).await;
    standin.set_polls_before_done(u32::MAX);
    standin.set_list_lag(u32::MAX);
    let Agent {
        mut controller,
        clock,
        start,
        ..
    } = agent_on(&standin, "100ms").await;
    let mut decided = Vec::new();
    let mut capacities = Vec::new();
    for t in 1..14u32 {
        clock.set(start + Duration::from_secs(60) * t);
        let report = controller.tick().await;
        assert!(report.error.is_none(), "tick {t}: {:?}", report.error);
        decided.push(report.applied.unwrap_or(0));
        capacities.push(standin.capacity());
        assert!(
            standin.capacity() <= *decided.iter().max().unwrap(),
            "tick {t}: capacity {capacities:?} beyond every size decided {decided:?}"
        );
    }
    assert!(
        capacities.iter().any(|&c| c >= 8),
        "the surge was not met: {capacities:?}"
    );
}
