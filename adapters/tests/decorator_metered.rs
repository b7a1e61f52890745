//! Metered: counters, histograms and a span per call, with the right labels.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
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

/// Records every span's fields, by span, for the test to read.
#[derive(Default)]
struct SpanCapture {
    spans: Mutex<Vec<BTreeMap<String, String>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for SpanCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = BTreeMap::from([("span".to_string(), span.metadata().name().to_string())]);
        span.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push(fields);
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        if let Some(fields) = spans.get_mut(span.into_u64() as usize - 1) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn every_call_runs_in_a_span_naming_fleet_adapter_operation_and_outcome() {
    let capture = Arc::new(SpanCapture::default());
    let _guard = tracing::subscriber::set_default(capture.clone());
    let registry = Registry::new();
    let cloud = mock(MockConfig::default());
    let metered = Metered::new(
        cloud.clone(),
        "api",
        AdapterMetrics::register(&registry).unwrap(),
    );
    metered.read_fleet().await.unwrap();
    cloud.faults().fail_next(1, AdapterError::capacity("quota"));
    metered
        .grow(1, &IdempotencyToken::new("s"))
        .await
        .unwrap_err();

    let spans = capture.spans.lock().unwrap().clone();
    let calls: Vec<_> = spans
        .iter()
        .filter(|s| s["span"] == "adapter_call")
        .collect();
    assert_eq!(calls.len(), 2, "{spans:?}");
    for (span, operation, outcome) in [
        (calls[0], "read_fleet", "ok"),
        (calls[1], "grow", "capacity"),
    ] {
        assert_eq!(span["fleet"], "api");
        assert_eq!(span["adapter"], "mock");
        assert_eq!(span["operation"], operation);
        assert_eq!(span["outcome"], outcome);
    }
}
