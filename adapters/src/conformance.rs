//! The conformance suite: what every [`CloudAdapter`] must do, as async test functions run
//! against the mock, each decorator over the mock, and every cloud backend on its emulator.
//!
//! Each function takes the adapter under test and a [`Harness`] for what only the backend's
//! own test can do (protect an instance, name an id that exists nowhere, say how soon
//! writes show in reads). Like any test code, a function panics with a message naming the
//! broken rule when the adapter fails it. [`run_all`] runs every function in order.
//!
//! The suite does not need an empty fleet: instances present at the start of a function
//! are left alone, and every function removes what it launched. Instances may be Pending or
//! Running after a grow (an emulator may start them at once, the mock boots them on its
//! clock), and removed instances may be gone or Stopping on the next read.
//!
//! Rules every adapter follows, checked here:
//! - a read lists live instances with unique, non-blank ids;
//! - verify-access reports every needed permission allowed and changes nothing;
//! - `grow(0, _)` launches nothing and succeeds;
//! - a grow returns the ids it launched, and the next read shows them Pending or Running;
//! - a grow repeated with the same token returns the first call's ids and launches once;
//! - a shrink lists the live instances it accepted; the next read shows them gone or
//!   Stopping; repeating it succeeds; an empty shrink is a no-op;
//! - a shrink naming a protected instance fails with [`ErrorKind::Invalid`] and removes
//!   nothing, not even the unprotected instances it also named;
//! - a shrink of a well-formed id that names no instance succeeds and removes nothing;
//! - a shrink of a malformed id removes nothing and either fails with
//!   [`ErrorKind::Invalid`] (a backend that can tell, such as the mock) or is ignored like
//!   an unknown id (a decorator or backend that cannot); no other outcome is allowed;
//! - a drain's mark is read back with the time it began, a second mark keeps the first
//!   time, and a marked instance can be removed; a backend that cannot keep marks refuses
//!   with [`ErrorKind::Invalid`] and marks nothing.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;

use crate::mock::MockCloud;
use crate::{
    AdapterError, CloudAdapter, ErrorKind, Fleet, GrowOutcome, IdempotencyToken, Instance,
    InstanceId, InstanceState, Result,
};

/// An id no backend accepts: blank-separated words and punctuation.
pub const MALFORMED_ID: &str = "not a valid id!";

/// What only the backend's own test can do for the suite.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Set or clear an instance's scale-in protection, the way an operator would (a tag,
    /// the scale set's protection policy, the mock's handle).
    async fn set_protected(&self, id: &InstanceId, protected: bool) -> Result<()>;

    /// A well-formed id that names no instance of the fleet.
    fn unknown_instance_id(&self) -> InstanceId;

    /// How soon writes show in reads.
    fn consistency(&self) -> Consistency {
        Consistency::Immediate
    }

    /// Whether the backend itself honours idempotency tokens. Only an emulator known to
    /// ignore them (moto ignores EC2's ClientToken) answers `false`; the same-token test
    /// then checks that both calls succeed and name the same instances where the adapter
    /// can tell, and cleans up whatever was launched.
    fn honours_idempotency_tokens(&self) -> bool {
        true
    }

    /// Whether the backend keeps drain marks ([`CloudAdapter::mark_draining`]). One that
    /// does not must refuse them with [`ErrorKind::Invalid`].
    fn keeps_drain_marks(&self) -> bool {
        true
    }
}

/// How soon a backend's reads reflect its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The next read shows every earlier write (the mock, the decorators).
    Immediate,
    /// Reads catch up eventually: poll every `poll` until `timeout` passes.
    Eventual { poll: Duration, timeout: Duration },
}

/// Runs every conformance function in order.
pub async fn run_all(adapter: &dyn CloudAdapter, harness: &dyn Harness) {
    read_fleet_lists_live_instances(adapter, harness).await;
    verify_access_allows_all_and_changes_nothing(adapter, harness).await;
    grow_of_zero_launches_nothing(adapter, harness).await;
    grow_launches_instances_that_reads_show(adapter, harness).await;
    grow_with_same_token_launches_once(adapter, harness).await;
    shrink_removes_named_instances_idempotently(adapter, harness).await;
    shrink_naming_a_protected_instance_removes_nothing(adapter, harness).await;
    shrink_of_unknown_or_malformed_ids_removes_nothing(adapter, harness).await;
    drain_marks_are_read_back(adapter, harness).await;
}

/// A read lists live instances with unique, non-blank ids, and can be repeated.
pub async fn read_fleet_lists_live_instances(adapter: &dyn CloudAdapter, _harness: &dyn Harness) {
    for _ in 0..2 {
        let fleet = read(adapter).await;
        let mut seen = HashSet::new();
        for instance in &fleet.instances {
            assert!(
                !instance.id.trim().is_empty(),
                "{}: an instance has a blank id: {instance:?}",
                adapter.name()
            );
            assert!(
                seen.insert(&instance.id),
                "{}: id {} is listed twice",
                adapter.name(),
                instance.id
            );
        }
    }
}

/// Verify-access reports an identity and every permission allowed, and changes nothing.
pub async fn verify_access_allows_all_and_changes_nothing(
    adapter: &dyn CloudAdapter,
    harness: &dyn Harness,
) {
    let before = read(adapter).await;
    let report = adapter
        .verify_access()
        .await
        .unwrap_or_else(|e| panic!("{}: verify_access failed: {e}", adapter.name()));
    assert!(
        !report.identity.trim().is_empty(),
        "{}: verify_access names no identity",
        adapter.name()
    );
    assert!(
        !report.checks.is_empty(),
        "{}: verify_access probed no permission",
        adapter.name()
    );
    let denied: Vec<_> = report.checks.iter().filter(|c| !c.allowed).collect();
    assert!(
        denied.is_empty(),
        "{}: verify_access denied permissions: {denied:?}",
        adapter.name()
    );
    settle(harness).await;
    let after = read(adapter).await;
    assert_nothing_launched_or_removed(adapter, &before, &after, "verify_access");
}

/// `grow(0, _)` succeeds and launches nothing.
pub async fn grow_of_zero_launches_nothing(adapter: &dyn CloudAdapter, harness: &dyn Harness) {
    let before = read(adapter).await;
    let outcome = adapter
        .grow(0, &token("zero"))
        .await
        .unwrap_or_else(|e| panic!("{}: grow(0) failed: {e}", adapter.name()));
    assert!(
        outcome.launched.is_empty(),
        "{}: grow(0) launched {:?}",
        adapter.name(),
        outcome.launched
    );
    settle(harness).await;
    let after = read(adapter).await;
    assert_nothing_launched_or_removed(adapter, &before, &after, "grow(0)");
}

/// A grow returns the ids it launched, new and unique, and the next read shows them
/// Pending or Running, unprotected, each in a zone.
pub async fn grow_launches_instances_that_reads_show(
    adapter: &dyn CloudAdapter,
    harness: &dyn Harness,
) {
    let before = read(adapter).await;
    let outcome = grow(adapter, 2, &token("grow")).await;
    assert_eq!(
        outcome.requested,
        2,
        "{}: grow reports the wrong request",
        adapter.name()
    );
    assert_eq!(
        outcome.launched.len(),
        2,
        "{}: grow(2) launched {:?}",
        adapter.name(),
        outcome.launched
    );
    let unique: HashSet<_> = outcome.launched.iter().collect();
    assert_eq!(
        unique.len(),
        2,
        "{}: grow returned an id twice: {:?}",
        adapter.name(),
        outcome.launched
    );
    for id in &outcome.launched {
        assert!(
            find(&before, id).is_none(),
            "{}: grow returned {id}, which existed before",
            adapter.name()
        );
    }
    let fleet = read_until(
        adapter,
        harness,
        "launched instances to be listed",
        |fleet| {
            outcome
                .launched
                .iter()
                .all(|id| find(fleet, id).is_some_and(is_booting_or_serving))
        },
    )
    .await;
    for id in &outcome.launched {
        let Some(instance) = find(&fleet, id) else {
            panic!("{}: launched instance {id} is not listed", adapter.name());
        };
        assert!(
            !instance.protected,
            "{}: a new instance is protected: {instance:?}",
            adapter.name()
        );
        assert!(
            !instance.zone.trim().is_empty(),
            "{}: a new instance has no zone: {instance:?}",
            adapter.name()
        );
    }
    remove(adapter, harness, &outcome.launched).await;
}

/// A grow repeated with the same token returns the first call's ids and launches once.
pub async fn grow_with_same_token_launches_once(adapter: &dyn CloudAdapter, harness: &dyn Harness) {
    let before = read(adapter).await;
    let token = token("same");
    let first = grow(adapter, 1, &token).await;
    let second = grow(adapter, 1, &token).await;
    if !harness.honours_idempotency_tokens() {
        let mut launched: Vec<_> = first
            .launched
            .iter()
            .chain(&second.launched)
            .cloned()
            .collect();
        launched.sort();
        launched.dedup();
        remove(adapter, harness, &launched).await;
        return;
    }
    assert_eq!(
        first.launched.len(),
        1,
        "{}: grow(1) launched {:?}",
        adapter.name(),
        first.launched
    );
    assert_eq!(
        first.launched,
        second.launched,
        "{}: the same token returned different instances",
        adapter.name()
    );
    let fleet = read_until(
        adapter,
        harness,
        "the launched instance to be listed",
        |fleet| {
            first
                .launched
                .iter()
                .all(|id| find(fleet, id).is_some_and(is_booting_or_serving))
        },
    )
    .await;
    let new: Vec<_> = new_live_ids(&before, &fleet);
    assert_eq!(
        new,
        first.launched,
        "{}: two grows with one token launched {new:?}",
        adapter.name()
    );
    remove(adapter, harness, &first.launched).await;
}

/// A shrink lists what it accepted; the next read shows it gone or Stopping and leaves
/// the rest alone; repeating the shrink succeeds; an empty shrink is a no-op.
pub async fn shrink_removes_named_instances_idempotently(
    adapter: &dyn CloudAdapter,
    harness: &dyn Harness,
) {
    let launched = grow(adapter, 2, &token("shrink")).await.launched;
    let [gone, kept] = launched.as_slice() else {
        panic!("{}: grow(2) launched {launched:?}", adapter.name());
    };
    read_until(
        adapter,
        harness,
        "launched instances to be listed",
        |fleet| launched.iter().all(|id| find(fleet, id).is_some()),
    )
    .await;

    let outcome = shrink(adapter, std::slice::from_ref(gone)).await;
    assert!(
        outcome.removed.contains(gone),
        "{}: shrink did not accept {gone}: {outcome:?}",
        adapter.name()
    );
    assert!(
        !outcome.removed.contains(kept),
        "{}: shrink removed {kept}, not named",
        adapter.name()
    );
    read_until(
        adapter,
        harness,
        "the removed instance to be gone or stopping",
        |fleet| is_removed(fleet, gone),
    )
    .await;
    let fleet = read(adapter).await;
    assert!(
        find(&fleet, kept).is_some_and(is_booting_or_serving),
        "{}: shrinking {gone} disturbed {kept}: {fleet:?}",
        adapter.name()
    );

    shrink(adapter, std::slice::from_ref(gone)).await;
    let empty = shrink(adapter, &[]).await;
    assert!(
        empty.removed.is_empty(),
        "{}: an empty shrink removed {:?}",
        adapter.name(),
        empty.removed
    );
    remove(adapter, harness, std::slice::from_ref(kept)).await;
}

/// A shrink naming a protected instance fails with Invalid and removes nothing, not even
/// the unprotected instance named with it; the unprotected one alone can be removed.
pub async fn shrink_naming_a_protected_instance_removes_nothing(
    adapter: &dyn CloudAdapter,
    harness: &dyn Harness,
) {
    let launched = grow(adapter, 2, &token("protect")).await.launched;
    let [protected, free] = launched.as_slice() else {
        panic!("{}: grow(2) launched {launched:?}", adapter.name());
    };
    read_until(
        adapter,
        harness,
        "launched instances to be listed",
        |fleet| launched.iter().all(|id| find(fleet, id).is_some()),
    )
    .await;
    harness
        .set_protected(protected, true)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: the harness could not protect {protected}: {e}",
                adapter.name()
            )
        });
    read_until(adapter, harness, "the protection to be reported", |fleet| {
        find(fleet, protected).is_some_and(|i| i.protected)
    })
    .await;

    match adapter.shrink(&launched).await {
        Err(error) => assert_eq!(
            error.kind(),
            ErrorKind::Invalid,
            "{}: shrink of a protected instance failed with the wrong kind: {error}",
            adapter.name()
        ),
        Ok(outcome) => panic!(
            "{}: shrink of protected {protected} succeeded: {outcome:?}",
            adapter.name()
        ),
    }
    settle(harness).await;
    let fleet = read(adapter).await;
    for id in &launched {
        assert!(
            find(&fleet, id).is_some_and(is_booting_or_serving),
            "{}: a refused shrink removed {id}: {fleet:?}",
            adapter.name()
        );
    }

    let outcome = shrink(adapter, std::slice::from_ref(free)).await;
    assert!(
        outcome.removed.contains(free),
        "{}: shrink did not accept {free}: {outcome:?}",
        adapter.name()
    );
    harness
        .set_protected(protected, false)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: the harness could not unprotect {protected}: {e}",
                adapter.name()
            )
        });
    read_until(adapter, harness, "the protection to be lifted", |fleet| {
        find(fleet, protected).is_some_and(|i| !i.protected)
    })
    .await;
    remove(adapter, harness, std::slice::from_ref(protected)).await;
}

/// Unknown ids are ignored; malformed ids are refused as Invalid or ignored; neither
/// removes anything.
pub async fn shrink_of_unknown_or_malformed_ids_removes_nothing(
    adapter: &dyn CloudAdapter,
    harness: &dyn Harness,
) {
    let before = read(adapter).await;
    let unknown = harness.unknown_instance_id();
    let outcome = shrink(adapter, std::slice::from_ref(&unknown)).await;
    assert!(
        outcome.removed.is_empty(),
        "{}: shrink of unknown {unknown} removed {:?}",
        adapter.name(),
        outcome.removed
    );

    match adapter.shrink(&[MALFORMED_ID.to_string()]).await {
        Ok(outcome) => assert!(
            outcome.removed.is_empty(),
            "{}: shrink of a malformed id removed {:?}",
            adapter.name(),
            outcome.removed
        ),
        Err(error) => assert_eq!(
            error.kind(),
            ErrorKind::Invalid,
            "{}: shrink of a malformed id failed with the wrong kind: {error}",
            adapter.name()
        ),
    }
    settle(harness).await;
    let after = read(adapter).await;
    assert_nothing_launched_or_removed(adapter, &before, &after, "shrink of unknown ids");
}

// --- helpers -------------------------------------------------------------------------

/// A token unique to this run, so a remote backend never matches an earlier run's launch.
fn token(purpose: &str) -> IdempotencyToken {
    IdempotencyToken::new(format!(
        "conformance-{purpose}-{:016x}",
        rand::random::<u64>()
    ))
}

async fn read(adapter: &dyn CloudAdapter) -> Fleet {
    adapter
        .read_fleet()
        .await
        .unwrap_or_else(|e| panic!("{}: read_fleet failed: {e}", adapter.name()))
}

async fn grow(adapter: &dyn CloudAdapter, count: u32, token: &IdempotencyToken) -> GrowOutcome {
    adapter
        .grow(count, token)
        .await
        .unwrap_or_else(|e| panic!("{}: grow({count}) failed: {e}", adapter.name()))
}

async fn shrink(adapter: &dyn CloudAdapter, ids: &[InstanceId]) -> crate::ShrinkOutcome {
    adapter
        .shrink(ids)
        .await
        .unwrap_or_else(|e| panic!("{}: shrink({ids:?}) failed: {e}", adapter.name()))
}

/// Removes instances a function launched, and waits until reads show them removed.
async fn remove(adapter: &dyn CloudAdapter, harness: &dyn Harness, ids: &[InstanceId]) {
    shrink(adapter, ids).await;
    read_until(
        adapter,
        harness,
        "cleaned-up instances to be gone or stopping",
        |fleet| ids.iter().all(|id| is_removed(fleet, id)),
    )
    .await;
}

fn find<'a>(fleet: &'a Fleet, id: &str) -> Option<&'a Instance> {
    fleet.instances.iter().find(|i| i.id == id)
}

fn is_booting_or_serving(instance: &Instance) -> bool {
    matches!(
        instance.state,
        InstanceState::Pending | InstanceState::Running
    )
}

fn is_removed(fleet: &Fleet, id: &str) -> bool {
    find(fleet, id).is_none_or(|i| i.state == InstanceState::Stopping)
}

/// Pending or Running instances of `after` that `before` did not list.
fn new_live_ids(before: &Fleet, after: &Fleet) -> Vec<InstanceId> {
    after
        .instances
        .iter()
        .filter(|i| is_booting_or_serving(i) && find(before, &i.id).is_none())
        .map(|i| i.id.clone())
        .collect()
}

/// No instance appeared, and every instance that was booting or serving still is.
/// (Instances already Stopping before may finish leaving.)
fn assert_nothing_launched_or_removed(
    adapter: &dyn CloudAdapter,
    before: &Fleet,
    after: &Fleet,
    what: &str,
) {
    let appeared: Vec<_> = after
        .instances
        .iter()
        .filter(|i| find(before, &i.id).is_none())
        .collect();
    assert!(
        appeared.is_empty(),
        "{}: {what} launched {appeared:?}",
        adapter.name()
    );
    for instance in before.instances.iter().filter(|i| is_booting_or_serving(i)) {
        assert!(
            find(after, &instance.id).is_some_and(is_booting_or_serving),
            "{}: {what} removed {}",
            adapter.name(),
            instance.id
        );
    }
}

/// A drain's mark is read back with the time it began (whole seconds: a tag's
/// precision); marking again keeps the first time; marking an unknown id is no error; the
/// marked instance can still be removed. A backend that cannot keep marks refuses with
/// Invalid, and reads show no mark.
pub async fn drain_marks_are_read_back(adapter: &dyn CloudAdapter, harness: &dyn Harness) {
    let launched = grow(adapter, 1, &token("drain")).await.launched;
    let [id] = launched.as_slice() else {
        panic!("{}: grow(1) launched {launched:?}", adapter.name());
    };
    read_until(
        adapter,
        harness,
        "the launched instance to be listed",
        |fleet| find(fleet, id).is_some(),
    )
    .await;
    let since = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let marked = adapter.mark_draining(std::slice::from_ref(id), since).await;
    match (marked, harness.keeps_drain_marks()) {
        (Ok(()), true) => {
            read_until(
                adapter,
                harness,
                "the drain's mark to be read back",
                |fleet| find(fleet, id).is_some_and(|i| i.draining_since == Some(since)),
            )
            .await;
            let later = since + Duration::from_secs(60);
            let again = [id.clone(), harness.unknown_instance_id()];
            if let Err(e) = adapter.mark_draining(&again, later).await {
                panic!("{}: marking again failed: {e}", adapter.name());
            }
            settle(harness).await;
            let fleet = read(adapter).await;
            assert_eq!(
                find(&fleet, id).and_then(|i| i.draining_since),
                Some(since),
                "{}: a second mark moved the first one's time: {fleet:?}",
                adapter.name()
            );
        }
        (Ok(()), false) => panic!(
            "{}: accepted a drain mark its harness says it cannot keep",
            adapter.name()
        ),
        (Err(e), false) => {
            assert_eq!(e.kind(), ErrorKind::Invalid, "{}: {e}", adapter.name());
            let fleet = read(adapter).await;
            assert!(
                find(&fleet, id).is_some_and(|i| i.draining_since.is_none()),
                "{}: a refused mark shows: {fleet:?}",
                adapter.name()
            );
        }
        (Err(e), true) => panic!("{}: marking a drain failed: {e}", adapter.name()),
    }
    remove(adapter, harness, std::slice::from_ref(id)).await;
}

async fn settle(harness: &dyn Harness) {
    if let Consistency::Eventual { poll, .. } = harness.consistency() {
        tokio::time::sleep(poll).await;
    }
}

/// Reads until `done` holds, within the harness's consistency window.
async fn read_until(
    adapter: &dyn CloudAdapter,
    harness: &dyn Harness,
    waiting_for: &str,
    done: impl Fn(&Fleet) -> bool,
) -> Fleet {
    let (poll, timeout) = match harness.consistency() {
        Consistency::Immediate => (Duration::ZERO, Duration::ZERO),
        Consistency::Eventual { poll, timeout } => (poll, timeout),
    };
    let started = tokio::time::Instant::now();
    loop {
        let fleet = read(adapter).await;
        if done(&fleet) {
            return fleet;
        }
        if started.elapsed() >= timeout {
            panic!(
                "{}: gave up waiting for {waiting_for}; the fleet reads {fleet:?}",
                adapter.name()
            );
        }
        tokio::time::sleep(poll).await;
    }
}

/// The mock is its own harness: protection through its handle, immediate consistency.
#[async_trait]
impl Harness for MockCloud {
    async fn set_protected(&self, id: &InstanceId, protected: bool) -> Result<()> {
        if MockCloud::set_protected(self, id, protected) {
            Ok(())
        } else {
            Err(AdapterError::not_found(format!("no live instance {id}")))
        }
    }

    fn unknown_instance_id(&self) -> InstanceId {
        "mock-999999999".to_string()
    }
}
