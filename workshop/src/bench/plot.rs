//! The plot, `benchmarks.svg`: two panels, deliveries/s and CPU per
//! delivery, against deliveries in flight on a log scale, drawn with
//! `plotters`' SVG backend.

use plotters::prelude::*;

use super::measures::{Baseline, BaselineRow, Point, Results};
use super::report::thousands;

/// The plot's file, at the top of the output directory.
pub const PLOT_FILE: &str = "benchmarks.svg";

pub(super) const GREY: RGBColor = RGBColor(130, 130, 130);
pub(super) const GRID: RGBColor = RGBColor(225, 225, 225);
/// The shard counts' colours, in turn (matplotlib's first four).
pub(super) const SHARD_COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// The deliveries-in-flight axis, log scale: the bench's points run
/// from 100 to 10,000.
pub(super) const X_RANGE: std::ops::Range<f64> = 70.0..14_000.0;

/// A line of the plot.
pub(super) struct Series {
    pub(super) label: String,
    pub(super) color: RGBColor,
    pub(super) dashed: bool,
    pub(super) points: Vec<(f64, f64)>,
    /// Drawn as hollow markers, not joined (1-byte framing).
    pub(super) hollow: Vec<(f64, f64)>,
}

/// The two panels' series: deliveries/s, then CPU per delivery; one
/// line per shard count, and the baseline loops dashed.
pub(super) fn plot_series(r: &Results) -> (Vec<Series>, Vec<Series>) {
    let mut shard_counts: Vec<u16> =
        r.points.iter().map(|p| p.shards).collect();
    shard_counts.sort_unstable();
    shard_counts.dedup();
    let mut rate = Vec::new();
    let mut cpu = Vec::new();
    let x = |c: usize| c as f64;
    for (i, s) in shard_counts.iter().enumerate() {
        let color = SHARD_COLORS[i % SHARD_COLORS.len()];
        let label = format!("{s} shard{}", if *s == 1 { "" } else { "s" });
        let pick = |f: &dyn Fn(&Point) -> f64| {
            let mut line = Vec::new();
            let mut hollow = Vec::new();
            for p in r.points.iter().filter(|p| p.shards == *s) {
                if p.width == 2 {
                    line.push((x(p.in_flight), f(p)));
                } else {
                    hollow.push((x(p.in_flight), f(p)));
                }
            }
            (line, hollow)
        };
        let (points, hollow) = pick(&|p: &Point| p.rate());
        rate.push(Series {
            label: label.clone(),
            color,
            dashed: false,
            points,
            hollow,
        });
        let (points, hollow) = pick(&|p: &Point| p.cpu_us);
        cpu.push(Series { label, color, dashed: false, points, hollow });
    }
    let base = |f: &dyn Fn(&BaselineRow) -> Option<f64>| {
        r.baselines
            .iter()
            .filter_map(|b| Some((x(b.0), f(b)?)))
            .collect::<Vec<_>>()
    };
    let one = base(&|b| b.1.as_ref().map(Baseline::rate));
    let core = base(&|b| b.2.as_ref().map(Baseline::rate));
    let one_cpu = base(&|b| b.1.as_ref().map(|b| b.loop_cpu_us));
    let cores =
        r.baselines.iter().find_map(|b| b.2.as_ref()).map_or(0, |b| b.loops);
    if !one.is_empty() {
        let dashed = |label: String, color, points| Series {
            label,
            color,
            dashed: true,
            points,
            hollow: vec![],
        };
        rate.push(dashed("one loop".into(), BLACK, one));
        let label = format!("{cores} loops (one per core)");
        rate.push(dashed(label, GREY, core));
        cpu.push(dashed("one loop".into(), BLACK, one_cpu));
    }
    (rate, cpu)
}

/// Two panels, deliveries/s and CPU per delivery, against deliveries in
/// flight on a log scale; an SVG, whose text the viewer sets, so that
/// drawing it needs no font files.
pub(super) fn plot(r: &Results) -> Result<String, String> {
    let (rate, cpu) = plot_series(r);
    let mut svg = String::new();
    draw(&mut svg, &rate, &cpu).map_err(|e| format!("plot: {e}"))?;
    Ok(svg)
}

pub(super) type DrawResult = Result<(), Box<dyn std::error::Error>>;

pub(super) fn draw(
    svg: &mut String,
    rate: &[Series],
    cpu: &[Series],
) -> DrawResult {
    let root = SVGBackend::with_string(svg, (1200, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = "shardspawn-bench: shardspawn vs. a bare spawn/waitpid loop";
    let root = root.titled(title, ("sans-serif", 24))?;
    let (panels, foot) = root.split_vertically(530);
    let halves = panels.split_evenly((1, 2));
    panel(&halves[0], "deliveries per second", rate)?;
    panel(&halves[1], "CPU µs/delivery (supervisor+shards)", cpu)?;
    foot.draw(&Circle::new((40, 20), 5, BLACK.stroke_width(2)))?;
    foot.draw(&Text::new(
        "hollow: 1-byte framing; filled: 2-byte",
        (55, 12),
        ("sans-serif", 16),
    ))?;
    root.present()?;
    Ok(())
}

/// Draws one panel, its legend in the upper left.
pub(super) fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().chain(&s.hollow))
        .map(|p| p.1)
        .fold(0.0, f64::max);
    let (step, top) = nice_axis(ymax);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(X_RANGE.log_scale(), 0.0..top)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(GRID)
        .y_labels((top / step).round() as usize + 1)
        .x_label_formatter(&|x| thousands(*x))
        .y_label_formatter(&|y| tick_label(*y, step))
        .x_desc("deliveries in flight")
        .label_style(("sans-serif", 15))
        .draw()?;
    for s in series {
        let line = s.color.stroke_width(3);
        let points = s.points.iter().copied();
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(points, 10, 6, line))?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], line)
                });
        } else {
            chart
                .draw_series(LineSeries::new(points, line))?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], line)
                });
        }
        let filled = s.color.filled();
        let hollow = s.color.stroke_width(2);
        chart.draw_series(
            s.points.iter().map(|&p| Circle::new(p, 5, filled)),
        )?;
        chart.draw_series(
            s.hollow.iter().map(|&p| Circle::new(p, 5, hollow)),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

/// A tick step of 1, 2 or 5 × 10^k giving about five ticks up to
/// `max`, and the axis top (a multiple of the step, above `max`).
pub(super) fn nice_axis(max: f64) -> (f64, f64) {
    if max.is_nan() || max <= 0.0 {
        return (1.0, 5.0);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let top = ((max / step).floor() + 1.0) * step;
    (step, top)
}

pub(super) fn tick_label(y: f64, step: f64) -> String {
    if step >= 1.0 {
        thousands(y)
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{y:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::measures::Results;
    use crate::bench::measures::sample;

    use super::*;

    #[test]
    fn plot_is_an_svg_with_every_series() {
        let svg = plot(&sample()).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
        for name in [
            "1 shard",
            "2 shards",
            "one loop",
            "2 loops (one per core)",
            "deliveries per second",
            "CPU µs/delivery",
            "deliveries in flight",
            "hollow: 1-byte framing",
        ] {
            assert!(svg.contains(name), "no {name:?} in the plot");
        }
        assert!(svg.len() < 200_000, "{} bytes", svg.len());
        let empty = plot(&Results::default()).unwrap();
        assert!(empty.starts_with("<svg") && !empty.contains("one loop"));
    }
}
