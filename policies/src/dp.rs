//! The dynamic program over integer fleet sizes shared by the oracle and the planner.
//!
//! It chooses one size `s_t` per stage `t = 0 .. T-1`, starting from a known size before
//! stage 0, to minimise
//!
//! ```text
//!     sum_t cost_t(s_t)  +  launch_cost * sum_t max(0, s_t - s_{t-1})
//! ```
//!
//! subject to `lo_t <= s_t <= hi_t` and, per stage, `s_t - s_{t-1} <= max_up_t` and
//! `s_{t-1} - s_t <= max_down_t`. Because the transition cost is linear in the increase,
//! the best predecessor of every size is found with a running minimum over smaller sizes
//! (of `V(s') - launch_cost * s'`) and a minimum over larger sizes (of `V(s')`): prefix
//! and suffix minima, or sliding-window minima when a step limit applies. A stage costs
//! O(N) and the whole program O(T * N).
//!
//! Costs are `f64`. Integer-valued costs below 2^53 are added exactly, so the oracle's
//! integer optimum comes out exact. Among equally cheap plans the solver returns the
//! greatest one (componentwise): ties prefer the larger size, which keeps plans monotone
//! in their inputs.

use std::fmt;

/// Bounds and step limits of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// Smallest allowed size.
    pub lo: u32,
    /// Largest allowed size.
    pub hi: u32,
    /// Most the size may grow from the previous stage (`u32::MAX`: no limit).
    pub max_up: u32,
    /// Most the size may shrink from the previous stage (`u32::MAX`: no limit).
    pub max_down: u32,
}

impl Stage {
    /// A stage with bounds and no step limits.
    pub fn new(lo: u32, hi: u32) -> Self {
        Stage {
            lo,
            hi,
            max_up: u32::MAX,
            max_down: u32::MAX,
        }
    }

    /// The same stage with step limits (`None`: no limit).
    pub fn with_limits(self, max_up: Option<u32>, max_down: Option<u32>) -> Self {
        Stage {
            max_up: max_up.unwrap_or(u32::MAX),
            max_down: max_down.unwrap_or(u32::MAX),
            ..self
        }
    }
}

/// An optimal size path and its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// One size per stage.
    pub sizes: Vec<u32>,
    /// Total cost: stage costs plus launch costs.
    pub cost: f64,
}

/// Why a program has no solution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpError {
    /// No stages were given.
    NoStages,
    /// A stage's bounds are inverted.
    EmptyBounds { stage: usize, lo: u32, hi: u32 },
    /// No size within a stage's bounds can be reached under the step limits.
    Unreachable {
        stage: usize,
        lo: u32,
        hi: u32,
        reachable_lo: u32,
        reachable_hi: u32,
    },
}

impl fmt::Display for DpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DpError::NoStages => write!(f, "the plan has no stages"),
            DpError::EmptyBounds { stage, lo, hi } => {
                write!(
                    f,
                    "stage {stage}: lower bound {lo} is above upper bound {hi}"
                )
            }
            DpError::Unreachable {
                stage,
                lo,
                hi,
                reachable_lo,
                reachable_hi,
            } => write!(
                f,
                "stage {stage}: bounds [{lo}, {hi}] cannot be reached under the step limits \
                 (reachable: [{reachable_lo}, {reachable_hi}])"
            ),
        }
    }
}

impl std::error::Error for DpError {}

/// Solves one program. See [`Solver`] to reuse buffers across many solves.
///
/// `stage_cost(t, lo, costs)` must fill `costs[i]` with the cost of size `lo + i` at stage
/// `t`; it is called once per stage, over the sizes reachable there.
pub fn solve(
    initial: u32,
    stages: &[Stage],
    launch_cost: f64,
    stage_cost: impl FnMut(usize, u32, &mut [f64]),
) -> Result<Solution, DpError> {
    Solver::default().solve(initial, stages, launch_cost, stage_cost)
}

/// The program's working memory, kept between solves so that a planner that solves every
/// tick does not allocate.
#[derive(Debug, Default, Clone)]
pub struct Solver {
    ranges: Vec<(u32, u32)>,
    values: Vec<f64>,
    next_values: Vec<f64>,
    costs: Vec<f64>,
    buffers: StageBuffers,
    back: BackPointers,
}

/// Best predecessor of every size of every stage, as an offset from the previous stage's
/// lowest reachable size: `u16` when every range allows it, to keep long programs small.
#[derive(Debug, Clone)]
enum BackPointers {
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

impl Default for BackPointers {
    fn default() -> Self {
        BackPointers::Narrow(Vec::new())
    }
}

impl BackPointers {
    /// Room for `cells` back-pointers, narrow when every offset fits 16 bits.
    fn reset(&mut self, wide: bool, cells: usize) {
        match (wide, &mut *self) {
            (false, BackPointers::Narrow(v)) => v.resize(cells, 0),
            (true, BackPointers::Wide(v)) => v.resize(cells, 0),
            (false, _) => *self = BackPointers::Narrow(vec![0; cells]),
            (true, _) => *self = BackPointers::Wide(vec![0; cells]),
        }
    }

    fn get(&self, index: usize) -> u32 {
        match self {
            BackPointers::Narrow(v) => v.get(index).map_or(0, |&o| u32::from(o)),
            BackPointers::Wide(v) => v.get(index).copied().unwrap_or(0),
        }
    }
}

/// A back-pointer offset: `u16` or `u32`.
trait Offset: Copy {
    fn from_index(i: u32) -> Self;
}

impl Offset for u16 {
    fn from_index(i: u32) -> Self {
        // Only chosen when every offset of the program fits.
        i as u16
    }
}

impl Offset for u32 {
    fn from_index(i: u32) -> Self {
        i
    }
}

impl Solver {
    /// Solves one program; see the module documentation and [`solve`].
    pub fn solve(
        &mut self,
        initial: u32,
        stages: &[Stage],
        launch_cost: f64,
        mut stage_cost: impl FnMut(usize, u32, &mut [f64]),
    ) -> Result<Solution, DpError> {
        if stages.is_empty() {
            return Err(DpError::NoStages);
        }
        self.reachable_ranges(initial, stages)?;
        let widest_prev = std::iter::once((initial, initial))
            .chain(self.ranges.iter().copied())
            .take(stages.len())
            .map(|(lo, hi)| hi - lo)
            .max()
            .unwrap_or(0);
        let cells: usize = self
            .ranges
            .iter()
            .map(|&(lo, hi)| (hi - lo) as usize + 1)
            .sum();
        self.back.reset(widest_prev > u32::from(u16::MAX), cells);

        self.values.clear();
        self.values.push(0.0);
        let mut prev = (initial, initial);
        let mut cell = 0usize;
        for (t, (stage, &(lo, hi))) in stages.iter().zip(&self.ranges).enumerate() {
            let n = (hi - lo) as usize + 1;
            // Both are wholly written before they are read: resizing only keeps memory.
            self.costs.resize(n, 0.0);
            stage_cost(t, lo, &mut self.costs);
            self.next_values.resize(n, 0.0);
            let step = StageStep {
                prev: &self.values,
                plo: prev.0,
                phi: prev.1,
                lo,
                hi,
                stage,
                launch_cost,
                costs: &self.costs,
            };
            // The back-pointers were sized for every stage's cells above.
            let cells = cell..cell + n;
            match &mut self.back {
                BackPointers::Narrow(v) => {
                    if let Some(back) = v.get_mut(cells) {
                        step.solve(&mut self.next_values, back, &mut self.buffers)
                    }
                }
                BackPointers::Wide(v) => {
                    if let Some(back) = v.get_mut(cells) {
                        step.solve(&mut self.next_values, back, &mut self.buffers)
                    }
                }
            }
            cell += n;
            std::mem::swap(&mut self.values, &mut self.next_values);
            prev = (lo, hi);
        }

        // The largest of the cheapest final sizes, then follow the back-pointers.
        let (mut best, mut best_i) = (f64::INFINITY, 0usize);
        for (i, &v) in self.values.iter().enumerate() {
            if v <= best || i == 0 {
                best = v;
                best_i = i;
            }
        }
        let mut sizes = vec![0u32; stages.len()];
        let mut cell_end = cells;
        let mut offset = best_i as u32;
        for (size, &(lo, hi)) in sizes.iter_mut().zip(&self.ranges).rev() {
            *size = lo + offset;
            let cell_start = cell_end - ((hi - lo) as usize + 1);
            offset = self.back.get(cell_start + offset as usize);
            cell_end = cell_start;
        }
        Ok(Solution { sizes, cost: best })
    }

    /// Narrows every stage to the sizes reachable from `initial` under the step limits.
    fn reachable_ranges(&mut self, initial: u32, stages: &[Stage]) -> Result<(), DpError> {
        self.ranges.clear();
        let (mut plo, mut phi) = (initial, initial);
        for (t, s) in stages.iter().enumerate() {
            if s.lo > s.hi {
                return Err(DpError::EmptyBounds {
                    stage: t,
                    lo: s.lo,
                    hi: s.hi,
                });
            }
            let (rlo, rhi) = (plo.saturating_sub(s.max_down), phi.saturating_add(s.max_up));
            let (lo, hi) = (s.lo.max(rlo), s.hi.min(rhi));
            if lo > hi {
                return Err(DpError::Unreachable {
                    stage: t,
                    lo: s.lo,
                    hi: s.hi,
                    reachable_lo: rlo,
                    reachable_hi: rhi,
                });
            }
            self.ranges.push((lo, hi));
            (plo, phi) = (lo, hi);
        }
        Ok(())
    }
}

/// Reusable memory of one stage's minima.
#[derive(Debug, Default, Clone)]
struct StageBuffers {
    /// Best predecessor (value, index) of each size on the launch side...
    up: Vec<(f64, u32)>,
    /// ... and on the shrink side.
    down: Vec<(f64, u32)>,
    window: MinWindow,
}

const NONE: u32 = u32::MAX;

/// One stage's inputs: the previous stage's values over sizes `plo..=phi`, this stage's
/// sizes `lo..=hi` and costs.
struct StageStep<'a> {
    prev: &'a [f64],
    plo: u32,
    phi: u32,
    lo: u32,
    hi: u32,
    stage: &'a Stage,
    launch_cost: f64,
    costs: &'a [f64],
}

impl StageStep<'_> {
    /// Fills `next` (values of sizes `lo..=hi`) and their back-pointers.
    fn solve<B: Offset>(&self, next: &mut [f64], back: &mut [B], buf: &mut StageBuffers) {
        let n = (self.hi - self.lo) as usize + 1;
        // A limit at least as wide as the ranges does not bind: use the plain minima.
        let up_binds = u64::from(self.stage.max_up) < u64::from(self.hi.saturating_sub(self.plo));
        let down_binds =
            u64::from(self.stage.max_down) < u64::from(self.phi.saturating_sub(self.lo));
        if !up_binds && !down_binds {
            return self.solve_unlimited(next, back, buf);
        }
        buf.up.clear();
        buf.up.resize(n, (f64::INFINITY, NONE));
        buf.down.clear();
        buf.down.resize(n, (f64::INFINITY, NONE));
        self.launch_side(up_binds, &mut buf.up, &mut buf.window);
        self.shrink_side(down_binds, &mut buf.down, &mut buf.window);
        let l = self.launch_cost;
        let sides = buf.up.iter().zip(&buf.down).zip(self.costs);
        let cells = next.iter_mut().zip(back.iter_mut());
        for (i, (((&(mut up, up_from), &(down, down_from)), &cost), (slot, pointer))) in
            sides.zip(cells).enumerate()
        {
            let s = f64::from(self.lo + i as u32);
            if up_from != NONE {
                up += l * s;
            }
            // Ties go to the shrink side, whose predecessor is larger. Every size in the
            // reachable range has at least one predecessor.
            let (v, from) = if down_from != NONE && (up_from == NONE || down <= up) {
                (down, down_from)
            } else {
                (up, up_from)
            };
            *slot = v + cost;
            *pointer = B::from_index(from);
        }
    }

    /// The common case, without binding step limits, in two tight passes: suffix minima
    /// of the previous values, then one forward sweep with a running prefix minimum. The
    /// sweep is split where the previous range begins and ends, so that each part is one
    /// loop over zipped slices: sizes below it only shrink to, sizes above it only grow
    /// to, sizes within it take the better of both.
    fn solve_unlimited<B: Offset>(&self, next: &mut [f64], back: &mut [B], buf: &mut StageBuffers) {
        let (prev, plo, l) = (self.prev, self.plo, self.launch_cost);
        // suffix[j]: least V over previous indices >= j (the larger index on ties).
        let suffix = &mut buf.down;
        suffix.clear();
        suffix.resize(prev.len(), (f64::INFINITY, NONE));
        let mut best = (f64::INFINITY, NONE);
        for (j, (slot, &v)) in suffix.iter_mut().zip(prev).enumerate().rev() {
            if v < best.0 {
                best = (v, j as u32);
            }
            *slot = best;
        }
        // Sizes below the previous range: every predecessor is larger.
        let below = (plo.saturating_sub(self.lo) as usize).min(next.len());
        // Sizes within it: predecessors at or below the size (index `j`), and above it.
        let within = (self.phi.min(self.hi) + 1)
            .saturating_sub(self.lo.max(plo))
            .min((next.len() - below) as u32) as usize;
        let (next_below, next) = next.split_at_mut(below);
        let (back_below, back) = back.split_at_mut(below);
        let (costs_below, costs) = self.costs.split_at(below);
        let (next_within, next_above) = next.split_at_mut(within);
        let (back_within, back_above) = back.split_at_mut(within);
        let (costs_within, costs_above) = costs.split_at(within);
        // A missing candidate is +inf, so that the comparisons below need no flags.
        // Only non-finite costs leave a size without a predecessor; it points at the
        // lowest previous size rather than nowhere.
        let pick = |up: f64, up_at: u32, down: (f64, u32)| {
            // Ties go to the shrink side, whose predecessor is larger.
            let (v, at) = if down.0 <= up { down } else { (up, up_at) };
            (v, if at == NONE { 0 } else { at })
        };
        let anywhere = suffix.first().copied().unwrap_or((f64::INFINITY, NONE));
        for ((slot, from), &cost) in next_below.iter_mut().zip(back_below).zip(costs_below) {
            let (v, at) = pick(f64::INFINITY, NONE, anywhere);
            *slot = v + cost;
            *from = B::from_index(at);
        }
        // The size of the first cell within, and its previous index.
        let first = self.lo.max(plo);
        let j0 = (first - plo) as usize;
        let (mut prefix, mut prefix_at) = (f64::INFINITY, NONE);
        let mut pushed = 0usize;
        // Predecessors below the first size within (when this range starts above the
        // previous one's start).
        for (j, &v) in prev.iter().enumerate().take(j0) {
            let key = v - l * f64::from(plo + j as u32);
            if key <= prefix {
                (prefix, prefix_at) = (key, j as u32);
            }
            pushed = j + 1;
        }
        let above = suffix
            .iter()
            .skip(j0 + 1)
            .copied()
            .chain(std::iter::repeat((f64::INFINITY, NONE)));
        let cells = next_within.iter_mut().zip(back_within).zip(costs_within);
        for (((slot, from), &cost), ((j, &v), down)) in
            cells.zip(prev.iter().enumerate().skip(j0).zip(above))
        {
            let size = plo + j as u32;
            let key = v - l * f64::from(size);
            if key <= prefix {
                (prefix, prefix_at) = (key, j as u32);
            }
            pushed = j + 1;
            let (v, at) = pick(prefix + l * f64::from(size), prefix_at, down);
            *slot = v + cost;
            *from = B::from_index(at);
        }
        // Predecessors not yet pushed (when this range ends below the previous one's
        // end) have no size above them in this stage: push them for the sizes above.
        for (j, &v) in prev.iter().enumerate().skip(pushed) {
            let key = v - l * f64::from(plo + j as u32);
            if key <= prefix {
                (prefix, prefix_at) = (key, j as u32);
            }
        }
        let size_above = first + within as u32;
        for (i, ((slot, from), &cost)) in next_above
            .iter_mut()
            .zip(back_above)
            .zip(costs_above)
            .enumerate()
        {
            let size = size_above + i as u32;
            let (v, at) = pick(
                prefix + l * f64::from(size),
                prefix_at,
                (f64::INFINITY, NONE),
            );
            *slot = v + cost;
            *from = B::from_index(at);
        }
    }

    /// For each size s, the least `V(s') - L s'` over `s'` in
    /// `[max(plo, s - max_up), min(phi, s)]`, preferring the larger `s'` on ties.
    fn launch_side(&self, binds: bool, out: &mut [(f64, u32)], window: &mut MinWindow) {
        let (prev, plo, l) = (self.prev, self.plo, self.launch_cost);
        // Indices beyond the previous range have no predecessor (+inf).
        let key = |j: usize| {
            prev.get(j)
                .map_or(f64::INFINITY, |v| v - l * f64::from(plo + j as u32))
        };
        let mut pushed = 0usize;
        let mut best = (f64::INFINITY, NONE);
        window.clear();
        for (i, slot) in out.iter_mut().enumerate() {
            let s = self.lo + i as u32;
            if s < plo {
                continue;
            }
            let last = (s.min(self.phi) - plo) as usize;
            if binds {
                while pushed <= last {
                    window.push(pushed as u32, key(pushed));
                    pushed += 1;
                }
                window.pop_before(s.saturating_sub(self.stage.max_up).max(plo) - plo);
                *slot = window.front().unwrap_or((f64::INFINITY, NONE));
            } else {
                while pushed <= last {
                    let k = key(pushed);
                    if best.1 == NONE || k <= best.0 {
                        best = (k, pushed as u32);
                    }
                    pushed += 1;
                }
                *slot = best;
            }
        }
    }

    /// For each size s, the least `V(s')` over `s'` in
    /// `[max(plo, s + 1), min(phi, s + max_down)]`, preferring the larger `s'` on ties.
    fn shrink_side(&self, binds: bool, out: &mut [(f64, u32)], window: &mut MinWindow) {
        let (prev, plo, phi) = (self.prev, self.plo, self.phi);
        if binds {
            window.clear();
            let mut pushed = 0usize;
            for (i, slot) in out.iter_mut().enumerate() {
                let s = self.lo + i as u32;
                let first = s.saturating_add(1).max(plo);
                let last = s.saturating_add(self.stage.max_down).min(phi);
                if first > last {
                    continue;
                }
                while pushed <= (last - plo) as usize {
                    window.push(
                        pushed as u32,
                        prev.get(pushed).copied().unwrap_or(f64::INFINITY),
                    );
                    pushed += 1;
                }
                window.pop_before(first - plo);
                *slot = window.front().unwrap_or((f64::INFINITY, NONE));
            }
        } else {
            // Sweep sizes downwards, keeping the least value above the current size.
            let mut best = (f64::INFINITY, NONE);
            let mut next_prev = phi; // the next previous size to take in, going down
            for (i, slot) in out.iter_mut().enumerate().rev() {
                let s = self.lo + i as u32;
                while next_prev > s && next_prev >= plo {
                    let j = (next_prev - plo) as usize;
                    let value = prev.get(j).copied().unwrap_or(f64::INFINITY);
                    if best.1 == NONE || value < best.0 {
                        best = (value, j as u32);
                    }
                    if next_prev == 0 {
                        break;
                    }
                    next_prev -= 1;
                }
                *slot = best;
            }
        }
    }
}

/// A sliding-window minimum over increasing indices (a monotone queue), preferring the
/// larger index on ties.
#[derive(Debug, Default, Clone)]
struct MinWindow {
    items: Vec<(u32, f64)>,
    head: usize,
}

impl MinWindow {
    fn clear(&mut self) {
        self.items.clear();
        self.head = 0;
    }

    fn push(&mut self, index: u32, value: f64) {
        while self.items.len() > self.head && self.items.last().is_some_and(|last| last.1 >= value)
        {
            self.items.pop();
        }
        self.items.push((index, value));
    }

    /// Drops indices below `first`.
    fn pop_before(&mut self, first: u32) {
        while self.items.get(self.head).is_some_and(|item| item.0 < first) {
            self.head += 1;
        }
    }

    fn front(&self) -> Option<(f64, u32)> {
        self.items.get(self.head).map(|&(i, v)| (v, i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Cheapest path by trying every size at every stage.
    fn brute_force(initial: u32, stages: &[Stage], l: f64, cost: &[Vec<f64>]) -> Option<f64> {
        fn go(t: usize, prev: u32, stages: &[Stage], l: f64, cost: &[Vec<f64>]) -> Option<f64> {
            if t == stages.len() {
                return Some(0.0);
            }
            let st = stages[t];
            let mut best: Option<f64> = None;
            for s in st.lo..=st.hi {
                if s > prev && s - prev > st.max_up || s < prev && prev - s > st.max_down {
                    continue;
                }
                let here = cost[t][s as usize] + l * f64::from(s.saturating_sub(prev));
                if let Some(rest) = go(t + 1, s, stages, l, cost) {
                    let total = here + rest;
                    best = Some(best.map_or(total, |b: f64| b.min(total)));
                }
            }
            best
        }
        go(0, initial, stages, l, cost)
    }

    fn path_cost(initial: u32, sizes: &[u32], l: f64, cost: &[Vec<f64>]) -> f64 {
        let mut prev = initial;
        let mut total = 0.0;
        for (t, &s) in sizes.iter().enumerate() {
            total += cost[t][s as usize] + l * f64::from(s.saturating_sub(prev));
            prev = s;
        }
        total
    }

    /// Programs over sizes `0..width`: up to `max_stages` stages with random bounds, step
    /// limits below `max_limit` or none, integer costs below `max_cost` (so that sums are
    /// exact and ties are real) and a launch cost below `max_launch`.
    fn programs(
        width: u32,
        max_stages: usize,
        max_limit: u32,
        max_cost: u32,
        max_launch: u32,
    ) -> impl Strategy<Value = (u32, Vec<Stage>, f64, Vec<Vec<f64>>)> {
        let limit = move || prop_oneof![Just(u32::MAX), 0..max_limit];
        (1..max_stages, 0..width, 0..max_launch).prop_flat_map(move |(t, initial, l)| {
            let stage = (0..width, 0..width, limit(), limit()).prop_map(|(a, b, up, down)| Stage {
                lo: a.min(b),
                hi: a.max(b),
                max_up: up,
                max_down: down,
            });
            (
                Just(initial),
                prop::collection::vec(stage, t),
                Just(f64::from(l)),
                prop::collection::vec(prop::collection::vec(0..max_cost, width as usize), t),
            )
                .prop_map(|(i, st, l, c)| {
                    let c = c
                        .into_iter()
                        .map(|row| row.into_iter().map(f64::from).collect());
                    (i, st, l, c.collect())
                })
        })
    }

    /// The cheapest cost by the plain O(T * N^2) recursion over sizes.
    fn quadratic(initial: u32, stages: &[Stage], l: f64, cost: &[Vec<f64>]) -> Option<f64> {
        let width = cost[0].len();
        let mut value: Vec<Option<f64>> = (0..width)
            .map(|s| (s as u32 == initial).then_some(0.0))
            .collect();
        for (t, st) in stages.iter().enumerate() {
            value = (0..width as u32)
                .map(|s| {
                    if s < st.lo || s > st.hi {
                        return None;
                    }
                    let best = (0..width as u32)
                        .filter_map(|p| {
                            let v = value[p as usize]?;
                            let ok =
                                (s <= p || s - p <= st.max_up) && (s >= p || p - s <= st.max_down);
                            ok.then(|| v + l * f64::from(s.saturating_sub(p)))
                        })
                        .min_by(f64::total_cmp)?;
                    Some(best + cost[t][s as usize])
                })
                .collect();
        }
        value.into_iter().flatten().min_by(f64::total_cmp)
    }

    /// The solver's answer against a reference optimum (None: no feasible plan).
    fn agrees(
        initial: u32,
        stages: &[Stage],
        l: f64,
        cost: &[Vec<f64>],
        want: Option<f64>,
    ) -> Result<(), TestCaseError> {
        let got = solve(initial, stages, l, |t, lo, out| {
            for (i, c) in out.iter_mut().enumerate() {
                *c = cost[t][lo as usize + i];
            }
        });
        match (got, want) {
            (Ok(sol), Some(best)) => {
                prop_assert_eq!(sol.cost, best);
                prop_assert_eq!(path_cost(initial, &sol.sizes, l, cost), best);
                let mut prev = initial;
                for (st, &s) in stages.iter().zip(&sol.sizes) {
                    prop_assert!(st.lo <= s && s <= st.hi);
                    prop_assert!(s <= prev.saturating_add(st.max_up));
                    prop_assert!(s >= prev.saturating_sub(st.max_down));
                    prev = s;
                }
            }
            (Err(DpError::Unreachable { .. }), None) => {}
            (Err(DpError::EmptyBounds { .. }), _) => prop_assert!(false, "bounds are ordered"),
            (got, want) => prop_assert!(false, "solver {got:?}, reference {want:?}"),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn wide_programs_equal_the_quadratic_recursion(
            (initial, stages, l, cost) in programs(70, 5, 30, 40, 6)
        ) {
            agrees(initial, &stages, l, &cost, quadratic(initial, &stages, l, &cost))?;
        }

        #[test]
        fn equals_brute_force((initial, stages, l, cost) in programs(7, 6, 4, 20, 5)) {
            agrees(initial, &stages, l, &cost, brute_force(initial, &stages, l, &cost))?;
        }
    }

    #[test]
    fn launch_cost_bridges_short_dips() {
        // Demand needs 3, 1, 3: with a launch cost of 2 keeping 3 (cost 9) beats dropping
        // to 1 and relaunching (3 + 1 + 3 + 2 * 2 = 11).
        let stages: Vec<Stage> = [3, 1, 3].iter().map(|&need| Stage::new(need, 10)).collect();
        let sol = solve(3, &stages, 2.0, |_, lo, out| {
            for (i, c) in out.iter_mut().enumerate() {
                *c = f64::from(lo + i as u32);
            }
        })
        .unwrap();
        assert_eq!(sol.sizes, vec![3, 3, 3]);
        assert_eq!(sol.cost, 9.0);
    }

    #[test]
    fn reports_unreachable_and_empty_stages() {
        let err = solve(
            0,
            &[Stage::new(5, 6).with_limits(Some(2), None)],
            1.0,
            |_, _, _| {},
        );
        assert!(matches!(err, Err(DpError::Unreachable { stage: 0, .. })));
        let err = solve(0, &[Stage::new(6, 5)], 1.0, |_, _, _| {});
        assert!(matches!(
            err,
            Err(DpError::EmptyBounds {
                stage: 0,
                lo: 6,
                hi: 5
            })
        ));
        assert_eq!(solve(0, &[], 1.0, |_, _, _| {}), Err(DpError::NoStages));
    }

    #[test]
    fn wide_ranges_use_wide_back_pointers() {
        let stages = vec![Stage::new(0, 100_000), Stage::new(70_000, 100_000)];
        let sol = solve(100_000, &stages, 1.0, |_, lo, out| {
            for (i, c) in out.iter_mut().enumerate() {
                *c = f64::from(lo + i as u32);
            }
        })
        .unwrap();
        assert_eq!(sol.sizes, vec![70_000, 70_000]);
    }
}
