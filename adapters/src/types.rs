use std::time::SystemTime;

/// A provider's instance id (an EC2 `i-…` id, a scale set's instance id, a mock's id).
pub type InstanceId = String;

/// The life stage of an instance, as far as the controller cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Launched and billed, not yet serving (booting).
    Pending,
    /// Serving.
    Running,
    /// On its way out; billed until gone, no longer serving.
    Stopping,
}

/// One instance of a fleet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    pub id: InstanceId,
    pub state: InstanceState,
    pub launched_at: SystemTime,
    pub zone: String,
    /// Protected from scale-in: the controller never names it in a shrink.
    pub protected: bool,
    /// Its private address, where the provider gives one (EC2's private IP): what a
    /// drain hook is told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Being drained before its removal, since this time, as marked by
    /// [`CloudAdapter::mark_draining`](crate::CloudAdapter::mark_draining) and read back
    /// from the provider (a tag), so that a restarted agent finds the drain again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining_since: Option<SystemTime>,
}

/// A drain's mark as a provider tag keeps it: the time it began, in Unix seconds.
pub fn render_drain_mark(since: SystemTime) -> String {
    since
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string()
}

/// A drain mark's value; anything else (a tag set by hand) counts as a drain begun at the
/// epoch, which has timed out.
pub fn parse_drain_mark(value: &str) -> Option<SystemTime> {
    let seconds = value.trim().parse::<u64>().unwrap_or(0);
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds))
}

/// A fleet as the provider reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Fleet {
    pub instances: Vec<Instance>,
    /// The provider's own target size (an Azure scale set's capacity), where it keeps one.
    pub target_size: Option<u32>,
}

impl Fleet {
    /// Instances that are billed: every live instance.
    pub fn billed(&self) -> u32 {
        self.instances.len() as u32
    }

    /// Instances that serve.
    pub fn serving(&self) -> u32 {
        self.count(InstanceState::Running)
    }

    /// Instances still booting.
    pub fn booting(&self) -> u32 {
        self.count(InstanceState::Pending)
    }

    fn count(&self, state: InstanceState) -> u32 {
        self.instances.iter().filter(|i| i.state == state).count() as u32
    }
}

/// A token that makes a grow idempotent: the same token never launches twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyToken(String);

impl IdempotencyToken {
    /// Tokens are at most 64 ASCII characters (EC2's ClientToken limit).
    pub fn new(token: impl Into<String>) -> Self {
        let mut token: String = token.into();
        token.retain(|c| c.is_ascii_graphic());
        token.truncate(64);
        IdempotencyToken(token)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a grow did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GrowOutcome {
    pub requested: u32,
    /// Ids of the instances launched (fewer than `requested` when the provider fell short).
    pub launched: Vec<InstanceId>,
}

/// What a shrink did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShrinkOutcome {
    /// Instances the provider accepted for removal.
    pub removed: Vec<InstanceId>,
}

/// The result of one permission probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PermissionCheck {
    /// The provider's name for the permission (`ec2:RunInstances`, an ARM action…).
    pub permission: String,
    pub allowed: bool,
    /// Why it failed, or how it was proven.
    pub detail: String,
}

/// What verify-access found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessReport {
    /// The identity the credentials resolved to (an ARN, an object id, `mock`).
    pub identity: String,
    pub checks: Vec<PermissionCheck>,
}

impl AccessReport {
    /// Every probed permission is allowed.
    pub fn all_allowed(&self) -> bool {
        self.checks.iter().all(|c| c.allowed)
    }
}
