//! A fleet's picture on the status page: a server-rendered SVG of demand, serving and
//! billed instances over the last hours, and the planned serving and forecast ahead.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::{escape, span};
use crate::operator::HistoryPoint;

/// What one fleet's picture shows.
pub(crate) struct Chart<'a> {
    /// Oldest first.
    pub history: &'a [HistoryPoint],
    /// The latest tick: the "now" line, where the plan starts.
    pub now: SystemTime,
    /// The plan's step.
    pub step: Duration,
    /// Planned serving per step ahead, the first from `now`.
    pub trajectory: &'a [u32],
    /// Forecast demand per step ahead: (quantile, value) pairs.
    pub forecast: &'a [Vec<(f64, f64)>],
    pub bounds: (u32, u32),
    /// The fleet's name, for the picture's accessible label.
    pub label: &'a str,
}

const W: f64 = 480.0;
const H: f64 = 200.0;
const LEFT: f64 = 34.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 22.0;

/// The picture as an SVG element: demand, serving and billed over the history's span up
/// to now, then the planned serving (dashed) and the forecast demand (dashed, its spread
/// shaded) over the next part of the plan, half the history's span at most.
pub(crate) fn chart_svg(c: &Chart<'_>) -> String {
    let step = c.step.as_secs_f64().max(1e-3);
    let rel = |at: SystemTime| -> f64 {
        match at.duration_since(c.now) {
            Ok(after) => after.as_secs_f64(),
            Err(before) => -before.duration().as_secs_f64(),
        }
    };
    let first = c.history.first().map_or(0.0, |p| rel(p.at).min(0.0));
    let past = (-first).max(10.0 * step);
    let plan_steps = c.trajectory.len().max(c.forecast.len());
    let ahead_available = plan_steps as f64 * step;
    let ahead = if plan_steps == 0 {
        0.0
    } else {
        ahead_available.min((past / 2.0).max(5.0 * step))
    };
    let (t0, t1) = (-past, ahead);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |t: f64| LEFT + (t - t0) / (t1 - t0) * pw;

    // Steps ahead that are drawn, with their start times.
    let start = |k: usize| k as f64 * step;
    let shown = |k: usize| start(k) < ahead;
    let median = |q: &Vec<(f64, f64)>| -> Option<f64> {
        q.iter()
            .filter(|(_, v)| v.is_finite())
            .min_by(|a, b| (a.0 - 0.5).abs().total_cmp(&(b.0 - 0.5).abs()))
            .map(|(_, v)| *v)
    };
    let spread = |q: &Vec<(f64, f64)>| -> Option<(f64, f64)> {
        let values = q.iter().map(|(_, v)| *v).filter(|v| v.is_finite());
        let lo = values.clone().fold(f64::INFINITY, f64::min);
        let hi = values.fold(f64::NEG_INFINITY, f64::max);
        (lo.is_finite() && hi.is_finite()).then_some((lo, hi))
    };

    // The value axis: from zero to a round number above everything shown.
    let mut top: f64 = f64::from(c.bounds.0).max(1.0);
    for p in c.history {
        top = top.max(f64::from(p.billed)).max(f64::from(p.serving));
        if let Some(d) = p.demand.filter(|d| d.is_finite()) {
            top = top.max(d);
        }
    }
    for (_, v) in c.trajectory.iter().enumerate().filter(|(k, _)| shown(*k)) {
        top = top.max(f64::from(*v));
    }
    for (_, q) in c.forecast.iter().enumerate().filter(|(k, _)| shown(*k)) {
        if let Some((_, hi)) = spread(q) {
            top = top.max(hi);
        }
    }
    let (top, tick) = nice_axis(top * 1.05);
    let y = |v: f64| TOP + ph - (v.clamp(0.0, top) / top) * ph;

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" \
         xmlns=\"http://www.w3.org/2000/svg\" preserveAspectRatio=\"xMidYMid meet\">\
         <title>{}</title>",
        escape(&format!(
            "{}: demand, serving and billed instances over the last {}, and the plan ahead",
            c.label,
            span(Duration::from_secs_f64(past))
        )),
        escape(&format!(
            "{}: the last {}",
            c.label,
            span(Duration::from_secs_f64(past))
        ))
    );
    // The future's background.
    if ahead > 0.0 {
        let _ = write!(
            svg,
            "<rect class=\"future\" x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{ph}\"/>",
            x(0.0),
            x(ahead) - x(0.0)
        );
    }
    // Horizontal grid and value labels.
    let mut v = 0.0;
    while v <= top + 1e-9 {
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            y(v),
            y(v),
            LEFT - 4.0,
            y(v) + 4.0,
            number(v)
        );
        v += tick;
    }
    // Time labels, relative to now.
    let interval = time_interval(t1 - t0);
    let first_k = (t0 / interval).ceil() as i64;
    let last_k = (t1 / interval).floor() as i64;
    for k in first_k..=last_k {
        let t = k as f64 * interval;
        let tx = x(t);
        // Leave room for the "now" label and keep labels inside the picture.
        if k == 0 || !(LEFT + 10.0..=W - 14.0).contains(&tx) {
            continue;
        }
        let sign = if k < 0 { "−" } else { "+" };
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{sign}{}</text>",
            TOP + ph,
            TOP + ph + 4.0,
            H - 6.0,
            span(Duration::from_secs_f64(t.abs()))
        );
    }
    // The bounds in force, where they fall within the axis.
    for (name, bound) in [("min", c.bounds.0), ("max", c.bounds.1)] {
        let b = f64::from(bound);
        if bound > 0 && b <= top {
            let _ = write!(
                svg,
                "<line class=\"bound\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{name} {bound}</text>",
                W - RIGHT,
                y(b),
                y(b),
                W - RIGHT - 2.0,
                y(b) - 3.0
            );
        }
    }

    // Billed (shaded below), serving: steps, as instance counts change at ticks.
    let counts = |f: fn(&HistoryPoint) -> u32| -> Vec<(f64, f64)> {
        let mut points = Vec::with_capacity(c.history.len() * 2);
        for (i, p) in c.history.iter().enumerate() {
            let t = rel(p.at).max(t0);
            let v = f64::from(f(p));
            if i > 0
                && let Some(&(_, previous)) = points.last()
            {
                points.push((t, previous));
            }
            points.push((t, v));
        }
        points
    };
    let billed = counts(|p| p.billed);
    if let (Some(&(first_t, _)), Some(&(last_t, _))) = (billed.first(), billed.last()) {
        let mut area = format!("{:.1},{:.1} ", x(first_t), y(0.0));
        for &(t, v) in &billed {
            let _ = write!(area, "{:.1},{:.1} ", x(t), y(v));
        }
        let _ = write!(area, "{:.1},{:.1}", x(last_t), y(0.0));
        let _ = write!(svg, "<polygon class=\"billed-area\" points=\"{area}\"/>");
    }
    svg.push_str(&polyline(
        "billed",
        billed.iter().map(|&(t, v)| (x(t), y(v))),
    ));
    let serving = counts(|p| p.serving);
    svg.push_str(&polyline(
        "serving",
        serving.iter().map(|&(t, v)| (x(t), y(v))),
    ));
    // Demand: a line, broken where the signal was not read.
    let mut run: Vec<(f64, f64)> = Vec::new();
    for p in c.history {
        match p.demand.filter(|d| d.is_finite()) {
            Some(d) => run.push((x(rel(p.at).max(t0)), y(d))),
            None => {
                svg.push_str(&polyline("demand", run.drain(..)));
            }
        }
    }
    svg.push_str(&polyline("demand", run.drain(..)));

    // Ahead: the forecast's spread, its median, and the planned serving.
    if ahead > 0.0 {
        let end = |k: usize| (start(k) + step).min(ahead);
        let mut upper = Vec::new();
        let mut lower = Vec::new();
        let mut middle = Vec::new();
        for (k, q) in c.forecast.iter().enumerate().filter(|(k, _)| shown(*k)) {
            let mid = (start(k) + end(k)) / 2.0;
            if let Some((lo, hi)) = spread(q) {
                upper.push((x(mid), y(hi)));
                lower.push((x(mid), y(lo)));
            }
            if let Some(m) = median(q) {
                middle.push((x(mid), y(m)));
            }
        }
        if upper.len() > 1 {
            let points: Vec<String> = upper
                .iter()
                .chain(lower.iter().rev())
                .map(|(px, py)| format!("{px:.1},{py:.1}"))
                .collect();
            let _ = write!(
                svg,
                "<polygon class=\"band\" points=\"{}\"/>",
                points.join(" ")
            );
        }
        svg.push_str(&polyline("demand ahead", middle.into_iter()));
        let planned = c
            .trajectory
            .iter()
            .enumerate()
            .filter(|(k, _)| shown(*k))
            .flat_map(|(k, v)| {
                let v = y(f64::from(*v));
                [(x(start(k)), v), (x(end(k)), v)]
            });
        svg.push_str(&polyline("serving ahead", planned));
    }

    // Now.
    let _ = write!(
        svg,
        "<line class=\"now\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">now</text>",
        x(0.0),
        x(0.0),
        TOP - 2.0,
        TOP + ph,
        x(0.0).min(W - 14.0),
        H - 6.0
    );
    if c.history.is_empty() && plan_steps == 0 {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no tick yet</text>",
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn polyline(class: &str, points: impl Iterator<Item = (f64, f64)>) -> String {
    let points: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    if points.len() < 2 {
        return String::new();
    }
    format!(
        "<polyline class=\"{class}\" points=\"{}\"/>",
        points.join(" ")
    )
}

/// A round axis top at or above `value`, and the distance between its ticks (2 to 5
/// intervals: 1, 2 or 5 times a power of ten).
fn nice_axis(value: f64) -> (f64, f64) {
    let value = if value.is_finite() && value > 0.0 {
        value
    } else {
        1.0
    };
    let magnitude = 10f64.powf((value / 4.0).log10().floor());
    let tick = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|t| value / t <= 4.0)
        .unwrap_or(10.0 * magnitude)
        .max(1.0);
    ((value / tick).ceil() * tick, tick)
}

/// A round time interval between labels: at most six across `width` seconds.
fn time_interval(width: f64) -> f64 {
    const CHOICES: [f64; 19] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10_800.0, 21_600.0, 43_200.0, 86_400.0, 172_800.0,
    ];
    CHOICES
        .iter()
        .copied()
        .find(|i| width / i <= 6.0)
        .unwrap_or(604_800.0)
}

fn number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn an_empty_fleet_draws_a_picture_saying_so() {
        let chart = Chart {
            history: &[],
            now: at(0),
            step: Duration::from_secs(60),
            trajectory: &[],
            forecast: &[],
            bounds: (0, 0),
            label: "web",
        };
        let svg = chart_svg(&chart);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("no tick yet"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn the_picture_shows_history_and_the_plan_ahead() {
        let history: Vec<HistoryPoint> = (0..30)
            .map(|i| HistoryPoint {
                at: at(i * 60),
                demand: if i == 10 {
                    None
                } else {
                    Some(5.0 + (i % 4) as f64)
                },
                serving: 6,
                billed: 7,
            })
            .collect();
        let forecast = vec![vec![(0.1, 4.0), (0.5, 6.0), (0.9, f64::NAN)]; 20];
        let chart = Chart {
            history: &history,
            now: at(29 * 60),
            step: Duration::from_secs(60),
            trajectory: &[8; 20],
            forecast: &forecast,
            bounds: (2, 80),
            label: "a<b & \"c\"",
        };
        let svg = chart_svg(&chart);
        for class in [
            "billed",
            "serving",
            "demand",
            "demand ahead",
            "serving ahead",
            "band",
            "now",
        ] {
            assert!(
                svg.contains(&format!("class=\"{class}\"")),
                "{class} in {svg}"
            );
        }
        // The gap in demand splits its line in two.
        assert_eq!(svg.matches("class=\"demand\"").count(), 2);
        assert!(svg.contains("a&lt;b &amp; &quot;c&quot;"));
        assert!(!svg.contains("a<b"));
        assert!(!svg.contains("NaN"));
        // The max bound, far above the values, is not drawn; min is.
        assert!(svg.contains("min 2") && !svg.contains("max 80"));
    }

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_axis(0.0), (1.0, 1.0));
        assert_eq!(nice_axis(3.2), (4.0, 1.0));
        assert_eq!(nice_axis(7.5), (8.0, 2.0));
        assert_eq!(nice_axis(37.0), (40.0, 10.0));
        assert_eq!(nice_axis(130.0), (150.0, 50.0));
        assert_eq!(time_interval(6.0 * 3600.0 + 7200.0), 7200.0);
        assert_eq!(time_interval(40.0), 10.0);
        assert_eq!(span(Duration::from_secs(3 * 3600 + 20 * 60)), "3h 20m");
        assert_eq!(span(Duration::from_secs(45)), "45s");
    }
}
