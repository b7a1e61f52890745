//! Coordination through a real etcd: three agents in this process, built through the
//! same code path as `fleetscale run` (`agent::run_with`), over twelve mock fleets whose
//! clouds they share. Every fleet is held by exactly one agent and the fleets are
//! spread; an agent killed without resigning (its task aborted: no resign, no revoke,
//! keep-alives stop) loses its fleets to the others within the TTL and a tick; etcd
//! stopped mid-run stops every agent acting within its lease, and they resume after.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/ports.rs"]
mod ports;
use ports::free_port;

#[path = "support/etcd.rs"]
mod etcd;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd::Etcd;
use fleetscale::agent::{self, RunOptions, Wiring};
use fleetscale::config::{AdapterConfig, Config};
use fleetscale::telemetry::Metrics;
use fleetscale_adapters::mock::MockCloud;
use fleetscale_adapters::{
    AccessReport, CloudAdapter, Fleet, GrowOutcome, IdempotencyToken, InstanceId, Result,
    ShrinkOutcome, SystemClock,
};
use tokio::sync::oneshot;

const FLEETS: usize = 12;
const TTL: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_secs(1);

/// One call an agent made on a fleet's shared cloud.
#[derive(Debug, Clone)]
struct Call {
    agent: String,
    fleet: String,
    at: Instant,
    kind: &'static str,
    requested: u32,
    launched: Vec<String>,
    token: String,
}

type Log = Arc<Mutex<Vec<Call>>>;

/// The shared mock, as one agent sees it: every call is logged.
#[derive(Debug)]
struct Recording {
    inner: MockCloud,
    agent: String,
    fleet: String,
    log: Log,
}

impl Recording {
    fn note(
        &self,
        kind: &'static str,
        at: Instant,
        requested: u32,
        launched: Vec<String>,
        token: &str,
    ) {
        self.log.lock().unwrap().push(Call {
            agent: self.agent.clone(),
            fleet: self.fleet.clone(),
            at,
            kind,
            requested,
            launched,
            token: token.to_string(),
        });
    }
}

#[async_trait]
impl CloudAdapter for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn read_fleet(&self) -> Result<Fleet> {
        self.note("read", Instant::now(), 0, Vec::new(), "");
        self.inner.read_fleet().await
    }
    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome> {
        let at = Instant::now();
        let outcome = self.inner.grow(count, token).await;
        let launched = outcome
            .as_ref()
            .map(|o| o.launched.iter().map(|id| id.to_string()).collect())
            .unwrap_or_default();
        self.note("grow", at, count, launched, token.as_str());
        outcome
    }
    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome> {
        let at = Instant::now();
        let outcome = self.inner.shrink(ids).await;
        self.note("shrink", at, ids.len() as u32, Vec::new(), "");
        outcome
    }
    async fn verify_access(&self) -> Result<AccessReport> {
        self.inner.verify_access().await
    }
}

fn config_text(agent: &str, endpoint: &str, prefix: &str, dir: &Path) -> String {
    let mut text = format!(
        r#"
[agent]
tick = "1s"
metrics_address = "127.0.0.1:{port}"

[agent.api]
state_file = "{state}"

[agent.coordination]
kind = "etcd"
endpoints = ["{endpoint}"]
prefix = "{prefix}"
lease_ttl = "3s"
settle = "300ms"
member = "{agent}"
"#,
        port = free_port(),
        state = dir.join(format!("{agent}.state.json")).display(),
    );
    for i in 0..FLEETS {
        text.push_str(&format!(
            r#"
[[fleets]]
name = "f{i:02}"
boot_delay = "1s"
history = "5s"

[fleets.adapter]
kind = "mock"
boot_delay = "1s"
initial_size = 2
launch_read_lag = "0s"
removal_read_lag = "0s"

[fleets.signal]
kind = "synthetic"
mean = 12.0
daily_amplitude = 0.8
noise = 0.1
flash_crowds_per_day = 0.0
speedup = 7200.0
seed = {i}

[fleets.policy]
name = "target-tracking"
target_utilisation = 0.7

[fleets.guards]
min = 1
max = 60
"#
        ));
    }
    text
}

/// One in-process agent.
struct Agent {
    name: String,
    metrics: Metrics,
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    fn held(&self) -> Vec<String> {
        (0..FLEETS)
            .map(|i| format!("f{i:02}"))
            .filter(|f| self.metrics.fleet_held.with_label_values(&[f]).get() == 1)
            .collect()
    }

    /// kill -9: the task is aborted; nothing resigns, the lease is not revoked.
    fn kill(&self) {
        self.task.abort();
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    async fn healthz(&self) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        match reqwest::get(&url).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }
}

struct World {
    mocks: HashMap<String, MockCloud>,
    log: Log,
    dir: tempfile::TempDir,
}

impl World {
    fn new(endpoint: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text("x", endpoint, "/w", dir.path());
        let config = Config::parse(&text, Path::new("x.toml")).unwrap();
        let mocks = config
            .fleets
            .iter()
            .map(|f| {
                let AdapterConfig::Mock(mock) = &f.adapter else {
                    panic!("mock fleets only")
                };
                (
                    f.name.clone(),
                    MockCloud::new(mock.clone(), Arc::new(SystemClock)),
                )
            })
            .collect();
        World {
            mocks,
            log: Arc::default(),
            dir,
        }
    }

    fn agent(&self, name: &str, endpoint: &str, prefix: &str) -> Agent {
        let text = config_text(name, endpoint, prefix, self.dir.path());
        let config = Config::parse(&text, Path::new("agent.toml")).unwrap();
        let port = config.agent.metrics_address.port();
        let metrics = Metrics::new().unwrap();
        let mocks = self.mocks.clone();
        let log = self.log.clone();
        let agent_name = name.to_string();
        let connect: agent::Connect = Arc::new(move |fleet| {
            Box::new(Recording {
                inner: mocks[&fleet.name].clone(),
                agent: agent_name.clone(),
                fleet: fleet.name.clone(),
                log: log.clone(),
            }) as Box<dyn CloudAdapter>
        });
        let options = RunOptions {
            metrics: Some(metrics.clone()),
            connect: Some(connect),
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            agent::run_with(
                &config,
                Wiring::default(),
                Arc::new(SystemClock),
                options,
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        });
        Agent {
            name: name.to_string(),
            metrics,
            port,
            stop: Some(stop),
            task,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.log.lock().unwrap().clone()
    }
}

/// Fleet -> the agents that hold it.
fn holders(agents: &[&Agent]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = (0..FLEETS)
        .map(|i| (format!("f{i:02}"), Vec::new()))
        .collect();
    for agent in agents {
        for fleet in agent.held() {
            map.get_mut(&fleet).unwrap().push(agent.name.clone());
        }
    }
    map
}

fn each_held_once(map: &BTreeMap<String, Vec<String>>) -> bool {
    map.values().all(|h| h.len() == 1)
}

async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_agents_spread_the_fleets_and_take_over_from_a_killed_one() {
    let etcd = Etcd::start();
    let endpoint = etcd.endpoint();
    let world = World::new(&endpoint);
    let a = world.agent("a", &endpoint, "/spread");
    let b = world.agent("b", &endpoint, "/spread");
    let c = world.agent("c", &endpoint, "/spread");

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
    for (fleet, mock) in &world.mocks {
        let fleet_grows: Vec<&Call> = calls
            .iter()
            .filter(|c| &c.fleet == fleet && c.kind == "grow")
            .collect();
        grows += fleet_grows.len();
        // A token repeated (the same holder retrying) asks once and launches once.
        let mut asked_by_token: HashMap<&str, u32> = HashMap::new();
        let mut told: HashSet<&str> = HashSet::new();
        for call in &fleet_grows {
            asked_by_token.insert(&call.token, call.requested);
            told.extend(call.launched.iter().map(String::as_str));
        }
        let asked: u64 = asked_by_token.values().map(|n| u64::from(*n)).sum();
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
    let mut by_token: HashMap<&str, HashSet<&str>> = HashMap::new();
    for call in calls.iter().filter(|c| c.kind == "grow") {
        by_token.entry(&call.token).or_default().insert(&call.agent);
    }
    assert!(by_token.values().all(|agents| agents.len() == 1));

    // Leadership changes were counted; the survivors stop cleanly.
    let changes: u64 = (0..FLEETS)
        .map(|i| {
            b.metrics
                .leadership_changes
                .with_label_values(&[&format!("f{i:02}")])
                .get()
        })
        .sum();
    assert!(changes >= 4, "{changes}");
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_stop_acting_within_their_lease_when_etcd_stops_and_resume_after() {
    let mut etcd = Etcd::start();
    let endpoint = etcd.endpoint();
    let world = World::new(&endpoint);
    let a = world.agent("a", &endpoint, "/outage");
    let b = world.agent("b", &endpoint, "/outage");
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
