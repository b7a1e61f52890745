//! The Azure adapter under the Retry decorator, as the agent runs it: throttling is backed
//! off and recovered from, a lost answer to a grow does not grow twice, and a refused
//! credential is not retried into a storm.
#![cfg(feature = "azure")]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/arm_standin.rs"]
mod arm_standin;

use std::time::{Duration, Instant};

use arm_standin::{ArmStandin, CLIENT_SECRET, Fault, Route};
use fleetscale_adapters::azure::{AzureEnvironment, ScaleSetFleet};
use fleetscale_adapters::{CloudAdapter, ErrorKind, IdempotencyToken, Retry, RetryConfig};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const SECRET_VAR: &str = "STANDIN_AZURE_SECRET";

fn retrying(standin: &ArmStandin, secret: &str) -> Retry<ScaleSetFleet> {
    let env = AzureEnvironment::empty().with_var(SECRET_VAR, secret);
    let fleet = ScaleSetFleet::with_environment(standin.azure_config(SECRET_VAR), env).unwrap();
    let config = RetryConfig {
        max_retries: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        timeout: Some(Duration::from_secs(20)),
        deadline: Some(Duration::from_secs(30)),
    };
    Retry::with_rng(fleet, config, SmallRng::seed_from_u64(7))
}

#[tokio::test]
async fn throttling_is_backed_off_for_retry_after_then_recovers() {
    let standin = ArmStandin::start(2).await;
    standin.fail_next(
        Route::GetScaleSet,
        Fault::Throttle {
            retry_after_secs: 1,
        },
        2,
    );
    let adapter = retrying(&standin, CLIENT_SECRET);

    let started = Instant::now();
    let fleet = adapter.read_fleet().await.unwrap();
    let took = started.elapsed();
    assert_eq!(fleet.target_size, Some(2));
    assert_eq!(
        standin.count(Route::GetScaleSet),
        3,
        "two throttled attempts, then one served"
    );
    assert!(
        took >= Duration::from_secs(2),
        "Retry-After was not honoured: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "backed off too long: {took:?}"
    );
}

#[tokio::test]
async fn throttling_that_outlasts_the_retries_is_reported_as_throttled() {
    let standin = ArmStandin::start(1).await;
    standin.fail_next(
        Route::ListVms,
        Fault::Throttle {
            retry_after_secs: 0,
        },
        10,
    );
    let adapter = retrying(&standin, CLIENT_SECRET);
    let error = adapter.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Throttled);
    assert_eq!(
        standin.count(Route::ListVms),
        5,
        "one attempt and four retries"
    );
}

#[tokio::test]
async fn server_errors_are_retried() {
    let standin = ArmStandin::start(1).await;
    standin.fail_next(Route::ListVms, Fault::ServerError, 2);
    let adapter = retrying(&standin, CLIENT_SECRET);
    assert_eq!(adapter.read_fleet().await.unwrap().instances.len(), 1);
    assert_eq!(standin.count(Route::ListVms), 3);
}

#[tokio::test]
async fn a_grow_whose_answer_is_lost_is_retried_without_growing_twice() {
    let standin = ArmStandin::start(2).await;
    standin.fail_next(Route::UpdateScaleSet, Fault::LoseAnswer, 1);
    let adapter = retrying(&standin, CLIENT_SECRET);

    let outcome = adapter
        .grow(2, &IdempotencyToken::new("tick-3"))
        .await
        .unwrap();
    assert_eq!(outcome.launched, ["2", "3"]);
    assert_eq!(standin.capacity(), 4, "grown once");
    assert_eq!(
        standin.count(Route::UpdateScaleSet),
        1,
        "the retry found the grow applied"
    );
}

#[tokio::test]
async fn a_grow_refused_for_a_conflict_is_retried_and_applied_once() {
    let standin = ArmStandin::start(1).await;
    standin.fail_next(Route::UpdateScaleSet, Fault::Conflict, 1);
    let adapter = retrying(&standin, CLIENT_SECRET);
    let outcome = adapter
        .grow(1, &IdempotencyToken::new("tick-4"))
        .await
        .unwrap();
    assert_eq!(outcome.launched, ["1"]);
    assert_eq!(standin.capacity(), 2);
    assert_eq!(standin.count(Route::UpdateScaleSet), 2);
}

#[tokio::test]
async fn a_shrink_whose_answer_is_lost_is_retried_without_error() {
    let standin = ArmStandin::start(3).await;
    standin.fail_next(Route::DeleteInstances, Fault::LoseAnswer, 1);
    let adapter = retrying(&standin, CLIENT_SECRET);
    let outcome = adapter.shrink(&["0".into()]).await.unwrap();
    assert_eq!(
        outcome.removed,
        ["0"],
        "the retry found the deletion under way"
    );
    assert_eq!(standin.count(Route::DeleteInstances), 1);
    standin.complete_operations();
    assert_eq!(standin.capacity(), 2);
    assert!(standin.vms().iter().all(|vm| vm.instance_id != "0"));
}

#[tokio::test]
async fn a_wrong_secret_is_neither_retried_nor_asked_for_in_a_storm() {
    let standin = ArmStandin::start(1).await;
    let adapter = retrying(&standin, "wrong-secret");
    let started = Instant::now();
    for _ in 0..10 {
        let error = adapter.read_fleet().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Authentication);
    }
    assert_eq!(
        standin.count(Route::Token),
        1,
        "one token request for ten calls"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "authentication errors were retried"
    );
}

#[tokio::test]
async fn a_permission_error_is_not_retried() {
    let standin = ArmStandin::start(1).await;
    standin.set_permissions(&["*/read"], &[]);
    let adapter = retrying(&standin, CLIENT_SECRET);
    let error = adapter
        .grow(1, &IdempotencyToken::new("t"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Permission);
    assert_eq!(standin.count(Route::UpdateScaleSet), 1);
}

#[tokio::test]
async fn a_retry_after_of_twenty_minutes_is_honoured_without_sending_anything_before_it() {
    let standin = ArmStandin::start(2).await;
    standin.fail_next(
        Route::GetScaleSet,
        Fault::Throttle {
            retry_after_secs: 1200,
        },
        1,
    );
    let adapter = retrying(&standin, CLIENT_SECRET);
    let started = Instant::now();
    let error = adapter.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Throttled);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1200)));
    let sent = || {
        standin.count(Route::GetScaleSet)
            + standin.count(Route::ListVms)
            + standin.count(Route::UpdateScaleSet)
    };
    assert_eq!(sent(), 1);

    // Until Retry-After has passed, every call that needs the throttled read fails at
    // once, throttled for what is left of the wait, and sends nothing.
    tokio::time::pause();
    for _ in 0..3 {
        let error = adapter.read_fleet().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Throttled, "{error}");
        assert!(
            error.retry_after().unwrap() > Duration::from_secs(1190),
            "{error}"
        );
        assert!(error.to_string().contains("was not sent"), "{error}");
        let error = adapter
            .grow(1, &IdempotencyToken::new("tick-9"))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Throttled, "{error}");
    }
    tokio::time::advance(Duration::from_secs(600)).await;
    let wait = adapter
        .read_fleet()
        .await
        .unwrap_err()
        .retry_after()
        .unwrap();
    assert!(
        wait > Duration::from_secs(590) && wait <= Duration::from_secs(600),
        "{wait:?}"
    );
    assert_eq!(sent(), 1, "something was sent before Retry-After passed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the held calls waited instead of failing at once"
    );

    // Once it has passed, calls go through.
    tokio::time::advance(Duration::from_secs(600)).await;
    tokio::time::resume();
    assert_eq!(adapter.read_fleet().await.unwrap().target_size, Some(2));
    assert_eq!(standin.count(Route::GetScaleSet), 2);
}
