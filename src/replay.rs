//! Replay: a recorded trace drives the real controller, with the mock cloud on a
//! simulated clock, under the benchmark's model (BENCHMARK.md):
//!
//! - at t = 0 the fleet holds `max(min, ceil(d_0))` serving instances;
//! - at the start of each step t >= 1 the controller decides, seeing demand 0..t-1;
//! - a launch at t serves from t + L (L = ceil(boot / step)) and is billed from t;
//! - a removal at t takes effect at once and is not billed for t.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleetscale_adapters::mock::{MockCloud, MockConfig};
use fleetscale_adapters::{CloudAdapter, ManualClock};
use fleetscale_policies::Policy;
use serde::Serialize;

use crate::controller::{ControllerParts, FleetController};
use crate::guards::GuardConfig;
use crate::signal::trace::{TraceError, TraceSignal, load_column};

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
    pub billed: Vec<u32>,
    pub serving: Vec<u32>,
    pub decide_times: Vec<Duration>,
    pub wall: Duration,
}

/// Plays `scenario` through the real controller with `policy`, starting from the model's
/// fleet of `max(min, ceil(d_0))`. `progress` is told the number of steps done now and then.
pub fn run(
    scenario: &Scenario,
    name: &str,
    setting: Option<f64>,
    policy: Box<dyn Policy>,
    progress: &(dyn Fn(u64) + Sync),
) -> Run {
    let initial = (scenario.demand[0].ceil() as u32).clamp(scenario.min, scenario.max);
    run_from(scenario, initial, name, setting, policy, progress)
}

/// [`run`] from a fleet of `initial` serving instances (static-peak holds its peak from
/// the first step, as BENCHMARK.md's reference figure counts it).
pub fn run_from(
    scenario: &Scenario,
    initial: u32,
    name: &str,
    setting: Option<f64>,
    policy: Box<dyn Policy>,
    progress: &(dyn Fn(u64) + Sync),
) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(run_async(
        scenario, initial, name, setting, policy, progress,
    ))
}

async fn run_async(
    scenario: &Scenario,
    initial: u32,
    name: &str,
    setting: Option<f64>,
    policy: Box<dyn Policy>,
    progress: &(dyn Fn(u64) + Sync),
) -> Run {
    let started = Instant::now();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let clock = ManualClock::new(start);
    let boot_delay = scenario.step * scenario.boot_steps();
    let mock = MockCloud::new(MockConfig::for_replay(boot_delay), Arc::new(clock.clone()));
    mock.seed_serving(initial);
    let signal = TraceSignal::new(&scenario.demand, 1.0, start, scenario.step, false);
    let mut guards = GuardConfig::with_max(scenario.max);
    guards.min = scenario.min;
    // The benchmark's instances never fail: a stuck-boot deadline must never fire.
    guards.max_boot_time = boot_delay + scenario.step * 2;
    let mut controller = FleetController::new(ControllerParts {
        name: name.to_string(),
        adapter: Box::new(mock.clone()),
        signal: Box::new(signal),
        policy,
        guards,
        clock: Arc::new(clock.clone()),
        step: scenario.step,
        boot_delay,
        metrics: None,
        history_steps: crate::controller::MAX_HISTORY
            .min((14 * 86_400 / scenario.step.as_secs().max(1)) as usize),
    });

    let steps = scenario.steps();
    let mut billed = Vec::with_capacity(steps);
    let mut serving = Vec::with_capacity(steps);
    let mut decide_times = Vec::with_capacity(steps);
    billed.push(initial);
    serving.push(initial);
    for t in 1..steps {
        clock.set(start + scenario.step * t as u32);
        let report = controller.tick().await;
        if let Some(error) = &report.error {
            // The mock has no faults in replay; a failure here is a bug worth stopping for.
            panic!("replay step {t}: adapter call failed: {error}");
        }
        decide_times.push(report.decide_time);
        let fleet = mock
            .read_fleet()
            .await
            .expect("the replay mock has no faults");
        billed.push(fleet.billed());
        serving.push(fleet.serving());
        if t % 4096 == 0 {
            progress(4096);
        }
    }
    progress((steps as u64 - 1) % 4096);
    Run {
        policy: name.to_string(),
        setting,
        billed,
        serving,
        decide_times,
        wall: started.elapsed(),
    }
}

/// BENCHMARK.md's figures for one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figures {
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
        let actions = run.billed.windows(2).filter(|w| w[0] != w[1]).count() as u64;
        let mut ms: Vec<f64> = run
            .decide_times
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            if ms.is_empty() {
                0.0
            } else {
                ms[((ms.len() - 1) as f64 * q).round() as usize]
            }
        };
        let steps = demand.len() as f64;
        Figures {
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
    let mut out = format!(
        "{:<18} {:>8} {:>16} {:>10} {:>9} {:>9} {:>8} {:>10} {:>11} {:>10} {:>8}\n",
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
    for f in figures {
        let setting = f
            .setting
            .map(|s| format!("{s}"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<18} {:>8} {:>16.0} {:>10.4} {:>9.3} {:>9.2} {:>8} {:>10.4} {:>9.4}ms {:>8.4}ms {:>7.2}s\n",
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
pub fn csv(figures: &[Figures]) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for f in figures {
        writer.serialize(f).expect("figures serialize to CSV");
    }
    String::from_utf8(writer.into_inner().expect("in-memory writer")).expect("CSV is UTF-8")
}
