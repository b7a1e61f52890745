//! The agent's TOML configuration: `[agent]` settings and `[[fleets]]`.
//!
//! Strict: unknown fields are errors, and every problem in a file is reported at once
//! with the path of the field at fault (e.g. `fleets[1].guards.max_step_up`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::agent::AdapterKind;
use crate::guards::GuardConfig;
use crate::signal::SignalKind;
use crate::signal::prometheus::PrometheusConfig;
use crate::signal::synthetic::SyntheticConfig;
use crate::signal::trace::TraceConfig;
use crate::telemetry::LogFormat;

/// A whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    pub agent: AgentConfig,
    pub fleets: Vec<FleetConfig>,
}

/// `[agent]`: settings shared by every fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// How often each fleet is reconciled; also the step of its history. Default 60s.
    #[serde(default = "defaults::tick", with = "humantime_serde")]
    pub tick: Duration,
    /// Where /metrics and /healthz listen. Default 127.0.0.1:9910 (loopback only).
    #[serde(default = "defaults::metrics_address")]
    pub metrics_address: SocketAddr,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `[agent.api]`: the management API's tokens, state file and TLS.
    #[serde(default)]
    pub api: crate::api::ApiConfig,
    /// `[agent.coordination]`: several agents through etcd. Without it the agent runs
    /// alone.
    #[serde(default)]
    pub coordination: Option<crate::coordination::CoordinationConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            tick: defaults::tick(),
            metrics_address: defaults::metrics_address(),
            log_format: LogFormat::Text,
            api: crate::api::ApiConfig::default(),
            coordination: None,
        }
    }
}

/// `[[fleets]]`: one fleet the agent scales.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub name: String,
    /// Time from launch until an instance serves. Default 180s.
    pub boot_delay: Duration,
    /// History read from the signal at start, for the forecaster. Default 14 days.
    pub history: Duration,
    pub adapter: AdapterConfig,
    /// `[fleets.signal]`, or every `[[fleets.signals]]` entry (at least one): the fleet's
    /// demand is the largest of theirs.
    pub signals: Vec<SignalEntry>,
    pub policy: fleetscale_policies::PolicyConfig,
    pub guards: GuardConfig,
    /// `[[fleets.schedules]]`: windows that change the bounds for a while.
    pub schedules: Vec<crate::schedule::Schedule>,
    /// `[fleets.drain]`: drain instances before removing them.
    pub drain: Option<crate::drain::DrainConfig>,
}

/// The fields of a `[[fleets]]` entry other than its sub-tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetHeader {
    name: String,
    #[serde(default = "defaults::boot_delay", with = "humantime_serde")]
    boot_delay: Duration,
    #[serde(default = "defaults::history", with = "humantime_serde")]
    history: Duration,
}

/// Declares the enum of a section whose `kind` selects its settings (`[fleets.adapter]`,
/// `[fleets.signal]`) from one list of `Variant(ConfigType) = "kind"`, and everything that
/// matches on it: the kinds a config may name, each value's kind, reading a section of a
/// given kind, and the dispatch to the variant's settings (`$Kind`, the trait each config
/// type implements). A variant may carry a `#[cfg(...)]`: its kind is still known, and a
/// config that names it, in a binary built without it, is told so.
macro_rules! kinds {
    (
        $(#[doc = $doc:expr])*
        pub enum $Enum:ident: dyn $Kind:path {
            $(
                $(#[doc = $variant_doc:expr])*
                $(#[cfg($cfg:meta)])?
                $variant:ident($config:ty) = $name:literal,
            )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone)]
        pub enum $Enum {
            $(
                $(#[doc = $variant_doc])*
                $(#[cfg($cfg)])?
                $variant($config),
            )*
        }

        impl $Enum {
            /// Every kind a config may name (built into this binary or not), in the
            /// order they are listed to users.
            pub const KINDS: &[&str] = &[$($name),*];

            /// The kind it was selected by (`kind = ...`).
            pub fn kind(&self) -> &'static str {
                match self {
                    $(
                        $(#[cfg($cfg)])?
                        $Enum::$variant(_) => $name,
                    )*
                }
            }

            /// The settings of its kind, to check, describe or build.
            pub fn settings(&self) -> &dyn $Kind {
                match self {
                    $(
                        $(#[cfg($cfg)])?
                        $Enum::$variant(settings) => settings,
                    )*
                }
            }

            /// Reads `rest` (the section without its `kind`) as the settings of `kind`,
            /// one of [`KINDS`](Self::KINDS).
            fn read(
                kind: &str,
                rest: toml::Value,
                path: &str,
                problems: &mut Vec<Problem>,
            ) -> Option<Self> {
                match kind {
                    $(
                        $(#[cfg($cfg)])?
                        $name => deserialize::<$config>(rest, path, problems).map($Enum::$variant),
                    )*
                    other => {
                        problems.push(Problem {
                            path: format!("{path}.kind"),
                            message: format!(
                                "this fleetscale was built without the `{other}` feature"
                            ),
                        });
                        None
                    }
                }
            }
        }
    };
}

// The adapter kinds, one line each. Adding one: its config type implements
// `agent::AdapterKind` (checks, connecting, read lag), and it gets a line here.
kinds! {
    /// `[fleets.adapter]`: which cloud, and its settings. `kind` selects the backend.
    pub enum AdapterConfig: dyn AdapterKind {
        /// The in-memory cloud (dry-run demos, replay, tests).
        Mock(fleetscale_adapters::mock::MockConfig) = "mock",
        /// An EC2 fleet: instances carrying the fleet's tag.
        #[cfg(feature = "aws")]
        Aws(fleetscale_adapters::aws::AwsConfig) = "aws",
        /// An EC2 Auto Scaling group.
        #[cfg(feature = "aws")]
        AwsAsg(fleetscale_adapters::aws::AsgConfig) = "aws-asg",
        /// An Azure VM Scale Set.
        #[cfg(feature = "azure")]
        Azure(fleetscale_adapters::azure::AzureConfig) = "azure",
    }
}

// The signal kinds, one line each. Adding one: its config type implements
// `signal::SignalKind` (checks, building the source), and it gets a line here.
kinds! {
    /// `[fleets.signal]`: where demand comes from. `kind` selects the source.
    pub enum SignalConfig: dyn SignalKind {
        /// A seeded generator (no file needed).
        Synthetic(SyntheticConfig) = "synthetic",
        /// A column of a CSV trace, played as a live signal.
        Trace(TraceConfig) = "trace",
        /// A PromQL query against a Prometheus-compatible server.
        Prometheus(Box<PrometheusConfig>) = "prometheus",
    }
}

/// One of a fleet's signals: `[fleets.signal]`, or an entry of `[[fleets.signals]]`.
#[derive(Debug, Clone)]
pub struct SignalEntry {
    /// Unique in the fleet; names the signal in reasons, reports and metrics. Default:
    /// the source's kind, and for an entry of `[[fleets.signals]]` its index too
    /// (`prometheus-1`).
    pub name: String,
    pub source: SignalConfig,
}

/// The shortest and longest tick: below a second no VM fleet changes, and the policies'
/// step arithmetic counts in whole steps of it.
pub const MIN_TICK: Duration = Duration::from_secs(1);
pub const MAX_TICK: Duration = Duration::from_secs(86_400);
/// The longest boot delay and history a fleet may name.
pub const MAX_BOOT_DELAY: Duration = Duration::from_secs(86_400);
pub const MAX_HISTORY_SPAN: Duration = Duration::from_secs(90 * 86_400);

/// `Ok` when `value` is within `[least, most]`, or the message saying why not.
fn within(value: Duration, least: Duration, most: Duration) -> Result<(), String> {
    if value < least {
        Err(if least <= Duration::from_nanos(1) {
            "must be longer than 0s".to_string()
        } else {
            format!("must be at least {}, got {}", show(least), show(value))
        })
    } else if value > most {
        Err(format!(
            "must be at most {}, got {}",
            show(most),
            show(value)
        ))
    } else {
        Ok(())
    }
}

/// A duration as a config would write it, in whole days or hours where it is one.
fn show(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs >= 86_400 && secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if d.subsec_nanos() == 0 && secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        humantime::format_duration(d).to_string()
    }
}

mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;
    pub fn tick() -> Duration {
        Duration::from_secs(60)
    }
    pub fn metrics_address() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9910))
    }
    pub fn boot_delay() -> Duration {
        Duration::from_secs(180)
    }
    pub fn history() -> Duration {
        Duration::from_secs(14 * 86_400)
    }
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field at fault, e.g. `fleets[1].guards.max_step_up`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                path: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `file` names it in errors and anchors relative paths
    /// nowhere (they stay relative to the working directory).
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let config = parse_sections(text, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError {
                file: file.to_owned(),
                problems,
            }),
        }
    }

    pub fn fleet(&self, name: &str) -> Option<&FleetConfig> {
        self.fleets.iter().find(|f| f.name == name)
    }
}

fn parse_sections(text: &str, problems: &mut Vec<Problem>) -> Option<Config> {
    let mut table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            problems.push(Problem {
                path: "(syntax)".into(),
                message: e.to_string().trim().replace('\n', " "),
            });
            return None;
        }
    };
    let agent = section::<AgentConfig>(table.remove("agent"), "agent", problems);
    if let Some(agent) = &agent
        && let Err(message) = within(agent.tick, MIN_TICK, MAX_TICK)
    {
        problems.push(Problem {
            path: "agent.tick".into(),
            message,
        });
    }
    if let Some(agent) = &agent {
        for (field, message) in agent.api.problems() {
            problems.push(Problem {
                path: format!("agent.api.{field}"),
                message,
            });
        }
        if let Some(coordination) = &agent.coordination {
            for (field, message) in coordination.problems() {
                problems.push(Problem {
                    path: format!("agent.coordination.{field}"),
                    message,
                });
            }
        }
    }
    let fleets = match table.remove("fleets") {
        None => {
            problems.push(Problem {
                path: "fleets".into(),
                message: "no [[fleets]]: the agent has nothing to scale".into(),
            });
            Vec::new()
        }
        Some(toml::Value::Array(entries)) => entries
            .into_iter()
            .enumerate()
            .filter_map(|(i, entry)| parse_fleet(entry, &format!("fleets[{i}]"), problems))
            .collect(),
        Some(_) => {
            problems.push(Problem {
                path: "fleets".into(),
                message: "must be an array of tables ([[fleets]])".into(),
            });
            Vec::new()
        }
    };
    for key in table.keys() {
        problems.push(Problem {
            path: key.clone(),
            message: "unknown section (expected `agent` or `fleets`)".into(),
        });
    }
    let mut names = HashSet::new();
    for (i, fleet) in fleets.iter().enumerate() {
        if !names.insert(fleet.name.as_str()) {
            problems.push(Problem {
                path: format!("fleets[{i}].name"),
                message: format!("fleet {:?} is named twice", fleet.name),
            });
        }
    }
    Some(Config {
        agent: agent?,
        fleets,
    })
}

fn parse_fleet(entry: toml::Value, path: &str, problems: &mut Vec<Problem>) -> Option<FleetConfig> {
    let toml::Value::Table(mut table) = entry else {
        problems.push(Problem {
            path: path.into(),
            message: "must be a table".into(),
        });
        return None;
    };
    let adapter = table.remove("adapter");
    let signal = table.remove("signal");
    let signals = table.remove("signals");
    let policy = table.remove("policy");
    let guards = table.remove("guards");
    let schedules = table.remove("schedules");
    let drain = table.remove("drain");
    let header = section::<FleetHeader>(Some(toml::Value::Table(table)), path, problems);
    let adapter = present(adapter, &format!("{path}.adapter"), problems)
        .and_then(|v| adapter_section(v, &format!("{path}.adapter"), problems));
    let signals = signal_entries(signal, signals, path, problems);
    let policy = match policy {
        None => Some(fleetscale_policies::PolicyConfig::default()),
        Some(v) => policy_section(v, &format!("{path}.policy"), problems),
    };
    let guards = required::<GuardConfig>(guards, &format!("{path}.guards"), problems);
    let schedules = schedules_section(schedules, guards.as_ref(), path, problems);
    let drain = match drain {
        None => Some(None),
        Some(value) => {
            let at = format!("{path}.drain");
            let drain = deserialize::<crate::drain::DrainConfig>(value, &at, problems);
            if let Some(drain) = &drain {
                let kind = adapter.as_ref().map(AdapterConfig::kind);
                let found = drain
                    .problems()
                    .into_iter()
                    .chain(drain.unsupported_by(kind));
                problems.extend(found.map(|(field, message)| Problem {
                    path: format!("{at}.{field}"),
                    message,
                }));
            }
            drain.map(Some)
        }
    };

    let mut check = |sub: &str, found: Vec<(&'static str, String)>| {
        for (field, message) in found {
            problems.push(Problem {
                path: format!("{path}.{sub}.{field}"),
                message,
            });
        }
    };
    if let Some(guards) = &guards {
        check("guards", guards.problems());
    }

    if let Some(signals) = &signals {
        for (sub, signal) in signals {
            check(sub, signal.source.settings().problems());
        }
    }
    if let Some(header) = &header {
        if header.name.trim().is_empty() {
            problems.push(Problem {
                path: format!("{path}.name"),
                message: "must not be empty".into(),
            });
        }
        for (field, value, most) in [
            ("boot_delay", header.boot_delay, MAX_BOOT_DELAY),
            ("history", header.history, MAX_HISTORY_SPAN),
        ] {
            if let Err(message) = within(value, Duration::from_nanos(1), most) {
                problems.push(Problem {
                    path: format!("{path}.{field}"),
                    message,
                });
            }
        }
    }
    let header = header?;
    Some(FleetConfig {
        name: header.name,
        boot_delay: header.boot_delay,
        history: header.history,
        adapter: adapter?,
        signals: signals?.into_iter().map(|(_, signal)| signal).collect(),
        policy: policy?,
        guards: guards?,
        schedules: schedules?,
        drain: drain?,
    })
}

/// The fleet's signals, each with the path its fields are reported under: the single
/// `[fleets.signal]` (named by its kind), or each `[[fleets.signals]]` entry.
fn signal_entries(
    signal: Option<toml::Value>,
    signals: Option<toml::Value>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Vec<(String, SignalEntry)>> {
    let entries = match (signal, signals) {
        (Some(_), Some(_)) => {
            problems.push(Problem {
                path: format!("{path}.signals"),
                message: format!(
                    "{path}.signal and {path}.signals are both given: use [fleets.signal] for \
                     one signal or [[fleets.signals]] for several, not both"
                ),
            });
            return None;
        }
        (None, None) => {
            problems.push(Problem {
                path: format!("{path}.signal"),
                message: "missing section ([fleets.signal], or [[fleets.signals]] for several)"
                    .into(),
            });
            return None;
        }
        (Some(signal), None) => {
            let sub = "signal".to_string();
            let source = signal_section(signal, &format!("{path}.{sub}"), problems)?;
            return Some(vec![(
                sub,
                SignalEntry {
                    name: source.kind().to_string(),
                    source,
                },
            )]);
        }
        (None, Some(toml::Value::Array(entries))) if !entries.is_empty() => entries,
        (None, Some(_)) => {
            problems.push(Problem {
                path: format!("{path}.signals"),
                message: "must be a non-empty array of tables ([[fleets.signals]])".into(),
            });
            return None;
        }
    };
    let mut parsed = Vec::new();
    let mut failed = false;
    for (i, entry) in entries.into_iter().enumerate() {
        let sub = format!("signals[{i}]");
        let at = format!("{path}.{sub}");
        let mut entry = entry;
        let name = match &mut entry {
            toml::Value::Table(table) => match table.remove("name") {
                None => None,
                Some(toml::Value::String(name)) if !name.trim().is_empty() => Some(name),
                Some(other) => {
                    problems.push(Problem {
                        path: format!("{at}.name"),
                        message: format!("must be a non-empty string, not {other}"),
                    });
                    failed = true;
                    None
                }
            },
            _ => None,
        };
        match signal_section(entry, &at, problems) {
            Some(source) => {
                let name = name.unwrap_or_else(|| format!("{}-{i}", source.kind()));
                parsed.push((sub, SignalEntry { name, source }));
            }
            None => failed = true,
        }
    }
    let mut names = HashSet::new();
    for (sub, signal) in &parsed {
        if !names.insert(signal.name.as_str()) {
            problems.push(Problem {
                path: format!("{path}.{sub}.name"),
                message: format!("signal {:?} is named twice in this fleet", signal.name),
            });
            failed = true;
        }
    }
    (!failed).then_some(parsed)
}

/// `[[fleets.schedules]]` (none when absent), each entry validated against the fleet's
/// guards; problems are named `fleets[0].schedules[1].cron`.
fn schedules_section(
    value: Option<toml::Value>,
    guards: Option<&GuardConfig>,
    fleet: &str,
    problems: &mut Vec<Problem>,
) -> Option<Vec<crate::schedule::Schedule>> {
    use crate::schedule::{Schedule, ScheduleEntry};
    let entries = match value {
        None => return Some(Vec::new()),
        Some(toml::Value::Array(entries)) => entries,
        Some(_) => {
            problems.push(Problem {
                path: format!("{fleet}.schedules"),
                message: "must be an array of tables ([[fleets.schedules]])".into(),
            });
            return None;
        }
    };
    let fixed = guards.map(|g| fleetscale_policies::Bounds {
        min: g.min,
        max: g.max,
    });
    let before = problems.len();
    let mut schedules: Vec<Schedule> = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let path = format!("{fleet}.schedules[{i}]");
        let Some(entry) = deserialize::<ScheduleEntry>(entry, &path, problems) else {
            continue;
        };
        let named = entry.name.is_some();
        match Schedule::from_entry(entry, fixed) {
            Ok(schedule) => {
                if named && schedules.iter().any(|s| s.name == schedule.name) {
                    problems.push(Problem {
                        path: format!("{path}.name"),
                        message: format!("schedule {:?} is named twice", schedule.name),
                    });
                }
                schedules.push(schedule);
            }
            Err(found) => problems.extend(found.into_iter().map(|(field, message)| Problem {
                path: if field.is_empty() {
                    path.clone()
                } else {
                    format!("{path}.{field}")
                },
                message,
            })),
        }
    }
    (problems.len() == before).then_some(schedules)
}

/// Deserializes a section that may be absent (its defaults apply), recording a problem
/// with the full path of the field at fault.
fn section<T: DeserializeOwned>(
    value: Option<toml::Value>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let value = value.unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
    deserialize(value, path, problems)
}

/// Like [`section`], for a section that must be present.
fn required<T: DeserializeOwned>(
    value: Option<toml::Value>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    present(value, path, problems).and_then(|value| deserialize(value, path, problems))
}

fn present(
    value: Option<toml::Value>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<toml::Value> {
    if value.is_none() {
        problems.push(Problem {
            path: path.into(),
            message: "missing section".into(),
        });
    }
    value
}

/// Splits a section into its selector (`kind = ...`, `name = ...`) and the rest, which
/// is then read as the selected variant's own struct (so errors keep their field paths).
fn selector(
    value: toml::Value,
    tag: &str,
    path: &str,
    known: &[&str],
    problems: &mut Vec<Problem>,
) -> Option<(String, toml::Value)> {
    let toml::Value::Table(mut table) = value else {
        problems.push(Problem {
            path: path.into(),
            message: "must be a table".into(),
        });
        return None;
    };
    let expected = known.join(", ");
    match table.remove(tag) {
        Some(toml::Value::String(selected)) if known.contains(&selected.as_str()) => {
            Some((selected, toml::Value::Table(table)))
        }
        Some(toml::Value::String(selected)) => {
            problems.push(Problem {
                path: format!("{path}.{tag}"),
                message: format!("unknown {tag} {selected:?} (expected one of: {expected})"),
            });
            None
        }
        Some(other) => {
            problems.push(Problem {
                path: format!("{path}.{tag}"),
                message: format!("must be a string (one of: {expected}), not {other}"),
            });
            None
        }
        None => {
            problems.push(Problem {
                path: format!("{path}.{tag}"),
                message: format!("missing (one of: {expected})"),
            });
            None
        }
    }
}

fn adapter_section(
    value: toml::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<AdapterConfig> {
    let (kind, rest) = selector(value, "kind", path, AdapterConfig::KINDS, problems)?;
    let adapter = AdapterConfig::read(&kind, rest, path, problems)?;
    let found = adapter.settings().problems();
    let ok = found.is_empty();
    for (field, message) in found {
        problems.push(Problem {
            path: format!("{path}.{field}"),
            message,
        });
    }
    ok.then_some(adapter)
}

fn signal_section(
    value: toml::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<SignalConfig> {
    let (kind, rest) = selector(value, "kind", path, SignalConfig::KINDS, problems)?;
    SignalConfig::read(&kind, rest, path, problems)
}

fn policy_section(
    value: toml::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<fleetscale_policies::PolicyConfig> {
    use fleetscale_policies::PolicyConfig;
    let (name, rest) = selector(value, "name", path, PolicyConfig::NAMES, problems)?;
    let config = deserialize_by(rest, path, problems, |settings| {
        PolicyConfig::deserialize_named(&name, settings)
    })?;
    match config.validate() {
        Ok(()) => Some(config),
        Err(message) => {
            problems.push(Problem {
                path: path.into(),
                message,
            });
            None
        }
    }
}

/// Reads `value` as a `T`. A field that fails is reported with its full path, removed,
/// and the rest read again, so that every bad field of a section is reported at once.
fn deserialize<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    deserialize_by(value, path, problems, |settings| T::deserialize(settings))
}

/// Like [`deserialize`], reading with `read` (a type's `deserialize`, or a registry's
/// reader that picks the type by name).
fn deserialize_by<T>(
    mut value: toml::Value,
    path: &str,
    problems: &mut Vec<Problem>,
    read: impl Fn(serde_path_to_error::Deserializer<'_, '_, toml::Value>) -> Result<T, toml::de::Error>,
) -> Option<T> {
    let mut removed: Vec<String> = Vec::new();
    let mut failed = false;
    for _ in 0..64 {
        let mut track = serde_path_to_error::Track::new();
        let read = read(serde_path_to_error::Deserializer::new(
            value.clone(),
            &mut track,
        ));
        match read.map_err(|e| serde_path_to_error::Error::new(track.path(), e)) {
            Ok(parsed) => return if failed { None } else { Some(parsed) },
            Err(e) => {
                let segments: Vec<String> = e.path().iter().map(|s| s.to_string()).collect();
                let inner = e.path().to_string();
                let full = if inner == "." || inner.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}.{inner}")
                };
                let message = e.into_inner().to_string().trim().replace('\n', " ");
                // A field removed for being bad is "missing" now: that is not news.
                let echo = message.starts_with("missing field")
                    && removed.iter().any(|r| message.contains(&format!("`{r}`")));
                if !echo {
                    problems.push(Problem {
                        path: full,
                        message,
                    });
                }
                failed = true;
                match segments.last() {
                    Some(key) if remove_at(&mut value, &segments) => removed.push(key.clone()),
                    _ => return None,
                }
            }
        }
    }
    None
}

/// Removes the field at `segments` (map keys and `[index]`es) from `value`.
fn remove_at(value: &mut toml::Value, segments: &[String]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        at = match (
            at,
            segment.strip_prefix('[').and_then(|s| s.strip_suffix(']')),
        ) {
            (toml::Value::Array(items), Some(index)) => {
                match index.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(item) => item,
                    None => return false,
                }
            }
            (toml::Value::Table(table), None) => match table.get_mut(segment.as_str()) {
                Some(item) => item,
                None => return false,
            },
            _ => return false,
        };
    }
    match at {
        toml::Value::Table(table) => table.remove(last.as_str()).is_some(),
        _ => false,
    }
}
