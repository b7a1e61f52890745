//! fleetscale: an autoscaling agent for virtual-machine fleets.
//!
//! The agent reads a signal of how much work a fleet has ([`signal`]), asks a policy
//! (crate `fleetscale-policies`) for a fleet size, passes it through [`guards`], and acts
//! through a `CloudAdapter` (crate `fleetscale-adapters`), one [`controller`] per fleet.
//! [`replay`] drives the same controller from a recorded trace on a simulated clock.

pub mod account;
pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod coordination;
pub mod drain;
pub mod guards;
pub mod operator;
pub mod plot;
pub mod replay;
pub mod scale_in;
pub mod schedule;
pub mod signal;
pub mod telemetry;
