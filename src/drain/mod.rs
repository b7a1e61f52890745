//! Draining before removal: a scale-in first takes its instances out of service (a load
//! balancer deregisters them, a hook tells them to finish their work), and removes them
//! only once they are drained or the drain's timeout has passed.
//!
//! A drain is written where it survives the agent: the controller marks each instance
//! as draining, with the time it began, through the adapter (a tag on the instance) before
//! it begins the drain, and every read lists the instance with that time. A restarted
//! agent therefore finds every drain in progress, counts those instances as draining (not
//! serving, never chosen for removal again) and removes them when they are drained: a
//! load balancer is asked again; a hook is not called again (its answer was in the old
//! agent's memory), so the removal waits for the timeout.
//!
//! Each way of draining is a [`Drain`]; [`Drains`] runs the ones a fleet's
//! `[fleets.drain]` names and applies the timeout.

#[cfg(feature = "azure")]
pub mod backend_pool;
pub mod hook;
pub mod simulated;
#[cfg(feature = "aws")]
pub mod target_group;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use fleetscale_adapters::{Instance, InstanceId};
use serde::Deserialize;

/// One way of draining.
#[async_trait::async_trait]
pub trait Drain: Send + Sync + std::fmt::Debug {
    /// Short name for logs (`hook`, `target-group`).
    fn name(&self) -> &str;

    /// Begins draining `instances`, which have just been marked as draining. Called once
    /// per drain by the agent that marked them.
    async fn begin(&self, instances: &[Instance]) -> Result<(), String>;

    /// Of the draining `instances`, those that are drained now.
    async fn drained(&self, instances: &[Instance]) -> Result<HashSet<InstanceId>, String>;
}

/// `[fleets.drain]`: how a fleet's instances are drained before removal. At least one
/// of `target_group_arn`, `backend_pool_id`, `hook_url` and `hook_command`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// After this long a drain that has not finished is cut short and the instance
    /// removed (logged). Default 5 minutes.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// An AWS ELBv2 target group the fleet's instances are registered in (by instance
    /// id): an instance is deregistered, and drained once it has left `draining`.
    #[serde(default)]
    pub target_group_arn: Option<String>,
    /// An Azure load balancer backend pool the scale set's VMs are in (its ARM id): a VM
    /// leaves it, and is drained once the change has been applied.
    #[serde(default)]
    pub backend_pool_id: Option<String>,
    /// An HTTP endpoint POSTed `{"fleet", "id", "name", "address", "zone"}` for each
    /// instance; a 2xx answer means drained.
    #[serde(default)]
    pub hook_url: Option<String>,
    /// A command run for each instance, with `{id}`, `{name}`, `{address}` and `{fleet}`
    /// replaced in its arguments; exit status 0 means drained.
    #[serde(default)]
    pub hook_command: Option<Vec<String>>,
    /// How long one hook call may take before it is abandoned. Default: the timeout.
    #[serde(default, with = "humantime_serde")]
    pub hook_timeout: Option<Duration>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(300)
}

/// The longest drain timeout accepted: a day.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

impl DrainConfig {
    /// Problems, each with the field at fault.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        if self.target_group_arn.is_none()
            && self.backend_pool_id.is_none()
            && self.hook_url.is_none()
            && self.hook_command.is_none()
        {
            found.push((
                "target_group_arn",
                "a drain needs a target_group_arn, a backend_pool_id, a hook_url or a hook_command"
                    .to_string(),
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            found.push((
                "timeout",
                "must be more than 0s and at most 1 day".to_string(),
            ));
        }
        if let Some(timeout) = self.hook_timeout
            && (timeout.is_zero() || timeout > self.timeout)
        {
            found.push((
                "hook_timeout",
                "must be more than 0s and at most the drain's timeout".to_string(),
            ));
        }
        if let Some(url) = &self.hook_url {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(u) => found.push((
                    "hook_url",
                    format!(
                        "{url:?}: the scheme must be http or https, not {}",
                        u.scheme()
                    ),
                )),
                Err(e) => found.push(("hook_url", format!("{url:?}: {e}"))),
            }
        }
        if let Some(command) = &self.hook_command
            && command.first().is_none_or(|c| c.trim().is_empty())
        {
            found.push((
                "hook_command",
                "must name a program: [\"/path/to/drain\", \"{id}\"]".to_string(),
            ));
        }
        if let Some(arn) = &self.target_group_arn
            && !(arn.starts_with("arn:") && arn.contains(":targetgroup/"))
        {
            found.push((
                "target_group_arn",
                format!("{arn:?} is not a target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)"),
            ));
        }
        if let Some(id) = &self.backend_pool_id
            && !is_backend_pool_id(id)
        {
            found.push((
                "backend_pool_id",
                format!("{id:?} is not a backend pool id (/subscriptions/SUBSCRIPTION/resourceGroups/GROUP/providers/Microsoft.Network/loadBalancers/NAME/backendAddressPools/POOL)"),
            ));
        }
        found
    }

    /// Problems of this drain on a fleet of adapter kind `kind`: the backends that can
    /// keep a drain's mark, and the load balancers each can use.
    pub fn unsupported_by(&self, kind: Option<&str>) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        match kind {
            Some("mock" | "aws" | "aws-asg" | "azure") | None => {}
            Some(kind) => found.push((
                "timeout",
                format!(
                    "draining is not available for kind = {kind:?} fleets (\"mock\", \"aws\", \"aws-asg\" and \"azure\" keep a drain's mark)"
                ),
            )),
        }
        if self.backend_pool_id.is_some() && !matches!(kind, Some("azure") | None) {
            found.push((
                "backend_pool_id",
                "an Azure load balancer backend pool drains a scale set (kind = \"azure\")"
                    .to_string(),
            ));
        }
        if self.target_group_arn.is_some() && !matches!(kind, Some("aws" | "aws-asg") | None) {
            found.push((
                "target_group_arn",
                "an ELBv2 target group drains an AWS fleet (kind = \"aws\" or \"aws-asg\")"
                    .to_string(),
            ));
        }
        found
    }
}

/// What a tick finds of the drains in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainsDue {
    /// Drained: removed now.
    pub drained: Vec<InstanceId>,
    /// Draining longer than the timeout: removed now, the drain cut short.
    pub timed_out: Vec<InstanceId>,
}

impl DrainsDue {
    pub fn all(&self) -> Vec<InstanceId> {
        self.drained
            .iter()
            .chain(&self.timed_out)
            .cloned()
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.drained.is_empty() && self.timed_out.is_empty()
    }
}

/// A fleet's drains and their timeout.
#[derive(Debug)]
pub struct Drains {
    pub drains: Vec<Box<dyn Drain>>,
    pub timeout: Duration,
}

impl Drains {
    /// The names of its drains, for logs and reports (`hook+target-group`).
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.drains.iter().map(|d| d.name()).collect();
        names.join("+")
    }

    /// Begins every drain for `instances`; the first failure is returned (the instances
    /// stay marked, and are removed once the others are drained or at the timeout).
    pub async fn begin(&self, instances: &[Instance]) -> Result<(), String> {
        let mut first = None;
        for drain in &self.drains {
            if let Err(e) = drain.begin(instances).await {
                tracing::warn!(drain = drain.name(), error = %e, "could not begin a drain; the removal waits for the timeout");
                first.get_or_insert(format!("{}: {e}", drain.name()));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Which draining instances are due for removal at `now`: drained by every drain,
    /// or draining for longer than the timeout. A drain that cannot be asked leaves its
    /// instances to the timeout.
    pub async fn due(&self, draining: &[Instance], now: SystemTime) -> DrainsDue {
        let mut due = DrainsDue::default();
        if draining.is_empty() {
            return due;
        }
        let mut drained: Option<HashSet<InstanceId>> = None;
        for drain in &self.drains {
            let theirs = match drain.drained(draining).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(drain = drain.name(), error = %e, "cannot tell which instances are drained; waiting");
                    HashSet::new()
                }
            };
            drained = Some(match drained {
                None => theirs,
                Some(so_far) => so_far.intersection(&theirs).cloned().collect(),
            });
        }
        let drained = drained.unwrap_or_default();
        for instance in draining {
            let since = instance.draining_since.unwrap_or(now);
            if drained.contains(&instance.id) {
                due.drained.push(instance.id.clone());
            } else if now.duration_since(since).unwrap_or_default() >= self.timeout {
                due.timed_out.push(instance.id.clone());
            }
        }
        due
    }
}

/// The drains `config` names for `fleet`, connected to its load balancer.
pub async fn connect(
    config: &DrainConfig,
    fleet: &crate::config::FleetConfig,
) -> anyhow::Result<Drains> {
    #[allow(unused_mut)] // without the aws feature nothing is added
    let mut drains = build(config, &fleet.name);
    if let Some(arn) = &config.target_group_arn {
        #[cfg(feature = "aws")]
        {
            use anyhow::Context as _;
            let settings = match &fleet.adapter {
                crate::config::AdapterConfig::Aws(aws) => aws.sdk_settings(),
                crate::config::AdapterConfig::AwsAsg(asg) => asg.sdk_settings(),
                _ => anyhow::bail!(
                    "fleet {}: a target group drains an AWS fleet (kind = \"aws\" or \"aws-asg\")",
                    fleet.name
                ),
            };
            let group = fleetscale_adapters::aws::target_group::TargetGroup::connect(
                &fleet.name,
                settings,
                arn,
            )
            .await
            .with_context(|| format!("fleet {}: connecting to target group {arn}", fleet.name))?;
            drains
                .drains
                .push(Box::new(target_group::TargetGroupDrain::new(group)));
        }
        #[cfg(not(feature = "aws"))]
        anyhow::bail!(
            "fleet {}: target_group_arn {arn} needs a fleetscale built with the aws feature",
            fleet.name
        );
    }
    if let Some(pool) = &config.backend_pool_id {
        #[cfg(feature = "azure")]
        {
            let crate::config::AdapterConfig::Azure(azure) = &fleet.adapter else {
                anyhow::bail!(
                    "fleet {}: a backend pool drains an Azure scale set (kind = \"azure\")",
                    fleet.name
                );
            };
            let scale_set = fleetscale_adapters::azure::ScaleSetFleet::new(azure.clone())?;
            drains
                .drains
                .push(Box::new(backend_pool::BackendPoolDrain::new(
                    scale_set, pool,
                )));
        }
        #[cfg(not(feature = "azure"))]
        anyhow::bail!(
            "fleet {}: backend_pool_id {pool} needs a fleetscale built with the azure feature",
            fleet.name
        );
    }
    Ok(drains)
}

/// `/subscriptions/S/resourceGroups/G/providers/Microsoft.Network/loadBalancers/L/backendAddressPools/P`,
/// segment names compared case-insensitively as ARM does.
fn is_backend_pool_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    let expected = [
        "",
        "subscriptions",
        "*",
        "resourcegroups",
        "*",
        "providers",
        "microsoft.network",
        "loadbalancers",
        "*",
        "backendaddresspools",
        "*",
    ];
    parts.len() == expected.len()
        && parts.iter().zip(expected).all(|(part, want)| {
            if want == "*" {
                !part.trim().is_empty()
            } else {
                part.eq_ignore_ascii_case(want)
            }
        })
}

/// The hook drains `config` names, for fleet `fleet` (a target group needs
/// [`connect`]).
pub fn build(config: &DrainConfig, fleet: &str) -> Drains {
    let hook_timeout = config.hook_timeout.unwrap_or(config.timeout);
    let mut drains: Vec<Box<dyn Drain>> = Vec::new();
    if let Some(url) = &config.hook_url {
        drains.push(Box::new(hook::HookDrain::new(
            fleet,
            hook::HookTarget::Url(url.clone()),
            hook_timeout,
        )));
    }
    if let Some(command) = &config.hook_command {
        drains.push(Box::new(hook::HookDrain::new(
            fleet,
            hook::HookTarget::Command(command.clone()),
            hook_timeout,
        )));
    }
    Drains {
        drains,
        timeout: config.timeout,
    }
}
