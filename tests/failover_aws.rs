//! Failover with the AWS adapter on the EC2 emulator (moto, IAM enforced), coordinating
//! through a real etcd.
//!
//! - Two `fleetscale run` processes on one EC2 fleet, each calling EC2 through its own
//!   recording proxy. The holder is stopped with SIGSTOP past its lease, the other takes
//!   over and grows the fleet; after SIGCONT the stalled agent makes no mutating call
//!   (it holds the fleet no more) and says it stands by. Done twice, each agent stalled
//!   once, at different points of its tick.
//! - Three in-process agents over three EC2 fleets, one killed: its fleets are taken
//!   over and the instances in the emulator are exactly those the grows asked for.
//!
//! Needs `moto_server` (`pip install 'moto[server]'`) and `etcd` (`apt-get install
//! etcd-server etcd-client`); ./scripts/test.sh installs both.
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../adapters/tests/support/moto.rs"]
mod moto;

#[path = "support/ports.rs"]
mod ports;

#[path = "support/etcd.rs"]
mod etcd;

#[path = "support/agents.rs"]
mod agents;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agents::{Spec, World, each_held_once, wait_for};
use etcd::Etcd;
use fleetscale_adapters::CloudAdapter;
use moto::{Keys, Moto, Proxy};

const TTL: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_secs(1);

/// The `[fleets.adapter]` section of an EC2 fleet whose calls go to `endpoint`.
fn aws_adapter(moto: &Moto, endpoint: &str) -> String {
    let subnets: Vec<String> = moto
        .subnets
        .iter()
        .map(|(id, _)| format!("{id:?}"))
        .collect();
    format!(
        "kind = \"aws\"\nregion = \"{region}\"\nendpoint_url = \"{endpoint}\"\n\
         subnets = [{subnets}]\nlaunch_template = {{ name = \"{template}\" }}\n",
        region = moto::REGION,
        template = moto::LAUNCH_TEMPLATE,
        subnets = subnets.join(", "),
    )
}

/// One agent's config: fleet `web`, a demand far above what it has, one instance added
/// per tick, so the holder calls RunInstances at every tick.
fn config_text(member: &str, etcd: &str, adapter: &str, metrics_port: u16) -> String {
    format!(
        r#"
[agent]
tick = "1s"
metrics_address = "127.0.0.1:{metrics_port}"

[agent.coordination]
kind = "etcd"
endpoints = ["{etcd}"]
prefix = "/stall"
lease_ttl = "3s"
settle = "300ms"
member = "{member}"

[[fleets]]
name = "web"
boot_delay = "1s"
history = "5s"

[fleets.adapter]
{adapter}
[fleets.signal]
kind = "synthetic"
mean = 200.0
daily_amplitude = 0.0
noise = 0.0
flash_crowds_per_day = 0.0
seed = 1

[fleets.policy]
name = "target-tracking"
target_utilisation = 0.7

[fleets.guards]
min = 1
max = 60
max_step_up = 1
# The emulator's reads show a launch at once: a short start-up guard after each takeover.
read_lag = "2s"
"#
    )
}

/// A `fleetscale run` process, killed on drop.
struct Process {
    name: String,
    child: Child,
    metrics_port: u16,
    proxy: Proxy,
    log: std::path::PathBuf,
}

impl Process {
    async fn start(name: &str, moto: &Moto, etcd: &str, dir: &Path) -> Process {
        let proxy = Proxy::start(&moto.endpoint).await;
        let metrics_port = ports::free_port();
        let config = dir.join(format!("{name}.toml"));
        let adapter = aws_adapter(moto, &proxy.endpoint);
        std::fs::write(&config, config_text(name, etcd, &adapter, metrics_port)).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = agent_command(&config, &moto.agent, dir)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("start fleetscale run");
        Process {
            name: name.into(),
            child,
            metrics_port,
            proxy,
            log,
        }
    }

    /// The fleet-changing EC2 calls this agent made so far.
    fn mutating_calls(&self) -> usize {
        self.proxy.calls("RunInstances").len() + self.proxy.calls("TerminateInstances").len()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    async fn healthz(&self) -> String {
        let url = format!("http://127.0.0.1:{}/healthz", self.metrics_port);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("unreachable: {e}"),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fleetscale run` as an operator starts it: the agent user's keys in its environment,
/// the developer's own AWS files and profiles left out.
fn agent_command(config: &Path, keys: &Keys, dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetscale"));
    command.args(["run", "--config"]).arg(config);
    keys.operator_env(&mut command, dir);
    command.env("RUST_LOG", "info").stdin(Stdio::null());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stalled_past_its_lease_makes_no_call_when_it_wakes() {
    let etcd = Etcd::start();
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let a = Process::start("a", &moto, &etcd.endpoint(), dir.path()).await;
    // `a` alone first, so that it holds the fleet; then `b` stands by.
    let holding = wait_for(Duration::from_secs(30), || a.mutating_calls() >= 2).await;
    assert!(holding, "a never grew the fleet:\n{}", a.log_text());
    let b = Process::start("b", &moto, &etcd.endpoint(), dir.path()).await;
    let standing_by = async {
        for _ in 0..100 {
            if b.healthz().await.contains("standby") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(
        standing_by.await,
        "b: {}\n{}",
        b.healthz().await,
        b.log_text()
    );

    let mut pair = [&a, &b];
    for (round, offset_ms) in [(0, 0u64), (1, 450)] {
        let [holder, standby] = pair;
        // Stall the holder at a point of its tick that differs each round: just after a
        // RunInstances, or about half a tick later.
        let seen = holder.mutating_calls();
        wait_for(Duration::from_secs(5), || holder.mutating_calls() > seen).await;
        tokio::time::sleep(Duration::from_millis(offset_ms)).await;
        holder.signal("-STOP");
        let stopped_at = Instant::now();
        // A request sent just before the stop reaches the proxy a moment later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before_wake = holder.mutating_calls();

        let standby_calls = standby.mutating_calls();
        let took_over = wait_for(TTL + TICK + Duration::from_secs(4), || {
            standby.mutating_calls() > standby_calls
        })
        .await;
        let took = stopped_at.elapsed();
        assert!(
            took_over,
            "round {round}: {} did not take over from the stalled {} within {took:?}:\n{}",
            standby.name,
            holder.name,
            standby.log_text()
        );
        println!(
            "round {round}: {} stalled; {} grew the fleet {took:?} later",
            holder.name, standby.name
        );
        // Past the lease for sure, then wake it up.
        tokio::time::sleep((TTL + TICK).saturating_sub(took)).await;
        holder.signal("-CONT");
        tokio::time::sleep(Duration::from_secs(4)).await;

        assert_eq!(
            holder.mutating_calls(),
            before_wake,
            "round {round}: {} changed the fleet after waking without the lease:\n{}",
            holder.name,
            holder.log_text()
        );
        let health = holder.healthz().await;
        assert!(
            health.contains("standby"),
            "round {round}: {} after waking: {health}",
            holder.name
        );
        let still = standby.mutating_calls();
        let growing = wait_for(Duration::from_secs(5), || standby.mutating_calls() > still).await;
        assert!(growing, "round {round}: {} stopped acting", standby.name);
        pair = [standby, holder];
    }

    // No grow token was sent by both agents, and the emulator holds exactly what the
    // grows launched.
    let tokens = |p: &Process| -> HashSet<String> {
        p.proxy
            .calls("RunInstances")
            .iter()
            .filter_map(|r| r.param("ClientToken").map(str::to_owned))
            .collect()
    };
    let both: Vec<_> = tokens(&a).intersection(&tokens(&b)).cloned().collect();
    assert!(both.is_empty(), "tokens sent by both agents: {both:?}");
    let mut asked: HashMap<String, usize> = HashMap::new();
    for call in a
        .proxy
        .calls("RunInstances")
        .iter()
        .chain(&b.proxy.calls("RunInstances"))
    {
        let token = call.param("ClientToken").expect("every launch has a token");
        let count = call.param("MaxCount").unwrap().parse().unwrap();
        asked.insert(token.to_owned(), count);
    }
    drop(a);
    drop(b);
    let mut launched: HashMap<String, usize> = HashMap::new();
    for instance in moto.instances() {
        if instance["tags"]["fleetscale:fleet"] == "web" {
            let token = instance["client_token"].as_str().unwrap_or("(none)");
            *launched.entry(token.to_owned()).or_default() += 1;
        }
    }
    assert!(
        launched.len() >= 6,
        "too few launches to show anything: {launched:?}"
    );
    assert_eq!(
        launched, asked,
        "instances per launch token vs what was asked"
    );
}

/// Adapters on the emulator for every (agent, fleet) pair, each through one proxy per
/// agent, built before the agents start (connecting is async; the world's lookup is not).
async fn ec2_clouds(
    moto: &Moto,
    agents: &[&str],
    fleets: &[String],
) -> (agents::Clouds, HashMap<String, Proxy>) {
    let mut proxies = HashMap::new();
    let mut adapters: HashMap<(String, String), Arc<dyn CloudAdapter>> = HashMap::new();
    for agent in agents {
        let proxy = Proxy::start(&moto.endpoint).await;
        let config = moto.config_via(&proxy.endpoint);
        for fleet in fleets {
            let ec2 = moto.fleet(fleet, &config, &moto.agent).await;
            adapters.insert((agent.to_string(), fleet.clone()), Arc::new(ec2));
        }
        proxies.insert(agent.to_string(), proxy);
    }
    let clouds: agents::Clouds =
        Arc::new(move |agent, fleet| adapters[&(agent.to_string(), fleet.to_string())].clone());
    (clouds, proxies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agent_on_ec2_launches_nothing_twice() {
    let etcd = Etcd::start();
    let endpoints = [etcd.endpoint()];
    let moto = Moto::start();
    let adapter = aws_adapter(&moto, &moto.endpoint);
    let mut spec = Spec::mock(3);
    // The config parses the EC2 section; the adapters themselves are built above it,
    // with the agent user's keys.
    spec.adapter = Arc::new(move |_| adapter.clone());
    spec.mean = 4.0;
    // The emulator's reads show a launch at once: a short start-up guard after takeovers.
    spec.guards_extra = "read_lag = \"2s\"\n".into();
    let fleets = spec.fleet_names();
    let (clouds, _proxies) = ec2_clouds(&moto, &["a", "b", "c"], &fleets).await;
    let world = World::new(spec, clouds);
    let a = world.agent("a", &endpoints, "/ec2");
    let b = world.agent("b", &endpoints, "/ec2");
    let c = world.agent("c", &endpoints, "/ec2");

    let spread = wait_for(Duration::from_secs(20), || {
        each_held_once(&agents::holders(&fleets, &[&a, &b, &c]))
    })
    .await;
    assert!(
        spread,
        "fleets not held once each: {:?}",
        agents::holders(&fleets, &[&a, &b, &c])
    );
    // Let the holders grow the fleets from nothing a while; then kill the busiest.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let victim = [&a, &b, &c]
        .into_iter()
        .max_by_key(|x| x.held().len())
        .unwrap();
    let victim_held = victim.held();
    let victim_name = victim.name.clone();
    let killed_at = Instant::now();
    victim.kill();
    let survivors: Vec<&agents::Agent> = [&a, &b, &c]
        .into_iter()
        .filter(|x| x.name != victim_name)
        .collect();
    let taken = wait_for(TTL + TICK + Duration::from_secs(3), || {
        each_held_once(&agents::holders(&fleets, &survivors))
    })
    .await;
    assert!(
        taken,
        "{victim_name}'s fleets {victim_held:?} not taken over after {:?}: {:?}",
        killed_at.elapsed(),
        agents::holders(&fleets, &survivors)
    );
    // The new holders act on the fleets they took.
    let acted = |fleet: &String| {
        world.calls().iter().any(|c| {
            &c.fleet == fleet && c.mutating() && c.agent != victim_name && c.at > killed_at
        })
    };
    let all_acted = wait_for(Duration::from_secs(30), || victim_held.iter().all(acted)).await;
    assert!(
        all_acted,
        "the new holders of {victim_held:?} never acted on them"
    );

    let calls = world.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.agent == victim_name && c.at > killed_at + Duration::from_millis(50)),
        "the killed agent made calls after its death"
    );
    let instances = moto.instances();
    for fleet in &fleets {
        let in_emulator: HashSet<String> = instances
            .iter()
            .filter(|i| i["tags"]["fleetscale:fleet"] == fleet.as_str())
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        let (told, asked) = agents::launches(&calls, fleet);
        assert!(
            asked > 0,
            "fleet {fleet} was never grown: the test shows nothing"
        );
        assert_eq!(in_emulator, told, "fleet {fleet}: in the emulator vs told");
        assert_eq!(told.len() as u64, asked, "fleet {fleet}: launched vs asked");
    }
    assert_eq!(agents::tokens_sent_by_two(&calls), Vec::<String>::new());
    for agent in [a, b, c] {
        agent.stop().await;
    }
}
