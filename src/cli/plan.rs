//! `fleetscale plan`: what the agent would do for one fleet now, without doing it.
//!
//! Reads the fleet (through the dry-run decorator, so no mutating call can reach the
//! cloud) and the signal's history once, warms the fleet's policy from that history as the
//! controller does at start, and prints the observation, the forecast and the plan (or,
//! for a policy that makes no plan, its decision and a seasonal reference forecast).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, ValueEnum};
use fleetscale_adapters::{Clock, SystemClock};
use fleetscale_policies::baselines::SeasonalForecast;
use fleetscale_policies::{Decision, Observation};
use serde::Serialize;

use super::shared::{Failure, load_config, runtime};
use crate::agent::{self, Wiring};
use crate::config::{AgentConfig, FleetConfig};
use crate::controller::MAX_HISTORY;
use crate::guards::{self, GuardState};
use crate::schedule::{self, OpenWindow};
use fleetscale_policies::Bounds;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The agent's TOML config.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The fleet to plan (its `name` in the config).
    #[arg(long)]
    pub fleet: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: PlanFormat,
    /// Steps of reference forecast to print for a policy that makes no plan of its own.
    #[arg(long, default_value_t = 12)]
    pub horizon: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PlanFormat {
    Table,
    Json,
}

/// Everything `plan` prints.
#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub fleet: String,
    pub at: String,
    pub step_seconds: f64,
    pub observation: ObservationReport,
    pub decision: DecisionReport,
    /// Where the forecast comes from: `policy` (the policy's own plan) or `seasonal`
    /// (a reference forecast: the policy makes no plan).
    pub forecast_source: &'static str,
    pub forecast: Vec<ForecastStep>,
    /// `[[fleets.schedules]]` windows open now, and those opening within the forecast's
    /// horizon (their first opening each).
    pub windows_open: Vec<OpenWindow>,
    pub windows_opening: Vec<OpenWindow>,
}

#[derive(Debug, Serialize)]
pub struct ObservationReport {
    /// The signals' names, `, `-separated.
    pub signal: String,
    /// Each signal as read; the history and latest demand above are their step-wise
    /// largest.
    pub signals: Vec<SignalReport>,
    /// Steps of history read, and how many of them hold a value.
    pub history_steps: usize,
    pub history_values: usize,
    /// The most recent step's demand, in instances.
    pub latest_demand: Option<f64>,
    pub serving: u32,
    pub billed: u32,
    pub booting: u32,
    /// Drains in progress: each instance being drained before its removal, and when its
    /// drain began.
    pub draining: Vec<DrainReport>,
    /// The bounds in force now: the guards' as the open windows change them.
    pub min: u32,
    pub max: u32,
}

/// One drain in progress.
#[derive(Debug, Serialize)]
pub struct DrainReport {
    pub id: String,
    /// RFC 3339.
    pub since: String,
    /// Seconds it has been draining.
    pub for_seconds: u64,
}

/// One of the fleet's signals as `plan` read it.
#[derive(Debug, Serialize)]
pub struct SignalReport {
    pub name: String,
    pub kind: &'static str,
    pub history_values: usize,
    /// Its most recent step's demand, in instances.
    pub latest_demand: Option<f64>,
    /// Why it could not be read (the plan then holds scale-in, as the agent would).
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DecisionReport {
    pub policy: String,
    pub desired: u32,
    /// After min/max and the step limits (cooldowns start afresh, as after a restart).
    pub applied: u32,
    pub guards: Vec<String>,
    /// What the agent would do now; `plan` itself does nothing.
    pub would: String,
    pub reason: String,
    pub expected_cost: Option<f64>,
    pub expected_unserved: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ForecastStep {
    /// Steps ahead of now (1 is the next step).
    pub ahead: usize,
    pub at: String,
    /// Forecast demand in instances: (quantile, value) pairs; a point forecast is the
    /// single pair at quantile 0.5.
    pub demand: Vec<(f64, f64)>,
    /// Planned serving capacity, when the policy plans.
    pub planned: Option<u32>,
}

pub fn plan(args: PlanArgs) -> Result<(), Failure> {
    let config = load_config(&args.config)?;
    let Some(fleet) = config.fleet(&args.fleet) else {
        let names: Vec<&str> = config.fleets.iter().map(|f| f.name.as_str()).collect();
        return Err(Failure::Invalid(format!(
            "{}: no fleet named {:?} (fleets: {})",
            args.config.display(),
            args.fleet,
            names.join(", ")
        )));
    };
    let runtime = runtime()?;
    let report = runtime.block_on(build_report(fleet, &config.agent, args.horizon))?;
    match args.format {
        PlanFormat::Json => {
            let text =
                serde_json::to_string_pretty(&report).map_err(|e| Failure::Runtime(e.into()))?;
            println!("{text}");
        }
        PlanFormat::Table => print!("{}", table(&report)),
    }
    Ok(())
}

/// Reads the fleet and the signal once and asks the policy, acting on nothing.
pub async fn build_report(
    fleet: &FleetConfig,
    agent_config: &AgentConfig,
    horizon: usize,
) -> anyhow::Result<PlanReport> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let step = agent_config.tick;
    let cloud = agent::build_cloud(fleet, clock.clone()).await?;
    // Dry-run: whatever happens below, no launch or removal reaches the cloud.
    let cloud = agent::decorate(
        cloud,
        &fleet.name,
        None,
        Wiring { dry_run: true },
        clock.clone(),
        fleet.boot_delay,
    );
    let state = cloud
        .read_fleet()
        .await
        .with_context(|| format!("fleet {}: cannot read the fleet", fleet.name))?;
    // The same account the controller forms (no launch of ours in flight here).
    let account = crate::account::Unseen::default().account(&state, now);
    let (serving, active, booting) = (account.serving, account.active(), account.booting);
    let billed = account.billed();
    let draining = account
        .draining_instances
        .iter()
        .map(|i| {
            let since = i.draining_since.unwrap_or(now);
            DrainReport {
                id: i.id.clone(),
                since: humantime::format_rfc3339_seconds(since).to_string(),
                for_seconds: now.duration_since(since).unwrap_or_default().as_secs(),
            }
        })
        .collect();

    let steps =
        ((fleet.history.as_secs_f64() / step.as_secs_f64()).ceil() as usize).clamp(1, MAX_HISTORY);
    // Each signal's history, combined as the controller does: the largest at each step.
    let mut signals = Vec::new();
    let mut read = Vec::new();
    for mut signal in agent::build_signals(fleet, clock.as_ref())? {
        let kind = signal.source.kind();
        let past = signal.source.history(now, step, steps, serving).await;
        signals.push(SignalReport {
            name: signal.name,
            kind,
            history_values: past
                .as_ref()
                .map_or(0, |p| p.iter().filter(|d| d.is_finite()).count()),
            latest_demand: past
                .as_ref()
                .ok()
                .and_then(|p| p.last().copied())
                .filter(|d| d.is_finite()),
            error: past.as_ref().err().map(|e| e.to_string()),
        });
        read.extend(past.ok());
    }
    if read.is_empty() {
        let failed: Vec<String> = signals
            .iter()
            .map(|s| {
                format!(
                    "{} signal {:?}: {}",
                    s.kind,
                    s.name,
                    s.error.as_deref().unwrap_or("")
                )
            })
            .collect();
        anyhow::bail!("fleet {}: {}", fleet.name, failed.join("; "));
    }
    let demand = crate::signal::combine::stepwise_largest(&read);
    // Scale-in only on every signal's word, as the controller.
    let every_signal = signals.iter().all(|s| s.latest_demand.is_some());
    let serving_history = vec![f64::NAN; demand.len()];
    let boot_steps = fleet.boot_delay.as_nanos().div_ceil(step.as_nanos().max(1)) as u32;
    let fixed = Bounds {
        min: fleet.guards.min,
        max: fleet.guards.max,
    };
    let in_force = schedule::in_force(&fleet.schedules, fixed, now);
    let bounds = in_force.bounds;
    let bounds_ahead = schedule::bounds_ahead(
        &fleet.schedules,
        fixed,
        now,
        step,
        crate::controller::BOUNDS_AHEAD_STEPS,
    );
    let observation = Observation {
        demand: &demand,
        serving_history: &serving_history,
        steps_seen: demand.len() as u64,
        serving,
        active,
        booting,
        min: bounds.min,
        max: bounds.max,
        max_step_up: fleet.guards.max_step_up,
        max_step_down: fleet.guards.max_step_down,
        step,
        boot_steps,
        boot_times: &[],
        bounds_ahead: &bounds_ahead,
    };
    let latest_demand = observation
        .latest_demand()
        .filter(|_| demand.last().is_some_and(|d| d.is_finite()));
    let mut policy = fleet.policy.build();
    let decision = policy.decide(&observation);
    let guarded = guards::apply_within(
        &fleet.guards,
        bounds,
        &mut GuardState::default(),
        now,
        active,
        decision.desired,
        latest_demand.is_some() && every_signal,
    );
    let would = match guarded.applied.cmp(&active) {
        std::cmp::Ordering::Greater => format!("grow by {}", guarded.applied - active),
        std::cmp::Ordering::Less => format!("shrink by {}", active - guarded.applied),
        std::cmp::Ordering::Equal => "nothing".into(),
    };
    let (forecast_source, forecast) = forecast_steps(&decision, &demand, now, step, horizon);
    let ahead = u32::try_from(forecast.len().max(horizon)).unwrap_or(u32::MAX);
    let windows_opening =
        schedule::opening_within(&fleet.schedules, now, now + step.saturating_mul(ahead));
    Ok(PlanReport {
        fleet: fleet.name.clone(),
        at: humantime::format_rfc3339_seconds(now).to_string(),
        step_seconds: step.as_secs_f64(),
        observation: ObservationReport {
            signal: signals
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            signals,
            history_steps: demand.len(),
            history_values: demand.iter().filter(|d| d.is_finite()).count(),
            latest_demand,
            serving,
            billed,
            booting,
            draining,
            min: bounds.min,
            max: bounds.max,
        },
        decision: DecisionReport {
            policy: policy.name().to_string(),
            desired: decision.desired,
            applied: guarded.applied,
            guards: guarded
                .interventions
                .iter()
                .map(|i| format!("{} {}->{}", i.guard.as_str(), i.from, i.to))
                .collect(),
            would,
            reason: decision.reason.clone(),
            expected_cost: decision.plan.as_ref().map(|p| p.expected_cost),
            expected_unserved: decision.plan.as_ref().map(|p| p.expected_unserved),
        },
        forecast_source,
        forecast,
        windows_open: in_force.open,
        windows_opening,
    })
}

/// The policy's own plan when it made one; otherwise a seasonal forecast of the history
/// (the same time of day over the last days), for reference.
fn forecast_steps(
    decision: &Decision,
    demand: &[f64],
    now: SystemTime,
    step: Duration,
    horizon: usize,
) -> (&'static str, Vec<ForecastStep>) {
    let at =
        |ahead: usize| humantime::format_rfc3339_seconds(now + step * ahead as u32).to_string();
    if let Some(plan) = &decision.plan {
        let steps = plan.trajectory.len().max(plan.forecast.len());
        let rows = (0..steps)
            .map(|k| ForecastStep {
                ahead: k + 1,
                at: at(k + 1),
                demand: plan.forecast.get(k).cloned().unwrap_or_default(),
                planned: plan.trajectory.get(k).copied(),
            })
            .collect();
        return ("policy", rows);
    }
    let mut seasonal = SeasonalForecast::new(step);
    for &value in demand {
        seasonal.push(value);
    }
    let seen = demand.len() as u64;
    let rows = (0..horizon)
        .filter_map(|k| {
            let value = seasonal.forecast(seen + k as u64)?;
            Some(ForecastStep {
                ahead: k + 1,
                at: at(k + 1),
                demand: vec![(0.5, value)],
                planned: None,
            })
        })
        .collect();
    ("seasonal", rows)
}

/// The report as aligned text.
pub fn table(report: &PlanReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let o = &report.observation;
    let d = &report.decision;
    let number = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "fleet {} at {} (step {}s); nothing is changed",
        report.fleet, report.at, report.step_seconds
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "observation");
    let _ = writeln!(
        out,
        "  signal          {} ({} of {} steps of history hold a value)",
        o.signal, o.history_values, o.history_steps
    );
    let _ = writeln!(
        out,
        "  latest demand   {} instances",
        number(o.latest_demand)
    );
    if o.signals.len() > 1 || o.signals.iter().any(|s| s.error.is_some()) {
        for s in &o.signals {
            let _ = match &s.error {
                Some(e) => writeln!(out, "    {} ({}): FAILED: {e}", s.name, s.kind),
                None => writeln!(
                    out,
                    "    {} ({}): latest {} instances, {} steps hold a value",
                    s.name,
                    s.kind,
                    number(s.latest_demand),
                    s.history_values
                ),
            };
        }
    }
    let _ = writeln!(
        out,
        "  fleet           {} serving, {} booting, {} billed (bounds {}..={})",
        o.serving, o.booting, o.billed, o.min, o.max
    );
    if !o.draining.is_empty() {
        let drains: Vec<String> = o
            .draining
            .iter()
            .map(|d| format!("{} (since {}, {} s)", d.id, d.since, d.for_seconds))
            .collect();
        let _ = writeln!(
            out,
            "  draining        {}: {}",
            o.draining.len(),
            drains.join(", ")
        );
    }
    let show = |w: &OpenWindow| {
        let bound = |name: &str, v: Option<u32>| v.map(|v| format!(" {name} {v}"));
        format!(
            "{}:{}{} from {} to {}",
            w.name,
            bound("min", w.min).unwrap_or_default(),
            bound("max", w.max).unwrap_or_default(),
            humantime::format_rfc3339_seconds(w.opened),
            humantime::format_rfc3339_seconds(w.closes)
        )
    };
    for w in &report.windows_open {
        let _ = writeln!(out, "  window open     {}", show(w));
    }
    for w in &report.windows_opening {
        let _ = writeln!(out, "  window opening  {}", show(w));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "decision ({})", d.policy);
    let _ = writeln!(out, "  desired         {}", d.desired);
    let guards = if d.guards.is_empty() {
        String::new()
    } else {
        format!(" ({})", d.guards.join(", "))
    };
    let _ = writeln!(out, "  after guards    {}{guards}", d.applied);
    let _ = writeln!(out, "  would           {}", d.would);
    let _ = writeln!(out, "  reason          {}", d.reason);
    if let (Some(cost), Some(unserved)) = (d.expected_cost, d.expected_unserved) {
        let _ = writeln!(
            out,
            "  expected        cost {cost:.2} instance-steps, unserved {unserved:.3} instance-steps"
        );
    }
    let _ = writeln!(out);
    let Some(first) = report.forecast.first() else {
        let _ = writeln!(
            out,
            "forecast: none (the history is too short for a seasonal forecast: at least a day is needed)"
        );
        return out;
    };
    let source = match report.forecast_source {
        "policy" => "forecast and plan (the policy's)",
        _ => "forecast (seasonal reference; the policy makes no plan)",
    };
    let _ = writeln!(out, "{source}, demand in instances");
    let quantiles: Vec<f64> = first.demand.iter().map(|(q, _)| *q).collect();
    let mut header = format!("  {:>5}  {:<20}", "ahead", "at");
    for q in &quantiles {
        header.push_str(&format!(" {:>9}", format!("q{q}")));
    }
    if report.forecast_source == "policy" {
        header.push_str(&format!(" {:>8}", "planned"));
    }
    let _ = writeln!(out, "{header}");
    for row in &report.forecast {
        let mut line = format!("  {:>5}  {:<20}", format!("+{}", row.ahead), row.at);
        for q in &quantiles {
            let value = row.demand.iter().find(|(rq, _)| rq == q).map(|(_, v)| *v);
            line.push_str(&format!(" {:>9}", number(value)));
        }
        if report.forecast_source == "policy" {
            line.push_str(&format!(
                " {:>8}",
                row.planned
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into())
            ));
        }
        let _ = writeln!(out, "{line}");
    }
    out
}
