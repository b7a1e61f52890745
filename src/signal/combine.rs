//! How a fleet's several signals make one demand: the largest at each step, so that the
//! signal asking for the most instances wins (the safest). Pure functions: the
//! controller and `fleetscale plan` both combine through them.
//!
//! A gap (`NaN`: a step a signal has no value for) gives way to any value; a step where
//! every signal has a gap stays a gap.

/// The larger of two demands; a gap gives way to a value.
pub fn larger(a: f64, b: f64) -> f64 {
    if a.is_nan() {
        b
    } else if b.is_nan() {
        a
    } else {
        a.max(b)
    }
}

/// The largest of the demands read at one step, or `None` when no signal gave one.
pub fn largest(demands: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    demands
        .into_iter()
        .flatten()
        .filter(|d| !d.is_nan())
        .reduce(larger)
}

/// The step-wise largest of several histories. Each is oldest first and ends at the
/// same step (the latest complete one), so they are aligned at their ends; the result
/// is as long as the longest, with gaps where no history has a value.
pub fn stepwise_largest(histories: &[Vec<f64>]) -> Vec<f64> {
    let len = histories.iter().map(Vec::len).max().unwrap_or(0);
    let mut combined = vec![f64::NAN; len];
    for history in histories {
        // Unfiltered, unlike `merge_into`: one history comes back bit for bit as it is.
        for (slot, value) in combined.iter_mut().rev().zip(history.iter().rev()) {
            *slot = larger(*slot, *value);
        }
    }
    combined
}

/// Merges `values` (oldest first) into the last `values.len()` of `slots` (oldest
/// first), aligned at their ends: each slot keeps the larger. A value that is not a
/// finite, non-negative demand leaves its slot as it was.
pub fn merge_into<'a>(slots: impl DoubleEndedIterator<Item = &'a mut f64>, values: &[f64]) {
    for (slot, value) in slots.rev().zip(values.iter().rev()) {
        if value.is_finite() && *value >= 0.0 {
            *slot = larger(*slot, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn demand() -> impl Strategy<Value = f64> {
        prop_oneof![1 => Just(f64::NAN), 4 => 0.0..1000.0f64]
    }

    fn same(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    #[test]
    fn a_gap_gives_way_and_all_gaps_stay_a_gap() {
        assert_eq!(
            largest([None, Some(3.0), Some(f64::NAN), Some(5.0)]),
            Some(5.0)
        );
        assert_eq!(largest([None, Some(f64::NAN)]), None);
        assert_eq!(larger(f64::NAN, 2.0), 2.0);
        assert!(stepwise_largest(&[vec![f64::NAN], vec![f64::NAN]])[0].is_nan());
        // Ends aligned: the shorter history covers the latest steps only.
        let combined = stepwise_largest(&[vec![1.0, 9.0, 2.0], vec![5.0, 1.0]]);
        assert!(same(&combined, &[1.0, 9.0, 2.0]), "{combined:?}");
        let combined = stepwise_largest(&[vec![1.0, f64::NAN, 2.0], vec![5.0, 7.0]]);
        assert!(same(&combined, &[1.0, 5.0, 7.0]), "{combined:?}");
    }

    proptest! {
        /// Each step of the combination is the largest value any history has at that
        /// step (counted from the end), or a gap where none has one.
        #[test]
        fn each_step_is_the_largest_there(
            histories in prop::collection::vec(prop::collection::vec(demand(), 0..30), 1..5)
        ) {
            let combined = stepwise_largest(&histories);
            let len = histories.iter().map(Vec::len).max().unwrap_or(0);
            prop_assert_eq!(combined.len(), len);
            for back in 0..len {
                let at_step: Vec<f64> = histories
                    .iter()
                    .filter_map(|h| h.len().checked_sub(back + 1).map(|i| h[i]))
                    .filter(|v| !v.is_nan())
                    .collect();
                let got = combined[len - 1 - back];
                match at_step.iter().copied().reduce(f64::max) {
                    None => prop_assert!(got.is_nan()),
                    Some(most) => prop_assert_eq!(got, most),
                }
            }
        }

        /// One signal's history is its own combination, bit for bit (a fleet with one
        /// signal plans exactly as before); and the order of the signals does not matter.
        #[test]
        fn one_history_is_itself_and_order_does_not_matter(
            a in prop::collection::vec(demand(), 0..30),
            b in prop::collection::vec(demand(), 0..30),
        ) {
            prop_assert!(same(&stepwise_largest(std::slice::from_ref(&a)), &a));
            prop_assert!(same(
                &stepwise_largest(&[a.clone(), b.clone()]),
                &stepwise_largest(&[b, a]),
            ));
        }

        /// Filling a signal's gap into the combination later gives what combining with
        /// it from the start would have.
        #[test]
        fn a_gap_filled_later_is_as_if_read_in_time(
            a in prop::collection::vec(demand(), 1..30),
            b in prop::collection::vec(demand(), 1..30),
        ) {
            let mut later = stepwise_largest(std::slice::from_ref(&a));
            merge_into(later.iter_mut(), &b);
            let mut at_once = stepwise_largest(&[a.clone(), b.clone()]);
            // `merge_into` does not lengthen: compare over `a`'s steps.
            let extra = at_once.len() - a.len();
            at_once.drain(..extra);
            prop_assert!(same(&later, &at_once));
        }
    }
}
