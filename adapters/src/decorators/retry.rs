//! Retry with jittered exponential backoff, deciding on the error's kind alone.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{
    AccessReport, AdapterError, CloudAdapter, Fleet, GrowOutcome, IdempotencyToken, InstanceId,
    Operation, Result, ShrinkOutcome,
};

/// How [`Retry`] retries. Every operation of the trait is safe to repeat (grow carries an
/// idempotency token, shrink names its instances), so whether to retry depends only on the
/// error's kind ([`AdapterError::is_retryable`]: throttled or transient).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt. Default `4`.
    pub max_retries: u32,
    /// Backoff before the first retry; it doubles with each retry. Default `250ms`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest backoff between two attempts (a provider's retry-after may ask for more and
    /// is honoured). Default `20s`.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Longest one attempt may take; an attempt cut short counts as a transient failure.
    /// Default `2m`.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Longest a call may take across all its attempts and waits; no retry starts whose
    /// wait would end past it. Default `3m`.
    #[serde(with = "humantime_serde")]
    pub deadline: Option<Duration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(20),
            timeout: Some(Duration::from_secs(120)),
            deadline: Some(Duration::from_secs(180)),
        }
    }
}

impl RetryConfig {
    /// The backoff before retry number `retry` (0 for the first retry), given a jitter
    /// draw in `[0, 1)`: "equal jitter", between half and all of
    /// `min(max_backoff, initial_backoff * 2^retry)`.
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let factor = 2f64.powi(retry.min(62) as i32);
        let cap = self.initial_backoff.mul_f64(factor).min(self.max_backoff);
        cap.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// What to do after attempt `retry + 1` failed with `error`, `elapsed` into the call:
    /// the wait before the next attempt, or `None` to give up. Pure, so the policy is
    /// tested without running anything.
    pub fn next_retry(
        &self,
        retry: u32,
        elapsed: Duration,
        error: &AdapterError,
        jitter: f64,
    ) -> Option<Duration> {
        if !error.is_retryable() || retry >= self.max_retries {
            return None;
        }
        let wait = self
            .backoff(retry, jitter)
            .max(error.retry_after().unwrap_or_default());
        // A provider asking for a longer wait than a call may take is answered by giving
        // up; the controller then backs off for that long, between ticks.
        if wait > MAX_RETRY_WAIT {
            return None;
        }
        match self.deadline {
            Some(deadline) if elapsed.saturating_add(wait) >= deadline => None,
            _ => Some(wait),
        }
    }
}

/// The longest wait between two attempts of one call (a provider's retry-after beyond it
/// ends the call, failed and retryable).
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

/// Retries retryable failures of any adapter with jittered exponential backoff, waiting at
/// least the provider's retry-after. Waits use tokio's clock, so tests on a paused runtime
/// run instantly; the jitter comes from an injectable random source.
pub struct Retry<A> {
    inner: A,
    config: RetryConfig,
    jitter: Mutex<Box<dyn RngCore + Send>>,
}

impl<A: std::fmt::Debug> std::fmt::Debug for Retry<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<A: CloudAdapter> Retry<A> {
    /// Jitter drawn from a generator seeded by the operating system.
    pub fn new(inner: A, config: RetryConfig) -> Self {
        Self::with_rng(inner, config, SmallRng::from_os_rng())
    }

    /// Jitter drawn from `rng` (a seeded generator makes the waits repeatable).
    pub fn with_rng(inner: A, config: RetryConfig, rng: impl RngCore + Send + 'static) -> Self {
        Retry {
            inner,
            config,
            jitter: Mutex::new(Box::new(rng)),
        }
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }

    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    fn draw_jitter(&self) -> f64 {
        let mut rng = self.jitter.lock().unwrap_or_else(|e| e.into_inner());
        rng.random::<f64>()
    }

    async fn call<T, F, Fut>(&self, operation: Operation, attempt: F) -> Result<T>
    where
        F: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = Result<T>> + Send,
        T: Send,
    {
        let started = tokio::time::Instant::now();
        let mut retry = 0;
        loop {
            let limit = match (self.config.timeout, self.config.deadline) {
                (Some(timeout), Some(deadline)) => {
                    Some(timeout.min(deadline.saturating_sub(started.elapsed())))
                }
                (timeout, deadline) => {
                    timeout.or(deadline.map(|d| d.saturating_sub(started.elapsed())))
                }
            };
            let result = match limit {
                Some(limit) => tokio::time::timeout(limit, attempt())
                    .await
                    .unwrap_or_else(|_| {
                        Err(AdapterError::transient(format!(
                            "{operation} timed out after {limit:?}"
                        )))
                    }),
                None => attempt().await,
            };
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let Some(wait) =
                self.config
                    .next_retry(retry, started.elapsed(), &error, self.draw_jitter())
            else {
                if error.is_retryable() {
                    tracing::warn!(
                        adapter = self.inner.name(),
                        operation = operation.as_str(),
                        attempts = retry + 1,
                        kind = error.kind().as_str(),
                        "giving up on the call: {error}"
                    );
                }
                return Err(error);
            };
            tracing::info!(
                adapter = self.inner.name(),
                operation = operation.as_str(),
                attempt = retry + 1,
                kind = error.kind().as_str(),
                wait_ms = wait.as_millis() as u64,
                "retrying after: {error}"
            );
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }
}

#[async_trait]
impl<A: CloudAdapter> CloudAdapter for Retry<A> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn read_fleet(&self) -> Result<Fleet> {
        self.call(Operation::ReadFleet, || self.inner.read_fleet())
            .await
    }

    /// Every attempt carries the same token, so a retried grow never launches twice.
    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome> {
        self.call(Operation::Grow, || self.inner.grow(count, token))
            .await
    }

    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome> {
        self.call(Operation::Shrink, || self.inner.shrink(ids))
            .await
    }

    async fn verify_access(&self) -> Result<AccessReport> {
        self.call(Operation::VerifyAccess, || self.inner.verify_access())
            .await
    }

    /// Marking is idempotent (a mark keeps its first time), so it is retried as reads are.
    async fn mark_draining(&self, ids: &[InstanceId], since: std::time::SystemTime) -> Result<()> {
        self.call(Operation::MarkDraining, || {
            self.inner.mark_draining(ids, since)
        })
        .await
    }
}
