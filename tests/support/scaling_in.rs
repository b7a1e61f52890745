//! The controller the drain tests scale in with: target tracking at utilisation 1.0 over
//! a trace signal, one-minute ticks, nothing lagging, so a fall in demand becomes one
//! scale-in once the policy's window has passed.

// Each test file uses part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleetscale::controller::{ControllerParts, FleetController};
use fleetscale::guards::GuardConfig;
use fleetscale::signal::NamedSignal;
use fleetscale::signal::trace::TraceSignal;
use fleetscale_adapters::{CloudAdapter, ManualClock};
use fleetscale_policies::PolicyConfig;

pub const TICK: Duration = Duration::from_secs(60);

/// A controller of fleet `name` over `adapter`, asked for `demand` (instances, one value
/// per tick from `start`), never above `max` instances, deciding over `history_steps`.
pub fn controller(
    name: &str,
    adapter: Box<dyn CloudAdapter>,
    clock: &ManualClock,
    start: SystemTime,
    demand: &[f64],
    max: u32,
    history_steps: usize,
) -> FleetController {
    let signal = TraceSignal::new(demand, 1.0, start, TICK, false);
    FleetController::new(ControllerParts {
        name: name.into(),
        adapter,
        signals: vec![NamedSignal {
            name: "trace".into(),
            source: Box::new(signal),
        }],
        policy: PolicyConfig::from_name("target-tracking")
            .expect("a policy")
            .with_knob(1.0)
            .expect("a knob")
            .build(),
        guards: GuardConfig {
            read_lag: Some(Duration::ZERO),
            ..GuardConfig::with_max(max)
        },
        clock: Arc::new(clock.clone()),
        step: TICK,
        boot_delay: Duration::from_secs(60),
        metrics: None,
        history_steps,
    })
}

/// Demand of 4 instances for two ticks, then 1: one scale-in of three, once target
/// tracking's 5-minute window has passed.
pub fn four_then_one() -> Vec<f64> {
    [vec![4.0; 2], vec![1.0; 40]].concat()
}

/// Advances the clock a tick and runs one, which must not fail.
pub async fn step(
    clock: &ManualClock,
    controller: &mut FleetController,
) -> fleetscale::controller::TickReport {
    clock.advance(TICK);
    let report = controller.tick().await;
    assert!(report.error.is_none(), "{report:?}");
    report
}

/// Runs ticks until the scale-in of [`four_then_one`] begins: three instances marked and
/// draining, none removed yet.
pub async fn until_three_drain(clock: &ManualClock, controller: &mut FleetController) {
    for _ in 0..12 {
        let report = step(clock, controller).await;
        if let fleetscale::controller::Action::Shrink {
            removed, draining, ..
        } = report.action
        {
            assert_eq!((removed, draining), (0, 3), "{report:?}");
            return;
        }
    }
    panic!("no scale-in in 12 ticks");
}
