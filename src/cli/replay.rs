//! `fleetscale replay`: choose policies, run them (two at a time), print figures, draw.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use fleetscale_policies::{OraclePolicy, OracleSchedule, Policy, PolicyConfig};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::shared::Failure;
use crate::replay::cloud::CloudScenario;
use crate::replay::{self, Figures, Run, Scenario, Setup};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// CSV trace: a header row, then one row per step.
    #[arg(long)]
    pub trace: PathBuf,
    /// The value column.
    #[arg(long)]
    pub column: String,
    /// How much of the column's value one instance serves at its service-level limit.
    #[arg(long)]
    pub per_instance: f64,
    /// Length of one row (one step), e.g. 60s or 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// Time from launch until an instance serves.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub boot: Duration,
    /// A policy (every registered one with default settings, then static-peak and
    /// oracle), or `all` for every one of them in one table.
    #[arg(long, default_value = PolicyConfig::default().name(), help = policy_help())]
    pub policy: String,
    /// The policy's knob (target-tracking: target utilisation; step-scaling: threshold;
    /// predictive: target utilisation; dp: max_unserved). Default: the policy's default.
    #[arg(long)]
    pub setting: Option<f64>,
    /// Sweep each baseline's knob and report its cheapest setting with at most 0.1 %
    /// unserved; with --format json or csv, every setting of the sweep.
    #[arg(long)]
    pub sweep: bool,
    /// Fewest instances.
    #[arg(long, default_value_t = 1)]
    pub min: u32,
    /// Most instances (default: unbounded).
    #[arg(long)]
    pub max: Option<u32>,
    /// The cloud to replay in: `ideal` (BENCHMARK.md's model), `aws` or `hostile` (its
    /// "Realistic clouds" scenarios: boot and termination times, read lag, failed and
    /// half-filled launches, throttling, deaths, signal gaps, agent restarts), or a TOML
    /// file of one's own with the same fields (see the README).
    #[arg(long, default_value = "ideal")]
    pub cloud: String,
    /// Seed of every random draw of the cloud scenario; the same seed repeats a run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also draw demand, serving and billed instances to this SVG (with --sweep: dp and
    /// the cheapest baseline at its best setting).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also write every run's figures (the whole sweep) as JSON to this file.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

/// The benchmark's reference policies, built from the trace rather than named in a
/// config: `static` at the trace's peak, and the oracle.
const REFERENCES: &[&str] = &["static-peak", "oracle"];

/// `--policy`'s help, naming the policies it accepts.
fn policy_help() -> String {
    format!(
        "A policy ({}), or `all` for every one of them in one table",
        all_policies().join(", ")
    )
}

/// Policies `--policy` names and `--policy all` runs, in table order: every registered
/// policy that has default settings, then the references.
fn all_policies() -> Vec<&'static str> {
    PolicyConfig::NAMES
        .iter()
        .copied()
        .filter(|name| PolicyConfig::from_name(name).is_some())
        .chain(REFERENCES.iter().copied())
        .collect()
}

/// One policy at one setting, ready to build.
#[derive(Debug, Clone)]
struct Candidate {
    name: String,
    setting: Option<f64>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Configured(PolicyConfig),
    StaticPeak,
    Oracle,
}

impl Candidate {
    fn build(&self, scenario: &Scenario, oracle: &OracleSchedule) -> Box<dyn Policy> {
        match &self.kind {
            Kind::Configured(config) => config.build(),
            Kind::StaticPeak => PolicyConfig::static_peak(&scenario.demand).build(),
            Kind::Oracle => Box::new(OraclePolicy::from_schedule(oracle)),
        }
    }
}

fn candidates(args: &ReplayArgs) -> Result<Vec<Candidate>, Failure> {
    let names: Vec<&str> = if args.policy == "all" {
        all_policies()
    } else {
        vec![args.policy.as_str()]
    };
    let mut out = Vec::new();
    for name in names {
        let kind = match name {
            "static-peak" => Kind::StaticPeak,
            "oracle" => Kind::Oracle,
            _ => Kind::Configured(PolicyConfig::from_name(name).ok_or_else(|| {
                Failure::Invalid(format!(
                    "--policy: unknown policy {name:?} (known: {}, all)",
                    all_policies().join(", ")
                ))
            })?),
        };
        match (&kind, args.sweep, args.setting) {
            (Kind::Configured(config), true, _) if !config.sweep_settings().is_empty() => {
                for setting in config.sweep_settings() {
                    let tuned = config
                        .with_knob(setting)
                        .map_err(|e| Failure::Invalid(format!("{name}: {e}")))?;
                    out.push(Candidate {
                        name: name.into(),
                        setting: Some(setting),
                        kind: Kind::Configured(tuned),
                    });
                }
            }
            (Kind::Configured(config), _, Some(setting)) => {
                let tuned = config
                    .with_knob(setting)
                    .map_err(|e| Failure::Invalid(format!("--setting for {name}: {e}")))?;
                out.push(Candidate {
                    name: name.into(),
                    setting: Some(setting),
                    kind: Kind::Configured(tuned),
                });
            }
            (Kind::Configured(config), _, None) => {
                out.push(Candidate {
                    name: name.into(),
                    setting: Some(config.knob_value()),
                    kind: kind.clone(),
                });
            }
            _ => out.push(Candidate {
                name: name.into(),
                setting: None,
                kind,
            }),
        }
    }
    Ok(out)
}

pub fn replay(args: ReplayArgs) -> Result<(), Failure> {
    let scenario = Scenario::load(
        &args.trace,
        &args.column,
        args.per_instance,
        args.step,
        args.boot,
        args.min,
        args.max,
    )
    .map_err(|e| Failure::Invalid(format!("error: {e}")))?;
    let cloud = CloudScenario::resolve(&args.cloud).map_err(Failure::Invalid)?;
    let mut candidates = candidates(&args)?;
    if !cloud.is_ideal() {
        // The oracle's schedule is for the ideal cloud: it knows nothing of failures, and
        // a restarted agent's oracle would start its schedule again.
        if args.policy == "oracle" {
            return Err(Failure::Invalid(format!(
                "--policy oracle: the oracle is the ideal cloud's optimum; it cannot run in --cloud {}",
                cloud.name
            )));
        }
        candidates.retain(|c| !matches!(c.kind, Kind::Oracle));
    }
    let started = Instant::now();
    let solution = fleetscale_policies::oracle::solve(
        &scenario.demand,
        scenario.boot_steps(),
        scenario.min,
        scenario.max,
    )
    .map_err(|e| Failure::Invalid(format!("error: {}: {e}", scenario.path.display())))?;
    let oracle_minutes = solution.instance_minutes(scenario.step.as_secs_f64());
    let oracle_time = started.elapsed();

    let bar = progress_bar((scenario.steps() as u64 - 1) * candidates.len() as u64);
    let runs = run_all(&scenario, &cloud, args.seed, &candidates, &solution, &bar);
    bar.finish_and_clear();

    let figures: Vec<Figures> = runs
        .iter()
        .map(|run| Figures::of(run, &scenario, oracle_minutes))
        .collect();
    let shown = if args.sweep && args.format == Format::Table {
        let mut best = replay::best_settings(&figures);
        // Policies without a knob (oracle, static-peak) appear as they ran; those with no
        // setting within the limit at their least unserved (BENCHMARK.md's rule).
        for f in &figures {
            match best.iter_mut().find(|b| b.policy == f.policy) {
                None => best.push(f.clone()),
                Some(b)
                    if b.unserved_pct > replay::HEADLINE_UNSERVED_PCT
                        && f.unserved_pct < b.unserved_pct =>
                {
                    *b = f.clone()
                }
                Some(_) => {}
            }
        }
        best
    } else {
        figures.clone()
    };
    match args.format {
        Format::Table => {
            print!("{}", replay::table(&shown));
            println!(
                "trace {}: {} steps of {:?}, boot {:?} (L = {}), oracle solved in {:.2}s; cloud {} (seed {})",
                scenario.path.display(),
                scenario.steps(),
                scenario.step,
                scenario.boot,
                scenario.boot_steps(),
                oracle_time.as_secs_f64(),
                cloud.name,
                args.seed
            );
            if args.sweep {
                let mut missing: Vec<&str> = Vec::new();
                for f in shown
                    .iter()
                    .filter(|f| f.unserved_pct > replay::HEADLINE_UNSERVED_PCT)
                {
                    // A policy swept shows once per setting; it is named once.
                    if !missing.contains(&f.policy.as_str()) {
                        missing.push(f.policy.as_str());
                    }
                }
                if !missing.is_empty() {
                    println!(
                        "no setting kept unserved demand within {}% for: {} (shown at the least unserved)",
                        replay::HEADLINE_UNSERVED_PCT,
                        missing.join(", ")
                    );
                }
            }
        }
        Format::Json => println!("{}", figures_json(&shown)?),
        Format::Csv => print!(
            "{}",
            replay::csv(&shown).map_err(|e| Failure::Runtime(anyhow::anyhow!(
                "cannot write the figures as CSV: {e}"
            )))?
        ),
    }
    if let Some(out) = &args.save {
        let json = figures_json(&figures)?;
        std::fs::write(out, json + "\n").map_err(|e| {
            Failure::Runtime(anyhow::anyhow!("cannot write {}: {e}", out.display()))
        })?;
    }
    if let Some(out) = &args.plot {
        let drawn = drawn_runs(&runs, &shown, args.sweep);
        let title = scenario
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        crate::plot::svg(out, &scenario, &drawn, &title)
            .map_err(|e| Failure::Runtime(e.context(format!("drawing {}", out.display()))))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn figures_json(figures: &[Figures]) -> Result<String, Failure> {
    serde_json::to_string_pretty(figures)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot write the figures as JSON: {e}")))
}

/// The runs a plot shows: without a sweep, every run but the reference ones; with a
/// sweep, dp and the cheapest baseline at its best setting (more lines are unreadable).
fn drawn_runs<'a>(runs: &'a [Run], shown: &[Figures], sweep: bool) -> Vec<&'a Run> {
    let reference = |policy: &str| REFERENCES.contains(&policy);
    // The default policy (dp) against the best of the rest.
    let ours = PolicyConfig::default().name();
    let chosen: Vec<&Figures> = if sweep {
        let cheapest = shown
            .iter()
            .filter(|f| !reference(&f.policy) && f.policy != ours)
            .min_by(|a, b| a.instance_minutes.total_cmp(&b.instance_minutes));
        shown
            .iter()
            .filter(|f| f.policy == ours)
            .chain(cheapest)
            .collect()
    } else {
        shown.iter().filter(|f| !reference(&f.policy)).collect()
    };
    runs.iter()
        .filter(|r| {
            chosen
                .iter()
                .any(|f| f.policy == r.policy && f.setting == r.setting)
        })
        .collect()
}

/// Runs every candidate, two at a time (one per core), in candidate order.
fn run_all(
    scenario: &Scenario,
    cloud: &CloudScenario,
    seed: u64,
    candidates: &[Candidate],
    oracle: &OracleSchedule,
    bar: &ProgressBar,
) -> Vec<Run> {
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(candidates.len())
        .max(1);
    let progress = |n: u64| bar.inc(n);
    let mut done: Vec<(usize, Run)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(candidate) = candidates.get(k) else {
                            break mine;
                        };
                        let policy = || candidate.build(scenario, oracle);
                        // Static-peak holds its peak from the first step, as BENCHMARK.md's
                        // reference figure counts it.
                        let initial =
                            matches!(candidate.kind, Kind::StaticPeak).then(|| scenario.peak());
                        let setup = Setup {
                            cloud,
                            seed,
                            initial,
                        };
                        let run = replay::run_in(
                            scenario,
                            &setup,
                            &candidate.name,
                            candidate.setting,
                            &policy,
                            &progress,
                        );
                        mine.push((k, run));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                // A worker's panic goes on in this thread, as the scope's own join would.
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    // The workers take candidates in turn; their runs are reported in candidate order.
    done.sort_by_key(|(k, _)| *k);
    done.into_iter().map(|(_, run)| run).collect()
}

/// The progress bar's look (a test checks that indicatif accepts it).
const PROGRESS_TEMPLATE: &str =
    "{spinner} replaying [{bar:40}] {percent}% {pos}/{len} steps, eta {eta}";

/// A progress bar on stderr, drawn only on a terminal and only once a run has taken
/// more than a second.
fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template(PROGRESS_TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let shown = bar.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        if !shown.is_finished() {
            shown.set_draw_target(ProgressDrawTarget::stderr());
            shown.enable_steady_tick(Duration::from_millis(200));
        }
    });
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_template_is_valid() {
        assert!(ProgressStyle::with_template(PROGRESS_TEMPLATE).is_ok());
    }
}
