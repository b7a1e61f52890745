//! Draining through an ELBv2 target group, on the EC2 emulator (moto, IAM enforced, the
//! agent's policy plus terraform/aws/fleetscale-drain-policy.json): a scale-in marks the
//! instances (the EC2 tag), deregisters them from the target group, and terminates them
//! only once the group no longer lists them as draining; an agent restarted mid-drain
//! reads the drain back from the tags and the target group, and neither deregisters nor
//! decides the removal again.
//!
//! Needs `moto_server` on PATH (`pip install 'moto[server]'`).
#![cfg(feature = "aws")]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../adapters/tests/support/moto.rs"]
mod moto;

#[path = "support/scaling_in.rs"]
mod scaling_in;

use std::time::{Duration, Instant, SystemTime};

use fleetscale::controller::{Action, FleetController};
use fleetscale::drain::Drains;
use fleetscale::drain::target_group::TargetGroupDrain;
use fleetscale_adapters::aws::target_group::TargetGroup;
use fleetscale_adapters::{CloudAdapter, IdempotencyToken, ManualClock};
use moto::{FLEET, Moto};
use serde_json::Value;

use scaling_in::step;
/// The target group's deregistration delay, in real seconds.
const DELAY_S: u64 = 3;

/// The policy file of terraform/aws named `name`.
fn policy_file(name: &str) -> String {
    std::fs::read_to_string(moto::repo_root().join("terraform/aws").join(name)).unwrap()
}

/// A backend's policy (`agent`) and the drain's, as one document.
fn with_drain_policy(agent: &str) -> String {
    let agent: Value = serde_json::from_str(agent).unwrap();
    let drain: Value = serde_json::from_str(&policy_file("fleetscale-drain-policy.json")).unwrap();
    let mut statements = agent["Statement"].as_array().unwrap().clone();
    statements.extend(drain["Statement"].as_array().unwrap().iter().cloned());
    serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// A target group of the fleet (tagged with it, as the drain policy requires) with a
/// deregistration delay of [`DELAY_S`], holding `ids`; its ARN.
fn create_target_group(moto: &Moto, ids: &[String]) -> String {
    let arn = moto.admin(&format!(
        "vpc = ec2.describe_vpcs()['Vpcs'][-1]['VpcId']\n\
         tg = elbv2.create_target_group(Name='web', Protocol='HTTP', Port=80, VpcId={vpc:?}, TargetType='instance',\n\
             Tags=[{{'Key': 'fleetscale:fleet', 'Value': {FLEET:?}}}])['TargetGroups'][0]['TargetGroupArn']\n\
         elbv2.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[\n\
             {{'Key': 'deregistration_delay.timeout_seconds', 'Value': '{DELAY_S}'}}])\n\
         if {ids:?}:\n    elbv2.register_targets(TargetGroupArn=tg, Targets=[{{'Id': i}} for i in {ids:?}])\n\
         result = tg",
        vpc = moto.vpc_id,
    ));
    arn.as_str().unwrap().to_owned()
}

/// An Auto Scaling group of 4 (between 1 and 6) from the emulator's launch template,
/// tagged with the fleet (propagated to its instances), attached to `target_groups`.
fn create_group(moto: &Moto, group: &str, target_groups: &[String]) {
    let subnets: Vec<&str> = moto.subnets.iter().map(|(id, _)| id.as_str()).collect();
    moto.admin(&format!(
        "autoscaling.create_auto_scaling_group(AutoScalingGroupName={group:?}, \
         LaunchTemplate={{'LaunchTemplateName': {template:?}, 'Version': '$Latest'}}, \
         MinSize=1, MaxSize=6, DesiredCapacity=4, VPCZoneIdentifier={zones:?}, TargetGroupARNs={target_groups:?}, \
         Tags=[{{'Key': 'fleetscale:fleet', 'Value': {FLEET:?}, 'PropagateAtLaunch': True}}])\nresult = True",
        template = moto::LAUNCH_TEMPLATE,
        zones = subnets.join(","),
    ));
}

/// The agent's connection to the group `group`.
async fn group_fleet(moto: &Moto, group: &str) -> fleetscale_adapters::aws::asg::AsgFleet {
    let config = fleetscale_adapters::aws::AsgConfig {
        group: group.into(),
        region: Some(moto::REGION.into()),
        profile: None,
        endpoint_url: Some(moto.endpoint.clone()),
    };
    fleetscale_adapters::aws::asg::AsgFleet::connect_with_credentials(
        FLEET,
        &config,
        moto.agent.credentials(),
    )
    .await
    .unwrap()
}

/// Each target's state in the group.
fn health(moto: &Moto, arn: &str, ids: &[String]) -> Vec<(String, String)> {
    let code = format!(
        "out = elbv2.describe_target_health(TargetGroupArn={arn:?}, Targets=[{{'Id': i}} for i in {ids:?}])\n\
         result = [[d['Target']['Id'], d['TargetHealth']['State']] for d in out['TargetHealthDescriptions']]"
    );
    moto.admin(&code)
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A controller over `adapter` whose demand falls from 4 instances to 1 after two ticks.
fn scaling_in(
    adapter: Box<dyn CloudAdapter>,
    clock: &ManualClock,
    start: SystemTime,
) -> FleetController {
    scaling_in::controller(
        FLEET,
        adapter,
        clock,
        start,
        &scaling_in::four_then_one(),
        8,
        5,
    )
}

/// A scaling-in controller over `adapter`, drained through the target group `arn`.
async fn controller(
    moto: &Moto,
    adapter: Box<dyn CloudAdapter>,
    clock: &ManualClock,
    arn: &str,
    start: SystemTime,
) -> FleetController {
    let mut controller = scaling_in(adapter, clock, start);
    let group = TargetGroup::connect_with_credentials(
        FLEET,
        moto.config().sdk_settings(),
        arn,
        moto.agent.credentials(),
    )
    .await
    .unwrap();
    controller.drain_with(Drains {
        drains: vec![Box::new(TargetGroupDrain::new(group))],
        timeout: Duration::from_secs(3600),
    });
    controller
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_in_deregisters_first_and_terminates_only_after_draining() {
    let moto = Moto::builder()
        .policy(with_drain_policy(&moto::repo_policy()))
        .start();
    let ec2 = moto.agent_fleet().await;
    let ids = ec2
        .grow(4, &IdempotencyToken::new("drain-aws"))
        .await
        .unwrap()
        .launched;
    assert_eq!(ids.len(), 4);
    let arn = create_target_group(&moto, &ids);
    assert!(
        health(&moto, &arn, &ids)
            .iter()
            .all(|(_, s)| s == "healthy")
    );

    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let clock = ManualClock::new(start);
    let mut first = controller(
        &moto,
        Box::new(moto.agent_fleet().await),
        &clock,
        &arn,
        start,
    )
    .await;
    scaling_in::until_three_drain(&clock, &mut first).await;
    let began = Instant::now();
    // Deregistered, still running: nothing terminated yet.
    let states = health(&moto, &arn, &ids);
    let draining: Vec<String> = states
        .iter()
        .filter(|(_, s)| s == "draining")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(draining.len(), 3, "{states:?}");
    for id in &draining {
        assert_eq!(
            moto.state_of(id),
            "running",
            "{id} terminated while draining"
        );
    }

    // The agent restarts mid-drain: the new one finds the drains and waits them out.
    drop(first);
    let mut second = controller(
        &moto,
        Box::new(moto.agent_fleet().await),
        &clock,
        &arn,
        start,
    )
    .await;
    let mut removed_after = None;
    for _ in 0..20 {
        let report = step(&clock, &mut second).await;
        assert!(
            !matches!(report.action, Action::Shrink { .. }),
            "no second removal decided: {report:?}"
        );
        if report.drained > 0 {
            assert_eq!(report.drained, 3, "{report:?}");
            assert_eq!(report.drain_timeouts, 0, "{report:?}");
            removed_after = Some(began.elapsed());
            break;
        }
        assert_eq!(report.draining, 3, "{report:?}");
        for id in &draining {
            assert_eq!(
                moto.state_of(id),
                "running",
                "{id} terminated while draining"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let removed_after = removed_after.expect("the drains end");
    assert!(
        removed_after >= Duration::from_secs(DELAY_S),
        "terminated {removed_after:?} after deregistering, before the {DELAY_S} s delay"
    );
    for id in &draining {
        assert_eq!(moto.state_of(id), "terminated", "{id}");
    }
    let kept: Vec<&String> = ids.iter().filter(|id| !draining.contains(id)).collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(moto.state_of(kept[0]), "running");
    let fleet = ec2.read_fleet().await.unwrap();
    assert!(
        fleet
            .instances
            .iter()
            .filter(|i| i.draining_since.is_some())
            .all(|i| draining.contains(&i.id)),
        "{fleet:?}"
    );
}

/// The group's desired capacity, and its instances' lifecycle states, read by the
/// administrator.
fn group_state(moto: &Moto, group: &str) -> (i64, Vec<(String, String)>) {
    let out = moto.admin(&format!(
        "g = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[{group:?}])['AutoScalingGroups'][0]\n\
         result = [g['DesiredCapacity'], [[i['InstanceId'], i['LifecycleState']] for i in g['Instances']]]"
    ));
    let instances = out[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (out[0].as_i64().unwrap(), instances)
}

/// An Auto Scaling group drained by a hook: the scale-in marks its instances (EC2 tags,
/// as the group's policy allows), leaves them in service and in the desired capacity
/// while they drain, never removes another in their place, and terminates them
/// (decrementing the capacity) once the hook has answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_scaling_group_is_drained_by_its_hook_before_its_instances_are_terminated() {
    let moto = Moto::builder()
        .policy(policy_file("fleetscale-asg-policy.json"))
        .start();
    let group = "web-asg";
    create_group(&moto, group, &[]);
    let asg = group_fleet(&moto, group).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("drained");
    // The hook answers once the test creates the gate file.
    let hook = fleetscale::drain::DrainConfig {
        timeout: Duration::from_secs(3600),
        target_group_arn: None,
        backend_pool_id: None,
        hook_url: None,
        hook_command: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("while [ ! -e {} ]; do sleep 0.1; done", gate.display()),
        ]),
        hook_timeout: None,
    };
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let clock = ManualClock::new(start);
    let mut controller = scaling_in(Box::new(asg), &clock, start);
    controller.drain_with(fleetscale::drain::build(&hook, FLEET));

    scaling_in::until_three_drain(&clock, &mut controller).await;
    let marked: Vec<String> = moto
        .instances()
        .iter()
        .filter(|i| i["tags"].get("fleetscale:draining").is_some())
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(marked.len(), 3, "three instances tagged: {marked:?}");
    // While the hook has not answered: in service, in the capacity, nothing else removed.
    for _ in 0..3 {
        let report = step(&clock, &mut controller).await;
        assert_eq!((report.draining, report.active()), (3, 1), "{report:?}");
        assert!(
            !matches!(report.action, Action::Shrink { .. }),
            "{report:?}"
        );
        let (desired, instances) = group_state(&moto, group);
        assert_eq!(desired, 4);
        assert!(
            instances.iter().all(|(_, s)| s == "InService"),
            "{instances:?}"
        );
    }
    std::fs::write(&gate, "").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = step(&clock, &mut controller).await;
    assert_eq!(report.drained, 3, "{report:?}");
    let (desired, instances) = group_state(&moto, group);
    assert_eq!(desired, 1, "the terminations decremented the capacity");
    let in_service: Vec<&String> = instances
        .iter()
        .filter(|(_, s)| s == "InService")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(in_service.len(), 1, "{instances:?}");
    assert!(
        !marked.contains(in_service[0]),
        "the kept one was not drained"
    );
}

/// An Auto Scaling group attached to a target group, drained through it (the README's
/// example): the group registered its instances; a scale-in deregisters three, keeps
/// them in service and in the desired capacity while the group lists them as draining,
/// and terminates them (decrementing the capacity) once the deregistration delay has
/// passed; the instance kept stays registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_scaling_group_is_drained_through_its_target_group() {
    let moto = Moto::builder()
        .policy(with_drain_policy(&policy_file(
            "fleetscale-asg-policy.json",
        )))
        .start();
    let group = "web-asg";
    let arn = create_target_group(&moto, &[]);
    create_group(&moto, group, std::slice::from_ref(&arn));
    let (_, members) = group_state(&moto, group);
    let ids: Vec<String> = members.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 4);
    let registered = health(&moto, &arn, &ids);
    assert!(
        registered.len() == 4 && registered.iter().all(|(_, s)| s == "healthy"),
        "the group registers its instances: {registered:?}"
    );

    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let clock = ManualClock::new(start);
    let adapter = Box::new(group_fleet(&moto, group).await);
    let mut controller = controller(&moto, adapter, &clock, &arn, start).await;
    scaling_in::until_three_drain(&clock, &mut controller).await;
    let began = Instant::now();
    let draining: Vec<String> = health(&moto, &arn, &ids)
        .into_iter()
        .filter(|(_, s)| s == "draining")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(draining.len(), 3, "deregistered first");

    let mut drained = false;
    for _ in 0..20 {
        let report = step(&clock, &mut controller).await;
        assert!(
            !matches!(report.action, Action::Shrink { .. }),
            "no second removal decided: {report:?}"
        );
        let (desired, instances) = group_state(&moto, group);
        if report.drained > 0 {
            assert_eq!(
                (report.drained, report.drain_timeouts),
                (3, 0),
                "{report:?}"
            );
            assert!(
                began.elapsed() >= Duration::from_secs(DELAY_S),
                "terminated {:?} after deregistering, before the {DELAY_S} s delay",
                began.elapsed()
            );
            assert_eq!(desired, 1, "the terminations decremented the capacity");
            drained = true;
            break;
        }
        assert_eq!(desired, 4, "a draining instance stays in the capacity");
        assert!(
            instances.iter().all(|(_, s)| s == "InService"),
            "{instances:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(drained, "the drains end");
    for id in &draining {
        assert_eq!(moto.state_of(id), "terminated", "{id}");
    }
    let kept: Vec<String> = ids
        .into_iter()
        .filter(|id| !draining.contains(id))
        .collect();
    assert_eq!(
        health(&moto, &arn, &kept),
        vec![(kept[0].clone(), "healthy".to_string())],
        "the instance kept still serves"
    );
}
