//! `--html PATH`: a self-contained report page (no script, no external file) with two plots
//! drawn by plotters' SVG backend: latency by percentile, on HdrHistogram's usual log scale
//! of 1/(1-q), each link profile's configured round trip dashed beneath its curve; and
//! throughput second by second from the start of the measurement. Legends sit beside the
//! plots, never on the lines. In compare mode both servers share each plot.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::Report;

const WIDTH: u32 = 760;
const HEIGHT: u32 = 340;
/// Room beside each plot for its legend.
const LEGEND_WIDTH: u32 = 190;
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];
/// Tick labels, axis names and legends (plotters draws text at 1/1.24 of the size asked).
const LABELS: (&str, u32) = ("sans-serif", 15);
/// The percentiles marked on the latency plot's x axis, at log10(1 / (1 - q)).
const PERCENTILES: [(f64, &str); 7] = [
    (0.0, "0%"),
    (0.5, "50%"),
    (0.9, "90%"),
    (0.99, "99%"),
    (0.999, "99.9%"),
    (0.9999, "99.99%"),
    (0.99999, "99.999%"),
];

/// One latency curve.
pub struct Curve<'a> {
    pub name: String,
    pub latency: &'a Histogram<u64>,
    /// The link's configured round trip, drawn as a reference line.
    pub rtt: Option<Duration>,
}

/// One throughput line: (seconds since the measurement began, messages per second over
/// the second that ended then).
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Page<'a> {
    pub title: String,
    /// A sentence under the title.
    pub summary: String,
    pub curves: Vec<Curve<'a>>,
    pub lines: Vec<Line>,
    /// The JSON report, shown at the end.
    pub json: String,
}

impl<'a> Page<'a> {
    /// The page of one run; `timeline` holds (seconds into the run, messages per second).
    pub fn single(report: &'a Report<'a>, timeline: &[(f64, f64)]) -> Page<'a> {
        let mut curves = vec![Curve {
            name: if report.profiles.is_empty() {
                "latency".to_owned()
            } else {
                "all connections".to_owned()
            },
            latency: &report.stats.latency_us,
            rtt: None,
        }];
        for profile in &report.profiles {
            curves.push(Curve {
                name: profile.name.to_owned(),
                latency: &profile.stats.latency_us,
                rtt: Some(profile.rtt),
            });
        }
        Page {
            title: format!("ringws-loadgen: {}", report.scenario),
            summary: format!(
                "{}, {} connections, {:.1} s measured: {:.0} messages per second.",
                report.url,
                report.connections,
                report.duration_secs,
                report.throughput()
            ),
            curves,
            lines: vec![Line {
                name: "throughput".to_owned(),
                points: timeline.to_vec(),
            }],
            json: serde_json::to_string_pretty(&report.to_json()).unwrap_or_default(),
        }
    }
}

/// The whole HTML document.
pub fn page(page: &Page<'_>) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>\
         body{{font-family:sans-serif;max-width:{w}px;margin:2em auto;color:#222}} \
         pre{{background:#f4f4f4;padding:1em;overflow:auto}} svg{{display:block}}</style>\
         </head><body>\n<h1>{title}</h1>\n<p>{summary}</p>\n<h2>Latency by percentile</h2>\n\
         {latency}\n<h2>Throughput over time</h2>\n{throughput}\n<h2>Report</h2>\n<pre>{json}\
         </pre>\n</body></html>\n",
        title = escape(&page.title),
        summary = escape(&page.summary),
        w = WIDTH,
        latency = svg_or_error(|svg| latency_plot(svg, &page.curves)),
        throughput = svg_or_error(|svg| throughput_plot(svg, &page.lines)),
        json = escape(&page.json),
    )
}

type Drawn = Result<(), Box<dyn std::error::Error>>;

fn svg_or_error(draw: impl FnOnce(&mut String) -> Drawn) -> String {
    let mut svg = String::new();
    match draw(&mut svg) {
        Ok(()) => svg,
        Err(error) => format!(
            "<p>(the plot could not be drawn: {})</p>",
            escape(&error.to_string())
        ),
    }
}

/// Where a percentile sits on the x axis.
fn x_of(quantile: f64) -> f64 {
    (1.0 / (1.0 - quantile)).log10()
}

fn latency_plot(svg: &mut String, curves: &[Curve<'_>]) -> Drawn {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, side) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    let last = PERCENTILES[PERCENTILES.len() - 1].0;
    let highest_ms = curves
        .iter()
        .filter(|c| !c.latency.is_empty())
        .map(|c| c.latency.value_at_quantile(last) as f64 / 1000.0)
        .chain(
            curves
                .iter()
                .filter_map(|c| c.rtt)
                .map(|rtt| rtt.as_secs_f64() * 1000.0),
        )
        .fold(0.0, f64::max);
    let y_max = nice_ceiling(highest_ms * 1.05);
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_of(last), 0.0..y_max)?;
    // The x axis is marked at the percentiles themselves, not at round numbers of the log.
    chart
        .configure_mesh()
        .x_labels(0)
        .disable_x_mesh()
        .label_style(LABELS)
        .axis_desc_style(LABELS)
        .y_label_formatter(&|y| round_label(*y))
        .y_labels(6)
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .light_line_style(WHITE)
        .draw()?;
    for &(q, label) in &PERCENTILES {
        let x = x_of(q);
        chart.draw_series(LineSeries::new(
            [(x, 0.0), (x, y_max)],
            RGBColor(0xdd, 0xdd, 0xdd).stroke_width(1),
        ))?;
        let (px, py) = chart.backend_coord(&(x, 0.0));
        plot.draw(&Text::new(
            label,
            (px - 3 * label.len() as i32, py + 8),
            LABELS.into_font().color(&BLACK),
        ))?;
    }
    let mut legend = Vec::new();
    for (i, curve) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if !curve.latency.is_empty() {
            let points = PERCENTILES
                .iter()
                .map(|&(q, _)| (x_of(q), curve.latency.value_at_quantile(q) as f64 / 1000.0));
            chart.draw_series(LineSeries::new(points, colour.stroke_width(2)))?;
            legend.push((curve.name.clone(), colour, false));
        }
        if let Some(rtt) = curve.rtt {
            let ms = rtt.as_secs_f64() * 1000.0;
            chart.draw_series(DashedLineSeries::new(
                [(0.0, ms), (x_of(last), ms)],
                6,
                4,
                colour.stroke_width(1),
            ))?;
            legend.push((
                format!("{} round trip {}", curve.name, ms_text(ms)),
                colour,
                true,
            ));
        }
    }
    draw_legend(&side, &legend)?;
    root.present()?;
    Ok(())
}

fn throughput_plot(svg: &mut String, lines: &[Line]) -> Drawn {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, side) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    // The last sample lands a hair after a whole second: do not start another for it.
    let t_max = lines
        .iter()
        .filter_map(|l| l.points.last().map(|p| p.0))
        .fold(1.0, f64::max);
    let t_max = (t_max - 0.05).ceil().max(1.0);
    let y_max = nice_ceiling(
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.05,
    );
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_labels((t_max as usize + 1).min(12))
        .y_labels(6)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(LABELS)
        .axis_desc_style(LABELS)
        .y_label_formatter(&|y| round_label(*y))
        .x_desc("seconds")
        .y_desc("messages per second")
        .light_line_style(WHITE)
        .draw()?;
    let mut legend = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // Each second's rate held across that second, from the first one on.
        let mut points = Vec::with_capacity(line.points.len() * 2);
        let mut from = 0.0;
        for &(until, rate) in &line.points {
            points.push((from, rate));
            points.push((until, rate));
            from = until;
        }
        chart.draw_series(LineSeries::new(points, colour.stroke_width(2)))?;
        legend.push((line.name.clone(), colour, false));
    }
    draw_legend(&side, &legend)?;
    root.present()?;
    Ok(())
}

/// Legend entries in the area beside the plot: a line sample (dashed for reference lines)
/// and the name.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(String, RGBColor, bool)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (i, (name, colour, dashed)) in entries.iter().enumerate() {
        let y = 24 + 24 * i as i32;
        if *dashed {
            for x in [4, 14] {
                area.draw(&PathElement::new(
                    [(x, y), (x + 6, y)],
                    colour.stroke_width(1),
                ))?;
            }
        } else {
            area.draw(&PathElement::new([(4, y), (24, y)], colour.stroke_width(2)))?;
        }
        area.draw(&Text::new(
            name.clone(),
            (30, y - 7),
            LABELS.into_font().color(&BLACK),
        ))?;
    }
    Ok(())
}

/// The smallest of 1, 2, 2.5, 5 × 10^k at or above `value`: axis ends on a round number.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= value * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// Tick labels without noise: 20k, 1.5M, 0.25.
fn round_label(value: f64) -> String {
    let trim = |text: String| {
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            text
        }
    };
    match value.abs() {
        v if v >= 1e6 => trim(format!("{:.2}", value / 1e6)) + "M",
        v if v >= 1e4 => trim(format!("{:.1}", value / 1e3)) + "k",
        v if v >= 10.0 => format!("{value:.0}"),
        _ => trim(format!("{value:.3}")),
    }
}

fn ms_text(ms: f64) -> String {
    round_label(ms) + " ms"
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => {
                let _ = write!(out, "{c}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_ceiling(65.09), 100.0);
        assert_eq!(nice_ceiling(80717.0), 100_000.0);
        assert_eq!(nice_ceiling(1.9), 2.0);
        assert_eq!(nice_ceiling(0.23), 0.25);
        assert_eq!(round_label(80_000.0), "80k");
        assert_eq!(round_label(1_500_000.0), "1.5M");
        assert_eq!(round_label(0.25), "0.25");
        assert_eq!(round_label(20.0), "20");
    }
}
