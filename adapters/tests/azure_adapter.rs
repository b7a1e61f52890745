//! The Azure VM Scale Set adapter against the local ARM and Entra ID stand-in: reads,
//! grows followed through their long-running operations, idempotent grows, shrinks,
//! protection, and access verification.
#![cfg(feature = "azure")]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/arm_standin.rs"]
mod arm_standin;

use std::time::{Duration, Instant};

use arm_standin::{ArmStandin, CLIENT_ID, CLIENT_SECRET, PRINCIPAL_OBJECT_ID, Route};
use fleetscale_adapters::azure::{AzureConfig, AzureEnvironment, GROW_TAG, ScaleSetFleet};
use fleetscale_adapters::{CloudAdapter, ErrorKind, IdempotencyToken, InstanceState};

const SECRET_VAR: &str = "STANDIN_AZURE_SECRET";

fn environment() -> AzureEnvironment {
    AzureEnvironment::empty().with_var(SECRET_VAR, CLIENT_SECRET)
}

fn fleet_with(config: AzureConfig) -> ScaleSetFleet {
    ScaleSetFleet::with_environment(config, environment()).expect("valid config")
}

fn fleet(standin: &ArmStandin) -> ScaleSetFleet {
    fleet_with(standin.azure_config(SECRET_VAR))
}

fn ids(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn reads_capacity_states_zones_and_protection() {
    let standin = ArmStandin::start(3).await;
    standin.protect("1", true);
    standin.set_power("2", Some("deallocated"));
    let fleet = fleet(&standin);

    let read = fleet.read_fleet().await.unwrap();
    assert_eq!(read.target_size, Some(3));
    let view: Vec<(&str, InstanceState, &str, bool)> = read
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.state, i.zone.as_str(), i.protected))
        .collect();
    assert_eq!(
        view,
        [
            ("0", InstanceState::Running, "1", false),
            ("1", InstanceState::Running, "2", true),
            ("2", InstanceState::Stopping, "3", false),
        ]
    );
    assert_eq!(fleet.name(), "azure");
}

#[tokio::test]
async fn reads_every_page_of_a_long_vm_list() {
    let standin = ArmStandin::start(7).await;
    standin.set_page_size(3);
    let read = fleet(&standin).read_fleet().await.unwrap();
    assert_eq!(read.instances.len(), 7);
    assert_eq!(standin.count(Route::ListVms), 3);
}

#[tokio::test]
async fn grow_raises_capacity_and_follows_the_operation_to_its_end() {
    let standin = ArmStandin::start(2).await;
    standin.set_polls_before_done(3);
    let fleet = fleet(&standin);

    let outcome = fleet
        .grow(2, &IdempotencyToken::new("tick-1"))
        .await
        .unwrap();
    assert_eq!(outcome.requested, 2);
    assert_eq!(ids(&outcome.launched), ["2", "3"]);
    // Three InProgress answers, then Succeeded.
    assert_eq!(standin.count(Route::OperationStatus), 4);
    assert_eq!(standin.running_operations(), 0);
    assert_eq!(standin.capacity(), 4);

    let body = standin.last_update_body().unwrap();
    assert_eq!(body["sku"]["capacity"], 4);
    let mark = body["tags"][GROW_TAG].as_str().unwrap();
    assert!(mark.starts_with("tick-1;4;"), "{mark}");

    let read = fleet.read_fleet().await.unwrap();
    assert_eq!(read.target_size, Some(4));
    assert_eq!(read.serving(), 4);
}

#[tokio::test]
async fn a_repeated_grow_with_the_same_token_does_not_grow_twice() {
    let standin = ArmStandin::start(1).await;
    let fleet = fleet(&standin);
    let token = IdempotencyToken::new("tick-7");

    let first = fleet.grow(3, &token).await.unwrap();
    let again = fleet.grow(3, &token).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(ids(&first.launched), ["1", "2", "3"]);
    assert_eq!(standin.count(Route::UpdateScaleSet), 1);
    assert_eq!(standin.capacity(), 4);

    // A restarted agent knows only what the scale set says: the tag.
    let restarted = fleet_with(standin.azure_config(SECRET_VAR));
    let after_restart = restarted.grow(3, &token).await.unwrap();
    assert_eq!(ids(&after_restart.launched), ["1", "2", "3"]);
    assert_eq!(standin.count(Route::UpdateScaleSet), 1);

    // A new token grows again.
    let next = fleet
        .grow(1, &IdempotencyToken::new("tick-8"))
        .await
        .unwrap();
    assert_eq!(ids(&next.launched), ["4"]);
    assert_eq!(standin.capacity(), 5);
    assert_eq!(
        standin.tags().len(),
        1,
        "one marker tag, replaced by each grow"
    );
}

#[tokio::test]
async fn a_grow_keeps_the_scale_set_s_other_tags() {
    let standin = ArmStandin::start(1).await;
    standin.set_tag("cost-centre", "web");
    let fleet = fleet(&standin);
    fleet.grow(1, &IdempotencyToken::new("a")).await.unwrap();
    fleet.grow(1, &IdempotencyToken::new("b")).await.unwrap();
    let tags = standin.tags();
    assert_eq!(tags["cost-centre"], "web");
    assert!(tags[GROW_TAG].as_str().unwrap().starts_with("b;3;"));
}

#[tokio::test]
async fn a_grow_races_no_other_writer() {
    let standin = ArmStandin::start(1).await;
    // Another writer changes the scale set between the adapter's read and its write:
    // the etag no longer matches, the write is refused, and nothing is lost.
    standin.change_etag_after_next_read();
    let error = fleet(&standin)
        .grow(1, &IdempotencyToken::new("a"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transient, "{error}");
    assert!(error.to_string().contains("PreconditionFailed"), "{error}");
    assert_eq!(standin.capacity(), 1);
}

#[tokio::test]
async fn a_grow_that_outlasts_the_timeout_returns_its_booting_instances_and_is_not_repeated() {
    let standin = ArmStandin::start(2).await;
    standin.set_polls_before_done(u32::MAX);
    let mut config = standin.azure_config(SECRET_VAR);
    config.operation_timeout = Duration::from_millis(300);
    let fleet = fleet_with(config);
    let token = IdempotencyToken::new("slow");

    let started = Instant::now();
    let outcome = fleet.grow(2, &token).await.unwrap();
    let took = started.elapsed();
    assert_eq!(ids(&outcome.launched), ["2", "3"]);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert!(standin.count(Route::OperationStatus) >= 5);
    let read = fleet.read_fleet().await.unwrap();
    assert_eq!((read.booting(), read.serving()), (2, 2));
    assert_eq!(read.target_size, Some(4));

    // Repeated with the same token (a retry, or the agent restarted): no second write.
    let restarted = fleet_with(standin.azure_config(SECRET_VAR));
    assert_eq!(restarted.grow(2, &token).await.unwrap(), outcome);
    assert_eq!(standin.count(Route::UpdateScaleSet), 1);

    standin.complete_operations();
    assert_eq!(fleet.read_fleet().await.unwrap().serving(), 4);
    assert_eq!(standin.capacity(), 4);
}

#[tokio::test]
async fn operation_polls_honour_retry_after() {
    let standin = ArmStandin::start(0).await;
    standin.set_polls_before_done(1);
    standin.set_poll_retry_after(Some(1));
    let fleet = fleet(&standin);
    let started = Instant::now();
    fleet.grow(1, &IdempotencyToken::new("t")).await.unwrap();
    // The acceptance and the first poll each asked for a second.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(standin.count(Route::OperationStatus), 2);
}

#[tokio::test]
async fn shrink_deletes_the_named_instances_and_lowers_capacity() {
    let standin = ArmStandin::start(3).await;
    let fleet = fleet(&standin);

    let outcome = fleet.shrink(&["2".into(), "0".into()]).await.unwrap();
    assert_eq!(ids(&outcome.removed), ["0", "2"]);
    assert_eq!(standin.capacity(), 1);
    let read = fleet.read_fleet().await.unwrap();
    assert_eq!(
        read.instances
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        ["1"]
    );
    assert_eq!(read.target_size, Some(1));

    // Already gone: nothing to do, no error.
    let again = fleet.shrink(&["0".into()]).await.unwrap();
    assert!(again.removed.is_empty());
    assert_eq!(standin.count(Route::DeleteInstances), 1);
}

#[tokio::test]
async fn shrink_refuses_protected_instances_and_removes_nothing() {
    let standin = ArmStandin::start(3).await;
    standin.protect("1", true);
    let fleet = fleet(&standin);

    let error = fleet.shrink(&["0".into(), "1".into()]).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert!(
        error
            .to_string()
            .contains("instance 1 of scale set web-vmss is protected"),
        "{error}"
    );
    assert_eq!(standin.count(Route::DeleteInstances), 0);
    assert_eq!(standin.vms().len(), 3);
    assert_eq!(standin.capacity(), 3);
}

#[tokio::test]
async fn a_slow_deletion_returns_and_its_instances_read_as_stopping() {
    let standin = ArmStandin::start(2).await;
    standin.set_polls_before_done(u32::MAX);
    let mut config = standin.azure_config(SECRET_VAR);
    config.operation_timeout = Duration::from_millis(100);
    let fleet = fleet_with(config);
    let outcome = fleet.shrink(&["1".into()]).await.unwrap();
    assert_eq!(ids(&outcome.removed), ["1"]);

    let read = fleet.read_fleet().await.unwrap();
    assert_eq!(read.instances[1].state, InstanceState::Stopping);
    assert_eq!(read.target_size, Some(1));
    // A repeated shrink finds the deletion under way and sends nothing new.
    let repeated = fleet.shrink(&["1".into()]).await.unwrap();
    assert_eq!(ids(&repeated.removed), ["1"]);
    assert_eq!(standin.count(Route::DeleteInstances), 1);

    standin.complete_operations();
    assert_eq!(fleet.read_fleet().await.unwrap().instances.len(), 1);
}

#[tokio::test]
async fn verify_reports_the_identity_and_each_needed_permission() {
    let standin = ArmStandin::start(2).await;
    let report = fleet(&standin).verify_access().await.unwrap();
    assert!(report.identity.contains(CLIENT_ID), "{}", report.identity);
    assert!(
        report.identity.contains(PRINCIPAL_OBJECT_ID),
        "{}",
        report.identity
    );
    assert!(
        report.identity.contains("client secret credential"),
        "{}",
        report.identity
    );
    let permissions: Vec<&str> = report
        .checks
        .iter()
        .map(|c| c.permission.as_str())
        .collect();
    assert_eq!(permissions, fleetscale_adapters::azure::NEEDED_ACTIONS);
    assert!(report.all_allowed(), "{report:?}");
    // Verifying changes nothing.
    assert_eq!(
        standin.count(Route::UpdateScaleSet) + standin.count(Route::DeleteInstances),
        0
    );
}

#[tokio::test]
async fn verify_names_the_permissions_a_read_only_role_lacks() {
    let standin = ArmStandin::start(1).await;
    standin.set_permissions(&["*/read"], &[]);
    let report = fleet(&standin).verify_access().await.unwrap();
    let denied: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| !c.allowed)
        .map(|c| c.permission.as_str())
        .collect();
    assert_eq!(
        denied,
        [
            "Microsoft.Compute/virtualMachineScaleSets/write",
            "Microsoft.Compute/virtualMachineScaleSets/delete/action"
        ]
    );
}

#[tokio::test]
async fn verify_reports_a_refused_read_as_a_failed_check() {
    let standin = ArmStandin::start(1).await;
    standin.set_permissions(&["Microsoft.Compute/virtualMachineScaleSets/read"], &[]);
    let report = fleet(&standin).verify_access().await.unwrap();
    let vms = report
        .checks
        .iter()
        .find(|c| c.permission.ends_with("virtualMachines/read"))
        .unwrap();
    assert!(!vms.allowed);
    assert!(
        vms.detail.contains("does not have authorization"),
        "{}",
        vms.detail
    );
}

/// The operator role on the scale set alone: Azure lets it start a capacity change but not
/// read the operation's status, which is outside the scale set ("Track asynchronous Azure
/// operations"). The grow still ends, followed by the scale set's provisioning state.
#[tokio::test]
async fn a_grow_whose_operation_may_not_be_read_is_followed_by_the_scale_set() {
    let standin = ArmStandin::start(1).await;
    standin.set_assignments(vec![arm_standin::least_privilege().remove(0)]);
    let fleet = fleet(&standin);
    let outcome = fleet
        .grow(2, &IdempotencyToken::new("untracked-grow"))
        .await
        .unwrap();
    assert_eq!(outcome.launched.len(), 2, "{outcome:?}");
    assert_eq!(standin.capacity(), 3);
    assert!(standin.count(Route::OperationStatus) >= 1);
    let removed = fleet.shrink(&outcome.launched).await.unwrap();
    assert_eq!(removed.removed.len(), 2);
    assert_eq!(standin.capacity(), 1);
}

#[tokio::test]
async fn verify_names_the_operation_read_a_role_on_the_scale_set_alone_lacks() {
    let standin = ArmStandin::start(1).await;
    standin.set_assignments(vec![arm_standin::least_privilege().remove(0)]);
    let report = fleet(&standin).verify_access().await.unwrap();
    let denied: Vec<_> = report.checks.iter().filter(|c| !c.allowed).collect();
    assert_eq!(denied.len(), 1, "{report:?}");
    assert_eq!(
        denied[0].permission,
        fleetscale_adapters::azure::TRACK_OPERATIONS
    );
    assert!(
        denied[0].detail.contains("resource group")
            && denied[0].detail.contains(arm_standin::RESOURCE_GROUP),
        "{}",
        denied[0].detail
    );
    // With the operation read on the resource group, every check passes.
    standin.set_assignments(arm_standin::least_privilege());
    let report = fleet(&standin).verify_access().await.unwrap();
    assert!(report.all_allowed(), "{report:?}");
}

#[tokio::test]
async fn a_flexible_scale_set_is_refused_at_check_and_at_every_read() {
    let standin = ArmStandin::start(2).await;
    standin.set_orchestration_mode("Flexible");
    let fleet = fleet(&standin);
    for error in [
        fleet.verify_access().await.unwrap_err(),
        fleet.read_fleet().await.unwrap_err(),
        fleet
            .grow(1, &IdempotencyToken::new("flexible"))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(error.kind(), ErrorKind::Invalid, "{error}");
        assert!(
            error.to_string().contains("Flexible orchestration")
                && error.to_string().contains("Uniform"),
            "{error}"
        );
    }
    assert_eq!(standin.count(Route::UpdateScaleSet), 0);
}

/// Overprovisioning creates extra VMs and deletes them when the asked-for ones run: a grow
/// reports only what it asked for, even when its operation is still running.
#[tokio::test]
async fn overprovisioned_extras_are_not_reported_as_launched() {
    let standin = ArmStandin::start(1).await;
    standin.set_overprovision(true);
    standin.set_polls_before_done(u32::MAX);
    let mut config = standin.azure_config(SECRET_VAR);
    config.operation_timeout = Duration::from_millis(200);
    let fleet = fleet_with(config);
    let outcome = fleet
        .grow(5, &IdempotencyToken::new("overprovisioned"))
        .await
        .unwrap();
    assert_eq!(outcome.launched.len(), 5, "{outcome:?}");
    let read = fleet.read_fleet().await.unwrap();
    assert_eq!(read.target_size, Some(6));
    assert!(read.instances.len() > 6, "the extras are listed: {read:?}");
    standin.complete_operations();
    let read = fleet.read_fleet().await.unwrap();
    assert_eq!(read.instances.len(), 6, "the extras are gone: {read:?}");
}

/// While a capacity change runs, the VM list may not show the VMs it creates yet: the
/// scale set's capacity says what the fleet is becoming.
#[tokio::test]
async fn the_vm_list_may_lag_the_capacity_while_an_operation_runs() {
    let standin = ArmStandin::start(1).await;
    standin.set_list_lag(3);
    standin.set_polls_before_done(u32::MAX);
    let mut config = standin.azure_config(SECRET_VAR);
    config.operation_timeout = Duration::from_millis(100);
    let fleet = fleet_with(config);
    let outcome = fleet
        .grow(3, &IdempotencyToken::new("lagging"))
        .await
        .unwrap();
    assert!(outcome.launched.is_empty(), "{outcome:?}");
    let read = fleet.read_fleet().await.unwrap();
    assert_eq!(read.target_size, Some(4));
    assert_eq!(read.instances.len(), 1, "{read:?}");
    standin.complete_operations();
    let read = fleet.read_fleet().await.unwrap();
    assert_eq!(read.instances.len(), 4, "{read:?}");
}
