//! The benchmark's oracle against brute force, and its schedule played through a small
//! model of the benchmark's controller (launches serve `L` steps later, newest-first
//! scale-in, billed from launch).

// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use fleetscale_policies::oracle::{self, OracleError, OracleSchedule};
use fleetscale_policies::{Observation, OraclePolicy, Policy};
use proptest::prelude::*;

/// The cheapest cost over every integer schedule with `need[t] <= s_t <= top`.
fn brute_force(need: &[u32], l: u64, top: u32) -> u64 {
    fn go(t: usize, prev: u32, need: &[u32], l: u64, top: u32) -> u64 {
        if t == need.len() {
            return 0;
        }
        (need[t]..=top)
            .map(|s| {
                u64::from(s) + l * u64::from(s.saturating_sub(prev)) + go(t + 1, s, need, l, top)
            })
            .min()
            .unwrap_or(u64::MAX)
    }
    u64::from(need[0]) + go(1, need[0], need, l, top)
}

/// Billed instance-steps and unserved demand of a policy under the benchmark's model.
fn replay(
    policy: &mut dyn Policy,
    demand: &[f64],
    boot_steps: u32,
    min: u32,
    max: u32,
) -> (u64, f64) {
    let l = u64::from(boot_steps);
    // Launch step of each alive instance; those at t = 0 serve at once.
    let start = (demand[0].ceil() as u32).clamp(min, max);
    let mut fleet: Vec<i64> = vec![-(l as i64); start as usize];
    let (mut billed_sum, mut unserved) = (0u64, 0.0);
    let mut serving_history = Vec::new();
    for t in 0..demand.len() {
        let serving_at = |fleet: &[i64]| {
            fleet
                .iter()
                .filter(|&&at| t as i64 - at >= l as i64)
                .count() as u32
        };
        if t > 0 {
            let serving = serving_at(&fleet);
            let obs = Observation {
                demand: &demand[..t],
                serving_history: &serving_history,
                steps_seen: t as u64,
                serving,
                active: fleet.len() as u32,
                booting: fleet.len() as u32 - serving,
                min,
                max,
                max_step_up: None,
                max_step_down: None,
                step: Duration::from_secs(60),
                boot_steps,
                boot_times: &[],
                bounds_ahead: &[],
            };
            let desired = policy.decide(&obs).desired.clamp(min, max) as usize;
            if desired > fleet.len() {
                fleet.resize(desired, t as i64);
            } else {
                fleet.sort_unstable();
                fleet.truncate(desired); // the newest are last
            }
        }
        let serving = serving_at(&fleet);
        billed_sum += fleet.len() as u64;
        unserved += (demand[t] - f64::from(serving)).max(0.0);
        serving_history.push(f64::from(serving));
    }
    (billed_sum, unserved)
}

fn demand_trace() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0f64..5.0, 1..8)
}

proptest! {
    #[test]
    fn oracle_equals_brute_force(demand in demand_trace(), l in 0u32..4, min in 0u32..3) {
        let sched = oracle::solve(&demand, l, min, u32::MAX).unwrap();
        let need = oracle::required_instances(&demand, min, u32::MAX).unwrap();
        let top = *need.iter().max().unwrap();
        prop_assert_eq!(sched.opt_instance_steps, brute_force(&need, u64::from(l), top));
        prop_assert_eq!(sched.serving[0], need[0]);
        for (s, n) in sched.serving.iter().zip(&need) {
            prop_assert!(s >= n);
        }
        let cost: u64 = sched.serving.iter().map(|&s| u64::from(s)).sum::<u64>()
            + u64::from(l) * sched.serving.windows(2).map(|w| u64::from(w[1].saturating_sub(w[0]))).sum::<u64>();
        prop_assert_eq!(cost, sched.opt_instance_steps);
    }

    #[test]
    fn oracle_respects_a_maximum(demand in demand_trace(), l in 0u32..4, max in 1u32..4) {
        let sched = oracle::solve(&demand, l, 1, max).unwrap();
        let need = oracle::required_instances(&demand, 1, max).unwrap();
        prop_assert_eq!(sched.opt_instance_steps, brute_force(&need, u64::from(l), max));
        prop_assert!(sched.serving.iter().all(|&s| (1..=max).contains(&s)));
    }

    #[test]
    fn replayed_schedule_bills_opt_and_serves_everything(
        demand in prop::collection::vec(0.0f64..6.0, 1..40),
        l in 0u32..4,
    ) {
        // Increases in steps 1..=L cannot be launched in time (decisions start at step 1),
        // so demand there stays at or below the first step's.
        let mut demand = demand;
        let first = demand[0];
        for d in demand.iter_mut().take(l as usize + 1) {
            *d = d.min(first);
        }
        let sched = oracle::solve(&demand, l, 1, u32::MAX).unwrap();
        let mut policy = OraclePolicy::from_schedule(&sched);
        let (billed, unserved) = replay(&mut policy, &demand, l, 1, u32::MAX);
        prop_assert_eq!(billed, sched.opt_instance_steps);
        prop_assert_eq!(unserved, 0.0);
    }
}

#[test]
fn rejects_bad_demand() {
    assert_eq!(oracle::solve(&[], 3, 1, 10), Err(OracleError::EmptyDemand));
    assert!(matches!(
        oracle::solve(&[1.0, f64::NAN], 3, 1, 10),
        Err(OracleError::BadDemand { step: 1, .. })
    ));
    assert!(matches!(
        oracle::solve(&[1.0, -2.0], 3, 1, 10),
        Err(OracleError::BadDemand { step: 1, .. })
    ));
    assert_eq!(
        oracle::solve(&[1.0], 3, 5, 2),
        Err(OracleError::BadBounds { min: 5, max: 2 })
    );
}

#[test]
fn bridges_dips_shorter_than_the_boot_delay() {
    // Needs 4, 1, 1, 4 with L = 3: keeping 4 costs 16; dropping costs 4+1+1+4+3*3 = 19.
    let sched = oracle::solve(&[4.0, 0.5, 1.0, 3.2], 3, 1, u32::MAX).unwrap();
    assert_eq!(sched.serving, vec![4, 4, 4, 4]);
    assert_eq!(sched.opt_instance_steps, 16);
    // With L = 1 dropping is cheaper: 4+1+1+4+3 = 13.
    let sched = oracle::solve(&[4.0, 0.5, 1.0, 3.2], 1, 1, u32::MAX).unwrap();
    assert_eq!(sched.serving, vec![4, 1, 1, 4]);
    assert_eq!(sched.opt_instance_steps, 13);
    assert_eq!(sched.instance_minutes(300.0), 65.0);
}

#[test]
fn oracle_policy_plays_the_schedule() {
    let sched = OracleSchedule {
        serving: vec![1, 1, 1, 3],
        opt_instance_steps: 0,
        boot_steps: 2,
    };
    let mut policy = OraclePolicy::from_schedule(&sched);
    let demand = [1.0, 1.0, 1.0, 3.0];
    let (billed, unserved) = replay(&mut policy, &demand, 2, 1, u32::MAX);
    assert_eq!(policy.name(), "oracle");
    assert_eq!(billed, 1 + 3 + 3 + 3);
    assert_eq!(unserved, 0.0);
}
