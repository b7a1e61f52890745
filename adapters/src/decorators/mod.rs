//! Behaviour shared by every backend, as decorators over [`CloudAdapter`](crate::CloudAdapter).
//!
//! Each decorator implements the whole trait over any adapter and passes the conformance
//! suite over the mock. A typical stack, outermost first:
//! `Retry<Metered<DryRun<Backend>>>` retries every failed attempt, meters each attempt
//! with its outcome, and in dry-run answers mutating calls from a virtual overlay without
//! ever reaching the backend's grow or shrink.

mod dry_run;
mod metered;
mod retry;

pub use dry_run::{DryRun, DryRunJournal, Intent};
pub use metered::{AdapterMetrics, Metered};
pub use retry::{MAX_RETRY_WAIT, Retry, RetryConfig};
