//! Inputs the agent does not control, random and mutated: config files, CSV traces and
//! Prometheus answers. None may panic; each is accepted or refused with an error that
//! names the field, line or answer at fault.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fleetscale::config::Config;
use fleetscale::signal::SignalSource;
use fleetscale::signal::prometheus::{PrometheusConfig, PrometheusSignal};
use fleetscale::signal::trace::{TraceError, read_column};
use proptest::prelude::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every config shipped: the examples and the test configs.
fn shipped_configs() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for dir in ["examples", "tests/configs"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path.display().to_string(), text));
            }
        }
    }
    files.sort();
    assert!(files.len() >= 3, "configs found: {}", files.len());
    files
}

/// Values a hand-written config may hold where a number, a duration or a string was
/// meant.
const ODD_VALUES: &[&str] = &[
    "\"\"",
    "\"0s\"",
    "\"1ns\"",
    "\"400days\"",
    "\"99999999999999999999s\"",
    "-1",
    "0",
    "1e400",
    "nan",
    "inf",
    "18446744073709551616",
    "4294967296",
    "true",
    "[]",
    "{}",
    "\"soon\"",
    "[1, \"a\"]",
    "\"http://[::1\"",
];

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    /// The value of line `.0` (after its `=`) becomes `ODD_VALUES[.1]`.
    OddValue(usize, usize),
    Truncate(usize),
    Insert(usize, String),
}

fn mutate(text: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len().max(1);
    match mutation {
        Mutation::DeleteLine(i) => {
            if !lines.is_empty() {
                lines.remove(i % n);
            }
        }
        Mutation::DuplicateLine(i) => {
            if !lines.is_empty() {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
        }
        Mutation::OddValue(i, v) => {
            // An earlier mutation may have left no line (a truncation to nothing).
            if let Some(line) = lines.get_mut(i % n)
                && let Some(at) = line.find('=')
            {
                line.truncate(at + 1);
                line.push(' ');
                line.push_str(ODD_VALUES[v % ODD_VALUES.len()]);
            }
        }
        Mutation::Truncate(at) => {
            let joined = lines.join("\n");
            let mut cut = at % (joined.len() + 1);
            while !joined.is_char_boundary(cut) {
                cut -= 1;
            }
            return joined[..cut].to_string();
        }
        Mutation::Insert(i, text) => lines.insert(i % (lines.len() + 1), text.clone()),
    }
    lines.join("\n")
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(i, v)| Mutation::OddValue(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), "[ -~]{0,40}").prop_map(|(i, s)| Mutation::Insert(i, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_are_accepted_or_refused_naming_the_field(
        which in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let files = shipped_configs();
        let (name, text) = &files[which % files.len()];
        let mut text = text.clone();
        for m in &mutations {
            text = mutate(&text, m);
        }
        match Config::parse(&text, Path::new(name)) {
            Ok(config) => {
                // Accepted: what the agent needs holds.
                prop_assert!(config.agent.tick >= fleetscale::config::MIN_TICK);
                prop_assert!(!config.fleets.is_empty());
                for fleet in &config.fleets {
                    prop_assert!(!fleet.boot_delay.is_zero());
                    prop_assert!(fleet.guards.min <= fleet.guards.max);
                }
            }
            Err(e) => {
                prop_assert!(!e.problems.is_empty(), "refused without a reason");
                for p in &e.problems {
                    prop_assert!(!p.path.is_empty() && !p.message.is_empty(), "{p:?}");
                }
            }
        }
    }

    #[test]
    fn any_csv_is_read_or_refused_naming_the_line(
        rows in prop::collection::vec("[0-9.eE+-]{0,8}|NaN|inf|-1|\"[0-9,]{0,5}\"|[ -~]{0,12}", 0..40),
        header in prop::sample::select(vec!["t,v", "v", "t,w", "v,v", ""]),
    ) {
        let mut text = String::from(header);
        text.push('\n');
        for (i, cell) in rows.iter().enumerate() {
            text.push_str(&format!("{i},{cell}\n"));
        }
        match read_column(text.as_bytes(), Path::new("trace.csv"), "v") {
            Ok(values) => prop_assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0)),
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.starts_with("trace.csv"), "{shown}");
                if let TraceError::BadRow { line, .. } = e {
                    prop_assert!(line >= 1, "{shown}");
                }
            }
        }
    }
}

/// A stand-in for Prometheus's query endpoints (`/api/v1/query` and
/// `/api/v1/query_range`, Prometheus's "HTTP API" page) that answers every request with
/// the status and body it is given.
struct StandIn {
    address: String,
    answer: Arc<Mutex<(u16, String)>>,
}

async fn stand_in() -> StandIn {
    use axum::http::StatusCode;
    use axum::routing::any;
    let answer = Arc::new(Mutex::new((200, String::new())));
    let shared = answer.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        any(move || {
            let shared = shared.clone();
            async move {
                let (status, body) = shared.lock().unwrap().clone();
                (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    [("content-type", "application/json")],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    StandIn { address, answer }
}

/// Answers Prometheus could give, or a broken proxy in front of it.
fn answer() -> impl Strategy<Value = (u16, String)> {
    let value = prop_oneof![
        Just("\"5\"".to_string()),
        Just("\"NaN\"".to_string()),
        Just("\"+Inf\"".to_string()),
        Just("\"-3\"".to_string()),
        Just("\"1e400\"".to_string()),
        Just("5".to_string()),
        Just("null".to_string()),
        Just("\"lots\"".to_string()),
    ];
    let time = prop_oneof![
        Just("1700000000".to_string()),
        Just("1e300".to_string()),
        Just("-5".to_string()),
        Just("\"x\"".to_string()),
    ];
    let series = (value.clone(), time.clone())
        .prop_map(|(v, t)| format!("{{\"metric\":{{\"job\":\"a\"}},\"value\":[{t},{v}]}}"));
    let range = (value, time).prop_map(|(v, t)| {
        format!("{{\"metric\":{{}},\"values\":[[{t},{v}],[1700000060,\"2\"]]}}")
    });
    let body = prop_oneof![
        prop::collection::vec(series, 0..3).prop_map(|s| format!(
            "{{\"status\":\"success\",\"data\":{{\"resultType\":\"vector\",\"result\":[{}]}}}}",
            s.join(",")
        )),
        prop::collection::vec(range, 0..3).prop_map(|s| format!(
            "{{\"status\":\"success\",\"data\":{{\"resultType\":\"matrix\",\"result\":[{}]}}}}",
            s.join(",")
        )),
        Just("{\"status\":\"success\",\"data\":{\"resultType\":\"scalar\",\"result\":[1700000000,\"4\"]}}".to_string()),
        Just("{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"parse error\"}".to_string()),
        Just("{\"status\":\"success\"}".to_string()),
        "[ -~]{0,60}",
        Just(String::new()),
    ];
    let status = prop::sample::select(vec![200u16, 200, 200, 400, 422, 429, 500, 503]);
    (status, body)
}

#[test]
fn any_prometheus_answer_is_a_value_or_an_error_not_a_panic() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(stand_in());
    let config: PrometheusConfig = toml::from_str(&format!(
        "address = \"{}\"\nquery = \"sum(rate(requests_total[1m]))\"\nmeaning = \"throughput\"\nper_instance = 1.0\ntimeout = \"2s\"\n",
        server.address
    ))
    .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
    let accepted = std::cell::Cell::new(0u32);
    runner
        .run(&answer(), |(status, body)| {
            *server.answer.lock().unwrap() = (status, body.clone());
            let mut signal = PrometheusSignal::new(&config).unwrap();
            let (latest, history) = runtime.block_on(async {
                let latest = signal.latest(at, 3).await;
                let history = signal.history(at, Duration::from_secs(60), 5, 3).await;
                (latest, history)
            });
            match latest {
                Ok(v) => {
                    accepted.set(accepted.get() + 1);
                    prop_assert!(v.is_finite() && v >= 0.0, "{v} from {status} {body}")
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            if let Ok(values) = history {
                prop_assert!(
                    values
                        .iter()
                        .all(|v| v.is_nan() || (v.is_finite() && *v >= 0.0)),
                    "{values:?} from {status} {body}"
                );
            }
            Ok(())
        })
        .unwrap();
    // The stand-in was reached: some answers were good ones.
    assert!(accepted.get() > 0, "no answer was ever accepted");
}
