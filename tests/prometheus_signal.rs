//! The Prometheus signal against a real `prometheus` server (Debian package `prometheus`,
//! which also gives `promtool`): history backfilled with promtool, live scrapes, strict
//! reading, authentication and TLS.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/prometheus.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetscale::signal::prometheus::{PrometheusConfig, PrometheusSignal};
use fleetscale::signal::{SignalError, SignalSource};
use fleetscale_policies::baselines::SeasonalForecast;
use support::{
    Exporter, Prometheus, PrometheusOptions, StandIn, TestPki, openmetrics_gauge, web_config,
};

const MINUTE: Duration = Duration::from_secs(60);
const DAY: f64 = 86_400.0;

/// Requests per second of the backfilled shop: a daily cycle from 100 to 300.
fn shop_load(unix_seconds: f64) -> f64 {
    200.0 + 100.0 * (2.0 * std::f64::consts::PI * unix_seconds / DAY).sin()
}

fn signal_config(address: &str, query: &str, extra: &str) -> PrometheusConfig {
    let text = format!(
        "address = {address:?}\nquery = {query:?}\nmeaning = \"throughput\"\nper_instance = 20.0\n{extra}"
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn signal(address: &str, query: &str, extra: &str) -> PrometheusSignal {
    PrometheusSignal::new(&signal_config(address, query, extra)).expect("signal builds")
}

fn unix(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The last whole minute at least a minute before `now`.
fn minute_before(now: SystemTime) -> SystemTime {
    let s = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    UNIX_EPOCH + Duration::from_secs(s / 60 * 60 - 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourteen_backfilled_days_are_read_back_in_chunks_and_warm_the_forecaster() {
    let now = SystemTime::now();
    let end = minute_before(now);
    let span = Duration::from_secs(14 * 86_400);
    let prometheus = Prometheus::start(PrometheusOptions {
        backfill: Some(openmetrics_gauge(
            "shop_requests_per_second",
            end,
            span,
            MINUTE,
            shop_load,
        )),
        ..Default::default()
    });
    let mut source = signal(&prometheus.address(), "shop_requests_per_second", "");

    // 14 days at one-minute steps: 20,160 points, more than one query may return.
    let steps = 14 * 1440;
    let before = prometheus.requests_to("/api/v1/query_range").await;
    let history = source
        .history(now, MINUTE, steps, 4)
        .await
        .expect("history");
    let range_queries = prometheus.requests_to("/api/v1/query_range").await - before;
    assert_eq!(history.len(), steps);
    assert_eq!(
        range_queries, 3.0,
        "20,160 points take three range queries of at most 10,000"
    );

    // Each step holds the newest backfilled sample at or before it, in instances.
    // Times go to the server rounded to the millisecond.
    let now_s = (unix(now) * 1000.0).round() / 1000.0;
    let (start_s, end_s) = (unix(end) - span.as_secs_f64(), unix(end));
    let mut compared = 0;
    for (k, value) in history.iter().enumerate() {
        let at = now_s - 60.0 * (steps - 1 - k) as f64;
        let sample = (start_s + ((at - start_s) / 60.0).floor() * 60.0).min(end_s);
        if sample < start_s {
            assert!(
                value.is_nan(),
                "step {k} precedes the data yet holds {value}"
            );
            continue;
        }
        let expected = (shop_load(sample) * 1000.0).round() / 1000.0 / 20.0;
        assert!(
            (value - expected).abs() < 1e-6,
            "step {k}: {value} instead of {expected}"
        );
        compared += 1;
    }
    assert!(compared >= steps - 2, "only {compared} steps held data");

    // The forecaster warmed from it predicts the daily cycle.
    let mut forecast = SeasonalForecast::new(MINUTE);
    for value in &history {
        forecast.push(*value);
    }
    for ahead in 1..=120u64 {
        let predicted = forecast
            .forecast(steps as u64 + ahead - 1)
            .expect("a forecast after 14 days");
        let expected = shop_load(now_s + 60.0 * ahead as f64) / 20.0;
        assert!(
            (predicted - expected).abs() < 0.1,
            "+{ahead} min: forecast {predicted}, load {expected}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_that_stopped_before_the_staleness_limit_is_stale() {
    let now = SystemTime::now();
    let end = minute_before(now);
    let prometheus = Prometheus::start(PrometheusOptions {
        backfill: Some(openmetrics_gauge(
            "shop_requests_per_second",
            end,
            Duration::from_secs(3600),
            MINUTE,
            shop_load,
        )),
        ..Default::default()
    });
    let age = now.duration_since(end).unwrap();
    for query in [
        "shop_requests_per_second",
        "sum(shop_requests_per_second) * 2",
    ] {
        let mut source = signal(&prometheus.address(), query, "staleness_limit = \"20s\"");
        match source.latest(SystemTime::now(), 4).await {
            Err(SignalError::Stale { age: seen, limit }) => {
                assert_eq!(limit, Duration::from_secs(20));
                assert!(
                    seen >= age && seen < age + Duration::from_secs(30),
                    "{query}: age {seen:?}, expected about {age:?}"
                );
            }
            other => panic!("{query}: expected stale, got {other:?}"),
        }
        // Prometheus carries the last sample forward; the history does not trust it.
        let history = source
            .history(SystemTime::now(), MINUTE, 30, 4)
            .await
            .expect("history");
        assert!(
            history.last().unwrap().is_nan(),
            "{query}: the stale tail should be a gap: {history:?}"
        );
        assert!(
            history[..25].iter().all(|v| v.is_finite()),
            "{query}: older steps are kept: {history:?}"
        );
    }
    // With a generous limit the same value is good.
    let mut source = signal(
        &prometheus.address(),
        "shop_requests_per_second",
        "staleness_limit = \"10m\"",
    );
    let demand = source
        .latest(SystemTime::now(), 4)
        .await
        .expect("fresh enough");
    assert!((demand - shop_load(unix(end)) / 20.0).abs() < 1e-3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reading_of_live_scrapes() {
    let exporter = Exporter::start(
        "# TYPE shop_load gauge\nshop_load{zone=\"a\"} 30\nshop_load{zone=\"b\"} 50\n\
         # TYPE shop_broken gauge\nshop_broken NaN\n# TYPE shop_negative gauge\nshop_negative -2\n",
    )
    .await;
    let prometheus = Prometheus::start(PrometheusOptions {
        scrape_targets: vec![exporter.target()],
        ..Default::default()
    });
    prometheus
        .wait_for("shop_broken", Duration::from_secs(20))
        .await;
    let address = prometheus.address();
    let now = SystemTime::now;

    // Two series: ambiguous, naming both and suggesting an aggregation.
    let mut two = signal(&address, "shop_load", "");
    match two.latest(now(), 4).await {
        Err(SignalError::Ambiguous(message)) => {
            assert!(message.contains("2 series"), "{message}");
            assert!(
                message.contains("zone=\"a\"") && message.contains("zone=\"b\""),
                "{message}"
            );
            assert!(message.contains("sum(shop_load)"), "{message}");
        }
        other => panic!("expected ambiguous, got {other:?}"),
    }
    assert!(matches!(
        two.history(now(), Duration::from_secs(1), 10, 4).await,
        Err(SignalError::Ambiguous(_))
    ));
    // Aggregated: one series, 80 requests per second at 20 per instance.
    let demand = signal(&address, "sum(shop_load)", "")
        .latest(now(), 4)
        .await
        .expect("one series");
    assert_eq!(demand, 4.0);
    // Utilisation: 0.9 x 6 serving / 0.6 target = 9 instances.
    let utilisation: PrometheusConfig = toml::from_str(&format!(
        "address = {address:?}\nquery = \"max(shop_load) / 50 * 0.9\"\nmeaning = \"utilisation\"\ntarget = 0.6\n"
    ))
    .unwrap();
    let demand = PrometheusSignal::new(&utilisation)
        .unwrap()
        .latest(now(), 6)
        .await
        .expect("utilisation");
    assert!((demand - 9.0).abs() < 1e-9, "{demand}");

    // NaN, negative and infinite values are absurd.
    for query in ["shop_broken", "shop_negative", "sum(shop_load) / 0"] {
        match signal(&address, query, "").latest(now(), 4).await {
            Err(SignalError::Absurd { .. }) => {}
            other => panic!("{query}: expected absurd, got {other:?}"),
        }
    }
    // A NaN history is all gaps, not an error.
    let history = signal(&address, "shop_broken", "")
        .history(now(), Duration::from_secs(1), 5, 4)
        .await
        .unwrap();
    assert!(history.iter().all(|v| v.is_nan()), "{history:?}");
    // Nothing: missing.
    assert!(matches!(
        signal(&address, "shop_absent", "").latest(now(), 4).await,
        Err(SignalError::Missing(_))
    ));
    // A query the server rejects: unavailable, with the server's reason.
    match signal(&address, "shop_load + on() shop_load", "")
        .latest(now(), 4)
        .await
    {
        Err(SignalError::Unavailable(message)) => assert!(
            message.contains("422") || message.contains("400"),
            "{message}"
        ),
        other => panic!("expected the server's refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_is_unavailable_after_the_timeout() {
    let slow = StandIn::start(3.0, Duration::from_secs(5)).await;
    let mut source = signal(&slow.url(), "shop_load", "timeout = \"300ms\"");
    let started = Instant::now();
    match source.latest(SystemTime::now(), 4).await {
        Err(SignalError::Unavailable(message)) => {
            assert!(message.contains("did not answer within"), "{message}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    // A server that is not there at all.
    let port = support::free_port();
    match signal(&format!("http://127.0.0.1:{port}"), "up", "")
        .latest(SystemTime::now(), 4)
        .await
    {
        Err(SignalError::Unavailable(message)) => {
            assert!(message.contains("cannot connect"), "{message}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_tls_with_a_client_certificate() {
    let files = tempfile::tempdir().unwrap();
    let pki = TestPki::create(files.path(), "good");
    let stranger = TestPki::create(files.path(), "stranger");
    let prometheus = Prometheus::start(PrometheusOptions {
        web_config: Some(web_config("fleetscale", "correct horse", &pki)),
        tls: true,
        ..Default::default()
    });
    let password = files.path().join("password");
    std::fs::write(&password, "correct horse\n").unwrap();
    let wrong = files.path().join("wrong-password");
    std::fs::write(&wrong, "battery staple\n").unwrap();
    let tls = |pki: &TestPki| {
        format!(
            "[tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            pki.ca.display().to_string(),
            pki.client_cert.display().to_string(),
            pki.client_key.display().to_string()
        )
    };
    let basic = |file: &std::path::Path| {
        format!(
            "[basic_auth]\nusername = \"fleetscale\"\npassword_file = {:?}\n",
            file.display().to_string()
        )
    };
    let address = prometheus.address();
    let query = "vector(60)";

    // Right credentials, right CA, a client certificate: the value is read.
    let demand = signal(
        &address,
        query,
        &format!("{}{}", basic(&password), tls(&pki)),
    )
    .latest(SystemTime::now(), 4)
    .await;
    assert_eq!(demand, Ok(3.0), "log:\n{}", prometheus.log());

    // A wrong password: a clear refusal that does not repeat the password.
    let expect_unavailable = |result: Result<f64, SignalError>, needle: &str| match result {
        Err(SignalError::Unavailable(message)) => {
            assert!(
                message.contains(needle),
                "{message:?} should mention {needle:?}"
            );
            assert!(
                !message.contains("battery") && !message.contains("horse"),
                "a secret leaked: {message}"
            );
        }
        other => panic!("expected unavailable ({needle}), got {other:?}"),
    };
    let mut source = signal(&address, query, &format!("{}{}", basic(&wrong), tls(&pki)));
    expect_unavailable(
        source.latest(SystemTime::now(), 4).await,
        "401 Unauthorized",
    );
    expect_unavailable(
        source
            .history(SystemTime::now(), MINUTE, 5, 4)
            .await
            .map(|_| 0.0),
        "401 Unauthorized",
    );
    // No credentials at all.
    expect_unavailable(
        signal(&address, query, &tls(&pki))
            .latest(SystemTime::now(), 4)
            .await,
        "401",
    );
    // A server certificate from a CA we do not trust.
    let distrust = format!(
        "{}[tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        basic(&password),
        stranger.ca.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string()
    );
    expect_unavailable(
        signal(&address, query, &distrust)
            .latest(SystemTime::now(), 4)
            .await,
        "certificate",
    );
    // No client certificate: the server ends the handshake.
    let no_client_cert = format!(
        "{}[tls]\nca_file = {:?}\n",
        basic(&password),
        pki.ca.display().to_string()
    );
    expect_unavailable(
        signal(&address, query, &no_client_cert)
            .latest(SystemTime::now(), 4)
            .await,
        "127.0.0.1",
    );
    // Verification switched off by name still authenticates, and still needs the password.
    let insecure = format!(
        "{}[tls]\ninsecure_skip_verify = true\ncert_file = {:?}\nkey_file = {:?}\n",
        basic(&password),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string()
    );
    assert_eq!(
        signal(&address, query, &insecure)
            .latest(SystemTime::now(), 4)
            .await,
        Ok(3.0)
    );
    // Plain http to an https server is refused by the server.
    let plain = address.replace("https://", "http://");
    expect_unavailable(
        signal(&plain, query, &basic(&password))
            .latest(SystemTime::now(), 4)
            .await,
        "400",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_and_custom_headers_are_sent() {
    let server = StandIn::start(40.0, Duration::ZERO).await;
    let files = tempfile::tempdir().unwrap();
    let token = files.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let extra = format!(
        "bearer_token_file = {:?}\n[headers]\nX-Scope-OrgID = \"tenant-7\"\n",
        token.display().to_string()
    );
    let mut source = signal(&server.url(), "shop_load", &extra);
    assert_eq!(source.latest(SystemTime::now(), 4).await, Ok(2.0));
    // The file is read again before each query: a rotated token is used at once.
    std::fs::write(&token, "second-token\n").unwrap();
    assert_eq!(
        source
            .history(SystemTime::now(), MINUTE, 1, 4)
            .await
            .map(|h| h.len()),
        Ok(1)
    );

    // SAFETY: a variable no other test reads, set before any thread reads it.
    unsafe { std::env::set_var("FLEETSCALE_TEST_PROMETHEUS_TOKEN", "env-token") };
    let mut from_env = signal(
        &server.url(),
        "shop_load",
        "bearer_token_env = \"FLEETSCALE_TEST_PROMETHEUS_TOKEN\"\n",
    );
    assert_eq!(from_env.latest(SystemTime::now(), 4).await, Ok(2.0));
    let missing = signal_config(
        &server.url(),
        "shop_load",
        "bearer_token_env = \"FLEETSCALE_TEST_UNSET_VARIABLE\"\n",
    );
    let error = PrometheusSignal::new(&missing).unwrap_err().to_string();
    assert!(
        error.contains("FLEETSCALE_TEST_UNSET_VARIABLE is not set"),
        "{error}"
    );

    let seen = server.seen.lock().unwrap().clone();
    let header = |i: usize, name: &str| {
        seen[i]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let authorizations: Vec<String> = (0..seen.len())
        .map(|i| header(i, "authorization"))
        .collect();
    assert!(
        seen.iter().all(|r| r.path.starts_with("/api/v1/query")),
        "{seen:?}"
    );
    assert!(
        authorizations.contains(&"Bearer first-token".to_string()),
        "{authorizations:?}"
    );
    assert!(
        authorizations.contains(&"Bearer second-token".to_string()),
        "{authorizations:?}"
    );
    assert!(
        authorizations.contains(&"Bearer env-token".to_string()),
        "{authorizations:?}"
    );
    let tenant_requests = (0..seen.len())
        .filter(|&i| header(i, "x-scope-orgid") == "tenant-7")
        .count();
    assert!(tenant_requests >= 2, "{seen:?}");
    // Debug output never shows a secret.
    assert!(!format!("{from_env:?}").contains("env-token"));
}
