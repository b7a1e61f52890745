//! Several in-process agents on one set of fleets, built through the same code path as
//! `fleetscale run` (`agent::run_with`), coordinating through a real etcd. Their clouds
//! are shared the way a cloud account is (one mock per fleet, or the EC2 emulator), and
//! every call any agent makes is logged with who made it, when, and under which token.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fleetscale::agent::{self, RunOptions, Wiring};
use fleetscale::config::{AdapterConfig, Config};
use fleetscale::telemetry::Metrics;
use fleetscale_adapters::mock::MockCloud;
use fleetscale_adapters::{
    AccessReport, CloudAdapter, Fleet, GrowOutcome, IdempotencyToken, InstanceId, Result,
    ShrinkOutcome, SystemClock,
};
use tokio::sync::oneshot;

use super::ports::free_port;

/// One call an agent made on a fleet's shared cloud.
#[derive(Debug, Clone)]
pub struct Call {
    pub agent: String,
    pub fleet: String,
    pub at: Instant,
    /// When the call returned.
    pub ended: Instant,
    pub kind: &'static str,
    pub requested: u32,
    pub launched: Vec<String>,
    pub token: String,
}

impl Call {
    pub fn mutating(&self) -> bool {
        self.kind != "read"
    }
}

pub type Log = Arc<Mutex<Vec<Call>>>;

/// A fleet's shared cloud, as one agent sees it: every call is logged.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn CloudAdapter>,
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
            ended: Instant::now(),
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
    async fn mark_draining(&self, ids: &[InstanceId], since: std::time::SystemTime) -> Result<()> {
        let at = Instant::now();
        let outcome = self.inner.mark_draining(ids, since).await;
        self.note("mark_draining", at, ids.len() as u32, Vec::new(), "");
        outcome
    }
}

/// How the agents are configured: the fleets, each fleet's `[fleets.adapter]` section
/// and policy, and the coordination's timings.
#[derive(Clone)]
pub struct Spec {
    pub fleets: usize,
    /// The TOML after `[fleets.adapter]` for fleet `i`.
    pub adapter: Arc<dyn Fn(usize) -> String + Send + Sync>,
    pub lease_ttl: &'static str,
    pub tick: &'static str,
    /// The synthetic signal's mean demand (instances' worth of work per fleet).
    pub mean: f64,
    /// How fast the synthetic load plays (signal seconds per second).
    pub speedup: f64,
    /// Extra TOML for `[agent]` (after its own keys, before `[agent.api]`).
    pub agent_extra: String,
    /// Extra TOML after `[agent.api]`'s own keys (tokens).
    pub api_extra: String,
    /// Extra TOML for each fleet's `[fleets.guards]`.
    pub guards_extra: String,
}

impl Spec {
    /// `fleets` mock fleets of two instances each.
    pub fn mock(fleets: usize) -> Spec {
        Spec {
            fleets,
            adapter: Arc::new(|_| {
                "kind = \"mock\"\nboot_delay = \"1s\"\ninitial_size = 2\n\
                 launch_read_lag = \"0s\"\nremoval_read_lag = \"0s\"\n"
                    .to_string()
            }),
            lease_ttl: "3s",
            tick: "1s",
            mean: 12.0,
            speedup: 7200.0,
            agent_extra: String::new(),
            api_extra: String::new(),
            guards_extra: String::new(),
        }
    }

    pub fn fleet_names(&self) -> Vec<String> {
        (0..self.fleets).map(|i| format!("f{i:02}")).collect()
    }

    pub fn ttl(&self) -> Duration {
        humantime::parse_duration(self.lease_ttl).unwrap()
    }

    pub fn tick_period(&self) -> Duration {
        humantime::parse_duration(self.tick).unwrap()
    }

    /// The config file of agent `agent`.
    pub fn config_text(
        &self,
        agent: &str,
        endpoints: &[String],
        prefix: &str,
        dir: &Path,
    ) -> String {
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
        let mut text = format!(
            r#"
[agent]
tick = "{tick}"
metrics_address = "127.0.0.1:{port}"
{extra}
[agent.api]
state_file = "{state}"
{api_extra}

[agent.coordination]
kind = "etcd"
endpoints = [{endpoints}]
prefix = "{prefix}"
lease_ttl = "{ttl}"
settle = "300ms"
member = "{agent}"
"#,
            tick = self.tick,
            port = free_port(),
            extra = self.agent_extra,
            api_extra = self.api_extra,
            state = dir.join(format!("{agent}.state.json")).display(),
            endpoints = endpoints.join(", "),
            ttl = self.lease_ttl,
        );
        for i in 0..self.fleets {
            text.push_str(&format!(
                r#"
[[fleets]]
name = "f{i:02}"
boot_delay = "1s"
history = "5s"

[fleets.adapter]
{adapter}
[fleets.signal]
kind = "synthetic"
mean = {mean:?}
daily_amplitude = 0.8
noise = 0.1
flash_crowds_per_day = 0.0
speedup = {speedup:?}
seed = {i}

[fleets.policy]
name = "target-tracking"
target_utilisation = 0.7

[fleets.guards]
min = 1
max = 60
{guards_extra}
"#,
                adapter = (self.adapter)(i),
                guards_extra = self.guards_extra,
                mean = self.mean,
                speedup = self.speedup,
            ));
        }
        text
    }
}

/// Where each agent finds a fleet's cloud: `(agent, fleet)` to its adapter.
pub type Clouds = Arc<dyn Fn(&str, &str) -> Arc<dyn CloudAdapter> + Send + Sync>;

/// One in-process agent.
pub struct Agent {
    pub name: String,
    pub metrics: Metrics,
    pub port: u16,
    fleets: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    /// The fleets this agent holds, by its `fleetscale_fleet_held` gauge.
    pub fn held(&self) -> Vec<String> {
        self.fleets
            .iter()
            .filter(|f| self.metrics.fleet_held.with_label_values(&[f]).get() == 1)
            .cloned()
            .collect()
    }

    /// Leadership changes this agent counted, over every fleet.
    pub fn leadership_changes(&self) -> u64 {
        self.fleets
            .iter()
            .map(|f| {
                self.metrics
                    .leadership_changes
                    .with_label_values(&[f])
                    .get()
            })
            .sum()
    }

    /// kill -9: the task is aborted; nothing resigns, the lease is not revoked.
    pub fn kill(&self) {
        self.task.abort();
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    pub async fn healthz(&self) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        match reqwest::get(&url).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }
}

/// The agents' shared world: the clouds, the call log, a folder for state files.
pub struct World {
    pub spec: Spec,
    clouds: Clouds,
    log: Log,
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new(spec: Spec, clouds: Clouds) -> World {
        World {
            spec,
            clouds,
            log: Arc::default(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Starts agent `name` against `endpoints`, with keys under `prefix`.
    pub fn agent(&self, name: &str, endpoints: &[String], prefix: &str) -> Agent {
        let text = self
            .spec
            .config_text(name, endpoints, prefix, self.dir.path());
        let config = Config::parse(&text, Path::new("agent.toml")).unwrap();
        let port = config.agent.metrics_address.port();
        let metrics = Metrics::new().unwrap();
        let clouds = self.clouds.clone();
        let log = self.log.clone();
        let agent_name = name.to_string();
        let connect: agent::Connect = Arc::new(move |fleet| {
            Box::new(Recording {
                inner: clouds(&agent_name, &fleet.name),
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
            fleets: self.spec.fleet_names(),
            stop: Some(stop),
            task,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.log.lock().unwrap().clone()
    }
}

/// Fleet -> the agents that hold it.
pub fn holders(fleets: &[String], agents: &[&Agent]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> =
        fleets.iter().map(|f| (f.clone(), Vec::new())).collect();
    for agent in agents {
        for fleet in agent.held() {
            map.get_mut(&fleet).unwrap().push(agent.name.clone());
        }
    }
    map
}

pub fn each_held_once(map: &BTreeMap<String, Vec<String>>) -> bool {
    map.values().all(|h| h.len() == 1)
}

pub async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

/// Per fleet: the instances the grows were told they launched, and what they asked for
/// (a token repeated by the same holder asks once). Equal when nothing was launched
/// twice or unasked.
pub fn launches(calls: &[Call], fleet: &str) -> (HashSet<String>, u64) {
    let mut asked_by_token: HashMap<&str, u32> = HashMap::new();
    let mut told = HashSet::new();
    for call in calls
        .iter()
        .filter(|c| c.fleet == fleet && c.kind == "grow")
    {
        asked_by_token.insert(&call.token, call.requested);
        told.extend(call.launched.iter().cloned());
    }
    (told, asked_by_token.values().map(|n| u64::from(*n)).sum())
}

/// Grow tokens sent by more than one agent (a new holder repeating its predecessor's).
pub fn tokens_sent_by_two(calls: &[Call]) -> Vec<String> {
    let mut by_token: HashMap<&str, HashSet<&str>> = HashMap::new();
    for call in calls.iter().filter(|c| c.kind == "grow") {
        by_token.entry(&call.token).or_default().insert(&call.agent);
    }
    by_token
        .into_iter()
        .filter(|(_, agents)| agents.len() > 1)
        .map(|(token, _)| token.to_string())
        .collect()
}

/// Two holders acting on one fleet at once: an agent's tick on a fleet runs from its
/// read to the end of its last call before its next read; two agents' ticks on the same
/// fleet must not overlap. Returns each overlap found, described.
pub fn overlapping_ticks(calls: &[Call]) -> Vec<String> {
    let mut ticks: BTreeMap<(&str, &str), Vec<(Instant, Instant)>> = BTreeMap::new();
    let mut sorted: Vec<&Call> = calls.iter().collect();
    sorted.sort_by_key(|c| c.at);
    for call in sorted {
        let agent_ticks = ticks.entry((&call.fleet, &call.agent)).or_default();
        match agent_ticks.last_mut() {
            Some(tick) if call.kind != "read" => tick.1 = tick.1.max(call.ended),
            _ => agent_ticks.push((call.at, call.ended)),
        }
    }
    let mut by_fleet: BTreeMap<&str, Vec<(Instant, Instant, &str)>> = BTreeMap::new();
    for ((fleet, agent), spans) in &ticks {
        by_fleet
            .entry(fleet)
            .or_default()
            .extend(spans.iter().map(|(from, to)| (*from, *to, *agent)));
    }
    let mut found = Vec::new();
    for (fleet, mut spans) in by_fleet {
        spans.sort();
        for pair in spans.windows(2) {
            let ((_, end, first), (start, _, second)) = (pair[0], pair[1]);
            if first != second && start < end {
                found.push(format!(
                    "fleet {fleet}: {second} began a tick {:?} before {first}'s ended",
                    end - start
                ));
            }
        }
    }
    found
}

/// `fleets` mock fleets of `spec`, one shared mock each (every agent sees the same
/// cloud), and the world over them.
pub fn mock_world(spec: Spec) -> (World, HashMap<String, MockCloud>) {
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
