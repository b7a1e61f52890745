//! Draining through an ELBv2 target group: a drain deregisters the instance, and it is
//! drained once the group no longer lists it as registered or `draining` (its
//! deregistration delay has passed, or its requests finished earlier). The state lives in
//! the load balancer, so a restarted agent reads it again.

use std::collections::HashSet;

use fleetscale_adapters::aws::target_group::{TargetDrain, TargetGroup};
use fleetscale_adapters::{Instance, InstanceId};

#[derive(Debug)]
pub struct TargetGroupDrain {
    group: TargetGroup,
}

impl TargetGroupDrain {
    pub fn new(group: TargetGroup) -> Self {
        TargetGroupDrain { group }
    }
}

#[async_trait::async_trait]
impl super::Drain for TargetGroupDrain {
    fn name(&self) -> &str {
        "target-group"
    }

    /// Deregisters the instances the group lists as registered (one that is not, or no
    /// longer, is drained already).
    async fn begin(&self, instances: &[Instance]) -> Result<(), String> {
        let ids: Vec<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
        let drains = self
            .group
            .drains(&ids)
            .await
            .map_err(|e| format!("{}: {e}", self.group.arn()))?;
        let registered: Vec<InstanceId> = ids
            .into_iter()
            .filter(|id| drains.get(id) == Some(&TargetDrain::Registered))
            .collect();
        self.begin_ids(&registered).await
    }

    /// An instance still registered although marked (its agent stopped between the mark
    /// and the deregistration) is deregistered again: repeating it only confirms what
    /// the mark already decided.
    async fn drained(&self, instances: &[Instance]) -> Result<HashSet<InstanceId>, String> {
        let ids: Vec<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
        let drains = self
            .group
            .drains(&ids)
            .await
            .map_err(|e| format!("{}: {e}", self.group.arn()))?;
        let registered: Vec<InstanceId> = drains
            .iter()
            .filter(|(_, d)| **d == TargetDrain::Registered)
            .map(|(id, _)| id.clone())
            .collect();
        if !registered.is_empty() {
            tracing::warn!(target_group = self.group.arn(), instances = ?registered, "marked as draining but still registered: deregistering them");
            self.begin_ids(&registered).await?;
        }
        Ok(ids
            .into_iter()
            .filter(|id| drains.get(id).is_none_or(|d| *d == TargetDrain::Gone))
            .collect())
    }
}

impl TargetGroupDrain {
    async fn begin_ids(&self, ids: &[InstanceId]) -> Result<(), String> {
        if ids.is_empty() {
            return Ok(());
        }
        self.group
            .deregister(ids)
            .await
            .map_err(|e| format!("{}: {e}", self.group.arn()))
    }
}
