//! Draining before removal, on the mock cloud, with drain hooks served by the test over
//! real HTTP (and a real command): a scale-in marks its instances as draining, calls the
//! hook for each, and removes them only once the hook answered or the drain's timeout
//! passed; a draining instance is not capacity and is never chosen again; an agent that
//! restarts mid-drain finds the drain in the mock's marks and neither loses nor repeats it.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/scaling_in.rs"]
mod scaling_in;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::routing::post;
use fleetscale::controller::{Action, FleetController, TickReport};
use fleetscale::drain::{self, DrainConfig};
use fleetscale_adapters::mock::{MockCloud, MockConfig};
use fleetscale_adapters::{InstanceState, ManualClock};

use scaling_in::TICK;

/// One hook call: the instance id, and the mock's state of it when the call came.
type Call = (String, Option<InstanceState>);

/// What the hook server saw: each call's instance id, in order, with the mock's state of
/// that instance when the call came.
#[derive(Clone, Default)]
struct Hook {
    calls: Arc<Mutex<Vec<Call>>>,
    mock: Arc<Mutex<Option<MockCloud>>>,
    /// Answer after this long (a hanging hook: longer than the hook timeout).
    delay: Duration,
}

async fn drain_call(
    State(hook): State<Hook>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> &'static str {
    let id = body["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(body["fleet"], "web", "{body}");
    let state = hook.mock.lock().unwrap().as_ref().and_then(|m| {
        m.inspect()
            .instances
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.state)
    });
    hook.calls.lock().unwrap().push((id, state));
    tokio::time::sleep(hook.delay).await;
    "drained"
}

/// Serves `hook` on a free loopback port; returns its URL.
async fn serve(hook: Hook) -> String {
    let app = axum::Router::new()
        .route("/drain", post(drain_call))
        .with_state(hook);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/drain")
}

struct Rig {
    clock: ManualClock,
    mock: MockCloud,
    start: SystemTime,
    demand: Vec<f64>,
}

impl Rig {
    fn new(initial: u32, demand: Vec<f64>) -> Rig {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = ManualClock::new(start);
        let mock = MockCloud::new(
            MockConfig {
                initial_size: initial,
                ..MockConfig::for_replay(Duration::from_secs(60))
            },
            Arc::new(clock.clone()),
        );
        Rig {
            clock,
            mock,
            start,
            demand,
        }
    }

    /// A controller (a new agent) over the rig's mock, draining as `config` says.
    fn controller(&self, config: &DrainConfig) -> FleetController {
        let mut controller = scaling_in::controller(
            "web",
            Box::new(self.mock.clone()),
            &self.clock,
            self.start,
            &self.demand,
            20,
            10,
        );
        controller.drain_with(drain::build(config, "web"));
        controller
    }
}

/// Advances the clock a tick, runs one, and gives the hook's calls time to answer.
async fn step(rig: &Rig, controller: &mut FleetController) -> TickReport {
    rig.clock.advance(TICK);
    let report = controller.tick().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    report
}

fn hook_config(url: &str, timeout: Duration) -> DrainConfig {
    DrainConfig {
        timeout,
        target_group_arn: None,
        backend_pool_id: None,
        hook_url: Some(url.to_string()),
        hook_command: None,
        hook_timeout: None,
    }
}

fn states(mock: &MockCloud) -> HashMap<String, InstanceState> {
    mock.inspect()
        .instances
        .into_iter()
        .map(|i| (i.id, i.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_in_calls_the_hook_for_each_instance_before_removing_it() {
    let hook = Hook::default();
    let url = serve(hook.clone()).await;
    let rig = Rig::new(6, [vec![6.0; 2], vec![2.0; 20]].concat());
    *hook.mock.lock().unwrap() = Some(rig.mock.clone());
    let mut controller = rig.controller(&hook_config(&url, Duration::from_secs(600)));

    // Target tracking scales in once its 5-minute window has passed.
    let mut began = None;
    for _ in 0..12 {
        let report = step(&rig, &mut controller).await;
        assert!(report.error.is_none(), "{report:?}");
        if began.is_some() {
            // A drain in progress is neither serving capacity nor chosen again.
            assert_eq!(report.active(), 2, "{report:?}");
            assert!(
                !matches!(report.action, Action::Shrink { .. }),
                "{report:?}"
            );
        }
        if let Action::Shrink {
            draining, removed, ..
        } = report.action
        {
            assert_eq!(
                removed, 0,
                "serving instances are drained, not removed: {report:?}"
            );
            assert_eq!(draining, 4, "{report:?}");
            began.get_or_insert(report.clone());
        }
    }
    let began = began.expect("a scale-in");
    assert_eq!(began.draining, 0, "counted from the next read: {began:?}");
    let calls = hook.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4, "one call per instance: {calls:?}");
    for (id, state) in &calls {
        assert_eq!(
            *state,
            Some(InstanceState::Running),
            "{id} was still there, serving, when the hook was called"
        );
    }
    // The hook answered: the next tick removed them, and no call was repeated.
    let now = states(&rig.mock);
    for (id, _) in &calls {
        assert_eq!(now.get(id), None, "{id} removed after its drain: {now:?}");
    }
    assert_eq!(rig.mock.truth().serving, 2);
    assert_eq!(rig.mock.calls().shrink, 1, "one removal, after the drains");
    assert_eq!(rig.mock.calls().mark_draining, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_hangs_times_out_and_the_removal_goes_ahead() {
    let hook = Hook {
        delay: Duration::from_secs(3600),
        ..Hook::default()
    };
    let url = serve(hook.clone()).await;
    let rig = Rig::new(4, [vec![4.0], vec![1.0; 20]].concat());
    let config = DrainConfig {
        hook_timeout: Some(Duration::from_millis(300)),
        ..hook_config(&url, Duration::from_secs(180))
    };
    let mut controller = rig.controller(&config);
    let mut reports = Vec::new();
    for _ in 0..14 {
        reports.push(step(&rig, &mut controller).await);
    }
    let started = reports
        .iter()
        .position(|r| matches!(r.action, Action::Shrink { draining: 3, .. }))
        .unwrap_or_else(|| panic!("a drain of 3: {reports:#?}"));
    let finished = reports
        .iter()
        .position(|r| r.drained > 0)
        .unwrap_or_else(|| panic!("the drains end: {reports:#?}"));
    // Began at tick `started`; the timeout is three ticks: removed at the third after.
    assert_eq!(finished, started + 3, "{reports:#?}");
    assert_eq!(
        reports[finished].drain_timeouts, 3,
        "{:?}",
        reports[finished]
    );
    assert_eq!(hook.calls.lock().unwrap().len(), 3);
    assert_eq!(rig.mock.truth().serving, 1);
    assert_eq!(rig.mock.truth().draining, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_drain_neither_loses_nor_repeats_it() {
    let hook = Hook {
        delay: Duration::from_secs(3600),
        ..Hook::default()
    };
    let url = serve(hook.clone()).await;
    let rig = Rig::new(5, [vec![5.0], vec![2.0; 24]].concat());
    let config = hook_config(&url, Duration::from_secs(240));
    let mut first = rig.controller(&config);
    let mut draining_at = None;
    for t in 0..10 {
        let report = step(&rig, &mut first).await;
        if matches!(report.action, Action::Shrink { draining: 3, .. }) {
            draining_at = Some(t);
            break;
        }
    }
    assert!(draining_at.is_some(), "a drain began");
    drop(first);

    // A new agent: nothing of the first one's memory.
    let mut second = rig.controller(&config);
    let mut removed_at = None;
    for t in 0..6 {
        let report = step(&rig, &mut second).await;
        assert!(
            !matches!(report.action, Action::Shrink { .. }),
            "tick {t}: the drain is found, not decided again: {report:?}"
        );
        assert_eq!(report.active(), 2, "tick {t}: {report:?}");
        if report.drained > 0 {
            assert!(removed_at.is_none(), "removed once: {report:?}");
            removed_at = Some(t);
            assert_eq!(report.drained, 3, "{report:?}");
            assert_eq!(report.drain_timeouts, 3, "{report:?}");
        } else if removed_at.is_none() {
            assert_eq!(report.draining, 3, "tick {t}: {report:?}");
        }
    }
    // The 4-minute timeout ends it on the fourth tick after it began: the second agent's
    // fourth.
    assert_eq!(removed_at, Some(3));
    assert_eq!(
        hook.calls.lock().unwrap().len(),
        3,
        "the hook was not called again"
    );
    assert_eq!(rig.mock.truth().serving, 2);
    assert_eq!(rig.mock.calls().mark_draining, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_command_is_run_with_the_instance_and_its_exit_status_ends_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("drained.log");
    let rig = Rig::new(3, [vec![3.0], vec![1.0; 16]].concat());
    let config = DrainConfig {
        timeout: Duration::from_secs(3600),
        target_group_arn: None,
        backend_pool_id: None,
        hook_url: None,
        hook_command: Some(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo \"{{fleet}} {{id}} $FLEETSCALE_ID\" >> {}",
                log.display()
            ),
        ]),
        hook_timeout: None,
    };
    let mut controller = rig.controller(&config);
    for _ in 0..10 {
        step(&rig, &mut controller).await;
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words[0], "web");
        assert_eq!(words[1], words[2], "{{id}} and FLEETSCALE_ID agree: {line}");
    }
    // Exit status 0 ended the drains long before the hour's timeout.
    assert_eq!(rig.mock.truth().serving, 1);
    assert_eq!(rig.mock.truth().draining, 0);
}
