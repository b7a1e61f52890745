//! AWS Auto Scaling groups: a fleet is one group's instances.
//!
//! [`AsgFleet`] reads the group with DescribeAutoScalingGroups (its instances and their
//! lifecycle states, its desired capacity, min and max, suspended processes) and
//! DescribeInstanceRefreshes; grows it by SetDesiredCapacity within the group's own max;
//! shrinks it by TerminateInstanceInAutoScalingGroup on the instances the controller
//! chose, decrementing the desired capacity. Behaviour follows the Amazon EC2 Auto
//! Scaling API Reference (API_SetDesiredCapacity, API_TerminateInstanceInAutoScalingGroup,
//! API_Instance's LifecycleState, API_SuspendProcesses, API_DescribeInstanceRefreshes):
//!
//! - `InService` instances serve; `Pending*` boot; `Terminating*`, `Detaching`,
//!   `EnteringStandby` and `Standby` are billed but neither serve nor can be removed again.
//!   Warm-pool instances are not in the group's `Instances`, so they are never capacity.
//! - An instance `ProtectedFromScaleIn` is reported protected and never terminated.
//! - With the `Launch` process suspended the group does not launch: a grow is refused
//!   (a conflict, saying so); with `Terminate` suspended a shrink is; during an instance
//!   refresh (`Pending`, `InProgress`, `Cancelling`, `RollbackInProgress`, `Baking`) both are.
//! - The same grow token twice sets the desired capacity once: the token and the target
//!   are kept on the group as the tag `fleetscale:grow` (not propagated to instances).
//!
//! The least-privilege policy is `terraform/aws/fleetscale-asg-policy.json`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_autoscaling::types::{AutoScalingGroup, Tag};

use super::{Credentials, DRAINING_TAG, errors, load_sdk};
use crate::{
    AccessReport, AdapterError, CloudAdapter, Fleet, GrowOutcome, IdempotencyToken, Instance,
    InstanceId, InstanceState, PermissionCheck, Result, ShrinkOutcome,
};

pub use super::config::AsgConfig;

/// The actions the adapter calls: Auto Scaling's, and EC2's for a drain's mark on the
/// group's instances.
pub const REQUIRED_ASG_PERMISSIONS: [&str; 7] = [
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeInstanceRefreshes",
    "autoscaling:SetDesiredCapacity",
    "autoscaling:TerminateInstanceInAutoScalingGroup",
    "autoscaling:CreateOrUpdateTags",
    "ec2:DescribeTags",
    "ec2:CreateTags",
];

/// The group tag holding the last grow's token and target.
pub const GROW_TAG: &str = "fleetscale:grow";

/// Instance refresh states during which the group is being replaced under us.
const REFRESH_ACTIVE: [&str; 5] = [
    "Pending",
    "InProgress",
    "Cancelling",
    "RollbackInProgress",
    "Baking",
];

/// One Auto Scaling group, managed through the Auto Scaling API.
pub struct AsgFleet {
    client: aws_sdk_autoscaling::Client,
    /// The group's instances' drain marks are EC2 tags.
    ec2: aws_sdk_ec2::Client,
    sts: aws_sdk_sts::Client,
    fleet_name: String,
    group: String,
    /// When each instance was first seen: the group does not say when it launched.
    first_seen: Mutex<HashMap<String, SystemTime>>,
    /// The instances each grow token launched, in this process: a repeat returns them.
    /// After a restart the group's grow tag still stops a second raise; the repeat then
    /// names no instances, and the group's desired capacity counts them.
    grown: Mutex<HashMap<String, Vec<InstanceId>>>,
}

impl std::fmt::Debug for AsgFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsgFleet")
            .field("fleet", &self.fleet_name)
            .field("group", &self.group)
            .finish()
    }
}

/// What blocks a change to the group right now, said to the operator.
fn hold(group: &AutoScalingGroup, process: &str) -> Option<String> {
    let suspended = group
        .suspended_processes()
        .iter()
        .filter_map(|p| p.process_name())
        .find(|name| *name == process);
    suspended.map(|name| {
        format!(
            "the group's {name} process is suspended (ResumeProcesses to let fleetscale change it)"
        )
    })
}

impl AsgFleet {
    /// Connect with credentials from the AWS default chain.
    pub async fn connect(fleet_name: &str, config: &AsgConfig) -> Result<Self> {
        Self::connect_inner(fleet_name, config, None).await
    }

    /// Connect with explicit credentials (tests side by side with different identities).
    pub async fn connect_with_credentials(
        fleet_name: &str,
        config: &AsgConfig,
        credentials: Credentials,
    ) -> Result<Self> {
        let provider = aws_credential_types::provider::SharedCredentialsProvider::new(credentials);
        Self::connect_inner(fleet_name, config, Some(provider)).await
    }

    async fn connect_inner(
        fleet_name: &str,
        config: &AsgConfig,
        credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    ) -> Result<Self> {
        super::config::refuse("Auto Scaling", fleet_name, &config.validate())?;
        let (sdk, _region) = load_sdk(fleet_name, config.sdk_settings(), credentials).await?;
        Ok(AsgFleet {
            client: aws_sdk_autoscaling::Client::new(&sdk),
            ec2: aws_sdk_ec2::Client::new(&sdk),
            sts: aws_sdk_sts::Client::new(&sdk),
            fleet_name: fleet_name.to_owned(),
            group: config.group.clone(),
            first_seen: Mutex::default(),
            grown: Mutex::default(),
        })
    }

    async fn describe(&self) -> Result<AutoScalingGroup> {
        let answer = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.group)
            .send()
            .await
            .map_err(|e| errors::from_sdk("autoscaling:DescribeAutoScalingGroups", e))?;
        answer
            .auto_scaling_groups()
            .first()
            .cloned()
            .ok_or_else(|| {
                AdapterError::not_found(format!(
                    "Auto Scaling group {:?} of fleet {} does not exist",
                    self.group, self.fleet_name
                ))
            })
    }

    /// An instance refresh replacing the group's instances now, said to the operator.
    async fn refreshing(&self) -> Result<Option<String>> {
        let answer = self
            .client
            .describe_instance_refreshes()
            .auto_scaling_group_name(&self.group)
            .send()
            .await
            .map_err(|e| errors::from_sdk("autoscaling:DescribeInstanceRefreshes", e))?;
        Ok(answer.instance_refreshes().iter().find_map(|refresh| {
            let status = refresh.status()?.as_str();
            REFRESH_ACTIVE.contains(&status).then(|| {
                format!(
                    "an instance refresh ({}) is {status}: holding until it ends",
                    refresh.instance_refresh_id().unwrap_or("?")
                )
            })
        }))
    }

    /// Refuses when `process` is suspended or a refresh is under way.
    async fn may_change(&self, group: &AutoScalingGroup, process: &str) -> Result<()> {
        let why = match hold(group, process) {
            Some(why) => Some(why),
            None => self.refreshing().await?,
        };
        match why {
            Some(why) => Err(AdapterError::conflict(format!(
                "Auto Scaling group {}: {why}",
                self.group
            ))),
            None => Ok(()),
        }
    }

    fn fleet_of(&self, group: &AutoScalingGroup) -> Fleet {
        let now = SystemTime::now();
        let mut seen = self
            .first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let instances: Vec<Instance> = group
            .instances()
            .iter()
            .filter_map(|i| {
                let id = i.instance_id()?;
                let state = match i.lifecycle_state()?.as_str() {
                    "InService" => InstanceState::Running,
                    s if s.starts_with("Pending") => InstanceState::Pending,
                    _ => InstanceState::Stopping,
                };
                Some(Instance {
                    id: id.to_owned(),
                    state,
                    launched_at: *seen.entry(id.to_owned()).or_insert(now),
                    zone: i.availability_zone().unwrap_or_default().to_owned(),
                    protected: i.protected_from_scale_in().unwrap_or(false),
                    address: None,
                    draining_since: None,
                })
            })
            .collect();
        let listed: std::collections::HashSet<&str> =
            instances.iter().map(|i| i.id.as_str()).collect();
        seen.retain(|id, _| listed.contains(id.as_str()));
        Fleet {
            instances,
            target_size: group.desired_capacity().and_then(|d| u32::try_from(d).ok()),
        }
    }
}

/// Instances per DescribeTags filter or CreateTags call.
const IDS_PER_TAG_CALL: usize = 200;

impl AsgFleet {
    /// The drain marks of `ids` (EC2 tags [`DRAINING_TAG`]), by instance.
    async fn drain_marks(&self, ids: &[InstanceId]) -> Result<HashMap<InstanceId, SystemTime>> {
        let mut marks = HashMap::new();
        for chunk in ids.chunks(IDS_PER_TAG_CALL) {
            let filter = |name: &str, values: Vec<String>| {
                aws_sdk_ec2::types::Filter::builder()
                    .name(name)
                    .set_values(Some(values))
                    .build()
            };
            let mut pages = self
                .ec2
                .describe_tags()
                .filters(filter("key", vec![DRAINING_TAG.to_owned()]))
                .filters(filter("resource-id", chunk.to_vec()))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| errors::from_sdk("ec2:DescribeTags", e))?;
                for tag in page.tags() {
                    if let (Some(id), Some(value)) = (tag.resource_id(), tag.value())
                        && let Some(since) = crate::parse_drain_mark(value)
                    {
                        marks.insert(id.to_owned(), since);
                    }
                }
            }
        }
        Ok(marks)
    }
}

/// `token@target` as kept in the grow tag.
fn grow_mark(group: &AutoScalingGroup) -> Option<(String, u32)> {
    let value = group
        .tags()
        .iter()
        .find(|t| t.key() == Some(GROW_TAG))?
        .value()?;
    let (token, target) = value.rsplit_once('@')?;
    Some((token.to_owned(), target.parse().ok()?))
}

#[async_trait]
impl CloudAdapter for AsgFleet {
    fn name(&self) -> &str {
        "aws-asg"
    }

    async fn read_fleet(&self) -> Result<Fleet> {
        let group = self.describe().await?;
        let mut fleet = self.fleet_of(&group);
        let ids: Vec<InstanceId> = fleet.instances.iter().map(|i| i.id.clone()).collect();
        let marks = self.drain_marks(&ids).await?;
        for instance in &mut fleet.instances {
            instance.draining_since = marks.get(&instance.id).copied();
        }
        Ok(fleet)
    }

    /// Tags the group's instances with the drain's mark (EC2's [`DRAINING_TAG`]) unless
    /// they have it; instances not in the group are left alone.
    async fn mark_draining(&self, ids: &[InstanceId], since: SystemTime) -> Result<()> {
        let group = self.describe().await?;
        let members: Vec<InstanceId> = group
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .filter(|id| ids.contains(id))
            .collect();
        let marked = self.drain_marks(&members).await?;
        let unmarked: Vec<InstanceId> = members
            .into_iter()
            .filter(|id| !marked.contains_key(id))
            .collect();
        if unmarked.is_empty() {
            return Ok(());
        }
        let value = crate::render_drain_mark(since);
        for chunk in unmarked.chunks(IDS_PER_TAG_CALL) {
            self.ec2
                .create_tags()
                .set_resources(Some(chunk.to_vec()))
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(DRAINING_TAG)
                        .value(&value)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| errors::from_sdk("ec2:CreateTags", e))?;
        }
        Ok(())
    }

    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome> {
        let group = self.describe().await?;
        if count == 0 {
            return Ok(GrowOutcome {
                requested: 0,
                launched: Vec::new(),
            });
        }
        if let Some((seen, target)) = grow_mark(&group)
            && seen == token.as_str()
        {
            tracing::info!(group = %self.group, %token, target, "grow already applied; not growing again");
            let launched = self
                .grown
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(token.as_str())
                .cloned()
                .unwrap_or_default();
            return Ok(GrowOutcome {
                requested: count,
                launched,
            });
        }
        self.may_change(&group, "Launch").await?;
        let desired = u32::try_from(group.desired_capacity().unwrap_or(0)).unwrap_or(0);
        let max = u32::try_from(group.max_size().unwrap_or(0)).unwrap_or(0);
        let target = desired.saturating_add(count).min(max);
        if target <= desired {
            return Err(AdapterError::capacity(format!(
                "Auto Scaling group {} is at its own max_size {max}: raise it to grow",
                self.group
            )));
        }
        if target < desired + count {
            tracing::warn!(group = %self.group, max, asked = desired + count, "the group's max_size binds the grow");
        }
        let before: Vec<String> = group
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        // The mark first: a retry after a lost answer finds it and does not grow again.
        let mark = Tag::builder()
            .resource_id(&self.group)
            .resource_type("auto-scaling-group")
            .key(GROW_TAG)
            .value(format!("{}@{target}", token.as_str()))
            .propagate_at_launch(false)
            .build();
        self.client
            .create_or_update_tags()
            .tags(mark)
            .send()
            .await
            .map_err(|e| errors::from_sdk("autoscaling:CreateOrUpdateTags", e))?;
        self.client
            .set_desired_capacity()
            .auto_scaling_group_name(&self.group)
            .desired_capacity(i32::try_from(target).unwrap_or(i32::MAX))
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| errors::from_sdk("autoscaling:SetDesiredCapacity", e))?;
        // The instances the group has launched by now (it may add the rest later; its
        // desired capacity, read as the fleet's target size, counts them meanwhile).
        let after = self.describe().await?;
        let launched: Vec<InstanceId> = after
            .instances()
            .iter()
            .filter_map(|i| i.instance_id())
            .filter(|id| !before.iter().any(|b| b == id))
            .map(str::to_owned)
            .collect();
        self.grown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token.as_str().to_owned(), launched.clone());
        Ok(GrowOutcome {
            requested: count,
            launched,
        })
    }

    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome> {
        if ids.is_empty() {
            return Ok(ShrinkOutcome::default());
        }
        let group = self.describe().await?;
        let members: HashMap<&str, &aws_sdk_autoscaling::types::Instance> = group
            .instances()
            .iter()
            .filter_map(|i| Some((i.instance_id()?, i)))
            .collect();
        let protected: Vec<&str> = ids
            .iter()
            .filter_map(|id| members.get(id.as_str()))
            .filter(|i| i.protected_from_scale_in().unwrap_or(false))
            .filter_map(|i| i.instance_id())
            .collect();
        if !protected.is_empty() {
            return Err(AdapterError::invalid(format!(
                "instances protected from scale-in in group {}: {}; nothing removed",
                self.group,
                protected.join(", ")
            )));
        }
        self.may_change(&group, "Terminate").await?;
        let mut removed = Vec::new();
        for id in ids {
            // Already gone, or already on its way out: nothing to do (idempotent).
            let Some(member) = members.get(id.as_str()) else {
                continue;
            };
            let leaving = member
                .lifecycle_state()
                .is_some_and(|s| s.as_str().starts_with("Terminating"));
            if !leaving {
                self.client
                    .terminate_instance_in_auto_scaling_group()
                    .instance_id(id.as_str())
                    .should_decrement_desired_capacity(true)
                    .send()
                    .await
                    .map_err(|e| {
                        errors::from_sdk("autoscaling:TerminateInstanceInAutoScalingGroup", e)
                    })?;
            }
            removed.push(id.clone());
        }
        Ok(ShrinkOutcome { removed })
    }

    async fn verify_access(&self) -> Result<AccessReport> {
        let identity = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| errors::from_sdk("sts:GetCallerIdentity", e))?;
        let group = self.describe().await?;
        self.refreshing().await?;
        let checks = vec![
            PermissionCheck {
                permission: "autoscaling:DescribeAutoScalingGroups".into(),
                allowed: true,
                detail: format!(
                    "read group {} (desired {}, min {}, max {})",
                    self.group,
                    group.desired_capacity().unwrap_or(0),
                    group.min_size().unwrap_or(0),
                    group.max_size().unwrap_or(0)
                ),
            },
            PermissionCheck {
                permission: "autoscaling:DescribeInstanceRefreshes".into(),
                allowed: true,
                detail: "read the group's instance refreshes".into(),
            },
        ];
        let ids: Vec<InstanceId> = group
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        let marks = self.drain_marks(&ids).await?;
        let mut checks = checks;
        checks.push(PermissionCheck {
            permission: "ec2:DescribeTags".into(),
            allowed: true,
            detail: format!(
                "read the drain marks of the group's {} instance(s) ({} marked)",
                ids.len(),
                marks.len()
            ),
        });
        Ok(AccessReport {
            identity: identity.arn().unwrap_or("unknown identity").to_owned(),
            checks,
        })
    }
}
