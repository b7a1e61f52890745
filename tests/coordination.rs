//! Coordination through a real etcd: three agents in this process, built through the
//! same code path as `fleetscale run` (`agent::run_with`), over twelve mock fleets whose
//! clouds they share. Every fleet is held by exactly one agent and the fleets are
//! spread; an agent killed without resigning (its task aborted: no resign, no revoke,
//! keep-alives stop) loses its fleets to the others within the TTL and a tick; etcd
//! stopped mid-run stops every agent acting within its lease, and they resume after.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/ports.rs"]
mod ports;

#[path = "support/etcd.rs"]
mod etcd;

#[path = "support/agents.rs"]
mod agents;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agents::{Agent, Call, Spec, World, each_held_once, wait_for};
use etcd::Etcd;
use fleetscale::config::{AdapterConfig, Config};
use fleetscale_adapters::mock::MockCloud;
use fleetscale_adapters::{CloudAdapter, SystemClock};

const FLEETS: usize = 12;
const TTL: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_secs(1);

/// Twelve mock fleets, one shared mock each (every agent sees the same cloud).
fn mock_world(spec: Spec) -> (World, HashMap<String, MockCloud>) {
    let dir = tempfile::tempdir().unwrap();
    let text = spec.config_text("x", &["http://127.0.0.1:1".into()], "/x", dir.path());
    let config = Config::parse(&text, Path::new("x.toml")).unwrap();
    let mocks: HashMap<String, MockCloud> = config
        .fleets
        .iter()
        .map(|f| {
            let AdapterConfig::Mock(mock) = &f.adapter else {
                panic!("mock fleets only")
            };
            let cloud = MockCloud::new(mock.clone(), Arc::new(SystemClock));
            (f.name.clone(), cloud)
        })
        .collect();
    let shared = mocks.clone();
    let world = World::new(
        spec,
        Arc::new(move |_agent, fleet| Arc::new(shared[fleet].clone()) as Arc<dyn CloudAdapter>),
    );
    (world, mocks)
}

fn holders(agents: &[&Agent]) -> std::collections::BTreeMap<String, Vec<String>> {
    agents::holders(&Spec::mock(FLEETS).fleet_names(), agents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_agents_spread_the_fleets_and_take_over_from_a_killed_one() {
    let etcd = Etcd::start();
    let endpoint = etcd.endpoint();
    let endpoints = [endpoint];
    let (world, mocks) = mock_world(Spec::mock(FLEETS));
    let a = world.agent("a", &endpoints, "/spread");
    let b = world.agent("b", &endpoints, "/spread");
    let c = world.agent("c", &endpoints, "/spread");

    // Spread: each fleet held once, none holding more than its share of 4.
    let spread = wait_for(Duration::from_secs(15), || {
        let map = holders(&[&a, &b, &c]);
        each_held_once(&map) && [&a, &b, &c].iter().all(|x| x.held().len() == 4)
    })
    .await;
    let map = holders(&[&a, &b, &c]);
    if !spread {
        panic!(
            "fleets not spread 4/4/4: {map:?}\na: {:?}\nb: {:?}\nc: {:?}",
            a.healthz().await,
            b.healthz().await,
            c.healthz().await
        );
    }
    let members = etcd.ctl(&["get", "--prefix", "--keys-only", "/spread/members/"]);
    assert_eq!(members.split_whitespace().count(), 3, "{members}");

    // Let the holders act a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a_held = a.held();
    assert_eq!(a_held.len(), 4);

    // kill -9 `a`: its fleets go to b and c within the TTL and a tick (and a margin for
    // etcd's lease expiry, checked every 500ms).
    let killed_at = Instant::now();
    a.kill();
    let taken = wait_for(TTL + TICK + Duration::from_secs(2), || {
        each_held_once(&holders(&[&b, &c]))
    })
    .await;
    let took = killed_at.elapsed();
    let map = holders(&[&b, &c]);
    let keys = format!(
        "{}\nb: {:?}\nc: {:?}",
        etcd.ctl(&["get", "--prefix", "/spread/"]),
        b.healthz().await,
        c.healthz().await
    );
    assert!(
        taken,
        "a's fleets {a_held:?} not taken over after {took:?}: {map:?}\n{keys}"
    );
    assert!(b.held().len() <= 6 && c.held().len() <= 6, "{map:?}");
    // Ticks of the new holders.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let calls = world.calls();
    // Nothing from the killed agent after it was killed.
    assert!(
        !calls
            .iter()
            .any(|c| c.agent == "a" && c.at > killed_at + Duration::from_millis(50)),
        "the killed agent made calls after its death"
    );
    // Each fleet's launches equal what the holders' grows asked for and were told:
    // nothing launched twice, nothing launched unasked.
    let mut grows = 0;
    for (fleet, mock) in &mocks {
        grows += calls
            .iter()
            .filter(|c| &c.fleet == fleet && c.kind == "grow")
            .count();
        let (told, asked) = agents::launches(&calls, fleet);
        assert_eq!(
            mock.stats().launched,
            told.len() as u64,
            "fleet {fleet}: launched vs told"
        );
        assert_eq!(told.len() as u64, asked, "fleet {fleet}: launched vs asked");
    }
    assert!(
        grows > 0,
        "the holders never grew a fleet: the test shows nothing"
    );
    // No grow token was sent by two agents.
    assert_eq!(agents::tokens_sent_by_two(&calls), Vec::<String>::new());

    // Leadership changes were counted; the survivors stop cleanly.
    let changes = b.leadership_changes();
    assert!(changes >= 4, "{changes}");
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_stop_acting_within_their_lease_when_etcd_stops_and_resume_after() {
    let mut etcd = Etcd::start();
    let endpoint = etcd.endpoint();
    let endpoints = [endpoint];
    let (world, _mocks) = mock_world(Spec::mock(FLEETS));
    let a = world.agent("a", &endpoints, "/outage");
    let b = world.agent("b", &endpoints, "/outage");
    let ok = wait_for(Duration::from_secs(15), || {
        each_held_once(&holders(&[&a, &b]))
    })
    .await;
    assert!(ok, "{:?}", holders(&[&a, &b]));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let stopped_at = Instant::now();
    etcd.stop();
    // Past the lease, every agent has stopped acting, and says so.
    tokio::time::sleep(TTL + Duration::from_secs(2)).await;
    assert!(
        a.held().is_empty() && b.held().is_empty(),
        "{:?}",
        holders(&[&a, &b])
    );
    let (status, body) = a.healthz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not acting"), "{body}");
    let reads_before = world.calls().iter().filter(|c| c.kind == "read").count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = world.calls();
    let late: Vec<&Call> = calls
        .iter()
        .filter(|c| c.kind != "read" && c.at > stopped_at + TTL)
        .collect();
    assert!(
        late.is_empty(),
        "mutating calls after the lease's end: {late:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.kind == "read").count(),
        reads_before,
        "standbys do not tick"
    );
    let errors: u64 = ["lease_keep_alive", "lease_grant"]
        .iter()
        .map(|op| a.metrics.etcd_errors.with_label_values(&[op]).get())
        .sum();
    assert!(errors > 0);

    // etcd back: the fleets are held again, once each, and ticked.
    etcd.restart();
    let back_at = Instant::now();
    let ok = wait_for(Duration::from_secs(15), || {
        each_held_once(&holders(&[&a, &b]))
    })
    .await;
    assert!(ok, "not resumed: {:?}", holders(&[&a, &b]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        world
            .calls()
            .iter()
            .any(|c| c.kind == "read" && c.at > back_at),
        "the holders tick again"
    );
    let (status, body) = a.healthz().await;
    assert_eq!(status, 200, "{body}");
    a.stop().await;
    b.stop().await;
}

#[test]
fn bad_coordination_values_are_errors_naming_the_field() {
    let text = r#"
[agent.coordination]
kind = "etcd"
endpoints = ["127.0.0.1:2379"]
prefix = "fleetscale/"
lease_ttl = "1s"
cert_file = "client.pem"
user = "agent"
member = "a/b"

[[fleets]]
name = "web"
[fleets.adapter]
kind = "mock"
[fleets.signal]
kind = "synthetic"
[fleets.guards]
max = 10
"#;
    let error = Config::parse(text, Path::new("bad.toml")).unwrap_err();
    let paths: Vec<&str> = error.problems.iter().map(|p| p.path.as_str()).collect();
    for field in [
        "agent.coordination.endpoints[0]",
        "agent.coordination.prefix",
        "agent.coordination.lease_ttl",
        "agent.coordination.key_file",
        "agent.coordination.password",
        "agent.coordination.member",
    ] {
        assert!(paths.contains(&field), "{field} not in {paths:?}");
    }
    let unknown = text.replace("member = \"a/b\"", "members = 3");
    let error = Config::parse(&unknown, Path::new("bad.toml")).unwrap_err();
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.path.starts_with("agent.coordination") && p.message.contains("members")),
        "{error}"
    );
    let kind = text.replace("kind = \"etcd\"", "kind = \"consul\"");
    let error = Config::parse(&kind, Path::new("bad.toml")).unwrap_err();
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.path.starts_with("agent.coordination")),
        "{error}"
    );
    // Good values, defaults filled in.
    let good = r#"
[agent.coordination]
kind = "etcd"
endpoints = ["http://127.0.0.1:2379"]
member = "a"

[[fleets]]
name = "web"
[fleets.adapter]
kind = "mock"
[fleets.signal]
kind = "synthetic"
[fleets.guards]
max = 10
"#;
    let config = Config::parse(good, Path::new("good.toml")).unwrap();
    let coordination = config.agent.coordination.unwrap();
    assert_eq!(coordination.prefix, "/fleetscale");
    assert_eq!(coordination.lease_ttl, Duration::from_secs(15));
}
