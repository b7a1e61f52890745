//! The conformance suite every adapter passes, run against the Auto Scaling group
//! backend on the local EC2 emulator (moto) with IAM enforced.
#![cfg(all(feature = "aws", feature = "conformance"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/moto.rs"]
mod moto;

use async_trait::async_trait;

use fleetscale_adapters::aws::AsgConfig;
use fleetscale_adapters::aws::asg::AsgFleet;
use fleetscale_adapters::conformance::{self, Harness};
use fleetscale_adapters::{InstanceId, Result};
use moto::{FLEET, Moto};

const GROUP: &str = "web-asg";

/// Protection is the group's scale-in protection, set by an operator (the admin).
struct AsgHarness<'a>(&'a Moto);

#[async_trait]
impl Harness for AsgHarness<'_> {
    async fn set_protected(&self, id: &InstanceId, protected: bool) -> Result<()> {
        let flag = if protected { "True" } else { "False" };
        self.0.admin(&format!(
            "autoscaling.set_instance_protection(AutoScalingGroupName={GROUP:?}, \
             InstanceIds=[{id:?}], ProtectedFromScaleIn={flag})\nresult = True"
        ));
        Ok(())
    }

    fn unknown_instance_id(&self) -> InstanceId {
        "i-0123456789abcdef0".to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asg_adapter_passes_the_conformance_suite() {
    let policy =
        std::fs::read_to_string(moto::repo_root().join("terraform/aws/fleetscale-asg-policy.json"))
            .unwrap();
    let moto = Moto::builder().policy(policy).start();
    let subnets: Vec<&str> = moto.subnets.iter().map(|(id, _)| id.as_str()).collect();
    moto.admin(&format!(
        "autoscaling.create_auto_scaling_group(AutoScalingGroupName={GROUP:?}, \
         LaunchTemplate={{'LaunchTemplateName': {template:?}, 'Version': '$Latest'}}, \
         MinSize=0, MaxSize=40, DesiredCapacity=0, VPCZoneIdentifier={zones:?}, \
         Tags=[{{'Key': 'fleetscale:fleet', 'Value': {FLEET:?}, 'PropagateAtLaunch': True}}])\nresult = True",
        template = moto::LAUNCH_TEMPLATE,
        zones = subnets.join(","),
    ));
    let config = AsgConfig {
        group: GROUP.into(),
        region: Some(moto::REGION.into()),
        profile: None,
        endpoint_url: Some(moto.endpoint.clone()),
    };
    let asg = AsgFleet::connect_with_credentials(FLEET, &config, moto.agent.credentials())
        .await
        .unwrap();
    conformance::run_all(&asg, &AsgHarness(&moto)).await;
}
