//! The HTML report as a reader sees it: rendered in headless Chromium (Debian's, driven by
//! playwright-core from tests/node), checked for what it drew, and kept as a screenshot in
//! target/loadgen-report.png.
//!
//! `scripts/test.sh` installs Debian's `chromium` and the Node packages.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{ringws_serve, run_loadgen};

/// Renders `page` and returns what the browser saw, saving the screenshot as `png`.
fn render(page: &Path, png: &Path) -> Value {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/test.sh, which installs Debian's chromium"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let playwright = root.join("tests/node/node_modules/playwright-core");
    assert!(
        playwright.is_dir(),
        "{} is missing: run scripts/test.sh, which runs `npm ci` in tests/node",
        playwright.display()
    );
    let output = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/screenshot.mjs"))
        .arg(&playwright)
        .arg(page)
        .arg(png)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).expect("what the browser saw, as JSON")
}

fn texts(plot: &Value) -> Vec<&str> {
    plot["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .filter_map(|t| t["text"].as_str())
        .map(str::trim)
        .collect()
}

/// A tick label's value: `20k` is 20000, `1.5M` 1500000.
fn tick_value(label: &str) -> Option<f64> {
    let (number, scale) = match label.strip_suffix('k') {
        Some(n) => (n, 1e3),
        None => match label.strip_suffix('M') {
            Some(n) => (n, 1e6),
            None => (label, 1.0),
        },
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Every plot: drawn, its axis ticks round numbers, its legend clear of its lines.
fn check_plots(seen: &Value, legends: &[&[&str]]) {
    assert_eq!(seen["errors"].as_array().map(Vec::len), Some(0), "{seen}");
    let plots = seen["plots"].as_array().expect("plots");
    assert_eq!(
        plots.len(),
        legends.len(),
        "one latency and one throughput plot"
    );
    for (plot, legend) in plots.iter().zip(legends) {
        let width = plot["right"].as_f64().unwrap_or(0.0) - plot["left"].as_f64().unwrap_or(0.0);
        assert!(width >= 700.0, "plot {width} px wide");
        let lines = plot["lines"].as_array().expect("lines");
        assert!(!lines.is_empty(), "no data line drawn: {plot}");
        let labels = texts(plot);
        // Ticks: every number on an axis has at most two significant digits, or is a whole
        // number of seconds: 0, 100, 200, 2.5k, 0.25, never 65.09.
        for label in labels.iter().filter_map(|l| tick_value(l)) {
            let magnitude = 10f64.powf(label.abs().max(1e-9).log10().floor() - 1.0);
            let digits = label / magnitude;
            assert!(
                (digits - digits.round()).abs() < 1e-6,
                "tick {label} is not a round number: {labels:?}"
            );
        }
        // The legend sits beside the plot: each entry left of nothing drawn as data.
        let rightmost_line = lines
            .iter()
            .filter_map(|l| l["right"].as_f64())
            .fold(0.0, f64::max);
        for name in *legend {
            let entry = plot["texts"]
                .as_array()
                .expect("texts")
                .iter()
                .find(|t| t["text"].as_str().map(str::trim) == Some(name))
                .unwrap_or_else(|| panic!("no legend entry `{name}` in {labels:?}"));
            let left = entry["left"].as_f64().expect("left");
            assert!(
                left > rightmost_line,
                "`{name}` at {left} is on the lines ({rightmost_line})"
            );
        }
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(name)
}

#[test]
fn the_report_renders_with_round_ticks_reference_lines_and_a_clear_legend() {
    let server = ringws_serve();
    let dir = support::tempdir();
    let html = dir.join("report.html");
    let (output, _) = run_loadgen(&[
        "--url",
        &server.url("/html"),
        "--connections",
        "20",
        "--rate",
        "400",
        "--duration",
        "2",
        "--profile-mix",
        "70:wifi,30:4g",
        "--html",
        &html.to_string_lossy(),
    ]);
    assert!(output.status.success(), "exit {}", output.status);
    let png = screenshot_path("loadgen-report.png");
    let seen = render(&html, &png);
    check_plots(
        &seen,
        &[
            &[
                "all connections",
                "wifi",
                "wifi round trip 10 ms",
                "4g",
                "4g round trip 170 ms",
            ],
            &["throughput"],
        ],
    );
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        bytes.len() > 20_000,
        "{} bytes: an empty page?",
        bytes.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_comparison_draws_both_servers_on_each_plot() {
    let (a, b) = (ringws_serve(), ringws_serve());
    let dir = support::tempdir();
    let html = dir.join("compare.html");
    let (output, _) = run_loadgen(&[
        "--url",
        &a.url("/a"),
        "--compare",
        &b.url("/b"),
        "--rounds",
        "1",
        "--connections",
        "4",
        "--pipeline",
        "4",
        "--duration",
        "1.2",
        "--html",
        &html.to_string_lossy(),
    ]);
    assert!(output.status.success(), "exit {}", output.status);
    let seen = render(&html, &screenshot_path("loadgen-compare.png"));
    let (a_name, b_name) = (format!("A: {}", a.url("/a")), format!("B: {}", b.url("/b")));
    check_plots(
        &seen,
        &[
            &[&a_name, &b_name],
            &["A (mean of rounds)", "B (mean of rounds)"],
        ],
    );
    let _ = std::fs::remove_dir_all(dir);
}
