//! The replay picture: demand, serving and billed instances over the whole trace, and a
//! zoom on its busiest day, for one or more policies.

use std::path::Path;

use plotters::prelude::*;

use crate::replay::{Run, Scenario};

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

/// Writes an SVG to `out`.
pub fn svg(out: &Path, scenario: &Scenario, runs: &[&Run], title: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(out, (1400, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    let steps = scenario.steps();
    let per_day = (86_400 / scenario.step.as_secs().max(1)) as usize;
    let day = busiest_window(&scenario.demand, per_day.min(steps));
    panel(
        &top,
        scenario,
        runs,
        0..steps,
        &format!("{title}: whole trace"),
    )?;
    panel(
        &bottom,
        scenario,
        runs,
        day,
        &format!("{title}: busiest day"),
    )?;
    root.present()?;
    Ok(())
}

/// The window of `len` steps with the most demand.
fn busiest_window(demand: &[f64], len: usize) -> std::ops::Range<usize> {
    let len = len.max(1).min(demand.len());
    let mut sum: f64 = demand.iter().take(len).sum();
    let (mut best, mut best_sum) = (0, sum);
    // Sliding one step: the window starting at `start` gains `entering` and loses `leaving`.
    let slides = demand.iter().zip(demand.iter().skip(len));
    for (start, (leaving, entering)) in (1..).zip(slides) {
        sum += entering - leaving;
        if sum > best_sum {
            best = start;
            best_sum = sum;
        }
    }
    best..best + len
}

/// Downsamples to at most `points` by taking each bucket's maximum (peaks stay visible).
fn series(
    values: impl Iterator<Item = f64>,
    range: std::ops::Range<usize>,
    points: usize,
    hours_per_step: f64,
) -> Vec<(f64, f64)> {
    let values: Vec<f64> = values.skip(range.start).take(range.len()).collect();
    let bucket = values.len().div_ceil(points).max(1);
    values
        .chunks(bucket)
        .enumerate()
        .map(|(k, chunk)| {
            let t = (range.start + k * bucket) as f64 * hours_per_step;
            (t, chunk.iter().fold(0.0_f64, |a, b| a.max(*b)))
        })
        .collect()
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    scenario: &Scenario,
    runs: &[&Run],
    range: std::ops::Range<usize>,
    caption: &str,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let hours = scenario.step.as_secs_f64() / 3600.0;
    let x0 = range.start as f64 * hours;
    let x1 = range.end.max(range.start + 1) as f64 * hours;
    let mut y_max = scenario
        .demand
        .iter()
        .skip(range.start)
        .take(range.len())
        .fold(1.0_f64, |a, b| a.max(*b));
    for run in runs {
        let billed_max = run
            .billed
            .iter()
            .skip(range.start)
            .take(range.len())
            .copied()
            .max()
            .unwrap_or(0);
        y_max = y_max.max(billed_max as f64);
    }
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0.0..y_max * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("time since the trace's start (hours)")
        .y_desc("instances")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let points = 1500;
    let demand = series(
        scenario.demand.iter().copied(),
        range.clone(),
        points,
        hours,
    );
    chart
        .draw_series(AreaSeries::new(demand, 0.0, BLACK.mix(0.15)).border_style(BLACK.mix(0.6)))?
        .label("demand")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], BLACK.mix(0.3).filled()));
    for (run, &colour) in runs.iter().zip(COLOURS.iter().cycle()) {
        let serving = series(
            run.serving.iter().map(|v| f64::from(*v)),
            range.clone(),
            points,
            hours,
        );
        let billed = series(
            run.billed.iter().map(|v| f64::from(*v)),
            range.clone(),
            points,
            hours,
        );
        chart
            .draw_series(LineSeries::new(serving, colour.stroke_width(2)))?
            .label(format!("{} serving", run.policy))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(DashedLineSeries::new(
                billed,
                6,
                4,
                colour.mix(0.7).stroke_width(1),
            ))?
            .label(format!("{} billed", run.policy))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.mix(0.7).stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_window_is_found() {
        let demand = [1.0, 1.0, 5.0, 6.0, 1.0, 9.0, 1.0];
        assert_eq!(busiest_window(&demand, 2), 2..4);
        assert_eq!(busiest_window(&demand, 1), 5..6);
        assert_eq!(busiest_window(&demand, 99), 0..7);
    }
}
