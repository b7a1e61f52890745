//! The controller against the mock cloud, on a paused tokio clock: each test drives ticks
//! and asserts on what the cloud and the reports show.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use fleetscale::controller::{Action, ControllerParts, FleetController, TickReport};
use fleetscale::guards::GuardConfig;
use fleetscale::signal::trace::TraceSignal;
use fleetscale::signal::{NamedSignal, SignalError, SignalSource};
use fleetscale::telemetry::Metrics;
use fleetscale_adapters::mock::{MockCloud, MockConfig};
use fleetscale_adapters::{Clock, CloudAdapter, DryRun, InstanceState, TokioClock};
use fleetscale_policies::PolicyConfig;

const TICK: Duration = Duration::from_secs(60);
const BOOT: Duration = Duration::from_secs(180);

/// A trace signal that can be switched off, to stage an outage.
#[derive(Debug)]
struct Switchable {
    inner: TraceSignal,
    down: Arc<AtomicBool>,
}

#[async_trait]
impl SignalSource for Switchable {
    fn kind(&self) -> &'static str {
        "switchable"
    }
    async fn history(
        &mut self,
        now: SystemTime,
        step: Duration,
        steps: usize,
        serving: u32,
    ) -> Result<Vec<f64>, SignalError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SignalError::Unavailable("switched off".into()));
        }
        self.inner.history(now, step, steps, serving).await
    }
    async fn latest(&mut self, now: SystemTime, serving: u32) -> Result<f64, SignalError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SignalError::Unavailable("switched off".into()));
        }
        self.inner.latest(now, serving).await
    }
}

struct Rig {
    /// When the rig's signal starts.
    start: SystemTime,
    mock: MockCloud,
    controller: FleetController,
    signal_down: Arc<AtomicBool>,
    metrics: Metrics,
}

fn named(name: &str, source: impl SignalSource + 'static) -> NamedSignal {
    NamedSignal {
        name: name.into(),
        source: Box::new(source),
    }
}

fn mock_config(initial: u32) -> MockConfig {
    MockConfig {
        initial_size: initial,
        ..MockConfig::for_replay(BOOT)
    }
}

fn target_tracking(rho: f64) -> PolicyConfig {
    PolicyConfig::from_name("target-tracking")
        .unwrap()
        .with_knob(rho)
        .unwrap()
}

/// A controller over `adapter` (normally the rig's mock) playing `demand`, in instances,
/// one value per tick.
fn rig_with(
    demand: &[f64],
    guards: GuardConfig,
    policy: PolicyConfig,
    mock: MockCloud,
    adapter: Box<dyn CloudAdapter>,
    clock: Arc<dyn Clock>,
) -> Rig {
    let start = clock.now();
    rig_from(demand, start, guards, policy, mock, adapter, clock)
}

/// [`rig_with`] for a signal that started at `start`.
fn rig_from(
    demand: &[f64],
    start: SystemTime,
    guards: GuardConfig,
    policy: PolicyConfig,
    mock: MockCloud,
    adapter: Box<dyn CloudAdapter>,
    clock: Arc<dyn Clock>,
) -> Rig {
    let signal_down = Arc::new(AtomicBool::new(false));
    let signal = Switchable {
        inner: TraceSignal::new(demand, 1.0, start, TICK, false),
        down: signal_down.clone(),
    };
    let metrics = Metrics::new().unwrap();
    let controller = FleetController::new(ControllerParts {
        name: "web".into(),
        adapter,
        signals: vec![named("trace", signal)],
        policy: policy.build(),
        guards,
        clock,
        step: TICK,
        boot_delay: BOOT,
        metrics: Some(metrics.clone()),
        history_steps: 60,
    });
    Rig {
        start,
        mock,
        controller,
        signal_down,
        metrics,
    }
}

fn rig(demand: &[f64], guards: GuardConfig, policy: PolicyConfig, initial: u32) -> Rig {
    // This mock's reads never lag: no start-up hold is needed.
    let guards = GuardConfig {
        read_lag: Some(Duration::ZERO),
        ..guards
    };
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mock = MockCloud::new(mock_config(initial), clock.clone());
    rig_with(demand, guards, policy, mock.clone(), Box::new(mock), clock)
}

/// Advances the paused clock by a tick and runs one.
async fn step(rig: &mut Rig) -> TickReport {
    tokio::time::advance(TICK).await;
    rig.controller.tick().await
}

async fn billed(mock: &MockCloud) -> u32 {
    mock.read_fleet().await.unwrap().billed()
}

#[tokio::test(start_paused = true)]
async fn scales_up_under_rising_load_and_serves_it() {
    let demand: Vec<f64> = (0..40).map(|t| 2.0 + t.min(20) as f64).collect();
    let mut rig = rig(&demand, GuardConfig::with_max(100), target_tracking(0.8), 2);
    let mut sizes = Vec::new();
    for _ in 0..35 {
        let report = step(&mut rig).await;
        assert!(report.error.is_none(), "{report:?}");
        sizes.push(report.billed);
    }
    assert!(
        sizes.windows(2).all(|w| w[1] >= w[0]),
        "never shrinks while load rises: {sizes:?}"
    );
    let fleet = rig.mock.read_fleet().await.unwrap();
    // 22 instances of demand at rho 0.8 want 28, all serving by now.
    assert_eq!(fleet.serving(), 28, "{fleet:?}");
}

#[tokio::test(start_paused = true)]
async fn scales_in_only_after_the_stabilisation_window() {
    let demand = [vec![20.0; 10], vec![4.0; 30]].concat();
    let guards = GuardConfig {
        scale_down_stabilisation: Duration::from_secs(600),
        ..GuardConfig::with_max(100)
    };
    let mut rig = rig(&demand, guards, target_tracking(0.8), 25);
    for _ in 0..10 {
        step(&mut rig).await;
    }
    assert_eq!(billed(&rig.mock).await, 25);
    // Demand 4 is seen from the 11th tick; the window holds 25 for ten minutes.
    let mut shrunk_at = None;
    for k in 11..=30 {
        let report = step(&mut rig).await;
        if matches!(report.action, Action::Shrink { .. }) && shrunk_at.is_none() {
            shrunk_at = Some(k);
        }
        if k < 20 {
            assert_eq!(report.applied, Some(25), "tick {k}: {report:?}");
        }
    }
    let shrunk_at = shrunk_at.expect("it scales in eventually");
    assert!(
        shrunk_at >= 20,
        "scaled in at tick {shrunk_at}, inside the window"
    );
    assert_eq!(billed(&rig.mock).await, 5);
    let stabilised = rig
        .metrics
        .guard_interventions
        .with_label_values(&["web", "stabilisation"])
        .get();
    assert!(stabilised >= 5, "{stabilised}");
}

#[tokio::test(start_paused = true)]
async fn never_leaves_bounds_or_exceeds_step_limits() {
    // A rough load: seeded noise with bursts.
    let demand: Vec<f64> = (0..200u64)
        .map(|t| {
            let noise = ((t.wrapping_mul(2_654_435_761) % 1000) as f64) / 1000.0;
            if t % 50 < 5 {
                40.0 * noise + 20.0
            } else {
                10.0 * noise
            }
        })
        .collect();
    let guards = GuardConfig {
        min: 3,
        max: 12,
        max_step_up: Some(2),
        max_step_down: Some(1),
        ..GuardConfig::with_max(12)
    };
    let mut rig = rig(&demand, guards, target_tracking(0.6), 3);
    let mut previous = billed(&rig.mock).await;
    for _ in 0..190 {
        let report = step(&mut rig).await;
        let now = billed(&rig.mock).await;
        assert!((3..=12).contains(&now), "{now} outside [3, 12]");
        assert!(
            now <= previous + 2 && now + 1 >= previous,
            "{previous} -> {now}: {report:?}"
        );
        previous = now;
    }
    let guards_fired = rig
        .metrics
        .guard_interventions
        .with_label_values(&["web", "max_step_up"])
        .get()
        + rig
            .metrics
            .guard_interventions
            .with_label_values(&["web", "max"])
            .get();
    assert!(
        guards_fired > 0,
        "the load must have pushed against the limits"
    );
}

#[tokio::test(start_paused = true)]
async fn holds_through_a_signal_outage_then_follows_again() {
    let demand = [vec![20.0; 10], vec![2.0; 30]].concat();
    let mut rig = rig(
        &demand,
        GuardConfig::with_max(100),
        target_tracking(0.8),
        25,
    );
    for _ in 0..5 {
        step(&mut rig).await;
    }
    rig.signal_down.store(true, Ordering::SeqCst);
    for _ in 0..15 {
        let report = step(&mut rig).await;
        assert!(report.signal_error.is_some());
        assert_eq!(report.action, Action::None, "{report:?}");
        assert_eq!(
            billed(&rig.mock).await,
            25,
            "held: no scale-in without a signal"
        );
    }
    let errors = rig
        .metrics
        .signal_errors
        .with_label_values(&["web", "trace", "unavailable"])
        .get();
    assert_eq!(errors, 15);
    rig.signal_down.store(false, Ordering::SeqCst);
    for _ in 0..10 {
        step(&mut rig).await;
    }
    assert_eq!(
        billed(&rig.mock).await,
        3,
        "back to following demand 2 at rho 0.8"
    );
}

#[tokio::test(start_paused = true)]
async fn backs_off_suspends_and_recovers_when_the_cloud_fails() {
    let demand = vec![10.0; 80];
    let guards = GuardConfig {
        failure_limit: 3,
        suspend_for: Duration::from_secs(600),
        ..GuardConfig::with_max(100)
    };
    let mut rig = rig(&demand, guards, target_tracking(0.8), 2);
    rig.mock.faults().set_error_rate(1.0);
    let mut attempts = 0;
    for _ in 0..12 {
        let report = step(&mut rig).await;
        if report.error.is_some() {
            attempts += 1;
        }
    }
    // Three failures suspend the fleet; while suspended it does not call again (the fleet
    // read still fails each tick, but no grow is attempted).
    assert!(rig.controller.is_suspended());
    assert_eq!(rig.metrics.suspended.with_label_values(&["web"]).get(), 1);
    assert!(attempts >= 3);
    assert_eq!(rig.mock.calls().grow, 0);
    rig.mock.faults().set_error_rate(0.0);
    for _ in 0..15 {
        step(&mut rig).await;
    }
    assert!(!rig.controller.is_suspended());
    assert_eq!(rig.metrics.suspended.with_label_values(&["web"]).get(), 0);
    assert_eq!(
        billed(&rig.mock).await,
        13,
        "recovered and scaled to demand 10 at rho 0.8"
    );
}

#[tokio::test(start_paused = true)]
async fn replaces_instances_stuck_booting() {
    let demand = vec![8.0; 60];
    let guards = GuardConfig {
        max_boot_time: Duration::from_secs(600),
        ..GuardConfig::with_max(100)
    };
    let mut rig = rig(&demand, guards, target_tracking(0.8), 2);
    rig.mock.faults().set_never_boot_rate(1.0);
    step(&mut rig).await; // launches 8 that will never boot
    rig.mock.faults().set_never_boot_rate(0.0);
    let mut replaced = false;
    for _ in 0..20 {
        let report = step(&mut rig).await;
        replaced |= matches!(report.action, Action::ReplaceStuck { removed: 8 });
    }
    assert!(replaced, "stuck instances were removed");
    assert_eq!(
        rig.metrics.stuck_replaced.with_label_values(&["web"]).get(),
        8
    );
    let fleet = rig.mock.read_fleet().await.unwrap();
    assert_eq!(fleet.serving(), 10, "replacements booted: {fleet:?}");
}

/// The fleet's only instance never boots: its replacement is launched before it is
/// removed, so the fleet never has fewer than `min` instances alive (a removal first
/// left none for a tick, a bound violation the `hostile` replay counted).
#[tokio::test(start_paused = true)]
async fn a_fleet_at_min_launches_the_replacement_before_removing_the_stuck_instance() {
    let demand = vec![0.5; 60];
    let guards = GuardConfig {
        max_boot_time: Duration::from_secs(600),
        ..GuardConfig::with_max(100)
    };
    let mut rig = rig(&demand, guards, target_tracking(0.8), 0);
    rig.mock.faults().set_never_boot_rate(1.0);
    step(&mut rig).await; // launches min = 1, which never boots
    rig.mock.faults().set_never_boot_rate(0.0);
    let mut replaced = false;
    for _ in 0..30 {
        let report = step(&mut rig).await;
        replaced |= matches!(report.action, Action::ReplaceStuck { removed: 1 });
        let fleet = rig.mock.read_fleet().await.unwrap();
        let alive = fleet
            .instances
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Pending | InstanceState::Running))
            .count();
        assert!(
            alive >= 1,
            "fewer than min alive after {report:?}: {fleet:?}"
        );
    }
    assert!(replaced, "the stuck instance was removed");
    let fleet = rig.mock.read_fleet().await.unwrap();
    assert_eq!(fleet.serving(), 1, "the replacement serves: {fleet:?}");
}

#[tokio::test(start_paused = true)]
async fn scale_in_removes_booting_first_and_never_a_protected_instance() {
    // Demand jumps then collapses before the new instances have booted.
    let demand = [vec![4.0; 3], vec![16.0; 1], vec![1.0; 20]].concat();
    let mut rig = rig(&demand, GuardConfig::with_max(100), target_tracking(0.8), 5);
    let initial = rig.mock.read_fleet().await.unwrap();
    let protected = initial
        .instances
        .iter()
        .map(|i| i.id.clone())
        .max()
        .unwrap();
    rig.mock.protect(&protected);
    for _ in 0..4 {
        step(&mut rig).await;
    }
    let before = rig.mock.read_fleet().await.unwrap();
    assert!(before.booting() > 0, "{before:?}");
    // The collapse is seen now; target tracking's window delays it 5 minutes.
    for _ in 0..7 {
        step(&mut rig).await;
    }
    let after = rig.mock.read_fleet().await.unwrap();
    assert!(
        after.instances.iter().any(|i| i.id == protected),
        "the protected instance stays"
    );
    let launched_later: Vec<_> = before
        .instances
        .iter()
        .filter(|i| i.state == InstanceState::Pending)
        .map(|i| &i.id)
        .collect();
    for id in launched_later {
        assert!(
            !after.instances.iter().any(|i| &i.id == id),
            "booting instance {id} should go first"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn dry_run_makes_no_mutating_call() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mock = MockCloud::new(mock_config(2), clock.clone());
    let adapter = Box::new(DryRun::new(mock.clone(), clock.clone(), BOOT));
    let demand: Vec<f64> = (0..30)
        .map(|t| if t < 15 { 2.0 + t as f64 } else { 1.0 })
        .collect();
    let mut rig = rig_with(
        &demand,
        GuardConfig::with_max(100),
        target_tracking(0.8),
        mock.clone(),
        adapter,
        clock,
    );
    let mut intended = 0;
    for _ in 0..28 {
        let report = step(&mut rig).await;
        if matches!(report.action, Action::Grow { .. } | Action::Shrink { .. }) {
            intended += 1;
        }
    }
    assert!(intended >= 2, "the dry run intended to scale both ways");
    let calls = mock.calls();
    assert_eq!((calls.grow, calls.shrink), (0, 0), "{calls:?}");
    assert_eq!(billed(&mock).await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_lost_grow_response_or_a_restart_never_launches_twice() {
    let demand = vec![12.0; 20];
    let mut rig = rig(&demand, GuardConfig::with_max(100), target_tracking(0.8), 2);
    // The provider launches, but the answer never reaches us.
    rig.mock.faults().lose_next_responses(1);
    let report = step(&mut rig).await;
    assert!(report.error.is_some(), "{report:?}");
    assert_eq!(billed(&rig.mock).await, 15);
    // A fresh controller (a restarted agent) on the same cloud reads what is there.
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mut restarted = rig_with(
        &demand,
        GuardConfig::with_max(100),
        target_tracking(0.8),
        rig.mock.clone(),
        Box::new(rig.mock.clone()),
        clock,
    );
    for _ in 0..3 {
        let report = step(&mut restarted).await;
        assert_eq!(report.action, Action::None, "{report:?}");
    }
    assert_eq!(billed(&rig.mock).await, 15);
    assert_eq!(rig.mock.calls().grow, 1);
}

#[tokio::test(start_paused = true)]
async fn the_fleet_loop_stops_between_ticks_when_told() {
    let rig = rig(
        &[5.0; 100],
        GuardConfig::with_max(100),
        target_tracking(0.8),
        2,
    );
    let mock = rig.mock.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let health = fleetscale::telemetry::Health::default();
    let task = tokio::spawn(fleetscale::agent::run_fleet(
        rig.controller,
        TICK,
        stopped,
        health.clone(),
    ));
    tokio::time::sleep(TICK * 5 + Duration::from_secs(1)).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops promptly")
        .unwrap();
    assert!(mock.calls().read_fleet >= 5);
    assert_eq!(billed(&mock).await, 7);
    assert!(health.snapshot()[0].healthy);
}

/// A rig over a mock cloud of the given settings.
fn rig_on(demand: &[f64], guards: GuardConfig, policy: PolicyConfig, config: MockConfig) -> Rig {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mock = MockCloud::new(config, clock.clone());
    rig_with(demand, guards, policy, mock.clone(), Box::new(mock), clock)
}

fn dp() -> PolicyConfig {
    PolicyConfig::from_name("dp").unwrap()
}

#[tokio::test(start_paused = true)]
async fn removed_instances_still_listed_are_not_removed_again_nor_counted() {
    // Removed instances stay Stopping for ten ticks, as EC2's `shutting-down` does.
    let demand = vec![8.0; 60];
    for policy in [dp(), target_tracking(0.8)] {
        let config = MockConfig {
            stop_delay: TICK * 10,
            ..mock_config(14)
        };
        let mut rig = rig_on(&demand, GuardConfig::with_max(100), policy, config);
        for k in 0..50 {
            let report = step(&mut rig).await;
            let truth = rig.mock.truth();
            assert!(
                truth.serving >= 8,
                "tick {k}: serving fell to {} for a demand of 8: {report:?}",
                truth.serving
            );
        }
        // Net of relaunches, no more than the 6 spare instances went; what is left is
        // what the demand needs, not what leaving instances seemed to be.
        let stats = rig.mock.stats();
        assert!(
            stats.removed <= 6 + stats.launched,
            "removed {} and launched {} of 14 for a demand of 8",
            stats.removed,
            stats.launched
        );
        let active = rig.mock.truth().active();
        assert!(
            (8..=12).contains(&active),
            "{active} active for a demand of 8"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_launch_reads_do_not_show_for_two_ticks_is_not_repeated() {
    let demand = vec![12.0; 20];
    let config = MockConfig {
        launch_read_lag: TICK * 2,
        seed: 3,
        ..mock_config(2)
    };
    let guards = GuardConfig {
        read_lag: Some(TICK * 2),
        ..GuardConfig::with_max(100)
    };
    let mut rig = rig_on(&demand, guards, target_tracking(0.8), config);
    for _ in 0..10 {
        let report = step(&mut rig).await;
        assert!(report.error.is_none(), "{report:?}");
        assert!(rig.mock.truth().active() <= 15, "{report:?}");
    }
    // 12 at rho 0.8 wants 15: 13 launched, once.
    assert_eq!(rig.mock.stats().launched, 13);
    assert_eq!(rig.mock.truth().serving, 15);
}

#[tokio::test(start_paused = true)]
async fn a_restart_while_a_launch_is_invisible_does_not_launch_again() {
    let demand = vec![12.0; 20];
    // The launch shows in reads only after 100 s: a restart in between reads the old fleet.
    let config = MockConfig {
        launch_read_lag: Duration::from_secs(100),
        ..mock_config(2)
    };
    let guards = GuardConfig {
        read_lag: Some(Duration::from_secs(100)),
        ..GuardConfig::with_max(100)
    };
    let mut rig = rig_on(&demand, guards.clone(), target_tracking(0.8), config);
    // Within `read_lag` of its start an agent grows no further than `min`.
    let report = step(&mut rig).await;
    assert_eq!(report.action, Action::None, "{report:?}");
    step(&mut rig).await;
    let report = step(&mut rig).await;
    assert_eq!(
        report.action,
        Action::Grow {
            requested: 13,
            launched: 13
        }
    );
    for policy in [target_tracking(0.7), target_tracking(0.8)] {
        // A fresh controller (nothing kept in memory) a second later, reading the fleet
        // without the launch; the first wants another target (18), the second the same.
        let mut restarted = rig_from(
            &demand,
            rig.start,
            guards.clone(),
            policy,
            rig.mock.clone(),
            Box::new(rig.mock.clone()),
            rig.mock.clock(),
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let report = restarted.controller.tick().await;
        assert_eq!(
            report.billed, 2,
            "the launch must still be unseen: {report:?}"
        );
        assert!(report.error.is_none(), "{report:?}");
        assert!(
            report
                .interventions
                .iter()
                .any(|i| i.guard == fleetscale::guards::Guard::StartUp),
            "{report:?}"
        );
        assert_eq!(rig.mock.stats().launched, 13, "{report:?}");
        rig = restarted;
    }
    for _ in 0..5 {
        step(&mut rig).await;
    }
    assert_eq!(rig.mock.stats().launched, 13);
    assert_eq!(rig.mock.truth().serving, 15);
}

#[tokio::test(start_paused = true)]
async fn a_fleet_that_returns_to_an_earlier_size_grows_again() {
    // Up, down to the very same instances, and up again: the second grow must launch.
    let demand = [vec![12.0; 10], vec![1.0; 10], vec![12.0; 10]].concat();
    let mut rig = rig(&demand, GuardConfig::with_max(100), target_tracking(0.8), 2);
    for _ in 0..29 {
        step(&mut rig).await;
    }
    assert_eq!(rig.mock.truth().serving, 15);
    assert_eq!(rig.mock.stats().launched, 13 + 13);
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_below_demand_catches_up_without_over_provisioning() {
    // dp started at half its demand with a few minutes of history.
    let demand = vec![21.0; 300];
    let mut rig = rig(&demand, GuardConfig::with_max(500), dp(), 10);
    let mut peak = 0;
    for k in 0..240 {
        let report = step(&mut rig).await;
        peak = peak.max(rig.mock.truth().active());
        if k >= 6 {
            assert!(
                rig.mock.truth().serving >= 21,
                "tick {k}: still short: {report:?}"
            );
        }
        if k >= 120 {
            assert!(
                rig.mock.truth().active() <= 28,
                "tick {k}: over-provisioned two hours on: {report:?}"
            );
        }
    }
    assert!(peak <= 2 * 21 + 2, "peaked at {peak} for a demand of 21");
}

#[tokio::test(start_paused = true)]
async fn an_outage_longer_than_the_stabilisation_window_does_not_end_in_a_sudden_scale_in() {
    let demand = [vec![20.0; 30], vec![4.0; 40]].concat();
    let guards = GuardConfig {
        scale_down_stabilisation: Duration::from_secs(300),
        ..GuardConfig::with_max(100)
    };
    let mut rig = rig(&demand, guards, target_tracking(0.8), 25);
    for _ in 0..10 {
        step(&mut rig).await;
    }
    rig.signal_down.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        step(&mut rig).await;
    }
    rig.signal_down.store(false, Ordering::SeqCst);
    // Demand is 4 now, but the window (5 minutes) holds what the outage held.
    for k in 0..4 {
        let report = step(&mut rig).await;
        assert!(report.signal_error.is_none(), "{report:?}");
        assert_eq!(
            report.applied,
            Some(25),
            "tick {k} after the outage: {report:?}"
        );
    }
    for _ in 0..10 {
        step(&mut rig).await;
    }
    assert_eq!(billed(&rig.mock).await, 5);
}

/// A policy that panics at its first decision.
#[derive(Debug)]
struct Panicking;

impl fleetscale_policies::Policy for Panicking {
    fn name(&self) -> &str {
        "panicking"
    }
    fn decide(
        &mut self,
        _: &fleetscale_policies::Observation<'_>,
    ) -> fleetscale_policies::Decision {
        panic!("a policy bug")
    }
}

#[tokio::test(start_paused = true)]
async fn a_fleet_that_panics_is_counted_shown_and_restarted_from_its_config() {
    use fleetscale::agent::{Rebuild, Wiring, supervise};
    use fleetscale::telemetry::Health;
    let config = fleetscale::config::Config::parse(
        "[agent]\ntick = \"10s\"\n[[fleets]]\nname = \"web\"\n[fleets.adapter]\nkind = \"mock\"\n\
         initial_size = 2\n[fleets.signal]\nkind = \"synthetic\"\n[fleets.guards]\nmax = 10\n",
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let fleet = &config.fleets[0];
    let signals = fleetscale::agent::build_signals(fleet, clock.as_ref()).unwrap();
    let metrics = Metrics::new().unwrap();
    let first = FleetController::new(ControllerParts {
        name: "web".into(),
        adapter: Box::new(MockCloud::new(mock_config(2), clock.clone())),
        signals,
        policy: Box::new(Panicking),
        guards: GuardConfig::with_max(10),
        clock: clock.clone(),
        step: config.agent.tick,
        boot_delay: BOOT,
        metrics: Some(metrics.clone()),
        history_steps: 60,
    });
    let health = Health::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let rebuild = Rebuild {
        fleet: fleet.clone(),
        agent: config.agent.clone(),
        wiring: Wiring { dry_run: false },
        clock,
    };
    let task = tokio::spawn(supervise(
        first,
        rebuild,
        metrics.clone(),
        stopped,
        health.clone(),
    ));
    let line = || health.snapshot().into_iter().find(|h| h.fleet == "web");
    let mut seen_panic = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match line() {
            Some(h) if !h.healthy && h.detail.contains("panicked (a policy bug)") => {
                seen_panic = true
            }
            Some(h) if h.healthy && seen_panic => break,
            _ => {}
        }
    }
    assert!(seen_panic, "the panic was never shown: {:?}", line());
    let after = line().unwrap();
    assert!(after.healthy, "not restarted: {after:?}");
    assert!(
        metrics
            .render()
            .unwrap()
            .contains("fleetscale_fleet_panics_total{fleet=\"web\"} 1"),
        "{}",
        metrics.render().unwrap()
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// A policy that keeps the demand history of each observation and holds the fleet.
#[derive(Debug)]
struct Recording(Arc<std::sync::Mutex<Vec<Vec<f64>>>>);

impl fleetscale_policies::Policy for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    fn decide(
        &mut self,
        obs: &fleetscale_policies::Observation<'_>,
    ) -> fleetscale_policies::Decision {
        self.0.lock().unwrap().push(obs.demand.to_vec());
        fleetscale_policies::Decision::new(obs.active, "recorded")
    }
}

#[tokio::test(start_paused = true)]
async fn a_late_tick_fills_the_steps_it_missed_from_the_signal() {
    // Demand t at step t: a history kept by time reads 0, 1, 2, ... without a break.
    let demand: Vec<f64> = (0..100).map(f64::from).collect();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let start = clock.now();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut controller = FleetController::new(ControllerParts {
        name: "web".into(),
        adapter: Box::new(MockCloud::new(mock_config(2), clock.clone())),
        signals: vec![named(
            "trace",
            TraceSignal::new(&demand, 1.0, start, TICK, false),
        )],
        policy: Box::new(Recording(seen.clone())),
        guards: GuardConfig {
            read_lag: Some(Duration::ZERO),
            ..GuardConfig::with_max(10)
        },
        clock,
        step: TICK,
        boot_delay: BOOT,
        metrics: None,
        history_steps: 60,
    });
    for wait in [5, 1, 1, 4, 1] {
        // The fourth tick comes three steps late (a slow call held the one before).
        tokio::time::advance(TICK * wait).await;
        controller.tick().await;
    }
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.last().copied(), Some(11.0), "{last:?}");
    assert!(
        last.windows(2).all(|w| w[1] == w[0] + 1.0),
        "the history has a break: {last:?}"
    );
}

/// A controller over a fresh mock of `initial` instances (reads never lag) with `signals`.
fn several(
    signals: Vec<NamedSignal>,
    policy: Box<dyn fleetscale_policies::Policy>,
    initial: u32,
    clock: Arc<dyn Clock>,
    metrics: Option<Metrics>,
) -> (MockCloud, FleetController) {
    let mock = MockCloud::new(mock_config(initial), clock.clone());
    let controller = FleetController::new(ControllerParts {
        name: "web".into(),
        adapter: Box::new(mock.clone()),
        signals,
        policy,
        guards: GuardConfig {
            read_lag: Some(Duration::ZERO),
            ..GuardConfig::with_max(100)
        },
        clock,
        step: TICK,
        boot_delay: BOOT,
        metrics,
        history_steps: 60,
    });
    (mock, controller)
}

#[tokio::test(start_paused = true)]
async fn the_policy_sees_the_step_wise_largest_of_the_signals_warm_up_included() {
    // Two signals that cross: neither alone is the larger throughout.
    let rising: Vec<f64> = (0..40).map(f64::from).collect();
    let falling: Vec<f64> = (0..40)
        .map(|t| 30.0 - f64::from(t))
        .map(|d| d.max(0.0))
        .collect();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let start = clock.now();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_, mut controller) = several(
        vec![
            named("rising", TraceSignal::new(&rising, 1.0, start, TICK, false)),
            named(
                "falling",
                TraceSignal::new(&falling, 1.0, start, TICK, false),
            ),
        ],
        Box::new(Recording(seen.clone())),
        2,
        clock,
        None,
    );
    // Ten steps of history at start, then a tick a step.
    tokio::time::advance(TICK * 10).await;
    let first = controller.tick().await;
    // The step that has ended at t = 10 is step 9: falling reads 21, rising 9.
    assert_eq!(first.observed, Some(21.0), "{first:?}");
    for _ in 0..20 {
        tokio::time::advance(TICK).await;
        let report = controller.tick().await;
        let demands: Vec<Option<f64>> = report.signals.iter().map(|s| s.demand).collect();
        let largest = demands.iter().flatten().copied().fold(f64::MIN, f64::max);
        assert_eq!(report.observed, Some(largest), "{report:?}");
    }
    let last = seen.lock().unwrap().last().cloned().unwrap();
    let expected: Vec<f64> = (0..30).map(|t| rising[t].max(falling[t])).collect();
    assert_eq!(last, expected, "the history is not the step-wise largest");
}

#[tokio::test(start_paused = true)]
async fn the_larger_signal_drives_the_planner() {
    // The dp planner on a small signal and a large one plans as on the large one alone.
    let small = vec![3.0; 60];
    let large: Vec<f64> = (0..60).map(|t| 8.0 + f64::from(t % 7)).collect();
    let run = |signals: Vec<(&'static str, Vec<f64>)>| async move {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
        let start = clock.now();
        let signals = signals
            .into_iter()
            .map(|(name, d)| named(name, TraceSignal::new(&d, 1.0, start, TICK, false)))
            .collect();
        let (mock, mut controller) = several(signals, dp().build(), 2, clock, None);
        tokio::time::advance(TICK * 20).await;
        let mut applied = Vec::new();
        for _ in 0..20 {
            tokio::time::advance(TICK).await;
            applied.push(controller.tick().await.applied);
        }
        (applied, billed(&mock).await)
    };
    let (both, both_billed) = run(vec![("small", small.clone()), ("large", large.clone())]).await;
    let (alone, alone_billed) = run(vec![("large", large)]).await;
    let (small_alone, _) = run(vec![("small", small)]).await;
    assert_eq!(both, alone, "the planner did not follow the larger signal");
    assert_eq!(both_billed, alone_billed);
    assert!(both_billed >= 8, "{both_billed}");
    assert_ne!(both, small_alone, "the test cannot tell the signals apart");
}

#[tokio::test(start_paused = true)]
async fn a_failing_signal_holds_scale_in_but_not_scale_up_and_says_which() {
    // The queue's demand falls from 20 to 2, rises to 30, then falls to 2 again; the CPU
    // signal asks for 1 and fails from tick 5 to tick 24.
    let queue = [vec![20.0; 10], vec![2.0; 8], vec![30.0; 12], vec![2.0; 40]].concat();
    let cpu = vec![1.0; 70];
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let start = clock.now();
    let cpu_down = Arc::new(AtomicBool::new(false));
    let metrics = Metrics::new().unwrap();
    let (mock, mut controller) = several(
        vec![
            named("queue", TraceSignal::new(&queue, 1.0, start, TICK, false)),
            named(
                "cpu",
                Switchable {
                    inner: TraceSignal::new(&cpu, 1.0, start, TICK, false),
                    down: cpu_down.clone(),
                },
            ),
        ],
        target_tracking(1.0).build(),
        25,
        clock,
        Some(metrics.clone()),
    );
    let mut tick = async || {
        tokio::time::advance(TICK).await;
        controller.tick().await
    };
    for _ in 0..5 {
        tick().await;
    }
    cpu_down.store(true, Ordering::SeqCst);
    let mut grew = false;
    let mut before = billed(&mock).await;
    for t in 5..25 {
        let report = tick().await;
        let now = billed(&mock).await;
        assert!(
            now >= before,
            "tick {t}: scaled in while cpu fails: {report:?}"
        );
        grew |= now > before;
        before = now;
        assert!(
            report.reason.contains("\"cpu\"") && report.reason.contains("no scale-in"),
            "tick {t}: the reason does not name the failing signal: {}",
            report.reason
        );
        let cpu = report.signals.iter().find(|s| s.name == "cpu").unwrap();
        assert!(cpu.demand.is_none() && cpu.error.as_deref().unwrap().contains("switched off"));
        let queue = report.signals.iter().find(|s| s.name == "queue").unwrap();
        assert_eq!(report.observed, queue.demand, "{report:?}");
    }
    assert!(
        grew,
        "the queue's rise to 30 was not followed while cpu failed"
    );
    assert_eq!(before, 30);
    assert_eq!(
        metrics
            .signal_errors
            .with_label_values(&["web", "cpu", "unavailable"])
            .get(),
        20
    );
    assert!(
        metrics
            .signal_demand
            .with_label_values(&["web", "cpu"])
            .get()
            .is_nan()
    );
    assert_eq!(
        metrics
            .signal_demand
            .with_label_values(&["web", "queue"])
            .get(),
        30.0
    );
    // Back: the fleet follows the queue down.
    cpu_down.store(false, Ordering::SeqCst);
    let mut last = None;
    for _ in 0..20 {
        last = Some(tick().await);
    }
    let last = last.unwrap();
    assert!(last.signal_error.is_none(), "{last:?}");
    assert_eq!(billed(&mock).await, 2, "{last:?}");
    assert_eq!(
        metrics
            .signal_demand
            .with_label_values(&["web", "cpu"])
            .get(),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_signal_back_from_an_outage_fills_its_gap_into_the_largest() {
    // `b` is the larger from step 12 to 16 while it is down; read back, it wins there.
    let a = vec![5.0; 40];
    let b: Vec<f64> = (0..40)
        .map(|t| if (12..17).contains(&t) { 9.0 } else { 1.0 })
        .collect();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let start = clock.now();
    let down = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_, mut controller) = several(
        vec![
            named("a", TraceSignal::new(&a, 1.0, start, TICK, false)),
            named(
                "b",
                Switchable {
                    inner: TraceSignal::new(&b, 1.0, start, TICK, false),
                    down: down.clone(),
                },
            ),
        ],
        Box::new(Recording(seen.clone())),
        2,
        clock,
        None,
    );
    tokio::time::advance(TICK * 10).await;
    controller.tick().await;
    down.store(true, Ordering::SeqCst);
    let mut during = Vec::new();
    for _ in 0..8 {
        tokio::time::advance(TICK).await;
        during.push(controller.tick().await.observed);
    }
    // While `b` is down the fleet's demand is `a`'s alone.
    assert!(during.iter().all(|d| *d == Some(5.0)), "{during:?}");
    down.store(false, Ordering::SeqCst);
    tokio::time::advance(TICK).await;
    controller.tick().await;
    let last = seen.lock().unwrap().last().cloned().unwrap();
    let expected: Vec<f64> = (0..19).map(|t| a[t].max(b[t])).collect();
    assert_eq!(last, expected);
}
