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

use std::path::Path;

use std::time::{Duration, Instant};

use agents::{Agent, Call, Spec, each_held_once, mock_world, wait_for};
use etcd::Etcd;
use fleetscale::config::Config;
use fleetscale_adapters::CloudAdapter;
use fleetscale_adapters::mock::MockCloud;
use serde_json::{Value, json};

const FLEETS: usize = 12;
const TTL: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_secs(1);

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

/// A fleet that comes back to an agent which held it before: what the holder in between
/// launched may not show in reads yet, so the agent makes no change for `read_lag` after
/// taking it back (the `start_up` guard), as it does at its own start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_that_takes_a_fleet_back_waits_out_the_read_lag_before_acting() {
    const READ_LAG: Duration = Duration::from_secs(6);
    let etcd = Etcd::start();
    let endpoints = [etcd.endpoint()];
    let mut spec = Spec::mock(2);
    spec.adapter = std::sync::Arc::new(|_| {
        "kind = \"mock\"\nboot_delay = \"1s\"\ninitial_size = 2\n\
         launch_read_lag = \"6s\"\nremoval_read_lag = \"0s\"\n"
            .to_string()
    });
    let (world, _mocks) = mock_world(spec);
    let b = world.agent("b", &endpoints, "/back");
    assert!(wait_for(Duration::from_secs(15), || b.held().len() == 2).await);
    // b ticks both fleets past its own start-up, then a joins and takes one.
    tokio::time::sleep(READ_LAG + TICK).await;
    let a = world.agent("a", &endpoints, "/back");
    let shared = wait_for(Duration::from_secs(15), || {
        a.held().len() == 1 && b.held().len() == 1
    })
    .await;
    assert!(shared, "a: {:?}, b: {:?}", a.held(), b.held());
    let moved = a.held()[0].clone();
    // a acts on it past its start-up, then dies.
    let acted = wait_for(Duration::from_secs(30), || {
        world
            .calls()
            .iter()
            .any(|c| c.agent == "a" && c.fleet == moved && c.mutating())
    })
    .await;
    assert!(acted, "a never changed {moved}: the test shows nothing");
    let killed_at = Instant::now();
    a.kill();
    assert!(wait_for(TTL + TICK + Duration::from_secs(3), || b.held().len() == 2).await);
    // Until b has acted on it past the read lag (ticks slip on a loaded machine: waiting a
    // fixed four ticks failed there), or long enough that it never will.
    let acted_after_lag = |calls: &[Call]| {
        let of_b: Vec<&Call> = calls
            .iter()
            .filter(|c| c.agent == "b" && c.fleet == moved && c.at > killed_at)
            .collect();
        of_b.iter().map(|c| c.at).min().is_some_and(|back_at| {
            of_b.iter()
                .any(|c| c.mutating() && c.at >= back_at + READ_LAG)
        })
    };
    wait_for(READ_LAG + Duration::from_secs(30), || {
        acted_after_lag(&world.calls())
    })
    .await;

    let calls = world.calls();
    let of_moved = |agent: &str| -> Vec<&Call> {
        calls
            .iter()
            .filter(|c| c.agent == agent && c.fleet == moved)
            .collect()
    };
    assert!(
        of_moved("a")
            .iter()
            .any(|c| c.mutating() && c.at < killed_at),
        "a never changed {moved}: the test shows nothing"
    );
    let back_at = of_moved("b")
        .iter()
        .filter(|c| c.at > killed_at)
        .map(|c| c.at)
        .min()
        .expect("b never ticked the fleet it took back");
    let early: Vec<&Call> = of_moved("b")
        .into_iter()
        .filter(|c| c.mutating() && c.at > back_at && c.at < back_at + READ_LAG)
        .collect();
    assert!(
        early.is_empty(),
        "b changed {moved} within the read lag of taking it back: {early:?}"
    );
    assert!(
        of_moved("b")
            .iter()
            .any(|c| c.mutating() && c.at >= back_at + READ_LAG),
        "b never acted on {moved} after the read lag"
    );
    b.stop().await;
}

const OPERATE_TOKEN: &str = "operate-token-for-the-coordination-tests";

/// An operator's API call on one agent: (status, body).
async fn operate(agent: &Agent, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{}{path}", agent.port);
    let answer = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(OPERATE_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

async fn billed(mock: &MockCloud) -> u32 {
    mock.read_fleet().await.unwrap().billed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pauses_and_overrides_live_in_etcd_and_every_agent_follows_them() {
    let mut etcd = Etcd::start();
    let endpoints = [etcd.endpoint()];
    let hash: String = fleetscale::api::auth::hash(OPERATE_TOKEN)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut spec = Spec::mock(2);
    spec.api_extra = format!(
        "[[agent.api.tokens]]\nname = \"alice\"\nrole = \"operate\"\nsha256 = \"{hash}\"\n"
    );
    let (world, mocks) = mock_world(spec);
    let fleets = world.spec.fleet_names();
    let a = world.agent("a", &endpoints, "/commands");
    let b = world.agent("b", &endpoints, "/commands");
    let ok = wait_for(Duration::from_secs(15), || {
        let map = agents::holders(&fleets, &[&a, &b]);
        each_held_once(&map) && a.held().len() == 1
    })
    .await;
    assert!(ok, "{:?}", agents::holders(&fleets, &[&a, &b]));
    // Each agent's operator works on the fleet the other agent holds.
    let (on_a, on_b) = (b.held()[0].clone(), a.held()[0].clone());

    // A pause and an override given to `a` for the fleet `b` holds: `b` obeys both.
    let (status, body) = operate(
        &a,
        reqwest::Method::POST,
        &format!("/v1/fleets/{on_a}/pause"),
        json!({"reason": "deploy"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = operate(
        &a,
        reqwest::Method::POST,
        &format!("/v1/fleets/{on_a}/overrides"),
        json!({"size": 50, "duration": "1h", "reason": "launch"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // And an override given to `b` for the fleet `a` holds: `a` scales to it.
    let (status, body) = operate(
        &b,
        reqwest::Method::POST,
        &format!("/v1/fleets/{on_b}/overrides"),
        json!({"size": 45, "duration": "1h", "reason": "launch"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let key = etcd.ctl(&["get", &format!("/commands/commands/{on_a}")]);
    assert!(
        key.contains("deploy") && key.contains("\"size\":50"),
        "{key}"
    );

    let grew = wait_for(Duration::from_secs(10), || {
        block_on(billed(&mocks[&on_b])) == 45
    })
    .await;
    assert!(
        grew,
        "a did not follow b's override: {}",
        billed(&mocks[&on_b]).await
    );
    // The paused fleet made no mutating call since the pause reached its holder.
    let (_, seen) = operate(
        &b,
        reqwest::Method::GET,
        &format!("/v1/fleets/{on_a}"),
        Value::Null,
    )
    .await;
    assert_eq!(seen["paused"]["reason"], "deploy", "{seen}");
    assert!(billed(&mocks[&on_a]).await < 50);

    // Resumed through the holder's own API: the paused fleet goes to its override.
    let (status, body) = operate(
        &b,
        reqwest::Method::POST,
        &format!("/v1/fleets/{on_a}/resume"),
        json!({"reason": "deploy done"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let grew = wait_for(Duration::from_secs(10), || {
        block_on(billed(&mocks[&on_a])) == 50
    })
    .await;
    assert!(grew, "b did not resume: {}", billed(&mocks[&on_a]).await);
    let (_, seen) = operate(
        &a,
        reqwest::Method::GET,
        &format!("/v1/fleets/{on_a}"),
        Value::Null,
    )
    .await;
    assert!(seen["paused"].is_null(), "{seen}");

    // A restarted agent reads them back from etcd, not from a state file.
    a.kill();
    let a = world.agent("a", &endpoints, "/commands");
    let read = wait_for(Duration::from_secs(10), || {
        a.held().len() + b.held().len() == 2
    })
    .await;
    assert!(read);
    let (_, seen) = operate(
        &a,
        reqwest::Method::GET,
        &format!("/v1/fleets/{on_b}"),
        Value::Null,
    )
    .await;
    assert_eq!(seen["overrides"][0]["size"], 45, "{seen}");
    assert!(!world.dir.path().join("a.state.json").exists());

    // etcd down: a change is refused (503, naming etcd), nothing half made.
    etcd.stop();
    let (status, body) = operate(
        &a,
        reqwest::Method::POST,
        &format!("/v1/fleets/{on_b}/pause"),
        json!({"reason": "while etcd is down"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("etcd at http://"), "{body}");
    etcd.restart();
    let key = etcd.ctl(&["get", &format!("/commands/commands/{on_b}")]);
    assert!(!key.contains("while etcd is down"), "{key}");
    a.stop().await;
    b.stop().await;
}

/// Polls a future to its end from a synchronous closure (the mocks answer at once).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
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
