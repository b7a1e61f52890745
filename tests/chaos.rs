//! Chaos: the agent's controller on the mock cloud under BENCHMARK.md's `hostile`
//! scenario (and under random scenarios), on the simulated clock, asserting the safety
//! figures: no double launch, no scale-in while blind, no bound violated, and no step
//! with demand and nothing serving.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use fleetscale::replay::cloud::{CloudScenario, Span};
use fleetscale::replay::{self, Figures, Scenario, Setup};
use fleetscale_policies::PolicyConfig;
use proptest::prelude::*;

/// A daily cycle between about 4 and 40 instances with noise and bursts, never below 3.
fn demand(steps: usize, step: Duration, seed: u64) -> Vec<f64> {
    let per_day = 86_400.0 / step.as_secs_f64();
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..steps)
        .map(|t| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let noise = (state >> 33) as f64 / (1u64 << 31) as f64;
            let day = (t as f64 / per_day * std::f64::consts::TAU).sin();
            let burst = if (t / 97) % 31 == 0 { 15.0 } else { 0.0 };
            (22.0 + 18.0 * day + 4.0 * noise + burst).max(3.0)
        })
        .collect()
}

fn scenario(steps: usize, step: Duration, seed: u64) -> Scenario {
    Scenario {
        path: "generated".into(),
        demand: demand(steps, step, seed),
        step,
        boot: Duration::from_secs(180),
        min: 2,
        max: 120,
    }
}

fn policy(name: &str) -> PolicyConfig {
    PolicyConfig::from_name(name).unwrap()
}

fn replay_in(s: &Scenario, cloud: &CloudScenario, seed: u64, name: &str) -> Figures {
    let config = policy(name);
    let setup = Setup {
        cloud,
        seed,
        initial: None,
    };
    let run = replay::run_in(s, &setup, name, None, &|| config.build(), &|_| {});
    Figures::of(&run, s, 1.0)
}

fn assert_safe(f: &Figures, what: &str) {
    assert_eq!(f.double_launches, 0, "{what}: double launches: {f:?}");
    assert_eq!(f.blind_scale_ins, 0, "{what}: blind scale-ins: {f:?}");
    assert_eq!(f.bound_violations, 0, "{what}: bound violations: {f:?}");
    assert_eq!(f.zero_serving_steps, 0, "{what}: zero-serving steps: {f:?}");
}

#[test]
fn a_hundred_thousand_hostile_steps_with_dp_are_safe() {
    let step = Duration::from_secs(300);
    let hostile = CloudScenario::hostile();
    for seed in [1, 2, 3] {
        let s = scenario(100_000, step, seed);
        let f = replay_in(&s, &hostile, seed, "dp");
        assert_safe(&f, &format!("dp, seed {seed}"));
        assert!(f.restarts >= 150, "{f:?}");
        assert!(
            f.failed_ticks > 0,
            "the cloud must have failed calls: {f:?}"
        );
        assert!(
            f.unserved_pct < 2.0,
            "seed {seed}: {:.3} % unserved",
            f.unserved_pct
        );
    }
}

/// The hostile cloud with every scale-in drained first (30 s to 10 min, cut at 5 min):
/// draining instances are billed and serve nobody, and no drain is removed twice.
#[test]
fn a_hundred_thousand_hostile_steps_drained_on_scale_in_are_safe() {
    let step = Duration::from_secs(300);
    let secs = |s| Span::Time(Duration::from_secs(s));
    let hostile = CloudScenario {
        drain: Some([secs(30), secs(600)]),
        drain_timeout: secs(300),
        ..CloudScenario::hostile()
    };
    let s = scenario(100_000, step, 6);
    let drained = replay_in(&s, &hostile, 6, "dp");
    assert_safe(&drained, "dp, drained");
    let at_once = replay_in(&s, &CloudScenario::hostile(), 6, "dp");
    // A drain bills its instance for longer: the same decisions cost more.
    assert!(
        drained.instance_minutes > at_once.instance_minutes,
        "drained {} vs at once {} instance-minutes",
        drained.instance_minutes,
        at_once.instance_minutes
    );
}

#[test]
fn a_hundred_thousand_hostile_steps_with_target_tracking_are_safe() {
    let step = Duration::from_secs(300);
    let hostile = CloudScenario::hostile();
    for seed in [4, 5] {
        let s = scenario(100_000, step, seed);
        let f = replay_in(&s, &hostile, seed, "target-tracking");
        assert_safe(&f, &format!("target-tracking, seed {seed}"));
    }
}

#[test]
fn the_ideal_cloud_is_the_benchmark_model_and_a_seed_repeats_a_run() {
    let step = Duration::from_secs(60);
    let s = scenario(3000, step, 9);
    let ideal = replay_in(&s, &CloudScenario::ideal(), 1, "dp");
    assert_eq!(ideal.failed_ticks, 0);
    assert_eq!(ideal.restarts, 0);
    assert_safe(&ideal, "ideal");
    let once = replay_in(&s, &CloudScenario::aws(), 7, "dp");
    let again = replay_in(&s, &CloudScenario::aws(), 7, "dp");
    assert_eq!(once.instance_minutes, again.instance_minutes);
    assert_eq!(once.unserved_pct, again.unserved_pct);
    assert_safe(&once, "aws");
}

fn arbitrary_cloud() -> impl Strategy<Value = CloudScenario> {
    (
        (1.0..5.0f64, 0u64..400, 0u64..400, 0.0..3.0f64, 0.0..1.5f64),
        (0.0..0.3f64, 0.0..0.3f64, 0.0..0.2f64, 0.0..0.1f64),
        (0.0..0.05f64, 0.0..3.0f64, 0.0..0.03f64, 0u64..600),
        (0.2..1.0f64, 0u64..40),
        (proptest::option::of((0u64..600, 0u64..600)), 60u64..900),
    )
        .prop_map(
            |(
                (boot, leave_lo, leave_extra, launch_lag, removal_lag),
                (grow_fail, partial, transient, throttle),
                (never_boot, deaths, missing, restart),
                (start, throttle_wait),
                (drain, drain_timeout),
            )| CloudScenario {
                name: "arbitrary".into(),
                boot_p95_ratio: boot,
                leaving: [
                    Span::Time(Duration::from_secs(leave_lo)),
                    Span::Time(Duration::from_secs(leave_lo + leave_extra)),
                ],
                launch_read_lag: Span::Steps(launch_lag),
                removal_read_lag: Span::Steps(removal_lag),
                grow_failure_rate: grow_fail,
                partial_launch_rate: partial,
                transient_failure_rate: transient,
                throttle_rate: throttle,
                throttle_retry_after: [
                    Span::Time(Duration::from_secs(1)),
                    Span::Time(Duration::from_secs(1 + throttle_wait)),
                ],
                never_boot_rate: never_boot,
                deaths_per_day: deaths,
                signal_missing_rate: missing,
                signal_outage: Span::Time(Duration::from_secs(3600)),
                signal_outage_every: Span::Time(Duration::from_secs(86_400)),
                restart_every: restart,
                start_fraction: start,
                drain: drain.map(|(low, extra)| {
                    [
                        Span::Time(Duration::from_secs(low)),
                        Span::Time(Duration::from_secs(low + extra)),
                    ]
                }),
                drain_timeout: Span::Time(Duration::from_secs(drain_timeout)),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn any_cloud_keeps_every_safety_figure_at_zero(
        cloud in arbitrary_cloud(),
        seed in 0u64..1000,
        dp in any::<bool>(),
    ) {
        let s = scenario(2000, Duration::from_secs(60), seed);
        let name = if dp { "dp" } else { "target-tracking" };
        let f = replay_in(&s, &cloud, seed, name);
        prop_assert_eq!(f.double_launches, 0, "{:?} {:?}", cloud, f);
        prop_assert_eq!(f.blind_scale_ins, 0, "{:?} {:?}", cloud, f);
        prop_assert_eq!(f.bound_violations, 0, "{:?} {:?}", cloud, f);
        prop_assert_eq!(f.agent_zero_serving_steps, 0, "{:?} {:?}", cloud, f);
    }
}

/// The example scenarios with draining are the named ones plus their drains.
#[test]
fn the_drained_example_scenarios_are_the_named_ones_with_drains() {
    let secs = |s| Span::Time(Duration::from_secs(s));
    let root = env!("CARGO_MANIFEST_DIR");
    for (file, named, drain) in [
        ("aws-drained", CloudScenario::aws(), [secs(30), secs(300)]),
        (
            "hostile-drained",
            CloudScenario::hostile(),
            [secs(30), secs(600)],
        ),
    ] {
        let read = CloudScenario::resolve(&format!("{root}/examples/clouds/{file}.toml")).unwrap();
        let expected = CloudScenario {
            name: file.into(),
            drain: Some(drain),
            drain_timeout: secs(300),
            ..named
        };
        assert_eq!(read, expected, "{file}");
    }
}
