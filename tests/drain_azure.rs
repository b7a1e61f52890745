//! Draining an Azure scale set through its load balancer's backend pool, on the local
//! ARM stand-in as Resource Manager behaves (least-privilege role, operations of several
//! polls, a lagging VM list): a scale-in marks the VMs (a tag of each VM) and takes them
//! out of the backend pool (an Update of each VM), keeps them and the capacity while the
//! updates apply, and deletes them once they are out; an agent restarted mid-drain reads
//! the drains back from the VMs and decides no second removal.
#![cfg(feature = "azure")]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../adapters/tests/support/arm_standin.rs"]
mod arm_standin;

#[path = "support/scaling_in.rs"]
mod scaling_in;

use std::time::{Duration, SystemTime};

use arm_standin::{ArmStandin, CLIENT_SECRET, Route, SUBSCRIPTION_ID};
use fleetscale::controller::{Action, FleetController};
use fleetscale::drain::Drains;
use fleetscale::drain::backend_pool::BackendPoolDrain;
use fleetscale_adapters::ManualClock;
use fleetscale_adapters::azure::{AzureEnvironment, DRAINING_TAG, ScaleSetFleet};

use scaling_in::{TICK, step};
const SECRET_VAR: &str = "STANDIN_AZURE_SECRET";

fn pool() -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/fleet-rg/providers/Microsoft.Network/loadBalancers/web-lb/backendAddressPools/web"
    )
}

fn scale_set(standin: &ArmStandin) -> ScaleSetFleet {
    let env = AzureEnvironment::empty().with_var(SECRET_VAR, CLIENT_SECRET);
    ScaleSetFleet::with_environment(standin.azure_config(SECRET_VAR), env).unwrap()
}

/// Demand falls from 4 instances to 1 after two ticks; drained through the backend pool.
fn controller(standin: &ArmStandin, clock: &ManualClock, start: SystemTime) -> FleetController {
    let mut controller = scaling_in::controller(
        "web",
        Box::new(scale_set(standin)),
        clock,
        start,
        &scaling_in::four_then_one(),
        8,
        5,
    );
    controller.drain_with(Drains {
        drains: vec![Box::new(BackendPoolDrain::new(scale_set(standin), pool()))],
        timeout: Duration::from_secs(3600),
    });
    controller
}

/// The stand-in's VMs marked as draining, and those still in the pool.
fn marked_and_pooled(standin: &ArmStandin) -> (Vec<String>, Vec<String>) {
    let vms = standin.vms();
    let marked = vms
        .iter()
        .filter(|vm| vm.tags.contains_key(DRAINING_TAG))
        .map(|vm| vm.instance_id.clone())
        .collect();
    let pooled = vms
        .iter()
        .filter(|vm| vm.pools.contains(&pool()))
        .map(|vm| vm.instance_id.clone())
        .collect();
    (marked, pooled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_in_leaves_the_backend_pool_first_and_deletes_only_after() {
    let standin = ArmStandin::start(4).await;
    standin.behave_as_arm();
    standin.set_backend_pool(&pool());
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let clock = ManualClock::new(start);
    let mut first = controller(&standin, &clock, start);
    scaling_in::until_three_drain(&clock, &mut first).await;
    let (marked, pooled) = marked_and_pooled(&standin);
    assert_eq!(marked.len(), 3, "three VMs tagged: {:?}", standin.vms());
    assert_eq!(
        pooled.len(),
        1,
        "three out of the pool: {:?}",
        standin.vms()
    );
    assert!(
        !marked.contains(&pooled[0]),
        "the one kept stays in the pool"
    );
    assert_eq!(standin.capacity(), 4, "nothing deleted while draining");
    assert_eq!(standin.count(Route::DeleteInstances), 0);

    // The agent restarts mid-drain: the new one reads the marks from the VMs, decides no
    // second removal, and deletes the three (they are out of the pool).
    drop(first);
    let mut second = controller(&standin, &clock, start);
    let mut drained = false;
    for _ in 0..5 {
        let report = step(&clock, &mut second).await;
        assert!(
            !matches!(report.action, Action::Shrink { .. }),
            "no second removal decided: {report:?}"
        );
        if report.drained > 0 {
            assert_eq!(
                (report.drained, report.drain_timeouts),
                (3, 0),
                "{report:?}"
            );
            drained = true;
            break;
        }
    }
    assert!(drained, "the drains end");
    assert_eq!(standin.capacity(), 1);
    standin.complete_operations();
    let left: Vec<String> = standin.vms().into_iter().map(|vm| vm.instance_id).collect();
    assert_eq!(
        left, pooled,
        "the VM kept is the one left, still in the pool"
    );
}

/// A role without `virtualMachines/write` cannot mark a drain: the tick's error names
/// the action, and nothing is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_without_the_vm_write_permission_names_it_and_removes_nothing() {
    let standin = ArmStandin::start(4).await;
    standin.set_backend_pool(&pool());
    let mut roles = arm_standin::least_privilege();
    roles[0]
        .actions
        .retain(|a| a != fleetscale_adapters::azure::WRITE_VMS);
    standin.set_assignments(roles);
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let clock = ManualClock::new(start);
    let mut controller = controller(&standin, &clock, start);
    let mut refused = None;
    for _ in 0..12 {
        clock.advance(TICK);
        let report = controller.tick().await;
        if let Some(error) = report.error {
            refused = Some(error.to_string());
            break;
        }
    }
    let error = refused.expect("the mark is refused");
    assert!(
        error.contains(fleetscale_adapters::azure::WRITE_VMS),
        "{error}"
    );
    assert_eq!(standin.capacity(), 4);
    assert_eq!(standin.count(Route::DeleteInstances), 0);
    let (marked, pooled) = marked_and_pooled(&standin);
    assert!(marked.is_empty());
    assert_eq!(pooled.len(), 4);
}
