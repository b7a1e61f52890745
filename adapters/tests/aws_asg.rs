//! The Auto Scaling group backend on the local emulator (moto, IAM enforced), as the
//! agent's user holding terraform/aws/fleetscale-asg-policy.json: grow by the desired
//! capacity within the group's max, shrink the chosen instances (decrementing it),
//! protected instances never removed, a suspended Terminate process holding scale-in, an
//! instance refresh holding every change, a repeated grow token growing once, and a
//! missing permission named.
//!
//! Needs `moto_server` on PATH (`pip install 'moto[server]'`).
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/moto.rs"]
mod moto;

use fleetscale_adapters::aws::AsgConfig;
use fleetscale_adapters::aws::asg::AsgFleet;
use fleetscale_adapters::{CloudAdapter, ErrorKind, IdempotencyToken, InstanceState};
use moto::{FLEET, Moto};

/// The group, tagged `fleetscale:fleet = web`: the policy scopes the agent to it.
const GROUP: &str = "web-asg";

fn asg_policy() -> String {
    let path = moto::repo_root().join("terraform/aws/fleetscale-asg-policy.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// An emulator whose agent user holds `policy`, with group `web-asg` (min 1, max 5,
/// desired 2) on the launch template, over both subnets.
fn emulator(policy: String) -> Moto {
    let moto = Moto::builder().policy(policy).start();
    let subnets: Vec<&str> = moto.subnets.iter().map(|(id, _)| id.as_str()).collect();
    moto.admin(&format!(
        "autoscaling.create_auto_scaling_group(AutoScalingGroupName={GROUP:?}, \
         LaunchTemplate={{'LaunchTemplateName': {template:?}, 'Version': '$Latest'}}, \
         MinSize=1, MaxSize=5, DesiredCapacity=2, VPCZoneIdentifier={zones:?}, \
         Tags=[{{'Key': 'fleetscale:fleet', 'Value': {FLEET:?}, 'PropagateAtLaunch': True}}])\nresult = True",
        template = moto::LAUNCH_TEMPLATE,
        zones = subnets.join(","),
    ));
    moto
}

async fn adapter(moto: &Moto) -> AsgFleet {
    let config = AsgConfig {
        group: GROUP.into(),
        region: Some(moto::REGION.into()),
        profile: None,
        endpoint_url: Some(moto.endpoint.clone()),
    };
    AsgFleet::connect_with_credentials(FLEET, &config, moto.agent.credentials())
        .await
        .expect("connect")
}

/// The group's desired capacity, read by the administrator.
fn desired(moto: &Moto) -> i64 {
    moto.admin(&format!(
        "result = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[{GROUP:?}])\
         ['AutoScalingGroups'][0]['DesiredCapacity']"
    ))
    .as_i64()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_grows_within_its_max_and_shrinks_the_chosen_instances() {
    let moto = emulator(asg_policy());
    let asg = adapter(&moto).await;

    let fleet = asg.read_fleet().await.unwrap();
    assert_eq!(fleet.target_size, Some(2));
    assert_eq!(fleet.instances.len(), 2, "{fleet:?}");
    assert!(
        fleet
            .instances
            .iter()
            .all(|i| i.state != InstanceState::Stopping)
    );

    let token = IdempotencyToken::new("grow-1");
    let grown = asg.grow(2, &token).await.unwrap();
    assert_eq!(grown.requested, 2);
    assert_eq!(desired(&moto), 4);
    assert_eq!(grown.launched.len(), 2, "{grown:?}");
    // The same token again: the desired capacity is not raised twice.
    asg.grow(2, &token).await.unwrap();
    assert_eq!(desired(&moto), 4, "a repeated token grew the group again");

    // Past the group's own max (5): grown to the max, and no further.
    let capped = asg.grow(3, &IdempotencyToken::new("grow-2")).await.unwrap();
    assert_eq!(desired(&moto), 5);
    assert_eq!(capped.launched.len(), 1, "{capped:?}");
    let at_max = asg
        .grow(1, &IdempotencyToken::new("grow-3"))
        .await
        .unwrap_err();
    assert_eq!(at_max.kind(), ErrorKind::Capacity, "{at_max}");
    assert!(at_max.to_string().contains("max_size 5"), "{at_max}");

    // Shrink two chosen instances: those two leave, the desired capacity follows.
    let fleet = asg.read_fleet().await.unwrap();
    let chosen: Vec<String> = fleet
        .instances
        .iter()
        .take(2)
        .map(|i| i.id.clone())
        .collect();
    let shrunk = asg.shrink(&chosen).await.unwrap();
    assert_eq!(shrunk.removed, chosen);
    assert_eq!(desired(&moto), 3);
    let after = asg.read_fleet().await.unwrap();
    for id in &chosen {
        assert!(
            after
                .instances
                .iter()
                .all(|i| &i.id != id || i.state == InstanceState::Stopping),
            "{id} still serves: {after:?}"
        );
    }
    // Already gone: not an error, nothing more removed.
    asg.shrink(&chosen).await.unwrap();
    assert_eq!(desired(&moto), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_instances_and_a_suspended_terminate_hold_scale_in() {
    let moto = emulator(asg_policy());
    let asg = adapter(&moto).await;
    let fleet = asg.read_fleet().await.unwrap();
    let protected = fleet.instances[0].id.clone();
    moto.admin(&format!(
        "autoscaling.set_instance_protection(AutoScalingGroupName={GROUP:?}, \
         InstanceIds=[{protected:?}], ProtectedFromScaleIn=True)\nresult = True"
    ));
    let fleet = asg.read_fleet().await.unwrap();
    let seen = fleet.instances.iter().find(|i| i.id == protected).unwrap();
    assert!(seen.protected, "{fleet:?}");
    let refused = asg
        .shrink(std::slice::from_ref(&protected))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Invalid, "{refused}");
    assert!(refused.to_string().contains(&protected), "{refused}");
    assert_eq!(desired(&moto), 2, "a protected instance was removed");

    let other = fleet.instances[1].id.clone();
    moto.admin(&format!(
        "autoscaling.suspend_processes(AutoScalingGroupName={GROUP:?}, \
         ScalingProcesses=['Terminate'])\nresult = True"
    ));
    let held = asg.shrink(std::slice::from_ref(&other)).await.unwrap_err();
    assert_eq!(held.kind(), ErrorKind::Conflict, "{held}");
    assert!(
        held.to_string().contains("Terminate process is suspended"),
        "{held}"
    );
    assert_eq!(desired(&moto), 2);
    // Launch is not suspended: the group still grows.
    asg.grow(1, &IdempotencyToken::new("grow-while-held"))
        .await
        .unwrap();
    assert_eq!(desired(&moto), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_without_terminate_gives_a_permission_error_naming_it() {
    let mut policy: serde_json::Value = serde_json::from_str(&asg_policy()).unwrap();
    let actions = &mut policy["Statement"][1]["Action"];
    actions
        .as_array_mut()
        .unwrap()
        .retain(|a| a != "autoscaling:TerminateInstanceInAutoScalingGroup");
    let moto = emulator(policy.to_string());
    let asg = adapter(&moto).await;
    let fleet = asg.read_fleet().await.unwrap();
    let error = asg
        .shrink(std::slice::from_ref(&fleet.instances[0].id))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Permission, "{error}");
    assert!(
        error
            .to_string()
            .contains("autoscaling:TerminateInstanceInAutoScalingGroup"),
        "{error}"
    );
    assert_eq!(desired(&moto), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_refresh_in_progress_holds_every_change_and_says_so() {
    let moto = emulator(asg_policy());
    let asg = adapter(&moto).await;
    let fleet = asg.read_fleet().await.unwrap();
    let refresh = moto.admin(&format!(
        "result = autoscaling.start_instance_refresh(AutoScalingGroupName={GROUP:?})['InstanceRefreshId']"
    ));
    let refresh = refresh.as_str().unwrap();
    let grow = asg
        .grow(1, &IdempotencyToken::new("grow-during-refresh"))
        .await
        .unwrap_err();
    assert_eq!(grow.kind(), ErrorKind::Conflict, "{grow}");
    assert!(grow.to_string().contains(refresh), "{grow}");
    assert!(grow.to_string().contains("InProgress"), "{grow}");
    let shrink = asg
        .shrink(std::slice::from_ref(&fleet.instances[0].id))
        .await
        .unwrap_err();
    assert_eq!(shrink.kind(), ErrorKind::Conflict, "{shrink}");
    assert_eq!(desired(&moto), 2, "the group changed during its refresh");
    // Reads go on: the fleet is still seen.
    assert_eq!(asg.read_fleet().await.unwrap().instances.len(), 2);
}
