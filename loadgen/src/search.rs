//! `--find-max-rate --p99 50ms`: the highest open-loop rate whose p99 latency stays under
//! the target (tcpkali's idea).
//!
//! Each step is a whole run of `--duration` at one rate: the rate doubles from `--rate`
//! (1,000 a second by default) until a step fails, then the gap between the best pass and
//! the lowest failure is halved until they are within 5% of each other, or `--steps` runs
//! have been made. A step passes when
//! its p99 is under the target and nothing was lost, corrupted, refused or dropped. Every
//! step is printed as it ends, and the JSON lists them all.

use serde_json::json;

use crate::app::{self, Error, Exit, Measured, add_verdicts, judge, measure, write_outputs};
use crate::cli::{Args, Common};
use crate::display::Display;
use crate::html;
use crate::threshold::{Latency, Metric};

/// The search ends when the failing rate is within this fraction of the passing one.
const PRECISION: f64 = 0.05;

struct Step {
    rate: f64,
    achieved: f64,
    p99_us: Option<f64>,
    pass: bool,
}

pub fn run(args: &Args, common: &Common) -> Result<Exit, Error> {
    let target_us = args
        .p99
        .map_or(f64::INFINITY, |p99| p99.as_secs_f64() * 1e6);
    let display = Display::new(args.quiet);
    let mut steps: Vec<Step> = Vec::new();
    let mut best: Option<Measured> = None;
    let (mut passed, mut failed): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = args.rate.unwrap_or(1000.0);
    for number in 1..=args.steps.max(1) {
        let measured = measure(args, common, &args.servers(), Some(rate), &display)?;
        display.finish();
        let report = measured.report(args, &common.mix);
        let p99_us = report.metric(Metric::Latency(Latency::Percentile(990_000)));
        let pass = measured.clean() && p99_us.is_some_and(|p99| p99 < target_us);
        let step = Step {
            rate,
            achieved: report.throughput(),
            p99_us,
            pass,
        };
        println!(
            "step {number:>2}  rate {:>10.0} msg/s  achieved {:>10.0}  p99 {:>9}  lost {}  \
             errors {}  {}",
            step.rate,
            step.achieved,
            p99_us.map_or("-".to_owned(), |us| format!("{:.2} ms", us / 1000.0)),
            measured.stats.messages_lost,
            measured.stats.connect_errors + measured.stats.connections_dropped,
            if pass { "pass" } else { "FAIL" },
        );
        steps.push(step);
        if pass {
            passed = Some(rate);
            best = Some(measured);
        } else {
            failed = Some(rate);
        }
        rate = match (passed, failed) {
            (Some(good), None) => good * 2.0,
            (None, Some(bad)) if bad / 2.0 >= 1.0 => bad / 2.0,
            (None, _) => break,
            (Some(good), Some(bad)) if (bad - good) / good <= PRECISION => break,
            (Some(good), Some(bad)) => (good + bad) / 2.0,
        };
    }
    let max_rate = passed;
    match max_rate {
        Some(rate) => println!(
            "max rate        {rate:.0} msg/s with p99 under {:.2} ms",
            target_us / 1000.0
        ),
        None => println!(
            "max rate        none: no rate tried kept p99 under {:.2} ms",
            target_us / 1000.0
        ),
    }
    let best_report = best.as_ref().map(|m| m.report(args, &common.mix));
    let verdicts = judge(&args.thresholds, |metric| match metric {
        Metric::MaxRate => max_rate,
        other => best_report.as_ref().and_then(|r| r.metric(other)),
    });
    let mut json = best_report
        .as_ref()
        .map_or_else(|| json!({}), |r| r.to_json());
    json["find_max_rate"] = json!({
        "p99_target_us": target_us,
        "max_rate": max_rate,
        "steps": steps.iter().map(|s| json!({
            "rate": s.rate.round(),
            "achieved": s.achieved.round(),
            "p99_us": s.p99_us,
            "pass": s.pass,
        })).collect::<Vec<_>>(),
    });
    add_verdicts(&mut json, &verdicts);
    write_outputs(args, &json, || match (&best_report, &best) {
        (Some(report), Some(best)) => {
            html::page(&html::Page::single(report, &best.outcome.timeline))
        }
        _ => String::from("<!doctype html><p>no rate passed</p>\n"),
    })?;
    Ok(app::exit(&args.thresholds, &verdicts, max_rate.is_some()))
}
