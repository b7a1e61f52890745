//! Retry: what it retries, how long it waits, and when it gives up. Every test runs on a
//! paused tokio clock, so waits of minutes take no time and are measured exactly.

use std::sync::Arc;
use std::time::Duration;

use fleetscale_adapters::mock::{MockCloud, MockConfig};
use fleetscale_adapters::{
    AdapterError, CloudAdapter, ErrorKind, IdempotencyToken, MAX_RETRY_WAIT, Retry, RetryConfig,
    TokioClock,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

fn mock(config: MockConfig) -> MockCloud {
    MockCloud::new(config, Arc::new(TokioClock::new()))
}

fn retry(cloud: &MockCloud, config: RetryConfig) -> Retry<MockCloud> {
    Retry::with_rng(cloud.clone(), config, SmallRng::seed_from_u64(42))
}

fn token(name: &str) -> IdempotencyToken {
    IdempotencyToken::new(name)
}

#[tokio::test(start_paused = true)]
async fn throttling_waits_at_least_the_retry_after_then_succeeds() {
    let cloud = mock(MockConfig::default());
    cloud.faults().throttle_next(2, Duration::from_secs(7));
    let retry = retry(&cloud, RetryConfig::default());
    let started = Instant::now();
    let outcome = retry.grow(2, &token("throttled")).await.unwrap();
    assert_eq!(outcome.launched.len(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "waited only {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(cloud.calls().grow, 3);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_exponentially_within_the_jitter() {
    let cloud = mock(MockConfig::default());
    cloud
        .faults()
        .fail_next(3, AdapterError::transient("connection reset"));
    let config = RetryConfig {
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
        ..RetryConfig::default()
    };
    let retry = retry(&cloud, config);
    let started = Instant::now();
    retry.read_fleet().await.unwrap();
    // Waits of 0.5-1 s, 1-2 s and 2-4 s.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(3500) && waited <= Duration::from_secs(7),
        "{waited:?}"
    );
    assert_eq!(cloud.calls().read_fleet, 4);
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_waits_the_same() {
    let mut waits = Vec::new();
    for seed in [7, 7, 8] {
        let cloud = mock(MockConfig::default());
        cloud
            .faults()
            .fail_next(4, AdapterError::transient("flaky"));
        let retry = Retry::with_rng(
            cloud.clone(),
            RetryConfig::default(),
            SmallRng::seed_from_u64(seed),
        );
        let started = Instant::now();
        retry.read_fleet().await.unwrap();
        waits.push(started.elapsed());
    }
    assert_eq!(waits[0], waits[1]);
    assert_ne!(waits[0], waits[2]);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_retries_with_the_last_error() {
    let cloud = mock(MockConfig::default());
    cloud
        .faults()
        .fail_next(100, AdapterError::transient("still down"));
    let retry = retry(
        &cloud,
        RetryConfig {
            max_retries: 3,
            ..RetryConfig::default()
        },
    );
    let error = retry.shrink(&["mock-000001".into()]).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transient);
    assert_eq!(cloud.calls().shrink, 4, "one attempt and three retries");
}

#[tokio::test(start_paused = true)]
async fn errors_that_repeat_identically_are_not_retried() {
    for error in [
        AdapterError::authentication("the secret key is wrong"),
        AdapterError::permission("ec2:TerminateInstances", "not allowed"),
        AdapterError::capacity("InsufficientInstanceCapacity"),
        AdapterError::invalid("malformed"),
        AdapterError::not_found("no such scale set"),
    ] {
        let cloud = mock(MockConfig::default());
        cloud.faults().fail_next(5, error.clone());
        let retry = retry(&cloud, RetryConfig::default());
        let started = Instant::now();
        let got = retry.grow(1, &token("once")).await.unwrap_err();
        assert_eq!(got.kind(), error.kind());
        assert_eq!(cloud.calls().grow, 1, "{} was retried", error.kind());
        assert_eq!(started.elapsed(), Duration::ZERO, "{} waited", error.kind());
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_launch_response_is_retried_without_launching_twice() {
    let cloud = mock(MockConfig::default());
    cloud.faults().lose_next_responses(2);
    let retry = retry(&cloud, RetryConfig::default());
    let outcome = retry.grow(3, &token("lost")).await.unwrap();
    assert_eq!(outcome.launched.len(), 3);
    assert_eq!(cloud.calls().grow, 3);
    assert_eq!(
        cloud.stats().launched,
        3,
        "the token kept the retries from launching again"
    );
}

#[tokio::test(start_paused = true)]
async fn an_attempt_past_its_timeout_is_cut_and_retried() {
    let cloud = mock(MockConfig {
        launch_latency: Duration::from_secs(30),
        ..MockConfig::default()
    });
    let config = RetryConfig {
        max_retries: 2,
        timeout: Some(Duration::from_secs(5)),
        initial_backoff: Duration::from_secs(1),
        ..RetryConfig::default()
    };
    let retry = retry(&cloud, config);
    let started = Instant::now();
    let error = retry.grow(1, &token("slow")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transient);
    assert!(error.to_string().contains("timed out"), "{error}");
    assert_eq!(cloud.calls().grow, 3);
    assert_eq!(cloud.inspect().billed(), 0, "cut attempts launched nothing");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(16500) && waited <= Duration::from_secs(18),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_past_the_deadline() {
    let cloud = mock(MockConfig::default());
    cloud.faults().throttle_next(10, Duration::from_secs(60));
    let config = RetryConfig {
        deadline: Some(Duration::from_secs(90)),
        ..RetryConfig::default()
    };
    let retry = retry(&cloud, config);
    let started = Instant::now();
    let error = retry.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Throttled);
    assert_eq!(
        cloud.calls().read_fleet,
        2,
        "a second wait of 60 s would end past the deadline"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(60));
}

#[test]
fn backoff_doubles_within_equal_jitter_up_to_the_cap() {
    let config = RetryConfig {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..RetryConfig::default()
    };
    let expected_caps = [100, 200, 400, 800, 1000, 1000, 1000];
    for (retry, cap) in expected_caps.into_iter().enumerate() {
        let cap = Duration::from_millis(cap);
        assert_eq!(config.backoff(retry as u32, 0.0), cap / 2);
        let high = config.backoff(retry as u32, 0.999_999);
        assert!(
            high <= cap && high > cap.mul_f64(0.99),
            "retry {retry}: {high:?}"
        );
    }
    assert_eq!(
        config.backoff(1_000, 1.0),
        Duration::from_secs(1),
        "no overflow for huge retry counts"
    );
}

#[test]
fn the_next_retry_is_a_pure_function_of_the_error() {
    let config = RetryConfig {
        max_retries: 2,
        deadline: Some(Duration::from_secs(30)),
        ..RetryConfig::default()
    };
    let transient = AdapterError::transient("reset");
    let throttled = AdapterError::throttled(Some(Duration::from_secs(25)), "slow down");
    assert!(
        config
            .next_retry(0, Duration::ZERO, &transient, 0.5)
            .is_some()
    );
    assert_eq!(
        config.next_retry(2, Duration::ZERO, &transient, 0.5),
        None,
        "retries exhausted"
    );
    assert_eq!(
        config.next_retry(0, Duration::ZERO, &AdapterError::authentication("no"), 0.5),
        None
    );
    assert_eq!(
        config.next_retry(0, Duration::ZERO, &throttled, 0.5),
        Some(Duration::from_secs(25)),
        "the retry-after outranks a shorter backoff"
    );
    assert_eq!(
        config.next_retry(0, Duration::from_secs(10), &throttled, 0.5),
        None,
        "past the deadline"
    );
}

#[test]
fn config_reads_from_toml_and_rejects_unknown_fields() {
    let config: RetryConfig = toml::from_str(
        r#"
        max_retries = 6
        initial_backoff = "500ms"
        max_backoff = "1m"
        timeout = "30s"
        deadline = "5m"
        "#,
    )
    .unwrap();
    assert_eq!(config.max_retries, 6);
    assert_eq!(config.initial_backoff, Duration::from_millis(500));
    assert_eq!(config.max_backoff, Duration::from_secs(60));
    assert_eq!(config.timeout, Some(Duration::from_secs(30)));
    assert_eq!(config.deadline, Some(Duration::from_secs(300)));
    assert_eq!(
        toml::from_str::<RetryConfig>("").unwrap(),
        RetryConfig::default()
    );
    let error = toml::from_str::<RetryConfig>("retries = 3")
        .unwrap_err()
        .to_string();
    assert!(error.contains("retries"), "{error}");
}

#[test]
fn an_unbounded_retry_after_ends_the_call_without_overflow() {
    let config = RetryConfig::default();
    let huge = AdapterError::throttled(Some(Duration::MAX), "slow down");
    assert_eq!(
        config.next_retry(0, Duration::from_secs(1), &huge, 0.5),
        None
    );
    let long = AdapterError::throttled(Some(MAX_RETRY_WAIT * 2), "slow down");
    assert_eq!(config.next_retry(0, Duration::ZERO, &long, 0.5), None);
    let no_deadline = RetryConfig {
        deadline: None,
        ..RetryConfig::default()
    };
    assert_eq!(no_deadline.next_retry(0, Duration::MAX, &huge, 0.5), None);
    // A short retry-after late in a call: given up by the deadline, no overflow.
    let short = AdapterError::throttled(Some(Duration::from_secs(2)), "slow down");
    assert_eq!(config.next_retry(0, Duration::MAX, &short, 0.5), None);
    assert_eq!(
        no_deadline.next_retry(0, Duration::MAX, &short, 0.5),
        Some(Duration::from_secs(2))
    );
}
