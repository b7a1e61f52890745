//! What one `dp` fleet's first decision costs: time, peak heap and the heap it keeps.
//!
//!     cargo run --release -p fleetscale-policies --example warm_up [-- STEP_SECS STEPS]
//!
//! The history is a daily cycle with noise, as ./scripts/many-fleets.py's fleets see
//! (defaults: 10 s steps, 20,160 steps, a boot of 3 steps).

// Benchmark and example code: a panic is a failure of the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleetscale_policies::{DpConfig, DpPlanner, Observation, Policy};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let step_secs = args.first().copied().unwrap_or(10);
    let steps = args.get(1).copied().unwrap_or(20_160) as usize;
    let per_day = 86_400.0 / step_secs as f64;
    let mut noise = 0x2545_f491_4f6c_dd1du64;
    let demand: Vec<f64> = (0..steps)
        .map(|t| {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            let jitter = (noise % 1000) as f64 / 1000.0 - 0.5;
            let phase = t as f64 / per_day * std::f64::consts::TAU;
            (20.0 * (1.0 + 0.5 * phase.sin()) * (1.0 + 0.1 * jitter)).max(0.0)
        })
        .collect();
    let serving: Vec<f64> = demand.iter().map(|d| (d * 1.2).ceil()).collect();
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let started = Instant::now();
    let mut dp = match DpPlanner::new(DpConfig::default()) {
        Ok(dp) => dp,
        Err(errors) => panic!("default config rejected: {errors:?}"),
    };
    let last = serving.last().copied().unwrap_or(1.0) as u32;
    let obs = Observation {
        demand: &demand,
        serving_history: &serving,
        steps_seen: steps as u64,
        serving: last,
        active: last,
        booting: 0,
        min: 1,
        max: 500,
        max_step_up: None,
        max_step_down: None,
        step: Duration::from_secs(step_secs),
        boot_steps: 3,
        boot_times: &[],
        bounds_ahead: &[],
    };
    let decision = dp.decide(&obs);
    let first = started.elapsed();
    let kept = NOW.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let started = Instant::now();
    let ticks = 100;
    for _ in 0..ticks {
        dp.decide(&obs);
    }
    let tick = started.elapsed() / ticks;
    println!(
        "{steps} steps of {step_secs} s: first decision {:.3} s ({} instances), then {:.2} ms a tick; \
         heap kept {:.0} KiB, peak {:.0} KiB",
        first.as_secs_f64(),
        decision.desired,
        tick.as_secs_f64() * 1e3,
        kept as f64 / 1024.0,
        peak as f64 / 1024.0,
    );
}
