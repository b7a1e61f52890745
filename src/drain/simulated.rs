//! A load balancer in memory, on the agent's clock, for replays and tests: an instance
//! is drained a drain time after its drain began, drawn uniformly in a range from the
//! instance's id and a seed. It keeps no state, so a restarted agent finds the same drain
//! times (as a real load balancer keeps its own).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fleetscale_adapters::{Clock, Instance, InstanceId};

#[derive(Debug)]
pub struct SimulatedDrain {
    clock: Arc<dyn Clock>,
    /// Drain times are uniform in this range.
    times: [Duration; 2],
    seed: u64,
}

impl SimulatedDrain {
    pub fn new(clock: Arc<dyn Clock>, times: [Duration; 2], seed: u64) -> Self {
        SimulatedDrain { clock, times, seed }
    }

    /// The drain time of instance `id`.
    pub fn drain_time(&self, id: &str) -> Duration {
        let [low, high] = self.times;
        if high <= low {
            return low;
        }
        // A fixed hash (not DefaultHasher's per-process keys): the same id and seed
        // give the same time in every run.
        let hash = crate::account::fingerprint([&self.seed.to_le_bytes()[..], id.as_bytes()]);
        let unit = (hash >> 11) as f64 / (1u64 << 53) as f64;
        low + (high - low).mul_f64(unit)
    }
}

#[async_trait::async_trait]
impl super::Drain for SimulatedDrain {
    fn name(&self) -> &str {
        "simulated"
    }

    async fn begin(&self, _instances: &[Instance]) -> Result<(), String> {
        Ok(())
    }

    async fn drained(&self, instances: &[Instance]) -> Result<HashSet<InstanceId>, String> {
        let now = self.clock.now();
        Ok(instances
            .iter()
            .filter(|i| {
                i.draining_since
                    .is_some_and(|since| now >= since + self.drain_time(&i.id))
            })
            .map(|i| i.id.clone())
            .collect())
    }
}
