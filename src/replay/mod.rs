//! Replay: a recorded trace drives the real controller, with the mock cloud on a
//! simulated clock, under the benchmark's model (BENCHMARK.md):
//!
//! - at t = 0 the fleet holds `max(min, ceil(d_0))` serving instances;
//! - at the start of each step t >= 1 the controller decides, seeing demand 0..t-1;
//! - a launch at t serves from t + L (L = ceil(boot / step)) and is billed from t;
//! - a removal at t takes effect at once and is not billed for t.
//!
//! Under a realistic cloud ([`cloud::CloudScenario`]: `aws`, `hostile`, or a file) the
//! mock cloud on the same clock draws boot and termination times, read lag, failures,
//! throttling and deaths from a seed; the signal loses steps; and the agent is
//! restarted (a new controller, nothing kept in memory) every so many steps. What is
//! billed and served is counted from the cloud's truth, not from what reads show.

pub mod cloud;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleetscale_adapters::mock::MockCloud;
use fleetscale_adapters::{ManualClock, Retry, RetryConfig};
use fleetscale_policies::Policy;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;

use crate::controller::{Action, ControllerParts, FleetController};
use crate::guards::GuardConfig;
use crate::signal::trace::{TraceError, TraceSignal, load_column};
use cloud::CloudScenario;

/// The fleet ceiling when a run names none: high enough never to bind.
pub const UNBOUNDED_MAX: u32 = 1_000_000;

/// The benchmark's rule for crediting a baseline: its cheapest setting with at most this
/// much unserved demand, in percent.
pub const HEADLINE_UNSERVED_PCT: f64 = 0.1;

/// A trace in instance units, with the model's parameters.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub path: PathBuf,
    /// Demand per step, in instances.
    pub demand: Vec<f64>,
    pub step: Duration,
    pub boot: Duration,
    pub min: u32,
    pub max: u32,
}

impl Scenario {
    /// Loads `column` of `path`; errors name the file and line.
    pub fn load(
        path: &Path,
        column: &str,
        per_instance: f64,
        step: Duration,
        boot: Duration,
        min: u32,
        max: Option<u32>,
    ) -> Result<Self, TraceError> {
        let invalid = |message: String| TraceError::Invalid {
            path: path.to_owned(),
            message,
        };
        if !(per_instance.is_finite() && per_instance > 0.0) {
            return Err(invalid(format!(
                "--per-instance must be a positive number, not {per_instance}"
            )));
        }
        if step.is_zero() {
            return Err(invalid("--step must be longer than 0s".into()));
        }
        let demand: Vec<f64> = load_column(path, column)?
            .into_iter()
            .map(|v| v / per_instance)
            .collect();
        let scenario = Scenario {
            path: path.to_owned(),
            demand,
            step,
            boot,
            min: min.max(1),
            max: max.unwrap_or(UNBOUNDED_MAX),
        };
        let needed = scenario.boot_steps() as usize + 2;
        if scenario.demand.len() < needed {
            return Err(invalid(format!(
                "{} data rows, but a boot delay of {} steps needs at least {needed}",
                scenario.demand.len(),
                scenario.boot_steps()
            )));
        }
        if scenario.min > scenario.max {
            return Err(invalid(format!(
                "--min {} is above --max {}",
                scenario.min, scenario.max
            )));
        }
        Ok(scenario)
    }

    /// L: steps from launch to serving.
    pub fn boot_steps(&self) -> u32 {
        self.boot.as_nanos().div_ceil(self.step.as_nanos()) as u32
    }

    pub fn steps(&self) -> usize {
        self.demand.len()
    }

    /// The trace's peak, in whole instances.
    pub fn peak(&self) -> u32 {
        self.demand
            .iter()
            .fold(0.0_f64, |a, b| a.max(*b))
            .ceil()
            .max(self.min as f64) as u32
    }
}

/// What a policy did over a whole trace.
#[derive(Debug, Clone)]
pub struct Run {
    pub policy: String,
    pub setting: Option<f64>,
    /// The cloud scenario's name.
    pub scenario: String,
    /// Active instances (serving and booting) per step: what is billed.
    pub billed: Vec<u32>,
    pub serving: Vec<u32>,
    pub decide_times: Vec<Duration>,
    pub wall: Duration,
    pub safety: Safety,
}

/// BENCHMARK.md's safety counts that only the run itself can tell (zero-serving steps
/// and the worst hour are computed from `serving` in [`Figures`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Safety {
    /// Instances launched beyond the target the agent decided on.
    pub double_launches: u64,
    /// Instances removed (scale-in) while the signal was missing.
    pub blind_scale_ins: u64,
    /// Steps with more active instances than `max`, or fewer than `min` when the cloud
    /// allowed it: after a tick whose calls all went through, with no instance dead
    /// within the read lag (a launch that died before reads listed it is invisible).
    pub bound_violations: u64,
    /// Steps with demand and nothing serving after the agent itself removed the last
    /// serving instance (the rest of `zero_serving_steps` follow deaths, failed launches
    /// and slow boots: the cloud's doing).
    pub agent_zero_serving_steps: u64,
    /// Ticks whose adapter call failed (after the retries every agent makes).
    pub failed_ticks: u64,
    /// Agent restarts.
    pub restarts: u64,
}

/// How one replay is run: the cloud, its seed, and the fleet at the start.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    pub cloud: &'a CloudScenario,
    pub seed: u64,
    /// Serving instances at the start; default `ceil(d_0 * start_fraction)`.
    pub initial: Option<u32>,
}

impl Setup<'_> {
    /// BENCHMARK.md's ideal model.
    pub fn ideal() -> Setup<'static> {
        static IDEAL: std::sync::OnceLock<CloudScenario> = std::sync::OnceLock::new();
        Setup {
            cloud: IDEAL.get_or_init(CloudScenario::ideal),
            seed: 1,
            initial: None,
        }
    }
}

/// Plays `scenario` through the real controller with the policies `policy` builds (one
/// at the start and one at each restart), from the model's fleet of
/// `max(min, ceil(d_0))` in the ideal cloud. `progress` is told the number of steps
/// done now and then.
pub fn run(
    scenario: &Scenario,
    name: &str,
    setting: Option<f64>,
    policy: &dyn Fn() -> Box<dyn Policy>,
    progress: &(dyn Fn(u64) + Sync),
) -> Run {
    run_in(scenario, &Setup::ideal(), name, setting, policy, progress)
}

/// [`run`] in the cloud and from the fleet that `setup` says.
pub fn run_in(
    scenario: &Scenario,
    setup: &Setup<'_>,
    name: &str,
    setting: Option<f64>,
    policy: &dyn Fn() -> Box<dyn Policy>,
    progress: &(dyn Fn(u64) + Sync),
) -> Run {
    // Paused: the retry decorator's waits pass at once, as the simulated clock's steps do.
    #[allow(clippy::expect_used)] // building fails only on opening the IO driver, which is off
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(run_async(scenario, setup, name, setting, policy, progress))
}

async fn run_async(
    scenario: &Scenario,
    setup: &Setup<'_>,
    name: &str,
    setting: Option<f64>,
    make_policy: &dyn Fn() -> Box<dyn Policy>,
    progress: &(dyn Fn(u64) + Sync),
) -> Run {
    let started = Instant::now();
    let cloud = setup.cloud;
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let clock = ManualClock::new(start);
    let boot_delay = scenario.step * scenario.boot_steps();
    let mock = MockCloud::new(
        cloud.mock(scenario.step, boot_delay, setup.seed),
        Arc::new(clock.clone()),
    );
    // An empty trace (never loaded: it has at least two rows) starts at the minimum.
    let first_demand = scenario.demand.first().copied().unwrap_or(0.0);
    let initial = setup.initial.unwrap_or_else(|| {
        ((first_demand * cloud.start_fraction).ceil() as u32).clamp(scenario.min, scenario.max)
    });
    mock.seed_serving(initial);
    let lost = cloud.missing_steps(scenario.steps(), scenario.step, setup.seed);
    let mut guards = GuardConfig::with_max(scenario.max);
    guards.min = scenario.min;
    guards.read_lag = Some(cloud.read_lag(scenario.step));
    if cloud.is_ideal() {
        // The benchmark's instances never fail: a stuck-boot deadline must never fire.
        guards.max_boot_time = boot_delay + scenario.step * 2;
    }
    let mut restarts = 0u64;
    let build = |restarts: u64| {
        let signal = TraceSignal::new(&scenario.demand, 1.0, start, scenario.step, false)
            .losing_rows(lost.clone());
        let jitter = SmallRng::seed_from_u64(setup.seed.wrapping_add(restarts));
        FleetController::new(ControllerParts {
            name: name.to_string(),
            adapter: Box::new(Retry::with_rng(
                mock.clone(),
                RetryConfig::default(),
                jitter,
            )),
            signals: vec![crate::signal::NamedSignal {
                name: "trace".into(),
                source: Box::new(signal),
            }],
            policy: make_policy(),
            guards: guards.clone(),
            clock: Arc::new(clock.clone()),
            step: scenario.step,
            boot_delay,
            metrics: None,
            history_steps: crate::controller::MAX_HISTORY
                .min((14 * 86_400 / scenario.step.as_secs().max(1)) as usize),
        })
    };
    let with_drains = |mut controller: FleetController| {
        if let Some([low, high]) = cloud.drain {
            let times = [low.at(scenario.step), high.at(scenario.step)];
            let drain = crate::drain::simulated::SimulatedDrain::new(
                Arc::new(clock.clone()),
                times,
                setup.seed,
            );
            controller.drain_with(crate::drain::Drains {
                drains: vec![Box::new(drain)],
                timeout: cloud.drain_timeout.at(scenario.step),
            });
        }
        controller
    };
    let mut controller = with_drains(build(0));

    let steps = scenario.steps();
    let mut billed = Vec::with_capacity(steps);
    let mut serving = Vec::with_capacity(steps);
    let mut decide_times = Vec::with_capacity(steps);
    let mut safety = Safety::default();
    billed.push(initial);
    serving.push(initial);
    // Whether the current stretch of nothing serving began with the agent's scale-in.
    let mut zero_by_agent = false;
    let lag_steps = cloud.read_lag(scenario.step).as_nanos() / scenario.step.as_nanos().max(1);
    let mut last_death: Option<usize> = None;
    let mut died = 0;
    for (t, &demand_now) in scenario.demand.iter().enumerate().skip(1) {
        clock.set(start + scenario.step * t as u32);
        if cloud.restart_every > 0 && (t as u64).is_multiple_of(cloud.restart_every) {
            restarts += 1;
            controller = with_drains(build(restarts));
        }
        let before = mock.truth();
        let launched_before = mock.stats().launched;
        let report = controller.tick().await;
        let launched = mock.stats().launched - launched_before;
        if let Some(applied) = report.applied {
            let wanted = u64::from(applied.saturating_sub(before.active()));
            safety.double_launches += launched.saturating_sub(wanted);
        }
        if report.signal_error.is_some()
            && let Action::Shrink {
                removed, draining, ..
            } = report.action
        {
            safety.blind_scale_ins += u64::from(removed + draining);
        }
        if report.error.is_some() {
            safety.failed_ticks += 1;
        }
        decide_times.push(report.decide_time);
        let after = mock.truth();
        let died_now = mock.stats().died;
        if died_now > died {
            last_death = Some(t);
            died = died_now;
        }
        let death_unseen = last_death.is_some_and(|d| (t - d) as u128 <= lag_steps + 1);
        if after.active() > scenario.max
            || (after.active() < scenario.min && report.error.is_none() && !death_unseen)
        {
            safety.bound_violations += 1;
        }
        if after.serving == 0 && before.serving > 0 {
            zero_by_agent = report.drained > 0
                || matches!(report.action, Action::Shrink { removed, draining, .. } if removed + draining > 0);
        }
        if after.serving == 0 && demand_now > 0.0 && zero_by_agent {
            safety.agent_zero_serving_steps += 1;
        }
        billed.push(after.active() + after.draining);
        serving.push(after.serving);
        if t % 4096 == 0 {
            progress(4096);
        }
    }
    progress((steps as u64 - 1) % 4096);
    safety.restarts = restarts;
    Run {
        policy: name.to_string(),
        setting,
        scenario: cloud.name.clone(),
        billed,
        serving,
        decide_times,
        wall: started.elapsed(),
        safety,
    }
}

/// BENCHMARK.md's figures for one run.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Figures {
    pub scenario: String,
    pub policy: String,
    pub setting: Option<f64>,
    pub instance_minutes: f64,
    pub unserved_pct: f64,
    pub under_time_pct: f64,
    pub over_provisioning_pct: f64,
    pub actions: u64,
    pub cost_ratio: f64,
    pub oracle_instance_minutes: f64,
    pub decide_ms_median: f64,
    pub decide_ms_p99: f64,
    pub decide_s_total: f64,
    pub wall_s: f64,
    /// Steps with demand and nothing serving.
    pub zero_serving_steps: u64,
    /// Those of them that began with the agent's own scale-in.
    pub agent_zero_serving_steps: u64,
    /// The lowest share of demand served over any hour (1: all of it, always).
    pub worst_hour_served: f64,
    pub double_launches: u64,
    pub blind_scale_ins: u64,
    pub bound_violations: u64,
    pub failed_ticks: u64,
    pub restarts: u64,
}

/// The lowest ratio, over any `window` consecutive steps with demand, of demand served
/// to demand.
fn worst_window_served(demand: &[f64], serving: &[u32], window: usize) -> f64 {
    let served: Vec<f64> = demand
        .iter()
        .zip(serving)
        .map(|(d, s)| d.min(f64::from(*s)).max(0.0))
        .collect();
    let window = window.clamp(1, demand.len().max(1));
    let (mut want, mut got) = (0.0, 0.0);
    let mut worst: f64 = 1.0;
    for (t, (demand_now, served_now)) in demand.iter().zip(&served).enumerate() {
        want += demand_now.max(0.0);
        got += served_now;
        // The step `window` before this one leaves the window.
        let left = t
            .checked_sub(window)
            .and_then(|then| Some((demand.get(then)?, served.get(then)?)));
        if let Some((demand_then, served_then)) = left {
            want -= demand_then.max(0.0);
            got -= served_then;
        }
        if t + 1 >= window && want > 1e-9 {
            worst = worst.min((got / want).clamp(0.0, 1.0));
        }
    }
    worst
}

impl Figures {
    pub fn of(run: &Run, scenario: &Scenario, oracle_instance_minutes: f64) -> Figures {
        let minutes = scenario.step.as_secs_f64() / 60.0;
        let demand = &scenario.demand;
        let instance_minutes = run.billed.iter().map(|b| f64::from(*b)).sum::<f64>() * minutes;
        let total_demand: f64 = demand.iter().sum();
        let unserved: f64 = demand
            .iter()
            .zip(&run.serving)
            .map(|(d, s)| (d - f64::from(*s)).max(0.0))
            .sum();
        let under = demand
            .iter()
            .zip(&run.serving)
            .filter(|(d, s)| f64::from(**s) < **d)
            .count();
        let over: f64 = demand
            .iter()
            .zip(&run.serving)
            .filter(|(d, _)| **d > 0.0)
            .map(|(d, s)| (f64::from(*s) - d).max(0.0) / d)
            .sum();
        let actions = run
            .billed
            .iter()
            .zip(run.billed.iter().skip(1))
            .filter(|(before, after)| before != after)
            .count() as u64;
        let mut ms: Vec<f64> = run
            .decide_times
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            let rank = (ms.len().saturating_sub(1) as f64 * q).round() as usize;
            ms.get(rank).copied().unwrap_or(0.0)
        };
        let steps = demand.len() as f64;
        let zero_serving_steps = demand
            .iter()
            .zip(&run.serving)
            .filter(|(d, s)| **d > 0.0 && **s == 0)
            .count() as u64;
        let hour = (3600.0 / scenario.step.as_secs_f64().max(1e-3)).ceil() as usize;
        Figures {
            scenario: run.scenario.clone(),
            policy: run.policy.clone(),
            setting: run.setting,
            instance_minutes,
            unserved_pct: if total_demand > 0.0 {
                100.0 * unserved / total_demand
            } else {
                0.0
            },
            under_time_pct: 100.0 * under as f64 / steps,
            over_provisioning_pct: 100.0 * over / steps,
            actions,
            cost_ratio: instance_minutes / oracle_instance_minutes,
            oracle_instance_minutes,
            decide_ms_median: quantile(0.5),
            decide_ms_p99: quantile(0.99),
            decide_s_total: ms.iter().sum::<f64>() / 1e3,
            wall_s: run.wall.as_secs_f64(),
            zero_serving_steps,
            agent_zero_serving_steps: run.safety.agent_zero_serving_steps,
            worst_hour_served: worst_window_served(demand, &run.serving, hour),
            double_launches: run.safety.double_launches,
            blind_scale_ins: run.safety.blind_scale_ins,
            bound_violations: run.safety.bound_violations,
            failed_ticks: run.safety.failed_ticks,
            restarts: run.safety.restarts,
        }
    }
}

/// From a sweep, the cheapest setting within the headline's unserved limit, per policy.
pub fn best_settings(figures: &[Figures]) -> Vec<Figures> {
    let mut best: Vec<Figures> = Vec::new();
    for f in figures
        .iter()
        .filter(|f| f.unserved_pct <= HEADLINE_UNSERVED_PCT)
    {
        match best.iter_mut().find(|b| b.policy == f.policy) {
            Some(b) if f.instance_minutes < b.instance_minutes => *b = f.clone(),
            Some(_) => {}
            None => best.push(f.clone()),
        }
    }
    best
}

/// A human-readable table.
pub fn table(figures: &[Figures]) -> String {
    let safety = figures.iter().any(|f| f.scenario != "ideal");
    let mut out = format!(
        "{:<18} {:>8} {:>16} {:>10} {:>9} {:>9} {:>8} {:>10} {:>11} {:>10} {:>8}",
        "policy",
        "setting",
        "instance-min",
        "unserved%",
        "under%",
        "over%",
        "actions",
        "cost-ratio",
        "decide-med",
        "decide-p99",
        "wall"
    );
    if safety {
        out.push_str(&format!(
            " {:>13} {:>10} {:>7} {:>6} {:>7}",
            "zero-srv(agt)", "worst-hour", "double", "blind", "bounds"
        ));
    }
    out.push('\n');
    for f in figures {
        let setting = f
            .setting
            .map(|s| format!("{s}"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<18} {:>8} {:>16.0} {:>10.4} {:>9.3} {:>9.2} {:>8} {:>10.4} {:>9.4}ms {:>8.4}ms {:>7.2}s",
            f.policy,
            setting,
            f.instance_minutes,
            f.unserved_pct,
            f.under_time_pct,
            f.over_provisioning_pct,
            f.actions,
            f.cost_ratio,
            f.decide_ms_median,
            f.decide_ms_p99,
            f.wall_s
        ));
        if safety {
            out.push_str(&format!(
                " {:>13} {:>10.4} {:>7} {:>6} {:>7}",
                format!("{}({})", f.zero_serving_steps, f.agent_zero_serving_steps),
                f.worst_hour_served,
                f.double_launches,
                f.blind_scale_ins,
                f.bound_violations
            ));
        }
        out.push('\n');
    }
    if let Some(f) = figures.first() {
        out.push_str(&format!(
            "oracle (perfect foresight, nothing unserved): {:.0} instance-minutes\n",
            f.oracle_instance_minutes
        ));
    }
    out
}

/// CSV with a header row.
pub fn csv(figures: &[Figures]) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for f in figures {
        writer.serialize(f)?;
    }
    let bytes = writer.into_inner().map_err(|e| e.into_error())?;
    // Serialised from Rust strings and numbers, the bytes are UTF-8: nothing is replaced.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
