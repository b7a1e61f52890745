//! Dry run: every mutating call is recorded and answered from a virtual overlay, never
//! sent to the backend.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;

use crate::{
    AccessReport, AdapterError, Clock, CloudAdapter, Fleet, GrowOutcome, IdempotencyToken,
    Instance, InstanceId, InstanceState, Result, ShrinkOutcome,
};

const ID_PREFIX: &str = "dry-run-";
/// The zone of virtual instances when no read has shown the backend's zones yet.
const UNKNOWN_ZONE: &str = "dry-run";

/// An action a dry run would have taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Intent {
    /// Launch `count` instances; `launched` are the virtual ids standing in for them.
    Grow {
        at: SystemTime,
        count: u32,
        token: String,
        launched: Vec<InstanceId>,
    },
    /// Remove the named instances.
    Shrink {
        at: SystemTime,
        ids: Vec<InstanceId>,
    },
    /// Mark the named instances as draining.
    MarkDraining {
        at: SystemTime,
        ids: Vec<InstanceId>,
    },
}

/// Never calls grow or shrink on the inner adapter. Each would-be action is logged (a
/// tracing `info` line) and kept in a [`DryRunJournal`]; reads pass through and are
/// overlaid with what would have happened: instances "launched" appear as Pending, then
/// Running after the boot delay on the given clock; instances "removed" are hidden.
/// Reads and verify-access, which change nothing, reach the inner adapter.
///
/// The overlay lives as long as the decorator; a restarted agent starts a fresh dry run
/// from what the backend really holds.
#[derive(Debug, Clone)]
pub struct DryRun<A> {
    inner: A,
    clock: Arc<dyn Clock>,
    boot_delay: Duration,
    overlay: Arc<Mutex<Overlay>>,
}

#[derive(Debug, Default)]
struct Overlay {
    virtual_instances: BTreeMap<u64, VirtualInstance>,
    /// Virtual instances removed, listed again by a repeated shrink.
    removed_virtual: HashSet<u64>,
    next_seq: u64,
    /// Backend instances removed in the dry run.
    hidden: HashSet<InstanceId>,
    tokens: HashMap<String, (u32, GrowOutcome)>,
    /// Live backend instances per zone at the last read, for balancing virtual launches.
    backend_zones: BTreeMap<String, usize>,
    intents: Vec<Intent>,
    /// Instances marked as draining in the dry run, and since when.
    draining: HashMap<InstanceId, SystemTime>,
}

#[derive(Debug, Clone)]
struct VirtualInstance {
    id: InstanceId,
    zone: String,
    launched_at: SystemTime,
    protected: bool,
}

/// The record of a dry run's intended actions, readable while the decorator is in use
/// (for example after it has been boxed into a controller).
#[derive(Debug, Clone)]
pub struct DryRunJournal(Arc<Mutex<Overlay>>);

impl DryRunJournal {
    /// Every intended action so far, oldest first.
    pub fn intents(&self) -> Vec<Intent> {
        lock(&self.0).intents.clone()
    }
}

fn lock(overlay: &Mutex<Overlay>) -> std::sync::MutexGuard<'_, Overlay> {
    // Every update is a few field writes, so a poisoned lock still holds a usable overlay.
    overlay.lock().unwrap_or_else(|e| e.into_inner())
}

impl<A: CloudAdapter> DryRun<A> {
    /// Wraps `inner`; virtual instances serve `boot_delay` after their launch on `clock`.
    pub fn new(inner: A, clock: Arc<dyn Clock>, boot_delay: Duration) -> Self {
        DryRun {
            inner,
            clock,
            boot_delay,
            overlay: Arc::default(),
        }
    }

    /// The wrapped adapter.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// Every intended action so far, oldest first.
    pub fn intents(&self) -> Vec<Intent> {
        lock(&self.overlay).intents.clone()
    }

    /// A handle on the intended actions that outlives moving the decorator.
    pub fn journal(&self) -> DryRunJournal {
        DryRunJournal(self.overlay.clone())
    }

    /// Protect (or not) an instance launched in the dry run, as an operator would protect a
    /// real one. Returns whether it is one of the dry run's live instances.
    pub fn set_protected(&self, id: &str, protected: bool) -> bool {
        let mut overlay = lock(&self.overlay);
        match parse_id(id).and_then(|seq| overlay.virtual_instances.get_mut(&seq)) {
            Some(instance) => {
                instance.protected = protected;
                true
            }
            None => false,
        }
    }

    fn state_at(&self, launched_at: SystemTime, now: SystemTime) -> InstanceState {
        if now >= launched_at + self.boot_delay {
            InstanceState::Running
        } else {
            InstanceState::Pending
        }
    }
}

fn parse_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix(ID_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn dedupe(ids: &[InstanceId]) -> Vec<InstanceId> {
    let mut seen = HashSet::new();
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

impl Overlay {
    /// The zone for each of `count` new virtual instances, filling the emptiest first.
    fn pick_zones(&self, count: u32) -> Vec<String> {
        let mut per_zone = self.backend_zones.clone();
        if per_zone.is_empty() {
            per_zone.insert(UNKNOWN_ZONE.to_string(), 0);
        }
        for instance in self.virtual_instances.values() {
            if let Some(n) = per_zone.get_mut(&instance.zone) {
                *n += 1;
            }
        }
        (0..count)
            .map(|_| {
                let zone = per_zone
                    .iter()
                    .min_by_key(|(zone, n)| (**n, (*zone).clone()))
                    .map(|(zone, _)| zone.clone())
                    .unwrap_or_else(|| UNKNOWN_ZONE.to_string());
                *per_zone.entry(zone.clone()).or_default() += 1;
                zone
            })
            .collect()
    }
}

#[async_trait]
impl<A: CloudAdapter> CloudAdapter for DryRun<A> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn read_fleet(&self) -> Result<Fleet> {
        let mut fleet = self.inner.read_fleet().await?;
        let now = self.clock.now();
        let mut overlay = lock(&self.overlay);
        // Instances the backend no longer reports need no hiding any more.
        let reported: HashSet<&str> = fleet.instances.iter().map(|i| i.id.as_str()).collect();
        overlay.hidden.retain(|id| reported.contains(id.as_str()));
        let hidden_serving_or_booting = fleet
            .instances
            .iter()
            .filter(|i| overlay.hidden.contains(&i.id) && i.state != InstanceState::Stopping)
            .count() as u32;
        fleet.instances.retain(|i| !overlay.hidden.contains(&i.id));

        let mut backend_zones = BTreeMap::new();
        for instance in &fleet.instances {
            if instance.state != InstanceState::Stopping {
                *backend_zones.entry(instance.zone.clone()).or_insert(0) += 1;
            } else {
                backend_zones.entry(instance.zone.clone()).or_insert(0);
            }
        }
        overlay.backend_zones = backend_zones;

        let launched = overlay.virtual_instances.len() as u32;
        fleet
            .instances
            .extend(overlay.virtual_instances.values().map(|v| Instance {
                id: v.id.clone(),
                state: self.state_at(v.launched_at, now),
                launched_at: v.launched_at,
                zone: v.zone.clone(),
                protected: v.protected,
                address: None,
                draining_since: None,
            }));
        overlay
            .draining
            .retain(|id, _| fleet.instances.iter().any(|i| &i.id == id));
        for instance in &mut fleet.instances {
            if let Some(since) = overlay.draining.get(&instance.id) {
                instance.draining_since.get_or_insert(*since);
            }
        }
        fleet.target_size = fleet
            .target_size
            .map(|target| (target + launched).saturating_sub(hidden_serving_or_booting));
        Ok(fleet)
    }

    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome> {
        if count == 0 {
            return Ok(GrowOutcome {
                requested: 0,
                launched: Vec::new(),
            });
        }
        let now = self.clock.now();
        let mut overlay = lock(&self.overlay);
        if let Some((first_count, outcome)) = overlay.tokens.get(token.as_str()) {
            if *first_count != count {
                return Err(AdapterError::conflict(format!(
                    "idempotency token {token} was first used to launch {first_count}, not {count}"
                )));
            }
            return Ok(outcome.clone());
        }
        let mut launched = Vec::with_capacity(count as usize);
        for zone in overlay.pick_zones(count) {
            overlay.next_seq += 1;
            let seq = overlay.next_seq;
            let id = format!("{ID_PREFIX}{seq:06}");
            overlay.virtual_instances.insert(
                seq,
                VirtualInstance {
                    id: id.clone(),
                    zone,
                    launched_at: now,
                    protected: false,
                },
            );
            launched.push(id);
        }
        tracing::info!(
            adapter = self.inner.name(),
            count,
            token = %token,
            launched = ?launched,
            "dry run: would launch {count} instance(s)"
        );
        let outcome = GrowOutcome {
            requested: count,
            launched: launched.clone(),
        };
        overlay
            .tokens
            .insert(token.as_str().to_string(), (count, outcome.clone()));
        overlay.intents.push(Intent::Grow {
            at: now,
            count,
            token: token.to_string(),
            launched,
        });
        Ok(outcome)
    }

    /// Refuses protected instances (virtual or in the backend, read afresh) with
    /// [`ErrorKind::Invalid`](crate::ErrorKind::Invalid). Ids the dry run cannot find,
    /// malformed ones included, are ignored: only the backend knows its id syntax.
    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome> {
        let ids = dedupe(ids);
        if ids.is_empty() {
            return Ok(ShrinkOutcome::default());
        }
        let names_backend = ids.iter().any(|id| {
            parse_id(id).is_none_or(|seq| !lock(&self.overlay).virtual_instances.contains_key(&seq))
        });
        let backend = if names_backend {
            Some(self.inner.read_fleet().await?)
        } else {
            None
        };
        let backend: HashMap<&str, &Instance> = backend
            .iter()
            .flat_map(|f| &f.instances)
            .map(|i| (i.id.as_str(), i))
            .collect();

        let now = self.clock.now();
        let mut overlay = lock(&self.overlay);
        let is_protected = |overlay: &Overlay, id: &str| match parse_id(id)
            .and_then(|seq| overlay.virtual_instances.get(&seq))
        {
            Some(v) => v.protected,
            None => !overlay.hidden.contains(id) && backend.get(id).is_some_and(|i| i.protected),
        };
        let protected: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| is_protected(&overlay, id))
            .collect();
        if !protected.is_empty() {
            return Err(AdapterError::invalid(format!(
                "protected from scale-in: {}; nothing was removed",
                protected.join(", ")
            )));
        }

        let mut removed = Vec::new();
        for id in &ids {
            let virtual_seq =
                parse_id(id).filter(|seq| overlay.virtual_instances.contains_key(seq));
            if let Some(seq) = virtual_seq {
                overlay.virtual_instances.remove(&seq);
                overlay.removed_virtual.insert(seq);
                removed.push(id.clone());
            } else if parse_id(id).is_some_and(|seq| overlay.removed_virtual.contains(&seq)) {
                removed.push(id.clone());
            } else if backend.contains_key(id.as_str()) {
                overlay.hidden.insert(id.clone());
                removed.push(id.clone());
            }
        }
        tracing::info!(
            adapter = self.inner.name(),
            ids = ?ids,
            removed = ?removed,
            "dry run: would remove {} instance(s)",
            ids.len()
        );
        overlay.intents.push(Intent::Shrink { at: now, ids });
        Ok(ShrinkOutcome { removed })
    }

    async fn verify_access(&self) -> Result<AccessReport> {
        self.inner.verify_access().await
    }

    /// Kept in the overlay, so that the dry run's reads show the drain; the inner adapter
    /// is not called.
    async fn mark_draining(&self, ids: &[InstanceId], since: SystemTime) -> Result<()> {
        let ids = dedupe(ids);
        let mut overlay = lock(&self.overlay);
        for id in &ids {
            overlay.draining.entry(id.clone()).or_insert(since);
        }
        tracing::info!(
            adapter = self.inner.name(),
            ids = ?ids,
            "dry run: would mark {} instance(s) as draining",
            ids.len()
        );
        let at = self.clock.now();
        overlay.intents.push(Intent::MarkDraining { at, ids });
        Ok(())
    }
}
