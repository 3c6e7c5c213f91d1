//! `--html PATH`: a self-contained report page with two inline SVG plots (no script, no
//! external file): latency by percentile, overall and per link profile, on HdrHistogram's
//! usual log scale of 1/(1-q); and throughput over the run.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::stats::Report;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 320.0;
const MARGIN: f64 = 56.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
/// The percentiles plotted, as quantiles, and their labels.
const QUANTILES: [f64; 8] = [0.0, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 0.99999];
const LABELS: [&str; 8] = [
    "0", "50%", "75%", "90%", "99%", "99.9%", "99.99%", "99.999%",
];

/// The page for `report`; `timeline` holds (seconds into the run, messages per second).
pub fn page(report: &Report, timeline: &[(f64, f64)]) -> String {
    let mut series = vec![("all".to_owned(), &report.stats.latency_us)];
    for profile in report.profiles {
        series.push((profile.name.to_owned(), &profile.stats.latency_us));
    }
    let json = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ringws-loadgen: {scenario} \
         against {url}</title>\n<style>body{{font-family:sans-serif;max-width:{w}px;margin:2em \
         auto}} pre{{background:#f4f4f4;padding:1em;overflow:auto}} svg text{{font-size:11px}}\
         </style></head><body>\n<h1>ringws-loadgen: {scenario}</h1>\n<p>{url}, {connections} \
         connections, {duration:.1} s measured.</p>\n<h2>Latency by percentile</h2>\n{latency}\
         \n<h2>Throughput over time</h2>\n{throughput}\n<h2>Report</h2>\n<pre>{json}</pre>\n\
         </body></html>\n",
        scenario = escape(report.scenario),
        url = escape(report.url),
        w = WIDTH as u32,
        connections = report.connections,
        duration = report.duration_secs,
        latency = latency_plot(&series),
        throughput = throughput_plot(timeline),
        json = escape(&json),
    )
}

fn latency_plot(series: &[(String, &Histogram<u64>)]) -> String {
    let x_max = (1.0 / (1.0 - QUANTILES[QUANTILES.len() - 1])).log10();
    let y_max = series
        .iter()
        .map(|(_, h)| h.max() as f64 / 1000.0)
        .fold(0.0, f64::max)
        .max(0.001);
    let mut svg = frame("percentile", "latency (ms)", y_max);
    for (i, q) in QUANTILES.iter().enumerate().skip(1) {
        let x = x_at((1.0 / (1.0 - q)).log10() / x_max);
        let _ = write!(
            svg,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            HEIGHT - MARGIN + 16.0,
            LABELS[i]
        );
    }
    for (i, (name, histogram)) in series.iter().enumerate() {
        if histogram.is_empty() {
            continue;
        }
        let points: Vec<(f64, f64)> = QUANTILES
            .iter()
            .map(|q| {
                let x = (1.0 / (1.0 - q)).log10() / x_max;
                let ms = histogram.value_at_quantile(*q) as f64 / 1000.0;
                (x, ms / y_max)
            })
            .collect();
        line(&mut svg, &points, COLOURS[i % COLOURS.len()], name, i);
    }
    svg + "</svg>"
}

fn throughput_plot(timeline: &[(f64, f64)]) -> String {
    let t_max = timeline.last().map_or(1.0, |p| p.0).max(1e-3);
    let y_max = timeline.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let mut svg = frame("seconds", "messages per second", y_max);
    for i in 0..=4 {
        let t = t_max * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.1}</text>",
            x_at(t / t_max),
            HEIGHT - MARGIN + 16.0
        );
    }
    let points: Vec<(f64, f64)> = timeline
        .iter()
        .map(|&(t, r)| (t / t_max, r / y_max))
        .collect();
    line(&mut svg, &points, COLOURS[0], "throughput", 0);
    svg + "</svg>"
}

/// The axes and their labels; the y axis runs from 0 to `y_max`.
fn frame(x_label: &str, y_label: &str, y_max: f64) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <line x1=\"{MARGIN}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\
         <line x1=\"{MARGIN}\" y1=\"{MARGIN}\" x2=\"{MARGIN}\" y2=\"{b}\" stroke=\"black\"/>\
         <text x=\"{cx}\" y=\"{xl}\" text-anchor=\"middle\">{x_label}</text>\
         <text x=\"14\" y=\"{cy}\" transform=\"rotate(-90 14 {cy})\" text-anchor=\"middle\">{y_label}</text>",
        b = HEIGHT - MARGIN,
        r = WIDTH - 16.0,
        cx = WIDTH / 2.0,
        xl = HEIGHT - 12.0,
        cy = HEIGHT / 2.0,
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <line x1=\"{MARGIN}\" y1=\"{y:.1}\" x2=\"{r}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
            MARGIN - 4.0,
            y_at(f) + 4.0,
            round(y_max * f),
            y = y_at(f),
            r = WIDTH - 16.0,
        );
    }
    svg
}

/// A polyline through points in 0..=1 on both axes, with its name in the legend.
fn line(svg: &mut String, points: &[(f64, f64)], colour: &str, name: &str, index: usize) {
    let path: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", x_at(x), y_at(y)))
        .collect();
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{}</text>",
        path.join(" "),
        MARGIN + 8.0,
        MARGIN + 14.0 * index as f64,
        escape(name)
    );
}

fn x_at(fraction: f64) -> f64 {
    MARGIN + fraction * (WIDTH - MARGIN - 16.0)
}

fn y_at(fraction: f64) -> f64 {
    HEIGHT - MARGIN - fraction * (HEIGHT - 2.0 * MARGIN)
}

fn round(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
