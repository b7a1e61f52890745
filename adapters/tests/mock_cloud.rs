//! The mock cloud as a backend: clock-derived states, quota, zones, idempotency, faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleetscale_adapters::mock::{FaultConfig, MockCloud, MockConfig};
use fleetscale_adapters::{
    AdapterError, Clock, CloudAdapter, ErrorKind, Fleet, IdempotencyToken, InstanceState,
    ManualClock, Operation, TokioClock,
};

const T0: Duration = Duration::from_secs(1_750_000_000);

fn manual() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + T0)
}

fn on_clock(config: MockConfig, clock: &ManualClock) -> MockCloud {
    MockCloud::new(config, Arc::new(clock.clone()))
}

fn token(name: &str) -> IdempotencyToken {
    IdempotencyToken::new(name)
}

fn states(fleet: &Fleet) -> Vec<InstanceState> {
    fleet.instances.iter().map(|i| i.state).collect()
}

fn per_zone(fleet: &Fleet) -> BTreeMap<String, usize> {
    let mut zones = BTreeMap::new();
    for instance in fleet
        .instances
        .iter()
        .filter(|i| i.state != InstanceState::Stopping)
    {
        *zones.entry(instance.zone.clone()).or_default() += 1;
    }
    zones
}

#[tokio::test]
async fn instances_run_exactly_one_boot_delay_after_launch() {
    let clock = manual();
    let boot = Duration::from_secs(90);
    let cloud = on_clock(
        MockConfig {
            boot_delay: boot,
            ..MockConfig::default()
        },
        &clock,
    );
    let launched_at = clock.now();
    let outcome = cloud.grow(3, &token("boot")).await.unwrap();
    assert_eq!(
        outcome.launched,
        ["mock-000001", "mock-000002", "mock-000003"]
    );

    let fleet = cloud.read_fleet().await.unwrap();
    assert_eq!(states(&fleet), [InstanceState::Pending; 3]);
    assert!(fleet.instances.iter().all(|i| i.launched_at == launched_at));
    assert_eq!(
        (fleet.billed(), fleet.serving(), fleet.booting()),
        (3, 0, 3)
    );

    clock.advance(boot - Duration::from_nanos(1));
    assert_eq!(states(&cloud.inspect()), [InstanceState::Pending; 3]);
    clock.advance(Duration::from_nanos(1));
    assert_eq!(states(&cloud.inspect()), [InstanceState::Running; 3]);
}

#[tokio::test]
async fn a_replay_starts_from_seeded_serving_instances() {
    let clock = manual();
    let boot = Duration::from_secs(180);
    let cloud = on_clock(MockConfig::for_replay(boot), &clock);
    let seeded = cloud.seed_serving(5);
    assert_eq!(seeded.len(), 5);
    let fleet = cloud.read_fleet().await.unwrap();
    assert_eq!(fleet.serving(), 5);
    let t0 = clock.now();
    assert!(fleet.instances.iter().all(|i| i.launched_at == t0 - boot));
    assert_eq!(
        per_zone(&fleet).values().copied().collect::<Vec<_>>(),
        [2, 2, 1]
    );
}

#[tokio::test]
async fn initial_size_serves_from_the_start() {
    let clock = manual();
    let cloud = on_clock(
        MockConfig {
            initial_size: 4,
            ..MockConfig::default()
        },
        &clock,
    );
    let fleet = cloud.read_fleet().await.unwrap();
    assert_eq!((fleet.billed(), fleet.serving()), (4, 4));
    assert_eq!(fleet.target_size, None);
}

#[tokio::test]
async fn launches_keep_zones_balanced() {
    let clock = manual();
    let zones = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let cloud = on_clock(
        MockConfig {
            zones,
            ..MockConfig::default()
        },
        &clock,
    );
    cloud.grow(7, &token("first")).await.unwrap();
    let fleet = cloud.inspect();
    assert_eq!(
        per_zone(&fleet),
        BTreeMap::from([("a".into(), 3), ("b".into(), 2), ("c".into(), 2)])
    );

    let in_a: Vec<_> = fleet
        .instances
        .iter()
        .filter(|i| i.zone == "a")
        .map(|i| i.id.clone())
        .collect();
    cloud.shrink(&in_a).await.unwrap();
    cloud.grow(3, &token("refill")).await.unwrap();
    assert_eq!(
        per_zone(&cloud.inspect()),
        BTreeMap::from([("a".into(), 3), ("b".into(), 2), ("c".into(), 2)])
    );
}

#[tokio::test]
async fn a_grow_beyond_the_quota_launches_what_fits_then_fails_with_capacity() {
    let clock = manual();
    let cloud = on_clock(
        MockConfig {
            quota: Some(5),
            initial_size: 3,
            ..MockConfig::default()
        },
        &clock,
    );
    let outcome = cloud.grow(4, &token("over")).await.unwrap();
    assert_eq!(outcome.requested, 4);
    assert_eq!(outcome.launched.len(), 2, "only two fit under the quota");

    let error = cloud.grow(1, &token("full")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Capacity);
    assert!(error.to_string().contains("quota of 5"), "{error}");

    cloud.shrink(&outcome.launched[..1]).await.unwrap();
    assert_eq!(
        cloud.grow(1, &token("room")).await.unwrap().launched.len(),
        1
    );

    cloud.set_quota(None);
    assert_eq!(
        cloud
            .grow(10, &token("unlimited"))
            .await
            .unwrap()
            .launched
            .len(),
        10
    );
}

#[tokio::test]
async fn stopping_instances_count_against_the_quota_until_gone() {
    let clock = manual();
    let stop_delay = Duration::from_secs(20);
    let config = MockConfig {
        quota: Some(2),
        initial_size: 2,
        stop_delay,
        ..MockConfig::default()
    };
    let cloud = on_clock(config, &clock);
    let id = cloud.inspect().instances[0].id.clone();
    let removed = cloud
        .shrink(std::slice::from_ref(&id))
        .await
        .unwrap()
        .removed;
    assert_eq!(removed, std::slice::from_ref(&id));
    assert_eq!(cloud.inspect().instances[0].state, InstanceState::Stopping);
    assert_eq!(
        cloud.grow(1, &token("early")).await.unwrap_err().kind(),
        ErrorKind::Capacity
    );

    clock.advance(stop_delay);
    assert!(
        cloud.inspect().instances.iter().all(|i| i.id != id),
        "gone after the stop delay"
    );
    assert_eq!(
        cloud.grow(1, &token("later")).await.unwrap().launched.len(),
        1
    );
}

#[tokio::test]
async fn the_same_token_never_launches_twice() {
    let clock = manual();
    let cloud = on_clock(MockConfig::default(), &clock);
    let first = cloud.grow(2, &token("t1")).await.unwrap();
    let again = cloud.grow(2, &token("t1")).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(cloud.stats().launched, 2);
    assert_eq!(cloud.inspect().billed(), 2);

    let mismatch = cloud.grow(3, &token("t1")).await.unwrap_err();
    assert_eq!(mismatch.kind(), ErrorKind::Conflict);
    let empty = cloud.grow(1, &token("")).await.unwrap_err();
    assert_eq!(empty.kind(), ErrorKind::Invalid);
    assert_eq!(cloud.inspect().billed(), 2);
}

#[tokio::test]
async fn a_lost_launch_response_is_recovered_by_its_token() {
    let clock = manual();
    let cloud = on_clock(MockConfig::default(), &clock);
    cloud.faults().lose_next_responses(1);
    let lost = cloud.grow(2, &token("lost")).await.unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::Transient);
    assert_eq!(cloud.inspect().billed(), 2, "the launch took effect");

    let retried = cloud.grow(2, &token("lost")).await.unwrap();
    assert_eq!(retried.launched.len(), 2);
    assert_eq!(cloud.stats().launched, 2, "the retry launched nothing more");
}

#[tokio::test]
async fn shrink_refuses_protected_instances_and_ignores_unknown_ones() {
    let clock = manual();
    let cloud = on_clock(
        MockConfig {
            initial_size: 3,
            ..MockConfig::default()
        },
        &clock,
    );
    let ids: Vec<_> = cloud
        .inspect()
        .instances
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(cloud.protect(&ids[0]));
    assert!(cloud.inspect().instances[0].protected);

    let refused = cloud.shrink(&ids[..2]).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Invalid);
    assert!(refused.to_string().contains(&ids[0]), "{refused}");
    assert_eq!(
        cloud.inspect().billed(),
        3,
        "a refused shrink removes nothing"
    );

    let unknown = cloud
        .shrink(&["mock-424242".to_string(), ids[1].clone(), ids[1].clone()])
        .await
        .unwrap();
    assert_eq!(unknown.removed, [ids[1].clone()]);
    let repeated = cloud.shrink(std::slice::from_ref(&ids[1])).await.unwrap();
    assert_eq!(
        repeated.removed,
        [ids[1].clone()],
        "a repeated shrink lists the instance again"
    );
    assert_eq!(cloud.stats().removed, 1);

    let malformed = cloud
        .shrink(&["i-0abc".to_string(), ids[2].clone()])
        .await
        .unwrap_err();
    assert_eq!(malformed.kind(), ErrorKind::Invalid);
    assert_eq!(
        cloud.inspect().billed(),
        2,
        "a malformed id removes nothing"
    );

    assert!(!cloud.protect("mock-424242"));
    assert!(cloud.set_protected(&ids[0], false));
    assert_eq!(
        cloud.shrink(&ids[..1]).await.unwrap().removed,
        [ids[0].clone()]
    );
}

#[tokio::test]
async fn calls_are_counted_per_operation_failed_ones_included() {
    let clock = manual();
    let cloud = on_clock(MockConfig::default(), &clock);
    cloud.read_fleet().await.unwrap();
    cloud.grow(1, &token("c")).await.unwrap();
    cloud.faults().fail_next(1, AdapterError::transient("boom"));
    cloud.shrink(&["mock-000001".into()]).await.unwrap_err();
    cloud.verify_access().await.unwrap();
    let _ = cloud.inspect();
    let calls = cloud.calls();
    assert_eq!(
        (
            calls.read_fleet,
            calls.grow,
            calls.shrink,
            calls.verify_access
        ),
        (1, 1, 1, 1)
    );
    assert_eq!((calls.mutating(), calls.total()), (2, 4));
    assert_eq!(calls.get(Operation::Shrink), 1);
}

#[tokio::test]
async fn an_error_rate_of_one_fails_every_call_before_it_acts() {
    let clock = manual();
    let faults = FaultConfig {
        error_rate: 1.0,
        ..FaultConfig::default()
    };
    let cloud = on_clock(
        MockConfig {
            faults,
            ..MockConfig::default()
        },
        &clock,
    );
    for error in [
        cloud.read_fleet().await.unwrap_err(),
        cloud.grow(1, &token("e")).await.unwrap_err(),
        cloud.verify_access().await.unwrap_err(),
    ] {
        assert_eq!(error.kind(), ErrorKind::Transient);
    }
    assert_eq!(cloud.inspect().billed(), 0);
    cloud.faults().set_error_rate(0.0);
    assert!(cloud.grow(1, &token("e")).await.is_ok());
}

/// The outcomes of 60 reads at a 50 % error rate, as a string of `.` and `x`.
async fn outcomes(seed: u64) -> String {
    let clock = manual();
    let faults = FaultConfig {
        error_rate: 0.5,
        ..FaultConfig::default()
    };
    let cloud = on_clock(
        MockConfig {
            seed,
            faults,
            ..MockConfig::default()
        },
        &clock,
    );
    let mut pattern = String::new();
    for _ in 0..60 {
        pattern.push(if cloud.read_fleet().await.is_ok() {
            '.'
        } else {
            'x'
        });
    }
    pattern
}

#[tokio::test]
async fn faults_repeat_exactly_with_the_seed() {
    let (a, b, c) = (outcomes(1).await, outcomes(1).await, outcomes(2).await);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let failures = a.matches('x').count();
    assert!((15..=45).contains(&failures), "about half fail: {a}");
}

#[tokio::test]
async fn throttling_carries_its_retry_after() {
    let clock = manual();
    let cloud = on_clock(MockConfig::default(), &clock);
    cloud.faults().throttle_next(2, Duration::from_secs(5));
    for _ in 0..2 {
        let error = cloud.read_fleet().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Throttled);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(5)));
    }
    assert!(cloud.read_fleet().await.is_ok());

    cloud
        .faults()
        .set_throttle_rate(1.0, Duration::from_millis(1500));
    assert_eq!(
        cloud.read_fleet().await.unwrap_err().retry_after(),
        Some(Duration::from_millis(1500))
    );
    cloud.faults().clear();
    assert!(cloud.read_fleet().await.is_ok());
}

#[tokio::test]
async fn scripted_errors_can_target_one_operation() {
    let clock = manual();
    let cloud = on_clock(MockConfig::default(), &clock);
    cloud.faults().fail_next_on(
        Operation::Grow,
        2,
        AdapterError::capacity("no m5.large left"),
    );
    assert!(cloud.read_fleet().await.is_ok());
    assert_eq!(
        cloud.grow(1, &token("g")).await.unwrap_err().kind(),
        ErrorKind::Capacity
    );
    assert_eq!(
        cloud.grow(1, &token("g")).await.unwrap_err().kind(),
        ErrorKind::Capacity
    );
    assert!(cloud.grow(1, &token("g")).await.is_ok());
}

#[tokio::test]
async fn a_denied_operation_fails_and_verify_access_says_so() {
    let clock = manual();
    let cloud = on_clock(MockConfig::default(), &clock);
    cloud.faults().set_denied(Operation::Shrink, true);
    let error = cloud.shrink(&["mock-000001".into()]).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Permission);
    assert!(error.to_string().contains("mock:shrink"), "{error}");
    let report = cloud.verify_access().await.unwrap();
    assert!(!report.all_allowed());
    let denied: Vec<_> = report
        .checks
        .iter()
        .filter(|c| !c.allowed)
        .map(|c| c.permission.as_str())
        .collect();
    assert_eq!(denied, ["mock:shrink"]);
    cloud.faults().set_denied(Operation::Shrink, false);
    assert!(cloud.verify_access().await.unwrap().all_allowed());
}

#[tokio::test]
async fn never_booting_instances_stay_pending() {
    let clock = manual();
    let faults = FaultConfig {
        never_boot_rate: 1.0,
        ..FaultConfig::default()
    };
    let cloud = on_clock(
        MockConfig {
            faults,
            ..MockConfig::default()
        },
        &clock,
    );
    cloud.grow(2, &token("stuck")).await.unwrap();
    clock.advance(Duration::from_secs(10 * 3600));
    assert_eq!(states(&cloud.inspect()), [InstanceState::Pending; 2]);

    cloud.faults().set_never_boot_rate(0.0);
    cloud.grow(1, &token("fine")).await.unwrap();
    clock.advance(Duration::from_secs(60));
    assert_eq!(cloud.inspect().serving(), 1);
}

#[tokio::test]
async fn instances_die_at_the_death_rate_and_can_be_killed() {
    let clock = manual();
    // Two deaths per instance-hour: after an hour about 1 - e^-2 = 86 % have died.
    let faults = FaultConfig {
        death_rate: 2.0,
        ..FaultConfig::default()
    };
    let cloud = on_clock(
        MockConfig {
            initial_size: 200,
            seed: 9,
            faults,
            ..MockConfig::default()
        },
        &clock,
    );
    clock.advance(Duration::from_secs(3600));
    let alive = cloud.inspect().billed();
    assert!(
        (10..=50).contains(&alive),
        "{alive} of 200 alive after an hour"
    );
    assert_eq!(cloud.stats().died, 200 - u64::from(alive));

    cloud.faults().set_death_rate(0.0);
    clock.advance(Duration::from_secs(100 * 3600));
    assert_eq!(
        cloud.inspect().billed(),
        alive,
        "no deaths once the rate is 0"
    );

    let victim = cloud.inspect().instances[0].id.clone();
    assert!(cloud.faults().kill(&victim));
    assert!(!cloud.faults().kill(&victim), "already dead");
    assert_eq!(cloud.inspect().billed(), alive - 1);
    assert!(
        cloud.shrink(&[victim]).await.unwrap().removed.is_empty(),
        "a dead instance is not removed"
    );
}

#[tokio::test]
async fn a_death_rate_switched_on_at_run_time_applies_to_live_instances() {
    let clock = manual();
    let cloud = on_clock(
        MockConfig {
            initial_size: 50,
            ..MockConfig::default()
        },
        &clock,
    );
    clock.advance(Duration::from_secs(3600));
    assert_eq!(cloud.inspect().billed(), 50);
    cloud.faults().set_death_rate(10.0);
    clock.advance(Duration::from_secs(3600));
    assert!(cloud.inspect().billed() < 5);
}

#[tokio::test(start_paused = true)]
async fn latencies_pass_on_tokio_time() {
    let config = MockConfig {
        launch_latency: Duration::from_secs(2),
        terminate_latency: Duration::from_millis(500),
        ..MockConfig::default()
    };
    let cloud = MockCloud::new(config, Arc::new(TokioClock::new()));
    let started = tokio::time::Instant::now();
    let launched = cloud.grow(1, &token("slow")).await.unwrap().launched;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    cloud.shrink(&launched).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(2500));
    cloud.read_fleet().await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(2500),
        "reads take no time"
    );
}

#[tokio::test(start_paused = true)]
async fn on_a_tokio_clock_boot_delays_pass_with_tokio_time() {
    let cloud = MockCloud::new(
        MockConfig {
            boot_delay: Duration::from_secs(30),
            ..MockConfig::default()
        },
        Arc::new(TokioClock::new()),
    );
    cloud.grow(1, &token("tokio")).await.unwrap();
    assert_eq!(cloud.inspect().serving(), 0);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(cloud.inspect().serving(), 1);
}

#[test]
fn config_reads_from_toml_with_humantime_durations() {
    let config: MockConfig = toml::from_str(
        r#"
        boot_delay = "90s"
        launch_latency = "200ms"
        terminate_latency = "1s"
        stop_delay = "2m"
        quota = 40
        zones = ["zone-a", "zone-b"]
        initial_size = 4
        seed = 7
        faults = { error_rate = 0.05, throttle_rate = 0, throttle_retry_after = "2s", never_boot_rate = 0.01, death_rate = 0.5 }
        "#,
    )
    .unwrap();
    assert_eq!(config.boot_delay, Duration::from_secs(90));
    assert_eq!(config.launch_latency, Duration::from_millis(200));
    assert_eq!(config.stop_delay, Duration::from_secs(120));
    assert_eq!(config.quota, Some(40));
    assert_eq!(config.zones, ["zone-a", "zone-b"]);
    assert_eq!(config.faults.throttle_retry_after, Duration::from_secs(2));
    assert_eq!(config.faults.death_rate, 0.5);

    let empty: MockConfig = toml::from_str("").unwrap();
    assert_eq!(empty, MockConfig::default());
}

#[test]
fn config_rejects_unknown_fields_and_bad_values_naming_them() {
    let cases = [
        ("boot_dealy = \"90s\"", "boot_dealy"),
        ("boot_delay = \"ninety\"", "boot_delay"),
        ("zones = []", "at least one zone"),
        ("faults = { error_rate = 1.5 }", "between 0 and 1"),
        ("faults = { death_rate = -1.0 }", ">= 0"),
        ("faults = { errors = 0.1 }", "errors"),
    ];
    for (text, expected) in cases {
        let error = toml::from_str::<MockConfig>(text).unwrap_err().to_string();
        assert!(error.contains(expected), "{text}: {error}");
    }
}
