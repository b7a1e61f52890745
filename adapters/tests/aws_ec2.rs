//! The EC2 adapter with the real AWS SDK against a local EC2 emulator (moto), with
//! signatures checked and the agent's IAM policy enforced.
//!
//! Needs `moto_server` on PATH (`pip install 'moto[server]'`); without it these tests
//! fail, saying so.
#![cfg(feature = "aws")]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::time::Duration;

use fleetscale_adapters::aws::Ec2Fleet;
use fleetscale_adapters::{
    AdapterError, CloudAdapter, ErrorKind, IdempotencyToken, InstanceState, Retry, RetryConfig,
};
use moto::{FLEET, Moto, Proxy, ZONES};

fn token(name: &str) -> IdempotencyToken {
    IdempotencyToken::new(name)
}

fn live(instances: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    instances
        .iter()
        .filter(|i| i["state"] != "terminated" && i["state"] != "shutting-down")
        .collect()
}

fn fast_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 4,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        timeout: Some(Duration::from_secs(30)),
        deadline: Some(Duration::from_secs(60)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grows_reads_and_shrinks_a_tagged_fleet_across_zones() {
    let moto = Moto::start();
    let fleet = moto.agent_fleet().await;

    assert!(fleet.read_fleet().await.unwrap().instances.is_empty());
    let outcome = fleet.grow(4, &token("scale-out-1")).await.unwrap();
    assert_eq!(outcome.requested, 4);
    assert_eq!(outcome.launched.len(), 4, "{outcome:?}");

    let read = fleet.read_fleet().await.unwrap();
    assert_eq!(read.instances.len(), 4);
    assert_eq!(read.target_size, None);
    let mut per_zone: BTreeMap<&str, u32> = BTreeMap::new();
    for instance in &read.instances {
        assert!(outcome.launched.contains(&instance.id));
        assert_eq!(instance.state, InstanceState::Running);
        assert!(!instance.protected);
        *per_zone.entry(instance.zone.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_zone,
        BTreeMap::from([(ZONES[0], 2), (ZONES[1], 2)]),
        "zones balanced"
    );

    // The fleet's tags are on the instances and on their volumes.
    let volumes = moto.admin(
        "result = [dict(attached=[a['InstanceId'] for a in v.get('Attachments', [])], tags={t['Key']: t['Value'] for t in v.get('Tags', [])}) for v in ec2.describe_volumes()['Volumes']]",
    );
    for id in &outcome.launched {
        let tagged = volumes.as_array().unwrap().iter().any(|v| {
            v["attached"].as_array().unwrap().iter().any(|a| a == id)
                && v["tags"]["fleetscale:fleet"] == FLEET
        });
        assert!(
            tagged,
            "the volume of {id} carries the fleet tag: {volumes}"
        );
    }
    for instance in moto.instances() {
        assert_eq!(instance["tags"]["fleetscale:fleet"], FLEET);
    }

    // A further grow fills the zones evenly again: 4 + 3 -> 4 and 3.
    let more = fleet.grow(3, &token("scale-out-2")).await.unwrap();
    assert_eq!(more.launched.len(), 3);
    let zones: Vec<String> = fleet
        .read_fleet()
        .await
        .unwrap()
        .instances
        .iter()
        .map(|i| i.zone.clone())
        .collect();
    let a = zones.iter().filter(|z| *z == ZONES[0]).count();
    assert!(
        a == 3 || a == 4,
        "7 instances split 4/3 across two zones: {zones:?}"
    );

    let victims = vec![outcome.launched[0].clone(), more.launched[0].clone()];
    let removed = fleet.shrink(&victims).await.unwrap();
    assert_eq!(removed.removed.len(), 2);
    for id in &victims {
        assert!(removed.removed.contains(id));
        assert_eq!(moto.state_of(id), "terminated");
    }
    let after = fleet.read_fleet().await.unwrap();
    assert_eq!(after.instances.len(), 5);
    assert!(after.instances.iter().all(|i| !victims.contains(&i.id)));
    // Repeating the shrink is harmless.
    fleet.shrink(&victims).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_outside_the_fleet_are_never_read_or_touched() {
    let moto = Moto::start();
    let untagged = moto.launch_outside(2, &[]);
    let other_fleet = moto.launch_outside(2, &[("fleetscale:fleet", "batch")]);
    let fleet = moto.agent_fleet().await;

    let own = fleet.grow(2, &token("own")).await.unwrap().launched;
    let read = fleet.read_fleet().await.unwrap();
    let mut ids: Vec<_> = read.instances.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    let mut expected = own.clone();
    expected.sort();
    assert_eq!(ids, expected, "only the fleet's own instances are read");

    for outsider in untagged.iter().chain(&other_fleet) {
        // Alone, or named together with a fleet member: refused, nothing terminated.
        for request in [
            vec![outsider.clone()],
            vec![own[0].clone(), outsider.clone()],
        ] {
            let error = fleet.shrink(&request).await.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Invalid, "{error}");
            assert!(error.to_string().contains(outsider.as_str()), "{error}");
            assert!(error.to_string().contains("not in fleet web"), "{error}");
        }
    }
    for instance in moto.instances() {
        assert_eq!(
            instance["state"], "running",
            "nothing was terminated: {instance}"
        );
    }

    // Emptying the fleet leaves the others running.
    fleet.shrink(&own).await.unwrap();
    for id in untagged.iter().chain(&other_fleet) {
        assert_eq!(moto.state_of(id), "running");
    }
    for id in &own {
        assert_eq!(moto.state_of(id), "terminated");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_instances_are_reported_and_never_terminated() {
    let moto = Moto::start();
    let fleet = moto.agent_fleet().await;
    let launched = fleet.grow(2, &token("protect")).await.unwrap().launched;
    moto.tag(&launched[0], "fleetscale:protected", "true");

    let read = fleet.read_fleet().await.unwrap();
    let protected: Vec<_> = read
        .instances
        .iter()
        .filter(|i| i.protected)
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(protected, vec![launched[0].clone()]);

    let error = fleet.shrink(&launched).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    assert!(error.to_string().contains("protected"), "{error}");
    assert_eq!(
        live(&moto.instances()).len(),
        2,
        "a refused shrink terminates nothing"
    );

    let removed = fleet.shrink(&launched[1..]).await.unwrap();
    assert_eq!(removed.removed, launched[1..].to_vec());
    assert_eq!(moto.state_of(&launched[0]), "running");

    // Malformed and unknown ids: refused or ignored, nothing terminated, no call for
    // the malformed one.
    let error = fleet.shrink(&["not an id".to_string()]).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    let outcome = fleet
        .shrink(&["i-0123456789abcdef0".to_string()])
        .await
        .unwrap();
    assert!(outcome.removed.is_empty());
    assert_eq!(moto.state_of(&launched[0]), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tokens_are_sent_stable_and_a_repeated_grow_launches_nothing() {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint).await;
    let config = moto.config_via(&proxy.endpoint);
    let fleet = moto.fleet(FLEET, &config, &moto.agent).await;

    let grow_token = token("web-20240501T1200-up-3");
    let first = fleet.grow(3, &grow_token).await.unwrap();
    assert_eq!(first.launched.len(), 3);
    let launches = proxy.calls("RunInstances");
    assert_eq!(launches.len(), 2, "one launch per subnet: {launches:?}");
    let mut sent: Vec<String> = launches
        .iter()
        .map(|call| {
            call.param("ClientToken")
                .expect("every launch carries a ClientToken")
                .to_owned()
        })
        .collect();
    for (call, client_token) in launches.iter().zip(&sent) {
        assert!(
            client_token.starts_with("web-20240501T1200-up-3-"),
            "{client_token}"
        );
        assert!(client_token.len() <= 64 && client_token.is_ascii());
        assert_eq!(call.param("MinCount"), Some("1"));
        assert_eq!(
            call.param("TagSpecification.1.ResourceType"),
            Some("instance")
        );
        assert_eq!(
            call.param("TagSpecification.2.ResourceType"),
            Some("volume")
        );
    }
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), 2, "a distinct token per subnet");

    // The emulator recorded the tokens on the instances.
    let recorded: Vec<String> = moto
        .instances()
        .iter()
        .map(|i| i["client_token"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        recorded.iter().all(|t| sent.contains(t)),
        "{recorded:?} vs {sent:?}"
    );

    // The same decision again (a retry, or a restarted agent): nothing launched, the
    // first call's instances returned.
    let again = fleet.grow(3, &grow_token).await.unwrap();
    let restarted = moto.fleet(FLEET, &config, &moto.agent).await;
    let after_restart = restarted.grow(3, &grow_token).await.unwrap();
    for outcome in [&again, &after_restart] {
        let mut ids = outcome.launched.clone();
        ids.sort();
        let mut first_ids = first.launched.clone();
        first_ids.sort();
        assert_eq!(ids, first_ids);
    }
    assert_eq!(
        proxy.calls("RunInstances").len(),
        2,
        "no launch after the first"
    );
    assert_eq!(live(&moto.instances()).len(), 3);

    // A new decision has new tokens, derived the same way every time.
    fleet
        .grow(1, &token("web-20240501T1201-up-1"))
        .await
        .unwrap();
    let newest = proxy
        .calls("RunInstances")
        .last()
        .unwrap()
        .param("ClientToken")
        .unwrap()
        .to_owned();
    assert!(newest.starts_with("web-20240501T1201-up-1-"));
    assert!(!sent.contains(&newest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_launch_is_reported_and_no_capacity_is_a_capacity_error() {
    let moto = Moto::builder().capacity(3).start();
    let fleet = moto.agent_fleet().await;

    let outcome = fleet.grow(5, &token("short")).await.unwrap();
    assert_eq!(outcome.requested, 5);
    assert_eq!(
        outcome.launched.len(),
        3,
        "EC2 launched what it could: {outcome:?}"
    );
    assert_eq!(fleet.read_fleet().await.unwrap().instances.len(), 3);

    let error = fleet.grow(1, &token("none-left")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Capacity, "{error}");
    assert!(
        error.to_string().contains("InsufficientInstanceCapacity"),
        "{error}"
    );
    assert!(
        !error.is_retryable(),
        "capacity is backed off by the controller, not hammered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_every_page() {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint).await;
    let fleet = moto
        .fleet(FLEET, &moto.config_via(&proxy.endpoint), &moto.agent)
        .await
        .with_page_size(5);
    // moto pages by reservation: one launch per reservation.
    let mut launched = Vec::new();
    for n in 0..7 {
        launched.extend(
            fleet
                .grow(1, &token(&format!("page-{n}")))
                .await
                .unwrap()
                .launched,
        );
    }
    moto.launch_outside(3, &[("fleetscale:fleet", "batch")]);
    proxy.clear();
    let read = fleet.read_fleet().await.unwrap();
    assert_eq!(read.instances.len(), 7);
    let pages = proxy.calls("DescribeInstances");
    assert_eq!(pages.len(), 2, "7 reservations in pages of 5: {pages:?}");
    assert!(pages[1].param("NextToken").is_some());
    for call in &pages {
        assert_eq!(call.param("Filter.1.Name"), Some("tag:fleetscale:fleet"));
        assert_eq!(call.param("Filter.1.Value.1"), Some(FLEET));
        assert_eq!(call.param("Filter.2.Name"), Some("instance-state-name"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_an_authentication_error_reported_once() {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint).await;
    let keys = moto.agent.with_wrong_secret();
    let fleet = Retry::new(
        moto.fleet(FLEET, &moto.config_via(&proxy.endpoint), &keys)
            .await,
        fast_retry(),
    );

    let error = fleet.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication, "{error}");
    let text = error.to_string();
    assert!(
        text.contains("secret access key"),
        "an operator learns what to check: {text}"
    );
    assert!(
        !text.contains(&keys.secret_access_key),
        "no secret in messages: {text}"
    );
    assert_eq!(
        proxy.recorded().len(),
        1,
        "refused once, not retried: {:?}",
        proxy.recorded()
    );

    let error = fleet.verify_access().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication, "{error}");
    assert!(!error.to_string().contains(&keys.secret_access_key));
    let error = fleet.grow(2, &token("denied")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication, "{error}");
    assert_eq!(
        proxy.recorded().len(),
        3,
        "one request per call: {:?}",
        proxy.recorded()
    );
    assert!(
        proxy
            .recorded()
            .iter()
            .all(|r| r.status == 401 || r.status == 403)
    );
    assert!(moto.instances().is_empty());

    // An access key id AWS does not know at all.
    let unknown = moto::Keys {
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        ..keys.clone()
    };
    let fleet = moto.fleet(FLEET, &moto.config(), &unknown).await;
    let error = fleet.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication, "{error}");
}

fn policy_without_terminate() -> String {
    let mut policy: serde_json::Value = serde_json::from_str(&moto::repo_policy()).unwrap();
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["Action"] != "ec2:TerminateInstances");
    serde_json::to_string(&policy).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_without_terminate_is_a_permission_error_naming_it() {
    let moto = Moto::builder().policy(policy_without_terminate()).start();
    let fleet = Retry::new(moto.agent_fleet().await, fast_retry());
    let launched = fleet.grow(1, &token("keep")).await.unwrap().launched;

    let error = fleet.shrink(&launched).await.unwrap_err();
    match &error {
        AdapterError::Permission { action, .. } => assert_eq!(action, "ec2:TerminateInstances"),
        other => panic!("expected a permission error, got {other}"),
    }
    assert!(
        error.to_string().contains("ec2:TerminateInstances"),
        "{error}"
    );
    assert_eq!(moto.state_of(&launched[0]), "running");

    let report = fleet.verify_access().await.unwrap();
    assert_eq!(report.identity, moto.agent.arn);
    let verdicts: Vec<(&str, bool)> = report
        .checks
        .iter()
        .map(|c| (c.permission.as_str(), c.allowed))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("ec2:DescribeInstances", true),
            ("ec2:DescribeSubnets", true),
            ("ec2:RunInstances", true),
            ("ec2:CreateTags", true),
            ("ec2:TerminateInstances", false),
        ]
    );
    let terminate = report.checks.last().unwrap();
    assert!(terminate.detail.contains("denied"), "{terminate:?}");
    assert!(!report.all_allowed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_access_proves_every_permission_and_changes_nothing() {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint).await;
    let fleet = moto
        .fleet(FLEET, &moto.config_via(&proxy.endpoint), &moto.agent)
        .await;
    let outsider = moto.launch_outside(1, &[]);

    for round in ["empty fleet", "fleet with an instance"] {
        let before = moto.snapshot();
        proxy.clear();
        let report = fleet.verify_access().await.unwrap();
        assert_eq!(report.identity, moto.agent.arn, "{round}");
        assert!(report.all_allowed(), "{round}: {report:?}");
        let permissions: Vec<&str> = report
            .checks
            .iter()
            .map(|c| c.permission.as_str())
            .collect();
        assert_eq!(permissions, fleetscale_adapters::aws::REQUIRED_PERMISSIONS);
        assert_eq!(
            moto.snapshot(),
            before,
            "{round}: verify_access changed the emulator"
        );
        // Every EC2 call of the probe carried DryRun, but the fleet read.
        for call in proxy.recorded() {
            match call.action.as_str() {
                "GetCallerIdentity" => {}
                "DescribeInstances" if call.param("DryRun").is_none() => {}
                _ => assert_eq!(call.param("DryRun"), Some("true"), "{round}: {call:?}"),
            }
        }
        let terminate = proxy.calls("TerminateInstances");
        assert_eq!(terminate.len(), 1);
        assert_ne!(
            terminate[0].param("InstanceId.1"),
            Some(outsider[0].as_str())
        );
        if round == "empty fleet" {
            fleet.grow(1, &token("member")).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_backed_off_and_recovers() {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint).await;
    let bare = moto
        .fleet(FLEET, &moto.config_via(&proxy.endpoint), &moto.agent)
        .await;

    proxy.throttle_next(1);
    let error = bare.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Throttled, "{error}");
    assert!(error.is_retryable());
    assert_eq!(
        proxy.recorded().len(),
        1,
        "the adapter itself does not retry"
    );

    let fleet = Retry::new(bare, fast_retry());
    proxy.clear();
    proxy.throttle_next(3);
    let started = std::time::Instant::now();
    let launched = fleet.grow(2, &token("through-throttling")).await.unwrap();
    assert_eq!(launched.launched.len(), 2);
    let calls = proxy.recorded();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(&statuses[..3], &[503, 503, 503], "{calls:?}");
    assert!(statuses[3..].iter().all(|s| *s == 200), "{calls:?}");
    // Three backoffs of at least half of 50, 100 and 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(175),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy
            .calls("RunInstances")
            .iter()
            .filter(|c| c.status == 200)
            .count(),
        2
    );
    assert_eq!(
        live(&moto.instances()).len(),
        2,
        "throttled attempts launched nothing extra"
    );

    // Throttled past the retry budget: the error reaches the caller as Throttled.
    proxy.throttle_next(10);
    let error = fleet.read_fleet().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Throttled);
    proxy.throttle_next(0);
    assert_eq!(fleet.read_fleet().await.unwrap().instances.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_checks_the_config_and_the_region() {
    let moto = Moto::start();
    let mut config = moto.config();
    config.subnets.push("subnet-nope".into());
    config.launch_template.id = Some("lt-0abc12345".into());
    let error = Ec2Fleet::connect_with_credentials(FLEET, &config, moto.agent.credentials())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Invalid);
    let text = error.to_string();
    assert!(
        text.contains("subnets[2]") && text.contains("launch_template"),
        "{text}"
    );

    // A subnet that does not exist is found at the first grow, named.
    let mut config = moto.config();
    config.subnets = vec!["subnet-0123456789abcdef0".into()];
    let fleet = moto.fleet(FLEET, &config, &moto.agent).await;
    let error = fleet.grow(1, &token("nowhere")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    assert!(
        error.to_string().contains("subnet-0123456789abcdef0"),
        "{error}"
    );
}
