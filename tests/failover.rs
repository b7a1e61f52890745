//! Failover under harder conditions, on a real etcd: a three-member etcd cluster that
//! loses a member (nothing changes), and a soak in which agents are killed and
//! restarted at random while the load plays (no double launch, never two holders
//! ticking one fleet at once).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/ports.rs"]
mod ports;

#[path = "support/etcd.rs"]
mod etcd;

#[path = "support/agents.rs"]
mod agents;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use agents::{Agent, Spec, each_held_once, mock_world, wait_for};
use etcd::Etcd;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn holders(spec: &Spec, agents: &[&Agent]) -> BTreeMap<String, Vec<String>> {
    agents::holders(&spec.fleet_names(), agents)
}

/// The member etcd's `endpoint status` names the leader.
fn leader(cluster: &[Etcd]) -> usize {
    let endpoints: Vec<String> = cluster.iter().map(Etcd::endpoint).collect();
    let out = Command::new(etcd::tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoints.join(","), "endpoint", "status"])
        .args(["--write-out", "json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let leader = status[0]["Status"]["leader"].as_u64().unwrap();
    let index = status
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader))
        .unwrap();
    cluster
        .iter()
        .position(|m| m.endpoint() == status[index]["Endpoint"].as_str().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_one_etcd_member_of_three_changes_nothing() {
    let mut cluster = Etcd::cluster(3);
    let endpoints: Vec<String> = cluster.iter().map(Etcd::endpoint).collect();
    // A lease longer than etcd's leader election (1 s by default) and its retries; the
    // default is 15 s.
    let spec = Spec {
        lease_ttl: "6s",
        ..Spec::mock(6)
    };
    let (world, _mocks) = mock_world(spec.clone());
    let a = world.agent("a", &endpoints, "/three");
    let b = world.agent("b", &endpoints, "/three");
    let c = world.agent("c", &endpoints, "/three");
    let spread = wait_for(Duration::from_secs(20), || {
        each_held_once(&holders(&spec, &[&a, &b, &c]))
            && [&a, &b, &c].iter().all(|x| x.held().len() == 2)
    })
    .await;
    assert!(spread, "{:?}", holders(&spec, &[&a, &b, &c]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = holders(&spec, &[&a, &b, &c]);
    let changes_before: Vec<u64> = [&a, &b, &c]
        .iter()
        .map(|x| x.leadership_changes())
        .collect();

    // The leader itself, the harder case: the cluster elects another.
    let killed = leader(&cluster);
    let killed_at = Instant::now();
    cluster[killed].stop();
    tokio::time::sleep(spec.ttl() * 2).await;

    let after = holders(&spec, &[&a, &b, &c]);
    assert_eq!(
        after, before,
        "the holders changed after one member of three died"
    );
    let changes_after: Vec<u64> = [&a, &b, &c]
        .iter()
        .map(|x| x.leadership_changes())
        .collect();
    assert_eq!(changes_after, changes_before, "leadership changed");
    // Every fleet was ticked by its holder in the last lease, and only by it.
    let calls = world.calls();
    for (fleet, holder) in &after {
        let recent: Vec<&agents::Call> = calls
            .iter()
            .filter(|c| &c.fleet == fleet && c.at > killed_at + spec.ttl())
            .collect();
        assert!(
            recent.iter().any(|c| c.kind == "read"),
            "{fleet} not ticked after the member died"
        );
        assert!(recent.iter().all(|c| c.agent == holder[0]), "{fleet}");
    }
    for agent in [&a, &b, &c] {
        let (status, body) = agent.healthz().await;
        assert_eq!(status, 200, "{}: {body}", agent.name);
    }
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// 150 s of agents killed and restarted at random (every 10 to 20 s, down 1 to 5 s),
/// while the load plays at 12 times its speed: 30 minutes of load, a kill every two to
/// four minutes of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_soak_with_agents_killed_at_random_never_launches_twice_nor_has_two_holders() {
    let etcd = Etcd::start();
    let endpoints = [etcd.endpoint()];
    let spec = Spec {
        speedup: 12.0,
        ..Spec::mock(12)
    };
    let (world, mocks) = mock_world(spec.clone());
    let names = ["a", "b", "c"];
    let mut live: Vec<Option<Agent>> = names
        .iter()
        .map(|n| Some(world.agent(n, &endpoints, "/soak")))
        .collect();
    let mut rng = SmallRng::seed_from_u64(17);
    let started = Instant::now();
    let soak = Duration::from_secs(150);
    let mut kills = 0;
    while started.elapsed() < soak {
        tokio::time::sleep(Duration::from_secs(rng.random_range(10..=20))).await;
        let victim = rng.random_range(0..names.len());
        if let Some(agent) = live[victim].take() {
            agent.kill();
            kills += 1;
            tokio::time::sleep(Duration::from_secs(rng.random_range(1..=5))).await;
            live[victim] = Some(world.agent(names[victim], &endpoints, "/soak"));
        }
    }
    // Settled at the end: each fleet held once.
    let settled = wait_for(spec.ttl() * 3, || {
        let agents: Vec<&Agent> = live.iter().flatten().collect();
        each_held_once(&holders(&spec, &agents))
    })
    .await;
    let agents: Vec<&Agent> = live.iter().flatten().collect();
    assert!(settled, "{:?}", holders(&spec, &agents));
    for agent in live.into_iter().flatten() {
        agent.stop().await;
    }

    let calls = world.calls();
    assert!(kills >= 5, "{kills} kills: the soak shows little");
    let mut grows = 0;
    for (fleet, mock) in &mocks {
        let (told, asked) = agents::launches(&calls, fleet);
        grows += asked;
        assert_eq!(
            mock.stats().launched,
            told.len() as u64,
            "{fleet}: launched vs told"
        );
        assert_eq!(told.len() as u64, asked, "{fleet}: launched vs asked");
    }
    assert!(grows > 0, "nothing was launched: the soak shows nothing");
    assert_eq!(agents::tokens_sent_by_two(&calls), Vec::<String>::new());
    assert_eq!(agents::overlapping_ticks(&calls), Vec::<String>::new());
    // Every fleet changed hands at least once: the kills hit the holders.
    let handed: usize = spec
        .fleet_names()
        .iter()
        .filter(|f| {
            let mut agents: Vec<&str> = calls
                .iter()
                .filter(|c| &c.fleet == *f)
                .map(|c| c.agent.as_str())
                .collect();
            agents.dedup();
            agents.len() > 1
        })
        .count();
    assert!(handed >= 6, "only {handed} fleets changed hands");
}
