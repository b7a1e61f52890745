//! Forecasters, the DP planner, the benchmark's oracle and the baseline policies.
//!
//! Pure decision code: nothing here does I/O, reads a clock or awaits. Every input is an
//! argument, so policies are tested by properties and replayed deterministically.

pub mod baselines;
pub mod dp;
pub mod forecast;
pub mod oracle;
pub mod outage;
pub mod planner;
mod policy;
mod registry;

pub use oracle::{OracleError, OraclePolicy, OracleSchedule};
pub use planner::{DpConfig, DpPlanner};
pub use policy::{Bounds, Decision, Observation, Plan, Policy};
pub use registry::{PolicyConfig, PolicyKind};
