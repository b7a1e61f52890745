//! Metered: a span per call, naming fleet, adapter, operation and outcome.
//!
//! A test binary of its own: tracing caches, per call site, whether any subscriber wants
//! it, and a test elsewhere in the same process making calls with no subscriber at the
//! same moment could leave the call site switched off for the capture below.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fleetscale_adapters::mock::{MockCloud, MockConfig};
use fleetscale_adapters::{
    AdapterError, AdapterMetrics, CloudAdapter, IdempotencyToken, Metered, TokioClock,
};
use prometheus::Registry;

fn mock(config: MockConfig) -> MockCloud {
    MockCloud::new(config, Arc::new(TokioClock::new()))
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
