//! A complete cloud in memory: boot delays, call latencies, a quota, zones, idempotent
//! launches, protection from scale-in, and faults that tests switch on.
//!
//! Instance states are derived from a [`Clock`]: an instance is Pending until
//! `launched_at + boot_delay` and Running from then on, so a replay on a
//! [`ManualClock`](crate::ManualClock) is exact and as fast as the controller. Call
//! latencies sleep on tokio's clock, and only when they are non-zero, so tests on a
//! paused runtime run instantly.
//!
//! [`MockCloud`] is cheap to clone and every clone shares one cloud: a test keeps a clone
//! to inspect the fleet, count calls ([`MockCloud::calls`]) and switch faults
//! ([`MockCloud::faults`]) while the controller holds another.

pub mod checked;
mod config;
mod faults;

pub use config::{FaultConfig, MockConfig};
pub use faults::FaultHandle;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{
    AccessReport, AdapterError, Clock, CloudAdapter, Fleet, GrowOutcome, IdempotencyToken,
    Instance, InstanceId, InstanceState, Operation, PermissionCheck, Result, ShrinkOutcome,
};
use faults::{Faults, draw_lifetime, permission_name};

const ID_PREFIX: &str = "mock-";

/// The in-memory cloud. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct MockCloud {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    clock: Arc<dyn Clock>,
    boot_delay: Duration,
    /// Log-normal spread of boot times (0: every boot takes `boot_delay`).
    boot_sigma: f64,
    launch_read_lag: Duration,
    removal_read_lag: Duration,
    launch_latency: Duration,
    terminate_latency: Duration,
    zones: Vec<String>,
    state: Mutex<State>,
}

/// How many calls of each operation the cloud has answered (failed ones included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CallCounts {
    pub read_fleet: u64,
    pub grow: u64,
    pub shrink: u64,
    pub verify_access: u64,
    pub mark_draining: u64,
}

impl CallCounts {
    pub fn get(&self, operation: Operation) -> u64 {
        match operation {
            Operation::ReadFleet => self.read_fleet,
            Operation::Grow => self.grow,
            Operation::Shrink => self.shrink,
            Operation::VerifyAccess => self.verify_access,
            Operation::MarkDraining => self.mark_draining,
        }
    }

    /// Grow, shrink and drain-marking calls: what a dry run must never make.
    pub fn mutating(&self) -> u64 {
        self.grow + self.shrink + self.mark_draining
    }

    pub fn total(&self) -> u64 {
        Operation::ALL.iter().map(|op| self.get(*op)).sum()
    }

    fn increment(&mut self, operation: Operation) {
        match operation {
            Operation::ReadFleet => self.read_fleet += 1,
            Operation::Grow => self.grow += 1,
            Operation::Shrink => self.shrink += 1,
            Operation::VerifyAccess => self.verify_access += 1,
            Operation::MarkDraining => self.mark_draining += 1,
        }
    }
}

/// The fleet as it really is, whatever reads show: what replay bills and serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FleetTruth {
    /// Running and not removed.
    pub serving: u32,
    /// Launched, not removed, not yet serving (never-booting instances included).
    pub booting: u32,
    /// Removed and still listed as Stopping (neither serving nor, in replay, billed).
    pub leaving: u32,
    /// Running, marked as draining and not removed: billed, serving nobody new.
    pub draining: u32,
}

impl FleetTruth {
    /// Serving plus booting: the instances that are billed and not on their way out.
    pub fn active(&self) -> u32 {
        self.serving + self.booting
    }
}

/// What happened to instances over the cloud's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MockStats {
    /// Instances launched by grow calls (seeded ones not included).
    pub launched: u64,
    /// Instances a shrink accepted for removal.
    pub removed: u64,
    /// Instances that died (a death fault or [`FaultHandle::kill`]).
    pub died: u64,
}

#[derive(Debug)]
struct Record {
    id: InstanceId,
    zone: String,
    launched_at: SystemTime,
    /// When it starts serving; `None` for an instance that never boots.
    ready_at: Option<SystemTime>,
    dies_at: Option<SystemTime>,
    /// When reads first list it (reads lag behind launches).
    visible_at: SystemTime,
    removal: Option<Removal>,
    protected: bool,
    /// Marked as draining (the tag a real provider keeps).
    draining_since: Option<SystemTime>,
}

/// A shrink accepted the instance.
#[derive(Debug, Clone, Copy)]
struct Removal {
    /// When reads first show it Stopping (until then they show it as it was).
    visible_at: SystemTime,
    /// When it is gone from reads altogether.
    gone_at: SystemTime,
}

impl Record {
    /// Its true state.
    fn state(&self, now: SystemTime) -> InstanceState {
        if self.removal.is_some() {
            InstanceState::Stopping
        } else {
            self.launch_state(now)
        }
    }

    /// The state reads show.
    fn read_state(&self, now: SystemTime) -> InstanceState {
        match self.removal {
            Some(removal) if now >= removal.visible_at => InstanceState::Stopping,
            _ => self.launch_state(now),
        }
    }

    fn launch_state(&self, now: SystemTime) -> InstanceState {
        if self.ready_at.is_some_and(|ready| now >= ready) {
            InstanceState::Running
        } else {
            InstanceState::Pending
        }
    }

    fn died_by(&self, now: SystemTime) -> bool {
        self.dies_at.is_some_and(|dies| now >= dies)
    }

    fn stopped_by(&self, now: SystemTime) -> bool {
        self.removal.is_some_and(|r| now >= r.gone_at)
    }
}

#[derive(Debug)]
struct State {
    /// Live instances by sequence number (gone ones are pruned as the clock passes them).
    instances: BTreeMap<u64, Record>,
    /// Instances a shrink accepted, remembered so a repeated shrink lists them again (as
    /// EC2 lists terminated instances), which keeps a retried shrink's answer the same.
    removed: HashSet<u64>,
    next_seq: u64,
    /// Outcome of the first successful grow per token, with the count it asked for.
    tokens: HashMap<String, (u32, GrowOutcome)>,
    rng: SmallRng,
    faults: Faults,
    quota: Option<u32>,
    calls: CallCounts,
    stats: MockStats,
    stop_delay: (Duration, Duration),
}

/// A duration drawn uniformly from `[low, high]` (either order).
fn uniform(rng: &mut SmallRng, low: Duration, high: Duration) -> Duration {
    let (low, high) = (low.min(high), low.max(high));
    if low == high {
        low
    } else {
        low + (high - low).mul_f64(rng.random::<f64>())
    }
}

impl State {
    /// Drops instances that are gone at `now`. The clock is taken to move forward only.
    fn prune(&mut self, now: SystemTime) {
        let mut died = 0;
        self.instances.retain(|_, r| {
            let gone_by_stop = r.stopped_by(now);
            let gone_by_death = r.died_by(now);
            if gone_by_death && !gone_by_stop {
                died += 1;
            }
            !(gone_by_stop || gone_by_death)
        });
        self.stats.died += died;
    }

    fn kill(&mut self, id: &str, now: SystemTime) -> bool {
        self.prune(now);
        match parse_id(id).and_then(|seq| self.instances.get_mut(&seq)) {
            Some(record) => {
                record.dies_at = Some(now);
                self.prune(now);
                true
            }
            None => false,
        }
    }

    fn redraw_deaths(&mut self, now: SystemTime) {
        self.prune(now);
        let rate = self.faults.death_rate;
        for record in self.instances.values_mut() {
            record.dies_at = draw_lifetime(rate, &mut self.rng).map(|life| now + life);
        }
    }

    /// The zone for each of `count` new instances, filling the emptiest zones first.
    fn pick_zones(&self, zones: &[String], count: u32, now: SystemTime) -> Vec<String> {
        let mut per_zone: Vec<usize> = zones
            .iter()
            .map(|zone| {
                self.instances
                    .values()
                    .filter(|r| &r.zone == zone && r.state(now) != InstanceState::Stopping)
                    .count()
            })
            .collect();
        (0..count)
            .map(|_| {
                let index = per_zone
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, n)| (**n, *i))
                    .map_or(0, |(i, _)| i);
                if let Some(n) = per_zone.get_mut(index) {
                    *n += 1;
                }
                zones.get(index).cloned().unwrap_or_default()
            })
            .collect()
    }

    fn add(
        &mut self,
        zone: String,
        launched_at: SystemTime,
        ready_at: Option<SystemTime>,
        visible_at: SystemTime,
    ) -> InstanceId {
        self.next_seq += 1;
        let seq = self.next_seq;
        let id = format_id(seq);
        let dies_at =
            draw_lifetime(self.faults.death_rate, &mut self.rng).map(|life| launched_at + life);
        self.instances.insert(
            seq,
            Record {
                id: id.clone(),
                zone,
                launched_at,
                ready_at,
                dies_at,
                visible_at,
                removal: None,
                protected: false,
                draining_since: None,
            },
        );
        id
    }

    fn truth(&self, now: SystemTime) -> FleetTruth {
        let mut truth = FleetTruth::default();
        for r in self.instances.values() {
            match r.state(now) {
                InstanceState::Running if r.draining_since.is_some() => truth.draining += 1,
                InstanceState::Running => truth.serving += 1,
                InstanceState::Pending => truth.booting += 1,
                InstanceState::Stopping => truth.leaving += 1,
            }
        }
        truth
    }

    /// The fleet as reads show it: launches not yet listed are left out, removals not
    /// yet seen show the state before them.
    fn fleet(&self, now: SystemTime) -> Fleet {
        Fleet {
            instances: self
                .instances
                .values()
                .filter(|r| now >= r.visible_at)
                .map(|r| Instance {
                    id: r.id.clone(),
                    state: r.read_state(now),
                    launched_at: r.launched_at,
                    zone: r.zone.clone(),
                    protected: r.protected,
                    address: None,
                    draining_since: r.draining_since,
                })
                .collect(),
            target_size: None,
        }
    }
}

/// A boot time: log-normal with median `median` and log-spread `sigma` (Box-Muller).
fn boot_time(median: Duration, sigma: f64, rng: &mut SmallRng) -> Duration {
    if sigma <= 0.0 {
        return median;
    }
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    // At most 100 medians: a draw that far out is a boot that never ends anyway.
    median.mul_f64((sigma * z).exp().min(100.0))
}

fn format_id(seq: u64) -> InstanceId {
    format!("{ID_PREFIX}{seq:06}")
}

/// The sequence number of a well-formed mock id.
fn parse_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix(ID_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

async fn pause(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

impl MockCloud {
    /// A cloud on `clock` holding `config.initial_size` serving instances.
    ///
    /// Rates set out of range in code are clamped to what they can mean (a probability to
    /// 0..=1, a death rate to >= 0); the config file path rejects them with the field's name.
    pub fn new(config: MockConfig, clock: Arc<dyn Clock>) -> Self {
        let zones = if config.zones.is_empty() {
            MockConfig::default().zones
        } else {
            config.zones
        };
        let state = State {
            instances: BTreeMap::new(),
            removed: HashSet::new(),
            next_seq: 0,
            tokens: HashMap::new(),
            rng: SmallRng::seed_from_u64(config.seed),
            faults: Faults::new(&config.faults),
            quota: config.quota,
            calls: CallCounts::default(),
            stats: MockStats::default(),
            stop_delay: (
                config.stop_delay,
                config.stop_delay_max.unwrap_or(config.stop_delay),
            ),
        };
        // Log-normal boot times: the 95th percentile is 1.645 standard deviations up.
        let boot_sigma = if config.boot_p95_ratio.is_finite() && config.boot_p95_ratio > 1.0 {
            config.boot_p95_ratio.ln() / 1.644_853_6
        } else {
            0.0
        };
        let cloud = MockCloud {
            shared: Arc::new(Shared {
                clock,
                boot_delay: config.boot_delay,
                boot_sigma,
                launch_read_lag: config.launch_read_lag,
                removal_read_lag: config.removal_read_lag,
                launch_latency: config.launch_latency,
                terminate_latency: config.terminate_latency,
                zones,
                state: Mutex::new(state),
            }),
        };
        cloud.seed_serving(config.initial_size);
        cloud
    }

    /// A replay's starting fleet: `serving` instances that are Running at the clock's
    /// current time (launched one boot delay ago), spread over the zones.
    pub fn seed_serving(&self, serving: u32) -> Vec<InstanceId> {
        let now = self.now();
        let launched_at = now.checked_sub(self.shared.boot_delay).unwrap_or(now);
        let zones = &self.shared.zones;
        self.with_state(|s| {
            s.prune(now);
            s.pick_zones(zones, serving, now)
                .into_iter()
                .map(|zone| s.add(zone, launched_at, Some(now), launched_at))
                .collect()
        })
    }

    /// Switches faults at run time.
    pub fn faults(&self) -> FaultHandle {
        FaultHandle {
            cloud: self.clone(),
        }
    }

    /// Calls answered so far, per operation.
    pub fn calls(&self) -> CallCounts {
        self.with_state(|s| s.calls)
    }

    /// Launches, removals and deaths so far.
    pub fn stats(&self) -> MockStats {
        let now = self.now();
        self.with_state(|s| {
            s.prune(now);
            s.stats
        })
    }

    /// The fleet as it really is, whatever reads show (read lag and removals included).
    pub fn truth(&self) -> FleetTruth {
        let now = self.now();
        self.with_state(|s| {
            s.prune(now);
            s.truth(now)
        })
    }

    /// The fleet as a read would return it, without counting a call or drawing a fault.
    pub fn inspect(&self) -> Fleet {
        let now = self.now();
        self.with_state(|s| {
            s.prune(now);
            s.fleet(now)
        })
    }

    /// Protect an instance from scale-in, as an operator would. Returns whether it is live.
    pub fn protect(&self, id: &str) -> bool {
        self.set_protected(id, true)
    }

    /// Set or clear an instance's scale-in protection. Returns whether it is live.
    pub fn set_protected(&self, id: &str, protected: bool) -> bool {
        let now = self.now();
        self.with_state(|s| {
            s.prune(now);
            match parse_id(id).and_then(|seq| s.instances.get_mut(&seq)) {
                Some(record) => {
                    record.protected = protected;
                    true
                }
                None => false,
            }
        })
    }

    /// Change the quota of live instances (`None`: no limit).
    pub fn set_quota(&self, quota: Option<u32>) {
        self.with_state(|s| s.quota = quota);
    }

    /// The boot delay instances launched here take before serving.
    pub fn boot_delay(&self) -> Duration {
        self.shared.boot_delay
    }

    /// The clock the cloud reads.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.shared.clock.clone()
    }

    fn now(&self) -> SystemTime {
        self.shared.clock.now()
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic elsewhere while holding the lock leaves the state consistent (every
        // mutation is a few field writes), so a poisoned lock is still usable.
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    /// Counts the call and fails it if a fault says so.
    fn enter(&self, operation: Operation) -> Result<()> {
        self.with_state(|s| {
            s.calls.increment(operation);
            let State { faults, rng, .. } = s;
            match faults.before_call(operation, rng) {
                Some(error) => Err(error),
                None => Ok(()),
            }
        })
    }

    fn launch(&self, count: u32, token: &IdempotencyToken, now: SystemTime) -> Result<GrowOutcome> {
        let zones = &self.shared.zones;
        let boot_delay = self.shared.boot_delay;
        let boot_sigma = self.shared.boot_sigma;
        let read_lag = self.shared.launch_read_lag;
        self.with_state(|s| {
            if let Some((first_count, outcome)) = s.tokens.get(token.as_str()) {
                if *first_count != count {
                    return Err(AdapterError::conflict(format!(
                        "idempotency token {token} was first used to launch {first_count}, not {count}"
                    )));
                }
                let outcome = outcome.clone();
                if s.faults.lose_response() {
                    return Err(AdapterError::transient("the launch response was lost"));
                }
                return Ok(outcome);
            }
            s.prune(now);
            if s.faults.capacity_rate > 0.0 && s.rng.random_bool(s.faults.capacity_rate) {
                return Err(AdapterError::capacity("mock: insufficient capacity for the launch"));
            }
            let live = s.instances.len() as u32;
            let mut fits = s.quota.map_or(count, |quota| quota.saturating_sub(live).min(count));
            if fits == 0 {
                return Err(AdapterError::capacity(format!(
                    "quota of {} live instances reached ({live} live)",
                    s.quota.unwrap_or_default()
                )));
            }
            if s.faults.partial_launch_rate > 0.0 && s.rng.random_bool(s.faults.partial_launch_rate) {
                fits = fits.div_ceil(2);
            }
            // One read lag per call: a launch's instances show together.
            let visible_at = now + uniform(&mut s.rng, Duration::ZERO, read_lag);
            let launched = s
                .pick_zones(zones, fits, now)
                .into_iter()
                .map(|zone| {
                    let never_boots = s.faults.never_boot_rate > 0.0 && s.rng.random_bool(s.faults.never_boot_rate);
                    let boot = boot_time(boot_delay, boot_sigma, &mut s.rng);
                    let ready_at = (!never_boots).then(|| now + boot);
                    s.add(zone, now, ready_at, visible_at)
                })
                .collect::<Vec<_>>();
            s.stats.launched += launched.len() as u64;
            let outcome = GrowOutcome { requested: count, launched };
            s.tokens.insert(token.as_str().to_string(), (count, outcome.clone()));
            if s.faults.lose_response() {
                return Err(AdapterError::transient("the launch response was lost"));
            }
            Ok(outcome)
        })
    }

    fn terminate(&self, seqs: &[(InstanceId, u64)], now: SystemTime) -> Result<ShrinkOutcome> {
        let read_lag = self.shared.removal_read_lag;
        self.with_state(|s| {
            s.prune(now);
            let protected: Vec<&str> = seqs
                .iter()
                .filter(|(_, seq)| s.instances.get(seq).is_some_and(|r| r.protected))
                .map(|(id, _)| id.as_str())
                .collect();
            if !protected.is_empty() {
                return Err(AdapterError::invalid(format!(
                    "protected from scale-in: {}; nothing was removed",
                    protected.join(", ")
                )));
            }
            let mut removed = Vec::new();
            for (id, seq) in seqs {
                let (stop_low, stop_high) = s.stop_delay;
                if let Some(record) = s.instances.get_mut(seq) {
                    if record.removal.is_none() {
                        record.removal = Some(Removal {
                            visible_at: now + uniform(&mut s.rng, Duration::ZERO, read_lag),
                            gone_at: now + uniform(&mut s.rng, stop_low, stop_high),
                        });
                        s.stats.removed += 1;
                        s.removed.insert(*seq);
                    }
                    removed.push(id.clone());
                } else if s.removed.contains(seq) {
                    removed.push(id.clone());
                }
            }
            s.prune(now);
            if s.faults.lose_response() {
                return Err(AdapterError::transient("the terminate response was lost"));
            }
            Ok(ShrinkOutcome { removed })
        })
    }
}

#[async_trait]
impl CloudAdapter for MockCloud {
    fn name(&self) -> &str {
        "mock"
    }

    async fn read_fleet(&self) -> Result<Fleet> {
        self.enter(Operation::ReadFleet)?;
        Ok(self.inspect())
    }

    /// Launches up to `count` instances, balanced across zones, within the quota.
    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome> {
        self.enter(Operation::Grow)?;
        if token.as_str().is_empty() {
            return Err(AdapterError::invalid(
                "a grow needs a non-empty idempotency token",
            ));
        }
        if count == 0 {
            return Ok(GrowOutcome {
                requested: 0,
                launched: Vec::new(),
            });
        }
        pause(self.shared.launch_latency).await;
        self.launch(count, token, self.now())
    }

    /// Malformed ids (not `mock-` and digits) are refused with [`ErrorKind::Invalid`]
    /// before anything is removed; unknown ids and instances that died are ignored.
    /// Instances removed by an earlier shrink are listed again in `removed`.
    ///
    /// [`ErrorKind::Invalid`]: crate::ErrorKind::Invalid
    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome> {
        self.enter(Operation::Shrink)?;
        let mut seen = HashSet::new();
        let mut seqs = Vec::new();
        for id in ids {
            let Some(seq) = parse_id(id) else {
                return Err(AdapterError::invalid(format!(
                    "malformed instance id {id:?} (mock ids look like mock-000001); nothing was removed"
                )));
            };
            if seen.insert(seq) {
                seqs.push((id.clone(), seq));
            }
        }
        if seqs.is_empty() {
            return Ok(ShrinkOutcome::default());
        }
        pause(self.shared.terminate_latency).await;
        self.terminate(&seqs, self.now())
    }

    /// Unknown and malformed ids are ignored (an instance gone is not an error).
    async fn mark_draining(&self, ids: &[InstanceId], since: SystemTime) -> Result<()> {
        self.enter(Operation::MarkDraining)?;
        let now = self.now();
        self.with_state(|s| {
            s.prune(now);
            for seq in ids.iter().filter_map(|id| parse_id(id)) {
                if let Some(record) = s.instances.get_mut(&seq) {
                    record.draining_since.get_or_insert(since);
                }
            }
        });
        Ok(())
    }

    async fn verify_access(&self) -> Result<AccessReport> {
        self.enter(Operation::VerifyAccess)?;
        let checks = self.with_state(|s| {
            [
                Operation::ReadFleet,
                Operation::Grow,
                Operation::Shrink,
                Operation::MarkDraining,
            ]
            .into_iter()
            .map(|op| {
                let allowed = !s.faults.denied.contains(&op);
                PermissionCheck {
                    permission: permission_name(op),
                    allowed,
                    detail: if allowed {
                        "no mock fault denies it".into()
                    } else {
                        "denied by a mock fault".into()
                    },
                }
            })
            .collect()
        });
        Ok(AccessReport {
            identity: "mock".into(),
            checks,
        })
    }
}
