//! Metered: counters and histograms with the right labels (spans: decorator_metered_spans.rs).

use std::sync::Arc;
use std::time::Duration;

use fleetscale_adapters::mock::{MockCloud, MockConfig};
use fleetscale_adapters::{
    AdapterError, AdapterMetrics, CloudAdapter, IdempotencyToken, Metered, Operation, TokioClock,
};
use prometheus::{Encoder, Registry, TextEncoder};

fn mock(config: MockConfig) -> MockCloud {
    MockCloud::new(config, Arc::new(TokioClock::new()))
}

#[tokio::test(start_paused = true)]
async fn counters_and_histograms_move_with_fleet_adapter_operation_and_outcome() {
    let registry = Registry::new();
    let metrics = AdapterMetrics::register(&registry).unwrap();
    let cloud = mock(MockConfig {
        launch_latency: Duration::from_secs(2),
        ..MockConfig::default()
    });
    let metered = Metered::new(cloud.clone(), "web", metrics.clone());

    metered.read_fleet().await.unwrap();
    metered.read_fleet().await.unwrap();
    metered.grow(1, &IdempotencyToken::new("m")).await.unwrap();
    cloud.faults().fail_next_on(
        Operation::Shrink,
        1,
        AdapterError::throttled(None, "slow down"),
    );
    metered.shrink(&["mock-000001".into()]).await.unwrap_err();
    metered.shrink(&["bad id".into()]).await.unwrap_err();
    metered.verify_access().await.unwrap();

    let calls = |operation: &str, outcome: &str| {
        metrics
            .calls()
            .with_label_values(&["web", "mock", operation, outcome])
            .get()
    };
    assert_eq!(calls("read_fleet", "ok"), 2);
    assert_eq!(calls("grow", "ok"), 1);
    assert_eq!(calls("shrink", "throttled"), 1);
    assert_eq!(calls("shrink", "invalid"), 1);
    assert_eq!(calls("shrink", "ok"), 0);
    assert_eq!(calls("verify_access", "ok"), 1);

    let grow = metrics
        .duration()
        .with_label_values(&["web", "mock", "grow"]);
    assert_eq!(grow.get_sample_count(), 1);
    assert_eq!(
        grow.get_sample_sum(),
        2.0,
        "the grow took its 2 s launch latency"
    );
    assert_eq!(
        metrics
            .duration()
            .with_label_values(&["web", "mock", "shrink"])
            .get_sample_count(),
        2
    );

    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(
            r#"fleetscale_adapter_calls_total{adapter="mock",fleet="web",operation="shrink",outcome="throttled"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("fleetscale_adapter_call_duration_seconds_bucket{adapter=\"mock\",fleet=\"web\",operation=\"grow\",le=\"2.5\"} 1"), "{text}");
}

#[tokio::test]
async fn one_registration_is_shared_by_every_fleet() {
    let registry = Registry::new();
    let metrics = AdapterMetrics::register(&registry).unwrap();
    assert!(
        AdapterMetrics::register(&registry).is_err(),
        "a second registration must fail, not double count"
    );

    let web = Metered::new(mock(MockConfig::default()), "web", metrics.clone());
    let batch = Metered::new(mock(MockConfig::default()), "batch", metrics.clone());
    web.read_fleet().await.unwrap();
    batch.read_fleet().await.unwrap();
    batch.read_fleet().await.unwrap();
    let reads = |fleet: &str| {
        metrics
            .calls()
            .with_label_values(&[fleet, "mock", "read_fleet", "ok"])
            .get()
    };
    assert_eq!((reads("web"), reads("batch")), (1, 2));
    assert_eq!(web.name(), "mock");
}
