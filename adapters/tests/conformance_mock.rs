//! The conformance suite against the mock cloud and each decorator over it.
#![cfg(feature = "conformance")]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use fleetscale_adapters::conformance::{self, Harness};
use fleetscale_adapters::mock::{FaultConfig, MockCloud, MockConfig};
use fleetscale_adapters::{
    AdapterError, AdapterMetrics, CloudAdapter, DryRun, InstanceId, ManualClock, Metered, Retry,
    RetryConfig, TokioClock,
};
use prometheus::Registry;
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn mock(config: MockConfig) -> MockCloud {
    MockCloud::new(config, Arc::new(TokioClock::new()))
}

#[tokio::test(start_paused = true)]
async fn mock_passes() {
    let cloud = mock(MockConfig::default());
    conformance::run_all(&cloud, &cloud).await;
}

#[tokio::test(start_paused = true)]
async fn mock_with_latency_quota_and_a_populated_fleet_passes() {
    let cloud = mock(MockConfig {
        launch_latency: Duration::from_millis(300),
        terminate_latency: Duration::from_millis(100),
        stop_delay: Duration::from_secs(30),
        quota: Some(20),
        initial_size: 5,
        ..MockConfig::default()
    });
    let before: Vec<_> = cloud
        .inspect()
        .instances
        .into_iter()
        .map(|i| i.id)
        .collect();
    conformance::run_all(&cloud, &cloud).await;
    let after: Vec<_> = cloud
        .inspect()
        .instances
        .into_iter()
        .filter(|i| before.contains(&i.id))
        .collect();
    assert_eq!(
        after.len(),
        5,
        "the suite must leave the instances it found alone"
    );
}

#[tokio::test]
async fn mock_on_a_still_manual_clock_passes_with_instances_pending() {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let cloud = MockCloud::new(MockConfig::default(), Arc::new(clock));
    conformance::run_all(&cloud, &cloud).await;
}

#[tokio::test(start_paused = true)]
async fn mock_whose_instances_run_at_once_passes() {
    let cloud = mock(MockConfig {
        boot_delay: Duration::ZERO,
        ..MockConfig::default()
    });
    conformance::run_all(&cloud, &cloud).await;
}

/// Protects the dry run's own instances through the decorator, backend ones in the mock.
struct DryRunHarness {
    dry_run: DryRun<MockCloud>,
}

#[async_trait]
impl Harness for DryRunHarness {
    async fn set_protected(
        &self,
        id: &InstanceId,
        protected: bool,
    ) -> fleetscale_adapters::Result<()> {
        if self.dry_run.set_protected(id, protected)
            || self.dry_run.inner().set_protected(id, protected)
        {
            Ok(())
        } else {
            Err(AdapterError::not_found(format!("no instance {id}")))
        }
    }

    fn unknown_instance_id(&self) -> InstanceId {
        self.dry_run.inner().unknown_instance_id()
    }
}

#[tokio::test(start_paused = true)]
async fn dry_run_over_mock_passes_without_a_mutating_call() {
    let cloud = mock(MockConfig {
        initial_size: 3,
        ..MockConfig::default()
    });
    let dry_run = DryRun::new(
        cloud.clone(),
        Arc::new(TokioClock::new()),
        Duration::from_secs(60),
    );
    let harness = DryRunHarness {
        dry_run: dry_run.clone(),
    };
    conformance::run_all(&dry_run, &harness).await;
    assert_eq!(
        cloud.calls().mutating(),
        0,
        "a dry run reached the backend's grow or shrink"
    );
    assert_eq!(
        cloud.inspect().instances.len(),
        3,
        "the backend's fleet changed in a dry run"
    );
    assert!(
        !dry_run.intents().is_empty(),
        "the dry run recorded no intent"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_over_a_faulty_mock_passes() {
    let cloud = mock(MockConfig {
        launch_latency: Duration::from_millis(200),
        seed: 11,
        faults: FaultConfig {
            error_rate: 0.2,
            throttle_rate: 0.1,
            throttle_retry_after: Duration::from_secs(2),
            ..FaultConfig::default()
        },
        ..MockConfig::default()
    });
    // Launches whose answer is lost: the retry's repeated token must not launch twice.
    cloud.faults().lose_next_responses(3);
    let config = RetryConfig {
        max_retries: 12,
        deadline: None,
        ..RetryConfig::default()
    };
    let retry = Retry::with_rng(cloud.clone(), config, SmallRng::seed_from_u64(5));
    conformance::run_all(&retry, &cloud).await;
    let calls = cloud.calls();
    assert!(
        calls.total() > 30,
        "the faults should have forced retries: {calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn metered_over_mock_passes_and_counts_every_call() {
    let registry = Registry::new();
    let metrics = AdapterMetrics::register(&registry).expect("metrics register");
    let cloud = mock(MockConfig::default());
    let metered = Metered::new(cloud.clone(), "conformance", metrics.clone());
    conformance::run_all(&metered, &cloud).await;

    let calls = cloud.calls();
    for (operation, made) in [
        ("read_fleet", calls.read_fleet),
        ("grow", calls.grow),
        ("shrink", calls.shrink),
    ] {
        let ok = metrics
            .calls()
            .with_label_values(&["conformance", "mock", operation, "ok"])
            .get();
        let invalid = metrics
            .calls()
            .with_label_values(&["conformance", "mock", operation, "invalid"])
            .get();
        assert_eq!(
            ok + invalid,
            made,
            "{operation}: counted calls differ from calls made"
        );
        let timed = metrics
            .duration()
            .with_label_values(&["conformance", "mock", operation])
            .get_sample_count();
        assert_eq!(
            timed, made,
            "{operation}: timed calls differ from calls made"
        );
    }
    let refused = metrics
        .calls()
        .with_label_values(&["conformance", "mock", "shrink", "invalid"])
        .get();
    assert!(
        refused >= 2,
        "the protected and malformed shrinks are refused as invalid, counted {refused}"
    );
}

/// The stack the agent runs in dry-run: retried, metered, never mutating.
#[tokio::test(start_paused = true)]
async fn decorator_stack_over_mock_passes() {
    let registry = Registry::new();
    let metrics = AdapterMetrics::register(&registry).expect("metrics register");
    let cloud = mock(MockConfig {
        initial_size: 2,
        ..MockConfig::default()
    });
    cloud.faults().throttle_next(3, Duration::from_secs(1));
    let dry_run = DryRun::new(
        cloud.clone(),
        Arc::new(TokioClock::new()),
        Duration::from_secs(30),
    );
    let harness = DryRunHarness {
        dry_run: dry_run.clone(),
    };
    let stack: Box<dyn CloudAdapter> = Box::new(Retry::with_rng(
        Metered::new(dry_run, "stack", metrics.clone()),
        RetryConfig::default(),
        SmallRng::seed_from_u64(3),
    ));
    conformance::run_all(stack.as_ref(), &harness).await;
    assert_eq!(cloud.calls().mutating(), 0);
    let throttled = metrics
        .calls()
        .with_label_values(&["stack", "mock", "read_fleet", "throttled"])
        .get();
    assert_eq!(throttled, 3, "each throttled attempt is metered");
}
