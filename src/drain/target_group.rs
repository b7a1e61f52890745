//! Draining through an ELBv2 target group: a drain deregisters the instance, and it is
//! drained once the group no longer lists it as registered or `draining` (its
//! deregistration delay has passed, or its requests finished earlier). The state lives in
//! the load balancer, so a restarted agent reads it again.

use std::collections::{HashMap, HashSet};

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
        self.deregister_registered(instances).await.map(|_| ())
    }

    /// An instance still registered although marked (its agent stopped between the mark
    /// and the deregistration) is deregistered again: repeating it only confirms what
    /// the mark already decided.
    async fn drained(&self, instances: &[Instance]) -> Result<HashSet<InstanceId>, String> {
        let drains = self.deregister_registered(instances).await?;
        Ok(instances
            .iter()
            .map(|i| &i.id)
            .filter(|id| drains.get(*id).is_none_or(|d| *d == TargetDrain::Gone))
            .cloned()
            .collect())
    }
}

impl TargetGroupDrain {
    /// Reads where each instance's drain stands, and deregisters those still registered;
    /// returns the states read.
    async fn deregister_registered(
        &self,
        instances: &[Instance],
    ) -> Result<HashMap<InstanceId, TargetDrain>, String> {
        let arn = self.group.arn();
        let ids: Vec<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
        let drains = self
            .group
            .drains(&ids)
            .await
            .map_err(|e| format!("{arn}: {e}"))?;
        let registered: Vec<InstanceId> = drains
            .iter()
            .filter(|(_, d)| **d == TargetDrain::Registered)
            .map(|(id, _)| id.clone())
            .collect();
        if !registered.is_empty() {
            tracing::info!(target_group = arn, instances = ?registered, "deregistering");
            self.group
                .deregister(&registered)
                .await
                .map_err(|e| format!("{arn}: {e}"))?;
        }
        Ok(drains)
    }
}
