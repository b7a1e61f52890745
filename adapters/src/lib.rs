//! The provider-neutral cloud layer of fleetscale.
//!
//! One trait, [`CloudAdapter`], with many backends: [`mock::MockCloud`] (a complete
//! in-memory cloud on a real or simulated clock), and, behind cargo features, AWS EC2
//! (`aws`) and Azure VM Scale Sets (`azure`). Behaviour that is the same for every
//! backend is a decorator over the trait ([`DryRun`], [`Retry`], [`Metered`]), and one
//! conformance suite ([`conformance`], feature `conformance`) runs against every backend
//! and every decorator.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
pub mod clock;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod decorators;
mod error;
pub mod mock;
mod operation;
mod types;

pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use decorators::{AdapterMetrics, DryRun, Intent, MAX_RETRY_WAIT, Metered, Retry, RetryConfig};
pub use error::{AdapterError, ErrorKind};
pub use operation::Operation;
pub use types::{
    AccessReport, Fleet, GrowOutcome, IdempotencyToken, Instance, InstanceId, InstanceState,
    PermissionCheck, ShrinkOutcome, parse_drain_mark, render_drain_mark,
};

use async_trait::async_trait;
use std::time::SystemTime;

/// Result of every adapter call.
pub type Result<T, E = AdapterError> = std::result::Result<T, E>;

/// What fleetscale needs from a cloud: read a fleet, grow it, shrink it, and prove access.
///
/// Implementations map their provider's errors into [`AdapterError`]'s kinds; retry,
/// dry-run and metrics are decorators, not code inside each backend.
#[async_trait]
pub trait CloudAdapter: Send + Sync + std::fmt::Debug + 'static {
    /// Short name of the backend, used in metrics and logs (`mock`, `aws`, `azure`).
    fn name(&self) -> &str;

    /// The fleet as the provider reports it now: live instances (pending, running or
    /// stopping) and the provider's target size where it keeps one.
    async fn read_fleet(&self) -> Result<Fleet>;

    /// Launch `count` instances. The same `token` sent twice never launches twice: a
    /// retried or repeated call returns the instances of the first.
    ///
    /// A provider may launch fewer than asked; [`GrowOutcome::launched`] says how many.
    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome>;

    /// Remove the named instances. Instances already gone are not an error (the call is
    /// idempotent); a protected instance is refused with [`ErrorKind::Invalid`] and
    /// nothing is removed.
    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome>;

    /// Prove the credentials work and carry the needed permissions, changing nothing.
    async fn verify_access(&self) -> Result<AccessReport>;

    /// Mark the named instances as draining since `since`, where the provider keeps it
    /// (a tag on the instance), so that reads list them with
    /// [`Instance::draining_since`] and an agent that restarts mid-drain finds the drain.
    /// Idempotent: an instance already marked keeps its first time; instances gone are
    /// not an error. A backend that cannot keep the mark refuses with
    /// [`ErrorKind::Invalid`] (and the config check refuses a drain on it).
    async fn mark_draining(&self, ids: &[InstanceId], since: SystemTime) -> Result<()>;
}

#[async_trait]
impl<A: CloudAdapter + ?Sized> CloudAdapter for std::sync::Arc<A> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn read_fleet(&self) -> Result<Fleet> {
        (**self).read_fleet().await
    }
    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome> {
        (**self).grow(count, token).await
    }
    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome> {
        (**self).shrink(ids).await
    }
    async fn verify_access(&self) -> Result<AccessReport> {
        (**self).verify_access().await
    }
    async fn mark_draining(&self, ids: &[InstanceId], since: SystemTime) -> Result<()> {
        (**self).mark_draining(ids, since).await
    }
}

#[async_trait]
impl CloudAdapter for Box<dyn CloudAdapter> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn read_fleet(&self) -> Result<Fleet> {
        (**self).read_fleet().await
    }
    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome> {
        (**self).grow(count, token).await
    }
    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome> {
        (**self).shrink(ids).await
    }
    async fn verify_access(&self) -> Result<AccessReport> {
        (**self).verify_access().await
    }
    async fn mark_draining(&self, ids: &[InstanceId], since: SystemTime) -> Result<()> {
        (**self).mark_draining(ids, since).await
    }
}
