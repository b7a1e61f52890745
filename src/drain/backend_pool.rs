//! Draining through an Azure load balancer's backend pool: a drain takes the VM out of
//! the pool (an Update of the scale set VM whose IP configurations no longer name it),
//! and the VM is drained once that update has been applied. Azure's load balancer has no
//! deregistration delay of its own: from then on it sends the VM no new flows, and flows
//! already established are the hook's or the timeout's to wait for. The state lives in
//! the VM's model, so a restarted agent reads it again.

use std::collections::HashSet;

use fleetscale_adapters::azure::ScaleSetFleet;
use fleetscale_adapters::{Instance, InstanceId};

#[derive(Debug)]
pub struct BackendPoolDrain {
    scale_set: ScaleSetFleet,
    pool: String,
}

impl BackendPoolDrain {
    /// Drains the VMs of `scale_set` out of the backend pool `pool` (its ARM id).
    pub fn new(scale_set: ScaleSetFleet, pool: impl Into<String>) -> Self {
        BackendPoolDrain {
            scale_set,
            pool: pool.into(),
        }
    }

    fn ids(instances: &[Instance]) -> Vec<InstanceId> {
        instances.iter().map(|i| i.id.clone()).collect()
    }
}

#[async_trait::async_trait]
impl super::Drain for BackendPoolDrain {
    fn name(&self) -> &str {
        "backend-pool"
    }

    async fn begin(&self, instances: &[Instance]) -> Result<(), String> {
        tracing::info!(backend_pool = %self.pool, instances = ?Self::ids(instances), "leaving the backend pool");
        self.still_in_pool(instances).await.map(|_| ())
    }

    /// A VM marked but still in the pool (its agent stopped between the mark and the
    /// update) is taken out again: repeating it only confirms what the mark decided.
    async fn drained(&self, instances: &[Instance]) -> Result<HashSet<InstanceId>, String> {
        let still = self.still_in_pool(instances).await?;
        Ok(Self::ids(instances)
            .into_iter()
            .filter(|id| !still.contains(id))
            .collect())
    }
}

impl BackendPoolDrain {
    async fn still_in_pool(&self, instances: &[Instance]) -> Result<HashSet<InstanceId>, String> {
        self.scale_set
            .leave_backend_pool(&Self::ids(instances), &self.pool)
            .await
            .map_err(|e| format!("{}: {e}", self.pool))
    }
}
