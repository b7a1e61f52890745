//! One account of a fleet, the only one the controller, the guards, scale-in and the
//! policies reason about: what serves, what boots, what is leaving, and what this agent
//! launched or removed that reads do not show yet.
//!
//! Clouds' reads lag behind their writes (EC2's DescribeInstances is eventually
//! consistent), and a removed instance stays listed for a minute or more (EC2's
//! `shutting-down`, Azure's `deleting`). So the account is formed from a read *and* from
//! [`Unseen`], this controller's memory of its own recent launches and removals:
//!
//! - a launch counts as booting (in flight) until reads list it, or until `read_lag`
//!   has passed, after which a launch that never showed is forgotten;
//! - an instance this agent removed is leaving from then on, whatever reads show (they may
//!   show it as it was for a while);
//! - an instance listed as stopping is leaving: it is never capacity, and never a
//!   candidate to remove again.
//!
//! [`Unseen`] lives in memory only. A restarted agent starts without it and relies on
//! two things instead. For `read_lag` after it starts it grows no further than `min` and
//! does not scale in (the controller's start-up hold): whatever its predecessor launched
//! or removed shows in reads by then. And a grow's token is a fingerprint of the fleet as
//! seen ([`FleetAccount::view`]) in a window of a few read lags, so a repeated grow from
//! the same fleet sends the same token, and the provider either returns the first launch
//! or refuses a different count ([`ErrorKind::Conflict`]), which within the start-up
//! window is taken as "a launch is in flight".
//!
//! [`ErrorKind::Conflict`]: fleetscale_adapters::ErrorKind::Conflict

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use fleetscale_adapters::{Fleet, IdempotencyToken, Instance, InstanceId, InstanceState};
use serde::Serialize;

/// The fleet as decisions count it. Formed once per tick, in observe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetAccount {
    /// Listed as running and not removed.
    pub serving: u32,
    /// Listed as booting and not removed, plus `in_flight`.
    pub booting: u32,
    /// Launched by this agent and not listed yet (part of `booting`).
    pub in_flight: u32,
    /// On the way out: listed as stopping, or removed and still listed as before.
    pub leaving: u32,
    /// Being drained before their removal (marked as draining, by a read or by this
    /// agent's memory of its marks): billed, not serving capacity, never chosen again.
    pub draining: u32,
    /// The draining instances, with the time each drain began.
    #[serde(skip)]
    pub draining_instances: Vec<Instance>,
    /// Listed instances that are neither leaving nor in flight: what scale-in and the
    /// stuck-boot guard may name.
    #[serde(skip)]
    pub instances: Vec<Instance>,
    /// The launches in flight, newest last: a scale-in removes them first (they serve
    /// nobody yet, and the provider takes their ids before its reads list them).
    #[serde(skip)]
    pub in_flight_ids: Vec<InstanceId>,
    /// Fingerprint of the listed ids that are not leaving and of the launches in flight.
    #[serde(skip)]
    pub view: u64,
}

impl FleetAccount {
    /// Serving plus booting (in flight included): the size a policy's wish is compared
    /// with and the bounds apply to.
    pub fn active(&self) -> u32 {
        self.serving + self.booting
    }

    /// Everything the provider may still bill: active plus leaving and draining.
    pub fn billed(&self) -> u32 {
        self.active() + self.leaving + self.draining
    }

    /// Whether `id` is listed and counted (serving or booting).
    pub fn lists(&self, id: &str) -> bool {
        self.instances.iter().any(|i| i.id == id)
    }

    /// Makes the active count the provider's own target size (an Azure scale set's
    /// capacity), which is what the fleet is becoming whatever its list shows. Below it,
    /// the list lags behind a capacity change: the missing instances are launches in
    /// flight, so no grow repeats them, even from a restarted agent. Above it, the list
    /// shows instances the provider is already taking away: booting ones beyond it are its
    /// own extras (Azure's overprovisioning creates more VMs than asked and deletes the
    /// rest when the asked-for ones run; the extras are not billed), and the newest are
    /// left out, neither capacity nor named by scale-in; serving ones beyond it are
    /// removals the list does not show yet (a capacity lowered, `deleteInstances` in
    /// flight), counted as leaving, so that a grow adds to the capacity what the fleet
    /// lacks rather than falling short by them.
    fn hold_to(&mut self, capacity: u32) {
        let active = self.active();
        if capacity > active {
            let unlisted = capacity - active;
            self.booting += unlisted;
            self.in_flight += unlisted;
            return;
        }
        let mut extra = active - capacity;
        while extra > 0 && self.booting > self.in_flight {
            let newest_booting = self
                .instances
                .iter()
                .enumerate()
                .filter(|(_, i)| i.state != InstanceState::Running)
                .max_by_key(|(_, i)| (i.launched_at, i.id.clone()))
                .map(|(at, _)| at);
            let Some(at) = newest_booting else { break };
            self.instances.remove(at);
            self.booting -= 1;
            extra -= 1;
        }
        let leaving = extra.min(self.serving);
        self.serving -= leaving;
        self.leaving += leaving;
    }
}

/// How many ids of vanished instances are remembered, to recognise a provider answering
/// a grow with instances that are long gone (a token reused on a fleet that returned to
/// an earlier set of instances).
const GONE_MEMORY: usize = 4096;

/// What this controller did that reads may not show yet. Memory only; see the module
/// documentation for what a restarted agent relies on instead.
#[derive(Debug, Default)]
pub struct Unseen {
    launches: Vec<(InstanceId, SystemTime)>,
    removals: Vec<(InstanceId, SystemTime)>,
    /// Instances this agent marked as draining, (id, since, until): draining while
    /// reads do not show the mark yet, for up to a read lag.
    marks: Vec<(InstanceId, SystemTime, SystemTime)>,
    /// Ids once listed (or removed) and no longer listed, newest last.
    gone: VecDeque<InstanceId>,
    gone_set: HashSet<InstanceId>,
    /// Ids listed at the last read.
    listed: HashSet<InstanceId>,
    /// Tokens that led to nothing new: the next grow from the same view salts its token.
    spent: HashSet<String>,
}

impl Unseen {
    /// Notes launches made at `now`: counted until listed, or forgotten after `read_lag`.
    pub fn launched(&mut self, ids: &[InstanceId], now: SystemTime, read_lag: Duration) {
        let until = now + read_lag;
        self.launches
            .extend(ids.iter().map(|id| (id.clone(), until)));
    }

    /// Notes removals accepted at `now`: leaving while reads still show them as before.
    /// A launch in flight that is removed is forgotten (it will never be capacity).
    pub fn removed(&mut self, ids: &[InstanceId], now: SystemTime, read_lag: Duration) {
        self.launches.retain(|(id, _)| !ids.contains(id));
        for id in ids {
            self.remember_gone(id.clone());
        }
        let until = now + read_lag;
        self.removals
            .extend(ids.iter().map(|id| (id.clone(), until)));
    }

    /// Notes drains begun at `since` (now): the instances are draining from then on,
    /// even while reads do not show the mark.
    pub fn marked(&mut self, ids: &[InstanceId], since: SystemTime, read_lag: Duration) {
        let until = since + read_lag;
        self.marks
            .extend(ids.iter().map(|id| (id.clone(), since, until)));
    }

    /// Whether `id` was listed once and is no more (or was removed by this agent).
    pub fn is_gone(&self, id: &str) -> bool {
        self.gone_set.contains(id)
    }

    /// The token for a grow from `account`'s view in time window `window` (a few read
    /// lags long): the same view in the same window gives the same token, unless a grow
    /// from it already led to nothing new, in which case it is salted. The window keeps
    /// a fleet that comes back to an earlier set of instances, hours later, from meeting
    /// the provider's answer to an old launch.
    pub fn grow_token(&self, fleet: &str, account: &FleetAccount, window: u64) -> IdempotencyToken {
        self.grow_token_under(fleet, account, window, None)
    }

    /// [`grow_token`](Self::grow_token) for a holder of the fleet under etcd lease
    /// `lease`: the lease is one more input, so a new holder repeating its predecessor's
    /// intent sends a token of its own, while the same holder repeating sends the same.
    pub fn grow_token_under(
        &self,
        fleet: &str,
        account: &FleetAccount,
        window: u64,
        lease: Option<i64>,
    ) -> IdempotencyToken {
        let view = account.view.to_le_bytes();
        let window = window.to_le_bytes();
        let lease = lease.map(i64::to_le_bytes);
        let mut inputs: Vec<&[u8]> = vec![fleet.as_bytes(), &view, &window];
        if let Some(lease) = &lease {
            inputs.push(b"lease");
            inputs.push(lease);
        }
        let base = format!("fleetscale-{:016x}", fingerprint(inputs));
        let mut token = base.clone();
        let mut salt = 0u32;
        while self.spent.contains(&token) {
            salt += 1;
            token = format!("{base}-{salt}");
        }
        IdempotencyToken::new(token)
    }

    /// Marks a token as spent: the next grow from the same view salts it.
    pub fn spend(&mut self, token: &IdempotencyToken) {
        if self.spent.len() >= GONE_MEMORY {
            self.spent.clear();
        }
        self.spent.insert(token.as_str().to_string());
    }

    /// Forms the account from a read at `now`, and forgets what the read now shows and
    /// what has waited longer than its deadline. Launches forgotten unseen spend no
    /// token here: their ids are remembered as gone, which a grow answer is checked
    /// against.
    pub fn account(&mut self, fleet: &Fleet, now: SystemTime) -> FleetAccount {
        let listed: HashSet<&str> = fleet.instances.iter().map(|i| i.id.as_str()).collect();
        let mut expired = Vec::new();
        self.launches.retain(|(id, until)| {
            if listed.contains(id.as_str()) {
                false
            } else if now > *until {
                expired.push(id.clone());
                false
            } else {
                true
            }
        });
        self.removals.retain(|(id, until)| {
            let shown_as_before = fleet
                .instances
                .iter()
                .any(|i| &i.id == id && i.state != InstanceState::Stopping);
            shown_as_before && now <= *until
        });
        let removed: HashSet<&str> = self.removals.iter().map(|(id, _)| id.as_str()).collect();
        self.marks.retain(|(id, _, until)| {
            let unshown = fleet
                .instances
                .iter()
                .any(|i| &i.id == id && i.draining_since.is_none());
            unshown && now <= *until
        });

        let mut account = FleetAccount::default();
        for instance in &fleet.instances {
            // Removed by this agent (possibly before reads listed it): leaving, whatever
            // reads show.
            if instance.state == InstanceState::Stopping
                || removed.contains(instance.id.as_str())
                || self.gone_set.contains(&instance.id)
            {
                account.leaving += 1;
                continue;
            }
            let marked = self
                .marks
                .iter()
                .find(|(id, _, _)| id == &instance.id)
                .map(|(_, since, _)| *since);
            if let Some(since) = instance.draining_since.or(marked) {
                account.draining += 1;
                account.draining_instances.push(Instance {
                    draining_since: Some(since),
                    ..instance.clone()
                });
                continue;
            }
            match instance.state {
                InstanceState::Running => account.serving += 1,
                _ => account.booting += 1,
            }
            account.instances.push(instance.clone());
        }
        account.in_flight = self.launches.len() as u32;
        account.in_flight_ids = self.launches.iter().map(|(id, _)| id.clone()).collect();
        account.booting += account.in_flight;
        if let Some(capacity) = fleet.target_size {
            // Draining instances are still in the provider's capacity (an Auto Scaling
            // group's desired capacity) until their removal decrements it.
            account.hold_to(capacity.saturating_sub(account.draining));
        }
        let mut view: Vec<&str> = account
            .instances
            .iter()
            .map(|i| i.id.as_str())
            .chain(self.launches.iter().map(|(id, _)| id.as_str()))
            .collect();
        view.sort_unstable();
        account.view = fingerprint(view.iter().map(|id| id.as_bytes()));

        // Remember what vanished since the last read, and launches that never showed.
        let vanished: Vec<InstanceId> = self
            .listed
            .iter()
            .filter(|id| !listed.contains(id.as_str()))
            .cloned()
            .collect();
        for id in vanished.into_iter().chain(expired) {
            self.remember_gone(id);
        }
        self.listed = listed.into_iter().map(str::to_string).collect();
        account
    }

    fn remember_gone(&mut self, id: InstanceId) {
        if self.gone_set.insert(id.clone()) {
            self.gone.push_back(id);
        }
        while self.gone.len() > GONE_MEMORY {
            if let Some(old) = self.gone.pop_front() {
                self.gone_set.remove(&old);
            }
        }
    }
}

/// How many recent boot times are kept.
const BOOT_SAMPLES: usize = 64;

/// How long this fleet's instances take to boot, as observed: for each instance seen
/// booting at one read and running at the next, the time from its launch to midway
/// between the two reads (within half a tick of the truth). Instances already running
/// when the agent started are not measured. Memory only; a restarted agent measures
/// again.
#[derive(Debug, Default)]
pub struct BootTimes {
    booting: HashSet<InstanceId>,
    last_read: Option<SystemTime>,
    recent: VecDeque<Duration>,
}

impl BootTimes {
    /// Notes a read at `now`.
    pub fn observe(&mut self, fleet: &Fleet, now: SystemTime) {
        let mut booting = HashSet::new();
        for instance in &fleet.instances {
            match instance.state {
                InstanceState::Pending => {
                    booting.insert(instance.id.clone());
                }
                InstanceState::Running if self.booting.contains(&instance.id) => {
                    let since = |t: SystemTime| t.duration_since(instance.launched_at).ok();
                    let latest = since(now).unwrap_or_default();
                    let earliest = self.last_read.and_then(since).unwrap_or_default();
                    if self.recent.len() == BOOT_SAMPLES {
                        self.recent.pop_front();
                    }
                    self.recent.push_back((earliest + latest.max(earliest)) / 2);
                }
                _ => {}
            }
        }
        self.booting = booting;
        self.last_read = Some(now);
    }

    /// The recent boot times, oldest first.
    pub fn recent(&mut self) -> &[Duration] {
        self.recent.make_contiguous()
    }
}

/// FNV-1a, 64 bits, over the parts with a separator: stable across builds and releases
/// (unlike `DefaultHasher`), so a restarted agent computes the same token.
pub(crate) fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = OFFSET;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn instance(id: &str, state: InstanceState) -> Instance {
        Instance {
            id: id.into(),
            state,
            launched_at: at(0),
            zone: "a".into(),
            protected: false,
            address: None,
            draining_since: None,
        }
    }

    fn fleet(instances: &[(&str, InstanceState)]) -> Fleet {
        Fleet {
            instances: instances.iter().map(|(id, s)| instance(id, *s)).collect(),
            target_size: None,
        }
    }

    use InstanceState::{Pending, Running, Stopping};

    #[test]
    fn stopping_and_removed_instances_are_leaving_never_capacity() {
        let mut unseen = Unseen::default();
        unseen.removed(&["b".into()], at(0), Duration::from_secs(30));
        let account = unseen.account(
            &fleet(&[
                ("a", Running),
                ("b", Running),
                ("c", Stopping),
                ("d", Pending),
            ]),
            at(10),
        );
        assert_eq!(
            (account.serving, account.booting, account.leaving),
            (1, 1, 2)
        );
        assert_eq!(account.active(), 2);
        assert_eq!(account.billed(), 4);
        assert!(account.lists("a") && account.lists("d") && !account.lists("b"));
        // An accepted removal is never capacity again, however long reads lag.
        let account = unseen.account(&fleet(&[("a", Running), ("b", Running)]), at(41));
        assert_eq!((account.serving, account.leaving), (1, 1));
    }

    #[test]
    fn launches_count_until_listed_or_their_deadline() {
        let mut unseen = Unseen::default();
        unseen.launched(&["x".into(), "y".into()], at(0), Duration::from_secs(60));
        let account = unseen.account(&fleet(&[("a", Running)]), at(30));
        assert_eq!((account.booting, account.in_flight), (2, 2));
        let account = unseen.account(&fleet(&[("a", Running), ("x", Pending)]), at(40));
        assert_eq!((account.booting, account.in_flight), (2, 1));
        let account = unseen.account(&fleet(&[("a", Running), ("x", Pending)]), at(61));
        assert_eq!((account.booting, account.in_flight), (1, 0));
        assert!(
            unseen.is_gone("y"),
            "a launch that never showed is remembered"
        );
    }

    #[test]
    fn a_capacity_above_the_list_is_launches_in_flight_even_after_a_restart() {
        // A restarted agent (nothing in memory) reads a scale set whose capacity was
        // raised to 5 while its list shows 2: three launches are in flight.
        let mut unseen = Unseen::default();
        let mut read = fleet(&[("0", Running), ("1", Pending), ("2", Stopping)]);
        read.target_size = Some(5);
        let account = unseen.account(&read, at(0));
        assert_eq!(
            (
                account.serving,
                account.booting,
                account.in_flight,
                account.leaving
            ),
            (1, 4, 3, 1)
        );
        assert_eq!(account.active(), 5);
    }

    #[test]
    fn booting_instances_beyond_the_capacity_are_not_the_fleets() {
        // Overprovisioning: 4 asked for, 5 booting listed; the newest extra is left out.
        let mut unseen = Unseen::default();
        let mut read = fleet(&[
            ("0", Running),
            ("1", Pending),
            ("2", Pending),
            ("3", Pending),
            ("4", Pending),
            ("5", Pending),
        ]);
        read.target_size = Some(5);
        if let Some(extra) = read.instances.iter_mut().find(|i| i.id == "5") {
            extra.launched_at = at(1);
        }
        let account = unseen.account(&read, at(2));
        assert_eq!(
            (account.serving, account.booting, account.leaving),
            (1, 4, 0)
        );
        assert!(!account.lists("5"));
        // Serving instances beyond the capacity are removals the list does not show yet
        // (a restarted agent, `deleteInstances` in flight): leaving, so that a grow to 4
        // adds 2 to the capacity, not 1.
        let mut read = fleet(&[("0", Running), ("1", Running), ("2", Running)]);
        read.target_size = Some(2);
        let account = unseen.account(&read, at(3));
        assert_eq!(
            (account.serving, account.booting, account.leaving),
            (2, 0, 1)
        );
        assert_eq!(account.active(), 2);
    }

    #[test]
    fn the_token_carries_the_holders_lease() {
        let mut unseen = Unseen::default();
        let one = unseen.account(&fleet(&[("a", Running)]), at(0));
        assert_eq!(
            unseen.grow_token_under("web", &one, 7, None),
            unseen.grow_token("web", &one, 7),
            "alone, the token is as before"
        );
        assert_eq!(
            unseen.grow_token_under("web", &one, 7, Some(41)),
            Unseen::default().grow_token_under("web", &one, 7, Some(41)),
            "the same holder repeating sends the same token"
        );
        assert_ne!(
            unseen.grow_token_under("web", &one, 7, Some(41)),
            unseen.grow_token_under("web", &one, 7, Some(42)),
            "a new holder does not send its predecessor's token"
        );
        assert_ne!(
            unseen.grow_token_under("web", &one, 7, Some(41)),
            unseen.grow_token("web", &one, 7)
        );
    }

    #[test]
    fn the_token_depends_on_the_view_alone_until_spent() {
        let mut unseen = Unseen::default();
        let one = unseen.account(&fleet(&[("a", Running), ("b", Pending)]), at(0));
        let again = Unseen::default().account(&fleet(&[("b", Pending), ("a", Running)]), at(99));
        assert_eq!(
            unseen.grow_token("web", &one, 7),
            Unseen::default().grow_token("web", &again, 7),
            "a restarted agent seeing the same fleet sends the same token"
        );
        assert_ne!(
            unseen.grow_token("web", &one, 7),
            unseen.grow_token("api", &one, 7)
        );
        let other = Unseen::default().account(&fleet(&[("a", Running)]), at(0));
        assert_ne!(
            unseen.grow_token("web", &one, 7),
            unseen.grow_token("web", &other, 7)
        );
        assert_ne!(
            unseen.grow_token("web", &one, 7),
            unseen.grow_token("web", &one, 8)
        );
        let token = unseen.grow_token("web", &one, 7);
        unseen.spend(&token);
        let salted = unseen.grow_token("web", &one, 7);
        assert_ne!(token, salted);
        assert!(salted.as_str().len() <= 64);
        // A launch in flight is part of the view.
        unseen.launched(&["z".into()], at(0), Duration::from_secs(60));
        let with_launch = unseen.account(&fleet(&[("a", Running), ("b", Pending)]), at(1));
        assert_ne!(with_launch.view, one.view);
    }

    #[test]
    fn a_launch_removed_before_reads_list_it_is_leaving_when_they_do() {
        let mut unseen = Unseen::default();
        unseen.launched(&["x".into()], at(0), Duration::from_secs(60));
        let account = unseen.account(&fleet(&[("a", Running)]), at(1));
        assert_eq!(account.in_flight_ids, vec!["x".to_string()]);
        unseen.removed(&["x".into()], at(1), Duration::from_secs(60));
        // Reads list it late, still as booting: it is not capacity.
        let account = unseen.account(&fleet(&[("a", Running), ("x", Pending)]), at(30));
        assert_eq!(
            (account.booting, account.in_flight, account.leaving),
            (0, 0, 1)
        );
    }

    #[test]
    fn boot_times_are_measured_from_launch_to_the_read_that_shows_running() {
        let mut boots = BootTimes::default();
        // Launched at 0. Running at the first read: its boot is not known.
        boots.observe(&fleet(&[("a", Running), ("b", Pending)]), at(60));
        assert!(boots.recent().is_empty());
        boots.observe(&fleet(&[("a", Running), ("b", Pending)]), at(120));
        boots.observe(&fleet(&[("a", Running), ("b", Running)]), at(180));
        assert_eq!(boots.recent(), &[Duration::from_secs(150)]);
        // Measured once.
        boots.observe(&fleet(&[("a", Running), ("b", Running)]), at(240));
        assert_eq!(boots.recent().len(), 1);
    }

    #[test]
    fn vanished_instances_are_remembered_as_gone() {
        let mut unseen = Unseen::default();
        unseen.account(&fleet(&[("a", Running), ("b", Running)]), at(0));
        unseen.account(&fleet(&[("a", Running)]), at(60));
        assert!(unseen.is_gone("b"));
        assert!(!unseen.is_gone("a"));
    }
}
