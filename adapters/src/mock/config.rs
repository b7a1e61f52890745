//! The mock cloud's settings, as written in a fleet's `[fleets.adapter]` table.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::checked::{at_least_one, non_negative, probability};

/// Settings of a [`MockCloud`](super::MockCloud). Every field has a default, so an empty
/// table is a fault-free cloud of three zones whose instances boot in 60 s.
///
/// ```toml
/// [fleets.adapter]
/// kind = "mock"
/// boot_delay = "90s"
/// launch_latency = "200ms"
/// quota = 40
/// zones = ["zone-a", "zone-b"]
/// initial_size = 4
/// seed = 7
/// faults = { error_rate = 0.05, throttle_rate = 0.02, throttle_retry_after = "2s" }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Time from launch until an instance serves (Pending, then Running). Default `60s`.
    #[serde(with = "humantime_serde")]
    pub boot_delay: Duration,
    /// How long a grow call takes to answer. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub launch_latency: Duration,
    /// How long a shrink call takes to answer. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub terminate_latency: Duration,
    /// How much longer than `boot_delay` a slow boot takes: boot times are log-normal
    /// with median `boot_delay` and 95th percentile `boot_p95_ratio * boot_delay`.
    /// Default `1`: every boot takes exactly `boot_delay`.
    #[serde(deserialize_with = "at_least_one")]
    pub boot_p95_ratio: f64,
    /// How long a removed instance stays listed as Stopping before it is gone (EC2's
    /// `shutting-down`, Azure's `deleting`). Default `0s`: gone at once.
    #[serde(with = "humantime_serde")]
    pub stop_delay: Duration,
    /// When set, each removed instance stays Stopping for a time drawn uniformly between
    /// `stop_delay` and this. Default: exactly `stop_delay`.
    #[serde(with = "humantime_serde")]
    pub stop_delay_max: Option<Duration>,
    /// Reads lag behind launches: the instances of a grow show in reads only after a
    /// delay drawn uniformly between 0 and this, once per call (EC2's
    /// DescribeInstances is eventually consistent). Default `0s`.
    #[serde(with = "humantime_serde")]
    pub launch_read_lag: Duration,
    /// Reads lag behind removals: a removed instance still reads as it was (Pending or
    /// Running) for a delay drawn uniformly between 0 and this. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub removal_read_lag: Duration,
    /// Most live instances the account may hold. A grow beyond it launches what fits and
    /// reports the shortfall, or fails with a capacity error when nothing fits. Default:
    /// no limit.
    pub quota: Option<u32>,
    /// Availability zones; launches are spread to keep them balanced. Default
    /// `["mock-a", "mock-b", "mock-c"]`. Must not be empty.
    #[serde(deserialize_with = "non_empty_zones")]
    pub zones: Vec<String>,
    /// Instances present and serving when the cloud starts. Default `0`.
    pub initial_size: u32,
    /// Seed of every random draw (faults, deaths), so a run repeats exactly. Default `0`.
    pub seed: u64,
    /// Faults switched on from the start; all can be changed at run time through
    /// [`MockCloud::faults`](super::MockCloud::faults).
    pub faults: FaultConfig,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            boot_delay: Duration::from_secs(60),
            launch_latency: Duration::ZERO,
            terminate_latency: Duration::ZERO,
            boot_p95_ratio: 1.0,
            stop_delay: Duration::ZERO,
            stop_delay_max: None,
            launch_read_lag: Duration::ZERO,
            removal_read_lag: Duration::ZERO,
            quota: None,
            zones: vec!["mock-a".into(), "mock-b".into(), "mock-c".into()],
            initial_size: 0,
            seed: 0,
            faults: FaultConfig::default(),
        }
    }
}

impl MockConfig {
    /// A fault-free cloud for replay: the given boot delay, no latency, no quota, and
    /// instances gone the moment they are removed (the benchmark's model).
    pub fn for_replay(boot_delay: Duration) -> Self {
        MockConfig {
            boot_delay,
            ..MockConfig::default()
        }
    }
}

/// Faults of the mock cloud. Rates are probabilities between 0 and 1, drawn per call (or
/// per launched instance) from the cloud's seeded random source.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Chance that a call fails with a transient error before doing anything. Default `0`.
    #[serde(deserialize_with = "probability")]
    pub error_rate: f64,
    /// Chance that a call is throttled before doing anything. Default `0`.
    #[serde(deserialize_with = "probability")]
    pub throttle_rate: f64,
    /// The retry-after a throttled call carries. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub throttle_retry_after: Duration,
    /// When set, each throttled call's retry-after is drawn uniformly between
    /// `throttle_retry_after` and this. Default: exactly `throttle_retry_after`.
    #[serde(with = "humantime_serde")]
    pub throttle_retry_after_max: Option<Duration>,
    /// Chance that a grow call fails with a capacity error (EC2's
    /// InsufficientInstanceCapacity) before launching anything. Default `0`.
    #[serde(deserialize_with = "probability")]
    pub capacity_rate: f64,
    /// Chance that a grow that goes through launches only half of what it asked (rounded
    /// up), as a provider short of capacity does. Default `0`.
    #[serde(deserialize_with = "probability")]
    pub partial_launch_rate: f64,
    /// Chance that a launched instance never finishes booting (stays Pending). Default `0`.
    #[serde(deserialize_with = "probability")]
    pub never_boot_rate: f64,
    /// Deaths per instance per hour: each live instance dies after an exponentially
    /// distributed lifetime with this rate and vanishes from the fleet. Default `0`.
    #[serde(deserialize_with = "non_negative")]
    pub death_rate: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            error_rate: 0.0,
            throttle_rate: 0.0,
            throttle_retry_after: Duration::from_secs(1),
            throttle_retry_after_max: None,
            capacity_rate: 0.0,
            partial_launch_rate: 0.0,
            never_boot_rate: 0.0,
            death_rate: 0.0,
        }
    }
}

fn non_empty_zones<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let zones = Vec::<String>::deserialize(deserializer)?;
    if zones.is_empty() {
        return Err(serde::de::Error::custom("must name at least one zone"));
    }
    if let Some(blank) = zones.iter().position(|z| z.trim().is_empty()) {
        return Err(serde::de::Error::custom(format!("zone {blank} is blank")));
    }
    Ok(zones)
}

/// A probability as the mock uses it: out-of-range or NaN values set in code are clamped,
/// since only the config file path is validated.
pub(super) fn clamp_probability(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    }
}

/// A rate as the mock uses it: negative, infinite or NaN values set in code count as 0.
pub(super) fn clamp_rate(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        value
    } else {
        0.0
    }
}
