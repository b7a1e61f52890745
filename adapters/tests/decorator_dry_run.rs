//! DryRun: records intents, never mutates the backend, and reads as if it had.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleetscale_adapters::mock::{MockCloud, MockConfig};
use fleetscale_adapters::{
    AdapterError, Clock, CloudAdapter, DryRun, ErrorKind, IdempotencyToken, InstanceState, Intent,
    ManualClock, Operation,
};

const BOOT: Duration = Duration::from_secs(45);

fn setup(initial_size: u32) -> (ManualClock, MockCloud, DryRun<MockCloud>) {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_760_000_000));
    let zones = vec!["a".to_string(), "b".to_string()];
    let cloud = MockCloud::new(
        MockConfig {
            initial_size,
            zones,
            ..MockConfig::default()
        },
        Arc::new(clock.clone()),
    );
    let dry_run = DryRun::new(cloud.clone(), Arc::new(clock.clone()), BOOT);
    (clock, cloud, dry_run)
}

#[tokio::test]
async fn a_dry_run_makes_no_mutating_call_and_changes_nothing() {
    let (clock, cloud, dry_run) = setup(4);
    let before = cloud.inspect();
    let backend_ids: Vec<_> = before.instances.iter().map(|i| i.id.clone()).collect();

    dry_run.read_fleet().await.unwrap();
    let grown = dry_run
        .grow(3, &IdempotencyToken::new("tick-1"))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(10));
    let shrunk = dry_run
        .shrink(&[backend_ids[0].clone(), grown.launched[0].clone()])
        .await
        .unwrap();
    dry_run.verify_access().await.unwrap();
    dry_run.read_fleet().await.unwrap();

    assert_eq!(
        cloud.calls().mutating(),
        0,
        "a dry run reached grow or shrink: {:?}",
        cloud.calls()
    );
    assert_eq!(
        cloud.calls().get(Operation::ReadFleet),
        3,
        "two reads and the shrink's protection check"
    );
    assert_eq!(cloud.inspect(), before, "the backend's fleet changed");
    assert_eq!(
        shrunk.removed,
        [backend_ids[0].clone(), grown.launched[0].clone()]
    );

    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_760_000_000);
    assert_eq!(
        dry_run.intents(),
        [
            Intent::Grow {
                at,
                count: 3,
                token: "tick-1".into(),
                launched: grown.launched.clone()
            },
            Intent::Shrink {
                at: at + Duration::from_secs(10),
                ids: vec![backend_ids[0].clone(), grown.launched[0].clone()]
            },
        ]
    );
}

#[tokio::test]
async fn reads_show_what_would_have_happened() {
    let (clock, _cloud, dry_run) = setup(3);
    let fleet = dry_run.read_fleet().await.unwrap();
    let hidden = fleet.instances[0].id.clone();

    let launched = dry_run
        .grow(2, &IdempotencyToken::new("t"))
        .await
        .unwrap()
        .launched;
    assert_eq!(launched, ["dry-run-000001", "dry-run-000002"]);
    dry_run.shrink(std::slice::from_ref(&hidden)).await.unwrap();

    let fleet = dry_run.read_fleet().await.unwrap();
    assert!(
        fleet.instances.iter().all(|i| i.id != hidden),
        "a removed instance is hidden"
    );
    assert_eq!(
        (fleet.billed(), fleet.serving(), fleet.booting()),
        (4, 2, 2)
    );
    let launched_at = clock.now();
    assert!(
        fleet
            .instances
            .iter()
            .filter(|i| launched.contains(&i.id))
            .all(|i| i.launched_at == launched_at)
    );

    clock.advance(BOOT - Duration::from_millis(1));
    assert_eq!(dry_run.read_fleet().await.unwrap().serving(), 2);
    clock.advance(Duration::from_millis(1));
    let fleet = dry_run.read_fleet().await.unwrap();
    assert_eq!(fleet.serving(), 4);
    assert!(
        fleet
            .instances
            .iter()
            .all(|i| i.state == InstanceState::Running)
    );
}

#[tokio::test]
async fn virtual_launches_keep_the_backends_zones_balanced() {
    let (_clock, _cloud, dry_run) = setup(3);
    dry_run.read_fleet().await.unwrap();
    dry_run.grow(5, &IdempotencyToken::new("z")).await.unwrap();
    let mut per_zone = BTreeMap::new();
    for instance in dry_run.read_fleet().await.unwrap().instances {
        *per_zone.entry(instance.zone).or_insert(0) += 1;
    }
    assert_eq!(
        per_zone,
        BTreeMap::from([("a".to_string(), 4), ("b".to_string(), 4)])
    );
}

#[tokio::test]
async fn a_repeated_token_returns_the_first_launch_and_records_one_intent() {
    let (_clock, _cloud, dry_run) = setup(0);
    let token = IdempotencyToken::new("same");
    let first = dry_run.grow(2, &token).await.unwrap();
    assert_eq!(dry_run.grow(2, &token).await.unwrap(), first);
    assert_eq!(
        dry_run.grow(3, &token).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    assert_eq!(dry_run.intents().len(), 1);
    assert_eq!(dry_run.read_fleet().await.unwrap().billed(), 2);
}

#[tokio::test]
async fn protected_instances_are_refused_and_no_intent_is_recorded() {
    let (_clock, cloud, dry_run) = setup(2);
    let ids: Vec<_> = cloud
        .inspect()
        .instances
        .into_iter()
        .map(|i| i.id)
        .collect();
    cloud.protect(&ids[0]);
    let error = dry_run.shrink(&ids).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert!(dry_run.intents().is_empty());
    assert_eq!(dry_run.read_fleet().await.unwrap().billed(), 2);

    let launched = dry_run
        .grow(1, &IdempotencyToken::new("p"))
        .await
        .unwrap()
        .launched;
    assert!(dry_run.set_protected(&launched[0], true));
    assert_eq!(
        dry_run.shrink(&launched).await.unwrap_err().kind(),
        ErrorKind::Invalid
    );
    assert!(!dry_run.set_protected("dry-run-999999", true));
}

#[tokio::test]
async fn backend_failures_pass_through() {
    let (_clock, cloud, dry_run) = setup(1);
    cloud
        .faults()
        .fail_next(1, AdapterError::authentication("expired token"));
    assert_eq!(
        dry_run.read_fleet().await.unwrap_err().kind(),
        ErrorKind::Authentication
    );
    cloud
        .faults()
        .fail_next(1, AdapterError::transient("reset"));
    let id = cloud.inspect().instances[0].id.clone();
    assert_eq!(
        dry_run.shrink(&[id]).await.unwrap_err().kind(),
        ErrorKind::Transient
    );
    assert!(dry_run.intents().is_empty());
}

#[tokio::test]
async fn the_journal_outlives_boxing_the_decorator() {
    let (_clock, cloud, dry_run) = setup(0);
    let journal = dry_run.journal();
    let boxed: Box<dyn CloudAdapter> = Box::new(dry_run);
    boxed
        .grow(1, &IdempotencyToken::new("boxed"))
        .await
        .unwrap();
    assert_eq!(boxed.name(), "mock");
    assert_eq!(journal.intents().len(), 1);
    assert_eq!(cloud.calls().mutating(), 0);
}
