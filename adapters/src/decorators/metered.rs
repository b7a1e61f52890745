//! Prometheus metrics and a tracing span for every adapter call.

use std::future::Future;

use async_trait::async_trait;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tracing::Instrument;

use crate::{
    AccessReport, CloudAdapter, Fleet, GrowOutcome, IdempotencyToken, InstanceId, Operation,
    Result, ShrinkOutcome,
};

/// Seconds; adapter calls range from a local mock's microseconds to a scale set's
/// long-running update of minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The adapter metrics of one registry, shared by every fleet's [`Metered`] adapter:
///
/// - `fleetscale_adapter_calls_total{fleet,adapter,operation,outcome}`: calls by outcome,
///   `ok` or the error kind's label (`throttled`, `transient`, `capacity`…);
/// - `fleetscale_adapter_call_duration_seconds{fleet,adapter,operation}`: call latency.
#[derive(Debug, Clone)]
pub struct AdapterMetrics {
    calls: IntCounterVec,
    duration: HistogramVec,
}

impl AdapterMetrics {
    /// Creates the metrics and registers them in `registry`. Call it once per registry
    /// and clone the result for each fleet: a second registration fails.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let calls = IntCounterVec::new(
            Opts::new(
                "fleetscale_adapter_calls_total",
                "Cloud adapter calls, by outcome (ok or the error kind).",
            ),
            &["fleet", "adapter", "operation", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "fleetscale_adapter_call_duration_seconds",
                "Cloud adapter call latency in seconds.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["fleet", "adapter", "operation"],
        )?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(AdapterMetrics { calls, duration })
    }

    /// `fleetscale_adapter_calls_total`.
    pub fn calls(&self) -> &IntCounterVec {
        &self.calls
    }

    /// `fleetscale_adapter_call_duration_seconds`.
    pub fn duration(&self) -> &HistogramVec {
        &self.duration
    }
}

/// Counts and times every call of the inner adapter, labelled with the fleet, the
/// adapter's name and the operation, inside a tracing span carrying the same fields.
/// Latency is measured on tokio's clock (wall time, unless a test paused it).
#[derive(Debug, Clone)]
pub struct Metered<A> {
    inner: A,
    fleet: String,
    metrics: AdapterMetrics,
}

impl<A: CloudAdapter> Metered<A> {
    pub fn new(inner: A, fleet: impl Into<String>, metrics: AdapterMetrics) -> Self {
        Metered {
            inner,
            fleet: fleet.into(),
            metrics,
        }
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }

    async fn call<T>(
        &self,
        operation: Operation,
        call: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        let adapter = self.inner.name();
        let span = tracing::info_span!(
            "adapter_call",
            fleet = %self.fleet,
            adapter,
            operation = operation.as_str(),
            outcome = tracing::field::Empty,
        );
        let started = tokio::time::Instant::now();
        let result = call.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.kind().as_str(),
        };
        span.record("outcome", outcome);
        self.metrics
            .duration
            .with_label_values(&[self.fleet.as_str(), adapter, operation.as_str()])
            .observe(elapsed.as_secs_f64());
        self.metrics
            .calls
            .with_label_values(&[self.fleet.as_str(), adapter, operation.as_str(), outcome])
            .inc();
        if let Err(error) = &result {
            span.in_scope(|| {
                tracing::debug!(
                    elapsed_ms = elapsed.as_millis() as u64,
                    "adapter call failed: {error}"
                )
            });
        }
        result
    }
}

#[async_trait]
impl<A: CloudAdapter> CloudAdapter for Metered<A> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn read_fleet(&self) -> Result<Fleet> {
        self.call(Operation::ReadFleet, self.inner.read_fleet())
            .await
    }

    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome> {
        self.call(Operation::Grow, self.inner.grow(count, token))
            .await
    }

    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome> {
        self.call(Operation::Shrink, self.inner.shrink(ids)).await
    }

    async fn verify_access(&self) -> Result<AccessReport> {
        self.call(Operation::VerifyAccess, self.inner.verify_access())
            .await
    }

    async fn mark_draining(&self, ids: &[InstanceId], since: std::time::SystemTime) -> Result<()> {
        self.call(
            Operation::MarkDraining,
            self.inner.mark_draining(ids, since),
        )
        .await
    }
}
