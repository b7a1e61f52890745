//! The conformance suite every adapter passes, run against the Azure VM Scale Set
//! adapter on the local ARM and Entra ID stand-in, bare and under the decorators.
#![cfg(all(feature = "azure", feature = "conformance"))]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/arm_standin.rs"]
mod arm_standin;

use async_trait::async_trait;

use arm_standin::{ArmStandin, CLIENT_SECRET};
use fleetscale_adapters::azure::{AzureEnvironment, ScaleSetFleet};
use fleetscale_adapters::conformance::{self, Harness};
use fleetscale_adapters::{InstanceId, Result};

const SECRET_VAR: &str = "STANDIN_AZURE_SECRET";

/// Protection is set on the stand-in's VM, as an operator would in the portal.
struct StandinHarness<'a>(&'a ArmStandin);

#[async_trait]
impl Harness for StandinHarness<'_> {
    async fn set_protected(&self, id: &InstanceId, protected: bool) -> Result<()> {
        self.0.protect(id, protected);
        Ok(())
    }

    fn unknown_instance_id(&self) -> InstanceId {
        "999999".to_owned()
    }
}

fn fleet(standin: &ArmStandin) -> ScaleSetFleet {
    let env = AzureEnvironment::empty().with_var(SECRET_VAR, CLIENT_SECRET);
    ScaleSetFleet::with_environment(standin.azure_config(SECRET_VAR), env).expect("valid config")
}

#[tokio::test]
async fn the_scale_set_adapter_passes_the_conformance_suite() {
    let standin = ArmStandin::start(2).await;
    let fleet = fleet(&standin);
    conformance::run_all(&fleet, &StandinHarness(&standin)).await;
    // Everything the suite launched it removed again.
    assert_eq!(standin.capacity(), 2);
}

#[tokio::test]
async fn the_suite_passes_with_operations_that_take_several_polls() {
    let standin = ArmStandin::start(1).await;
    standin.set_polls_before_done(3);
    standin.set_page_size(2);
    let fleet = fleet(&standin);
    conformance::run_all(&fleet, &StandinHarness(&standin)).await;
}

#[tokio::test]
async fn the_suite_passes_against_resource_manager_as_it_behaves() {
    let standin = ArmStandin::start(2).await;
    standin.behave_as_arm();
    let fleet = fleet(&standin);
    conformance::run_all(&fleet, &StandinHarness(&standin)).await;
}

#[tokio::test]
async fn the_suite_passes_through_the_retry_decorator_with_throttling() {
    let standin = ArmStandin::start(1).await;
    standin.fail_next(
        arm_standin::Route::GetScaleSet,
        arm_standin::Fault::Throttle {
            retry_after_secs: 0,
        },
        3,
    );
    standin.fail_next(
        arm_standin::Route::UpdateScaleSet,
        arm_standin::Fault::LoseAnswer,
        1,
    );
    let config = fleetscale_adapters::RetryConfig {
        initial_backoff: std::time::Duration::from_millis(10),
        ..Default::default()
    };
    let adapter = fleetscale_adapters::Retry::new(fleet(&standin), config);
    conformance::run_all(&adapter, &StandinHarness(&standin)).await;
}
