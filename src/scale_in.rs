//! Which instances a scale-in removes: booting ones first (they serve nobody yet), then
//! the newest, taking from the zone with the most instances so zones stay balanced, and
//! never a protected instance or one already on its way out.

use std::collections::HashMap;

use fleetscale_adapters::{Instance, InstanceId, InstanceState};

/// Up to `count` instances to remove from `instances`, in removal order. Fewer when not
/// enough instances may be removed.
pub fn choose(instances: &[Instance], count: usize) -> Vec<InstanceId> {
    let mut candidates: Vec<&Instance> = instances
        .iter()
        .filter(|i| !i.protected && i.state != InstanceState::Stopping)
        .collect();
    // Newest first; booting before serving.
    candidates.sort_by(|a, b| {
        let booting = |i: &Instance| i.state == InstanceState::Pending;
        booting(b)
            .cmp(&booting(a))
            .then(b.launched_at.cmp(&a.launched_at))
            .then(b.id.cmp(&a.id))
    });
    let mut per_zone: HashMap<&str, usize> = HashMap::new();
    for i in instances
        .iter()
        .filter(|i| i.state != InstanceState::Stopping)
    {
        *per_zone.entry(i.zone.as_str()).or_default() += 1;
    }

    let mut chosen = Vec::with_capacity(count);
    // The candidates not chosen yet, in the order above.
    let mut remaining = candidates;
    while chosen.len() < count {
        // Booting instances go first regardless of zone; then the largest zone gives up
        // its newest instance. Every candidate's zone is counted (it is not Stopping).
        let zone_size = |i: &Instance| per_zone.get(i.zone.as_str()).copied().unwrap_or(0);
        let next = remaining.iter().enumerate().min_by(|(ka, a), (kb, b)| {
            let booting = |i: &Instance| i.state == InstanceState::Pending;
            booting(b)
                .cmp(&booting(a))
                .then(zone_size(b).cmp(&zone_size(a)))
                .then(ka.cmp(kb))
        });
        let Some((k, &instance)) = next else { break };
        remaining.remove(k);
        if let Some(size) = per_zone.get_mut(instance.zone.as_str()) {
            *size -= 1;
        }
        chosen.push(instance.id.clone());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn instance(
        id: &str,
        zone: &str,
        age_s: u64,
        state: InstanceState,
        protected: bool,
    ) -> Instance {
        Instance {
            id: id.into(),
            state,
            launched_at: SystemTime::UNIX_EPOCH + Duration::from_secs(10_000 - age_s),
            zone: zone.into(),
            protected,
            address: None,
            draining_since: None,
        }
    }

    #[test]
    fn booting_first_then_newest_never_protected() {
        use InstanceState::*;
        let fleet = vec![
            instance("old", "a", 900, Running, false),
            instance("new", "a", 100, Running, false),
            instance("newest-protected", "a", 10, Running, true),
            instance("booting", "a", 500, Pending, false),
            instance("leaving", "a", 1, Stopping, false),
        ];
        assert_eq!(choose(&fleet, 2), vec!["booting", "new"]);
        assert_eq!(choose(&fleet, 10), vec!["booting", "new", "old"]);
    }

    #[test]
    fn keeps_zones_balanced() {
        use InstanceState::*;
        let fleet = vec![
            instance("a1", "a", 900, Running, false),
            instance("a2", "a", 800, Running, false),
            instance("a3", "a", 700, Running, false),
            instance("b1", "b", 100, Running, false),
            instance("c1", "c", 50, Running, false),
        ];
        // Zone a gives up instances until it is level with the others; then the newest.
        assert_eq!(choose(&fleet, 3), vec!["a3", "a2", "c1"]);
    }
}
