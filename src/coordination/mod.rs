//! Several agents on one set of fleets: high availability and scale-out through etcd.
//!
//! Each fleet is an election under a lease: every agent that has the fleet in its config
//! campaigns for it by creating the key `{prefix}/fleets/{fleet}/holder` in a transaction
//! (`create_revision == 0`) under its own member lease; the agent whose key it is (the
//! holder) alone reads the cloud and acts, the others stand by. An agent campaigns only
//! while it holds fewer than its share, `ceil(fleets / live agents)` (live agents: keys
//! under `{prefix}/members/`, each under its agent's lease), and gives up the excess, one
//! fleet at a time, so that an agent that joins gets fleets.
//!
//! The controller knows none of this: it is handed a [`Fence`], which it asks before
//! every mutating call (grow, shrink, replacing stuck instances). Alone, the fence is
//! [`Alone`], which always answers yes. With etcd it is the fleet's holding (in
//! `etcd`), which answers yes only while the agent's own deadline (last keep-alive plus
//! the TTL, on the monotonic clock) is far enough off and etcd confirms that the lease
//! has enough time left and that the holder key is still this lease's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

#[cfg(feature = "etcd")]
mod commands;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
pub use commands::{ApplyCommands, EtcdCommands};
#[cfg(feature = "etcd")]
pub use etcd::{Coordinator, Holding};

/// Who a mutating call is made for: the lease it is made under, when coordinating. Part
/// of the grow token's inputs, so that a new holder never sends its predecessor's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseIdentity {
    /// The agent runs alone (no `[agent.coordination]`).
    Alone,
    /// The etcd lease the agent holds the fleet under.
    Lease(i64),
}

impl LeaseIdentity {
    /// The lease id, when there is one.
    pub fn lease(&self) -> Option<i64> {
        match self {
            LeaseIdentity::Alone => None,
            LeaseIdentity::Lease(id) => Some(*id),
        }
    }
}

/// Why an agent may not act on a fleet now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotHolder(pub String);

/// Asked before every mutating call: may this agent act on the fleet now?
#[async_trait::async_trait]
pub trait Fence: std::fmt::Debug + Send + Sync {
    async fn may_act(&self) -> Result<Permit, NotHolder>;
}

/// A fence's yes: the lease a call is made under, and the instant by which the call
/// must have started. An agent stalled (SIGSTOP, a long pause) between the fence and
/// its call wakes past that instant and does not make the call. A call once started is
/// not cut off: the providers take no fencing token, so cancelling it would leave the
/// fleet in an unknown state; the margin left after `start_by` is the call's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub identity: LeaseIdentity,
    /// `None`: alone, no deadline.
    pub start_by: Option<tokio::time::Instant>,
}

impl Permit {
    /// The permit of an agent that runs alone.
    pub const ALONE: Permit = Permit {
        identity: LeaseIdentity::Alone,
        start_by: None,
    };

    /// Runs `call` if it starts (is first polled) before `start_by`; past it, `call` is
    /// dropped unpolled, so nothing of it reaches the provider.
    pub async fn start<F: std::future::Future>(&self, call: F) -> Result<F::Output, NotHolder> {
        let mut call = std::pin::pin!(call);
        let mut first = true;
        let start_by = self.start_by;
        std::future::poll_fn(|cx| {
            if std::mem::take(&mut first)
                && start_by.is_some_and(|by| tokio::time::Instant::now() >= by)
            {
                return std::task::Poll::Ready(Err(NotHolder(
                    "the lease's deadline for starting the call passed before it started \
                     (the agent stalled after the fence)"
                        .into(),
                )));
            }
            call.as_mut().poll(cx).map(Ok)
        })
        .await
    }
}

/// The fence of an agent that runs alone: always yes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Alone;

#[async_trait::async_trait]
impl Fence for Alone {
    async fn may_act(&self) -> Result<Permit, NotHolder> {
        Ok(Permit::ALONE)
    }
}

/// What a fleet's task is told before each tick when coordinating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    /// False when the agent cannot coordinate (etcd unreachable): /healthz shows it.
    pub healthy: bool,
    pub detail: String,
}

/// A fleet's seat in the coordination: whether this agent holds the fleet this tick.
#[async_trait::async_trait]
pub trait Seat: std::fmt::Debug + Send + Sync {
    /// Before a tick: the fence to act under while this agent holds the fleet
    /// (campaigning for it first when it does not), or why it stands by this tick.
    async fn hold(&self) -> Result<Arc<dyn Fence>, Standby>;
    /// After a tick it held: gives the fleet up when the agent holds more than its share.
    async fn after_tick(&self);
    /// On a clean stop: gives the fleet up at once, for a standby to take.
    async fn resign(&self);
}

/// `[agent.coordination]`: several agents through etcd.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinationConfig {
    /// `etcd`, the only kind.
    pub kind: CoordinationKind,
    /// The etcd client URLs, `http://host:2379` or `https://host:2379`.
    pub endpoints: Vec<String>,
    /// Every key the agents use is under it. Default `/fleetscale`.
    #[serde(default = "defaults::prefix")]
    pub prefix: String,
    /// The member lease's time to live, in whole seconds (at least 2). Default 15s.
    #[serde(default = "defaults::lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long an agent waits after a fleet changed hands before it gives up another
    /// one beyond its share. Default 10s.
    #[serde(default = "defaults::settle", with = "humantime_serde")]
    pub settle: Duration,
    /// PEM CA bundle for https endpoints.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key (both or neither).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// etcd user and password (both or neither).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// This agent's name among the members; unique per agent. Default: the host name.
    #[serde(default)]
    pub member: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoordinationKind {
    Etcd,
}

mod defaults {
    use std::time::Duration;
    pub fn prefix() -> String {
        "/fleetscale".into()
    }
    pub fn lease_ttl() -> Duration {
        Duration::from_secs(15)
    }
    pub fn settle() -> Duration {
        Duration::from_secs(10)
    }
}

/// The shortest lease etcd grants (its minimum TTL with default timings is about 1.5s).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
/// The longest lease accepted: a failover waits for it.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(300);

impl CoordinationConfig {
    /// Problems with the values, as (field relative to `[agent.coordination]`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem =
            |field: &str, message: String| problems.push((field.to_string(), message));
        if !cfg!(feature = "etcd") {
            problem(
                "kind",
                "this binary was built without the `etcd` feature".into(),
            );
        }
        if self.endpoints.is_empty() {
            problem("endpoints", "give at least one etcd client URL".into());
        }
        let tls = self.ca_file.is_some() || self.cert_file.is_some();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}]");
            match endpoint.split_once("://") {
                Some(("http", rest)) | Some(("https", rest)) if !rest.is_empty() => {
                    if tls && endpoint.starts_with("http:") {
                        problem(
                            &field,
                            format!(
                                "{endpoint:?} is plain http, but TLS files are given: use https://"
                            ),
                        );
                    }
                }
                _ => problem(
                    &field,
                    format!(
                        "{endpoint:?} is not an http:// or https:// URL (e.g. http://127.0.0.1:2379)"
                    ),
                ),
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 || self.prefix.ends_with('/') {
            problem(
                "prefix",
                format!(
                    "{:?} must start with / and not end with / (e.g. /fleetscale)",
                    self.prefix
                ),
            );
        }
        if self.lease_ttl < MIN_LEASE_TTL || self.lease_ttl > MAX_LEASE_TTL {
            problem(
                "lease_ttl",
                format!(
                    "{} is out of range: give 2s to 5m",
                    humantime::format_duration(self.lease_ttl)
                ),
            );
        } else if self.lease_ttl.subsec_nanos() != 0 {
            problem(
                "lease_ttl",
                "must be a whole number of seconds (etcd leases are)".into(),
            );
        }
        if self.settle > Duration::from_secs(3600) {
            problem("settle", "at most 1h".into());
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => problem("key_file", "missing: cert_file needs key_file".into()),
            (None, Some(_)) => problem("cert_file", "missing: key_file needs cert_file".into()),
            _ => {}
        }
        match (&self.user, &self.password) {
            (Some(_), None) => problem("password", "missing: user needs password".into()),
            (None, Some(_)) => problem("user", "missing: password needs user".into()),
            (Some(user), Some(_)) if user.is_empty() => problem("user", "must not be empty".into()),
            _ => {}
        }
        if let Some(member) = &self.member
            && (member.trim().is_empty() || member.contains('/'))
        {
            problem(
                "member",
                format!("{member:?} must be a non-empty name without /"),
            );
        }
        problems
    }

    /// This agent's member name: `member`, or the host name.
    pub fn member_name(&self) -> String {
        if let Some(member) = &self.member {
            return member.clone();
        }
        host_name().unwrap_or_else(|| format!("agent-{}", std::process::id()))
    }

    /// How close to its lease's end an agent stops acting: a third of the TTL (the
    /// deadline margin of a mutating call).
    pub fn margin(&self) -> Duration {
        self.lease_ttl / 3
    }
}

fn host_name() -> Option<String> {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let name = from_kernel
        .or_else(|| std::env::var("HOSTNAME").ok())?
        .trim()
        .to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_call_past_the_permits_deadline_is_never_started() {
        let polled = AtomicBool::new(false);
        let call = async {
            polled.store(true, Ordering::SeqCst);
            7
        };
        let late = Permit {
            identity: LeaseIdentity::Lease(1),
            start_by: Some(tokio::time::Instant::now() - Duration::from_millis(1)),
        };
        assert!(late.start(call).await.is_err());
        assert!(!polled.load(Ordering::SeqCst), "the late call was polled");

        let in_time = Permit {
            identity: LeaseIdentity::Lease(1),
            start_by: Some(tokio::time::Instant::now() + Duration::from_secs(60)),
        };
        let call = async {
            polled.store(true, Ordering::SeqCst);
            7
        };
        assert_eq!(in_time.start(call).await, Ok(7));
        assert!(polled.load(Ordering::SeqCst));
        assert_eq!(Permit::ALONE.start(async { 8 }).await, Ok(8));
    }
}
