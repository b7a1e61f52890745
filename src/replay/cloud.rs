//! The clouds replay runs in: BENCHMARK.md's "Realistic clouds" scenarios (`ideal`,
//! `aws`, `hostile`) or one of the user's own, from a TOML file with the same fields.
//!
//! A scenario only chooses settings: the mock cloud owns the mechanics (boot and
//! termination times, read lag, failures, throttling, deaths), the trace signal loses
//! the steps, and replay restarts the agent.
//!
//! ```toml
//! # every field is optional; an absent one is as in `ideal`
//! name = "my-cloud"
//! boot_p95_ratio = 2.0            # boot times log-normal, median the boot delay
//! leaving = ["30s", "90s"]        # a removed instance is listed as leaving this long
//! launch_read_lag = "10s"         # a launch shows in reads after up to this
//! removal_read_lag = "1 step"     # a removal shows after up to this
//! grow_failure_rate = 0.01        # grow calls refused for capacity
//! partial_launch_rate = 0.0       # of the rest, launches of only half
//! transient_failure_rate = 0.01   # any call failing transiently
//! throttle_rate = 0.005
//! throttle_retry_after = ["1s", "5s"]
//! never_boot_rate = 0.002
//! deaths_per_day = 0.02           # per instance
//! signal_missing_rate = 0.001     # single steps
//! signal_outage = "2h"            # one outage this long ...
//! signal_outage_every = "7d"      # ... in every period this long
//! restart_every = 2000            # steps between agent restarts (0: never)
//! start_fraction = 1.0            # the fleet starts at ceil(d_0 * this)
//! drain = ["30s", "300s"]         # scale-in drains first, this long (uniform; absent: no drain)
//! drain_timeout = "240s"          # a drain still going after this is cut short
//! ```
//!
//! Durations are written like `"90s"` or in steps of the trace (`"2 steps"`).

use std::path::Path;
use std::time::Duration;

use fleetscale_adapters::mock::checked::{at_least_one, non_negative, probability};
use fleetscale_adapters::mock::{FaultConfig, MockConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize};

/// A length of time, in seconds or in steps of the trace.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Span {
    Time(Duration),
    Steps(f64),
}

impl Span {
    pub const ZERO: Span = Span::Time(Duration::ZERO);

    /// The span for a trace whose steps last `step`.
    pub fn at(self, step: Duration) -> Duration {
        match self {
            Span::Time(d) => d,
            Span::Steps(n) => step.mul_f64(n),
        }
    }
}

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(number) = text
            .strip_suffix("steps")
            .or_else(|| text.strip_suffix("step"))
        {
            return match number.trim().parse::<f64>() {
                Ok(n) if n.is_finite() && n >= 0.0 => Ok(Span::Steps(n)),
                _ => Err(format!(
                    "{text:?}: steps must be a non-negative number, like \"2 steps\""
                )),
            };
        }
        humantime::parse_duration(text)
            .map(Span::Time)
            .map_err(|e| format!("{text:?}: {e} (write a duration like \"90s\" or \"2 steps\")"))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How the mock cloud, the signal and the agent misbehave during a replay. Every field
/// defaults to the ideal cloud.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudScenario {
    /// Shown in tables and JSON (`scenario`). A file's default is its stem.
    pub name: String,
    /// Boot times are log-normal with median the boot delay and this ratio of the 95th
    /// percentile to the median (1: exactly the boot delay).
    #[serde(deserialize_with = "at_least_one")]
    pub boot_p95_ratio: f64,
    /// A removed instance is listed as leaving for a time drawn uniformly in this range.
    pub leaving: [Span; 2],
    /// A launched instance shows in reads after up to this (uniform, once per launch).
    pub launch_read_lag: Span,
    /// A removed instance still shows as it was for up to this (uniform).
    pub removal_read_lag: Span,
    /// Chance that a grow call is refused for lack of capacity.
    #[serde(deserialize_with = "probability")]
    pub grow_failure_rate: f64,
    /// Chance that a grow that goes through launches only half of what it asked.
    #[serde(deserialize_with = "probability")]
    pub partial_launch_rate: f64,
    /// Chance that any call fails with a transient error (before doing anything).
    #[serde(deserialize_with = "probability")]
    pub transient_failure_rate: f64,
    /// Chance that any call is throttled, with a retry-after drawn uniformly in
    /// `throttle_retry_after`.
    #[serde(deserialize_with = "probability")]
    pub throttle_rate: f64,
    pub throttle_retry_after: [Span; 2],
    /// Chance that a launched instance never finishes booting.
    #[serde(deserialize_with = "probability")]
    pub never_boot_rate: f64,
    /// Deaths per instance per day (exponential lifetimes).
    #[serde(deserialize_with = "non_negative")]
    pub deaths_per_day: f64,
    /// Chance that each step of the signal is missing.
    #[serde(deserialize_with = "probability")]
    pub signal_missing_rate: f64,
    /// One signal outage this long in every `signal_outage_every` (at a random offset).
    pub signal_outage: Span,
    pub signal_outage_every: Span,
    /// Steps between agent restarts: a new controller, nothing kept in memory (0: never).
    pub restart_every: u64,
    /// The fleet starts at `ceil(d_0 * start_fraction)` serving instances.
    #[serde(deserialize_with = "fraction")]
    pub start_fraction: f64,
    /// Scale-in drains instances before removing them, each for a time drawn uniformly
    /// in this range (a load balancer's deregistration); `None`: removed at once.
    pub drain: Option<[Span; 2]>,
    /// A drain still going after this is cut short and the instance removed.
    pub drain_timeout: Span,
}

impl Default for CloudScenario {
    fn default() -> Self {
        CloudScenario::ideal()
    }
}

/// The scenarios `--cloud` knows by name.
pub const NAMED: &[&str] = &["ideal", "aws", "hostile"];

impl CloudScenario {
    /// BENCHMARK.md's model: nothing goes wrong.
    pub fn ideal() -> Self {
        CloudScenario {
            name: "ideal".into(),
            boot_p95_ratio: 1.0,
            leaving: [Span::ZERO; 2],
            launch_read_lag: Span::ZERO,
            removal_read_lag: Span::ZERO,
            grow_failure_rate: 0.0,
            partial_launch_rate: 0.0,
            transient_failure_rate: 0.0,
            throttle_rate: 0.0,
            throttle_retry_after: [Span::ZERO; 2],
            never_boot_rate: 0.0,
            deaths_per_day: 0.0,
            signal_missing_rate: 0.0,
            signal_outage: Span::ZERO,
            signal_outage_every: Span::ZERO,
            restart_every: 0,
            start_fraction: 1.0,
            drain: None,
            drain_timeout: Span::Time(Duration::from_secs(300)),
        }
    }

    /// BENCHMARK.md's `aws` column.
    pub fn aws() -> Self {
        let secs = |s| Span::Time(Duration::from_secs(s));
        CloudScenario {
            name: "aws".into(),
            boot_p95_ratio: 2.0,
            leaving: [secs(30), secs(90)],
            launch_read_lag: secs(10),
            removal_read_lag: secs(5),
            grow_failure_rate: 0.01,
            partial_launch_rate: 0.0,
            transient_failure_rate: 0.01,
            throttle_rate: 0.005,
            throttle_retry_after: [secs(1), secs(5)],
            never_boot_rate: 0.002,
            deaths_per_day: 0.02,
            signal_missing_rate: 0.001,
            restart_every: 2000,
            ..CloudScenario::ideal()
        }
    }

    /// BENCHMARK.md's `hostile` column.
    pub fn hostile() -> Self {
        let secs = |s| Span::Time(Duration::from_secs(s));
        CloudScenario {
            name: "hostile".into(),
            boot_p95_ratio: 4.0,
            leaving: [secs(120), secs(300)],
            launch_read_lag: Span::Steps(2.0),
            removal_read_lag: Span::Steps(1.0),
            grow_failure_rate: 0.10,
            partial_launch_rate: 0.10,
            transient_failure_rate: 0.10,
            throttle_rate: 0.05,
            throttle_retry_after: [secs(5), secs(30)],
            never_boot_rate: 0.02,
            deaths_per_day: 1.0,
            signal_missing_rate: 0.01,
            signal_outage: secs(2 * 3600),
            signal_outage_every: secs(7 * 86_400),
            restart_every: 500,
            start_fraction: 0.5,
            ..CloudScenario::ideal()
        }
    }

    /// A named scenario, or a TOML file of one. Errors name the file and the field.
    pub fn resolve(name_or_path: &str) -> Result<Self, String> {
        match name_or_path {
            "ideal" => return Ok(Self::ideal()),
            "aws" => return Ok(Self::aws()),
            "hostile" => return Ok(Self::hostile()),
            _ => {}
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(format!(
                "--cloud: {name_or_path:?} is neither a scenario ({}) nor a file",
                NAMED.join(", ")
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--cloud: cannot read {}: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    /// A scenario from TOML text; `path` names it in errors and gives the default name.
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| format!("{}: {}", path.display(), e.message()))?;
        let mut scenario: CloudScenario =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let field = e.path().to_string();
                let message = e.into_inner().to_string().trim().replace('\n', " ");
                if field == "." || field.is_empty() {
                    format!("{}: {message}", path.display())
                } else {
                    format!("{}: {field}: {message}", path.display())
                }
            })?;
        if scenario.name == "ideal" {
            scenario.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "custom".into());
        }
        Ok(scenario)
    }

    /// Whether this is the ideal cloud (BENCHMARK.md's model, whatever its name).
    pub fn is_ideal(&self) -> bool {
        CloudScenario {
            name: "ideal".into(),
            ..self.clone()
        } == CloudScenario::ideal()
    }

    /// The mock cloud's settings for a trace of steps of `step` and boot delay `boot`.
    pub fn mock(&self, step: Duration, boot: Duration, seed: u64) -> MockConfig {
        MockConfig {
            boot_p95_ratio: self.boot_p95_ratio,
            stop_delay: self.leaving[0].at(step),
            stop_delay_max: Some(self.leaving[1].at(step)),
            launch_read_lag: self.launch_read_lag.at(step),
            removal_read_lag: self.removal_read_lag.at(step),
            seed,
            faults: FaultConfig {
                error_rate: self.transient_failure_rate,
                throttle_rate: self.throttle_rate,
                throttle_retry_after: self.throttle_retry_after[0].at(step),
                throttle_retry_after_max: Some(self.throttle_retry_after[1].at(step)),
                capacity_rate: self.grow_failure_rate,
                partial_launch_rate: self.partial_launch_rate,
                never_boot_rate: self.never_boot_rate,
                death_rate: self.deaths_per_day / 24.0,
            },
            ..MockConfig::for_replay(boot)
        }
    }

    /// The longest a read may lag behind a write: what the agent's `read_lag` is set to.
    pub fn read_lag(&self, step: Duration) -> Duration {
        self.launch_read_lag
            .at(step)
            .max(self.removal_read_lag.at(step))
    }

    /// Which of `steps` signal steps are missing, drawn from `seed`.
    pub fn missing_steps(&self, steps: usize, step: Duration, seed: u64) -> Vec<bool> {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5167_4e41_4c5f_4741);
        let mut missing: Vec<bool> = (0..steps)
            .map(|_| self.signal_missing_rate > 0.0 && rng.random_bool(self.signal_missing_rate))
            .collect();
        let step_ns = step.as_nanos().max(1);
        let outage = (self.signal_outage.at(step).as_nanos() / step_ns) as usize;
        let every = (self.signal_outage_every.at(step).as_nanos() / step_ns) as usize;
        if outage > 0 && every > outage {
            for period in (0..steps).step_by(every) {
                let at = period + rng.random_range(0..every - outage);
                for slot in missing.iter_mut().skip(at).take(outage) {
                    *slot = true;
                }
            }
        }
        missing
    }
}

fn fraction<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.is_finite() && value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be above 0 and at most 1, got {value}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_durations_and_steps() {
        assert_eq!(
            "90s".parse::<Span>(),
            Ok(Span::Time(Duration::from_secs(90)))
        );
        assert_eq!("2 steps".parse::<Span>(), Ok(Span::Steps(2.0)));
        assert_eq!("1 step".parse::<Span>(), Ok(Span::Steps(1.0)));
        assert_eq!(
            Span::Steps(2.0).at(Duration::from_secs(300)),
            Duration::from_secs(600)
        );
        assert!("-1 steps".parse::<Span>().is_err());
        assert!("soon".parse::<Span>().unwrap_err().contains("2 steps"));
    }

    #[test]
    fn files_name_the_field_at_fault() {
        let path = Path::new("clouds/mine.toml");
        let error = CloudScenario::parse("throttle_rate = 2.0", path).unwrap_err();
        assert!(
            error.contains("clouds/mine.toml") && error.contains("throttle_rate"),
            "{error}"
        );
        let error = CloudScenario::parse("boot_delay = \"3m\"", path).unwrap_err();
        assert!(error.contains("unknown field `boot_delay`"), "{error}");
        let error = CloudScenario::parse("leaving = [\"30s\", \"soon\"]", path).unwrap_err();
        assert!(error.contains("leaving"), "{error}");
        let mine = CloudScenario::parse("deaths_per_day = 3.0", path).unwrap();
        assert_eq!(mine.name, "mine");
        assert_eq!(mine.deaths_per_day, 3.0);
        assert!(!mine.is_ideal());
        assert!(CloudScenario::parse("", path).unwrap().is_ideal());
    }

    #[test]
    fn named_scenarios_resolve_and_unknown_names_say_what_is_known() {
        assert!(CloudScenario::resolve("ideal").unwrap().is_ideal());
        assert_eq!(CloudScenario::resolve("aws").unwrap().restart_every, 2000);
        assert_eq!(
            CloudScenario::resolve("hostile").unwrap().start_fraction,
            0.5
        );
        let error = CloudScenario::resolve("azure-ish").unwrap_err();
        assert!(error.contains("ideal, aws, hostile"), "{error}");
    }

    #[test]
    fn hostile_signal_loses_single_steps_and_one_outage_a_week() {
        let step = Duration::from_secs(60);
        let week = 7 * 1440;
        let missing = CloudScenario::hostile().missing_steps(2 * week, step, 1);
        let lost = missing.iter().filter(|m| **m).count();
        // 1 % of 20,160 steps plus two 120-step outages.
        assert!((300..=500).contains(&lost), "{lost}");
        let longest = missing
            .split(|m| !*m)
            .map(|run| run.len())
            .max()
            .unwrap_or(0);
        assert!(longest >= 120, "{longest}");
        assert_eq!(
            missing,
            CloudScenario::hostile().missing_steps(2 * week, step, 1)
        );
        assert!(
            CloudScenario::ideal()
                .missing_steps(week, step, 1)
                .iter()
                .all(|m| !*m)
        );
    }
}
