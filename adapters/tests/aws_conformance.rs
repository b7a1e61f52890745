//! The conformance suite every adapter passes, run against the EC2 adapter on the local
//! EC2 emulator (moto) with IAM enforced, bare and under the decorators.
#![cfg(all(feature = "aws", feature = "conformance"))]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/moto.rs"]
mod moto;

use async_trait::async_trait;

use fleetscale_adapters::conformance::{self, Harness};
use fleetscale_adapters::{AdapterMetrics, InstanceId, Metered, Result, Retry, RetryConfig};
use moto::Moto;

/// Protection is a tag an operator puts on the instance (as the emulator's admin).
struct MotoHarness<'a>(&'a Moto);

#[async_trait]
impl Harness for MotoHarness<'_> {
    async fn set_protected(&self, id: &InstanceId, protected: bool) -> Result<()> {
        if protected {
            self.0.tag(id, "fleetscale:protected", "true");
        } else {
            self.0.admin(&format!(
                "ec2.delete_tags(Resources=[{id:?}], Tags=[{{'Key': 'fleetscale:protected'}}])\nresult = True"
            ));
        }
        Ok(())
    }

    fn unknown_instance_id(&self) -> InstanceId {
        "i-0123456789abcdef0".to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ec2_adapter_passes_the_conformance_suite() {
    let moto = Moto::start();
    // Instances of another fleet and untagged ones are present throughout.
    moto.launch_outside(1, &[("fleetscale:fleet", "batch")]);
    moto.launch_outside(1, &[]);
    let fleet = moto.agent_fleet().await;
    conformance::run_all(&fleet, &MotoHarness(&moto)).await;
    // Everything the suite launched it removed again; the others were left alone.
    let running: Vec<_> = moto
        .instances()
        .into_iter()
        .filter(|i| i["state"] == "running")
        .collect();
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(
        running
            .iter()
            .all(|i| i["tags"]["fleetscale:fleet"] != moto::FLEET)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_under_retry_and_metering() {
    let moto = Moto::start();
    let registry = prometheus::Registry::new();
    let metrics = AdapterMetrics::register(&registry).expect("metrics register");
    let metered = Metered::new(moto.agent_fleet().await, moto::FLEET, metrics.clone());
    let fleet = Retry::new(metered, RetryConfig::default());
    conformance::run_all(&fleet, &MotoHarness(&moto)).await;
    let ok_grows = metrics
        .calls()
        .with_label_values(&[moto::FLEET, "aws", "grow", "ok"])
        .get();
    assert!(
        ok_grows >= 5,
        "grows were metered under the aws adapter's name: {ok_grows}"
    );
}
