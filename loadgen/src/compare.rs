//! `--compare URL2`: the same scenario against two servers in interleaved rounds (A, B, A,
//! B, ...), so that whatever else the machine does falls on both alike; one report with
//! each server's numbers (its rounds merged exactly), the throughput ratio of each round,
//! and the ratio's median and spread.

use serde_json::json;

use crate::app::{self, Error, Exit, Measured, add_verdicts, judge, measure, write_outputs};
use crate::cli::{Args, Common};
use crate::display::Display;
use crate::html::{self, Curve, Line, Page};
use crate::nodes::Servers;
use crate::report::Report;
use crate::stats::Stats;
use crate::threshold::Metric;

pub fn run(args: &Args, common: &Common, other: &str) -> Result<Exit, Error> {
    let servers = [args.servers(), Servers::single(other)];
    let labels = servers.each_ref().map(Servers::label);
    let display = Display::new(args.quiet);
    let mut runs: [Vec<Measured>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=args.rounds.max(1) {
        let mut rates = [0.0; 2];
        for (side, servers) in servers.iter().enumerate() {
            let measured = measure(args, common, servers, args.rate, &display)?;
            display.finish();
            rates[side] = measured.report(args, &common.mix).throughput();
            runs[side].push(measured);
        }
        println!(
            "round {round}  A {:.0} msg/s  B {:.0} msg/s  ratio A/B {:.3}",
            rates[0],
            rates[1],
            ratio(rates[0], rates[1])
        );
    }
    // Each server's rounds merged: counters and histograms added, time summed.
    let merged: Vec<(Stats, f64, f64)> = runs
        .iter()
        .map(|rounds| {
            let mut stats = Stats::default();
            let (mut seconds, mut cpu) = (0.0, 0.0);
            for run in rounds {
                stats.merge(&run.stats);
                seconds += run.outcome.measured.as_secs_f64();
                cpu += run.outcome.cpu.as_secs_f64();
            }
            (stats, seconds, cpu)
        })
        .collect();
    let reports: Vec<Report<'_>> = merged
        .iter()
        .zip(&runs)
        .zip(&labels)
        .map(|(((stats, seconds, cpu), rounds), url)| {
            let threads = rounds.first().map_or(1, |r| r.threads);
            Report {
                scenario: args.scenario.name(),
                url,
                connections: u64::from(rounds.first().map_or(0, |r| r.connections)),
                duration_secs: *seconds,
                stats,
                profiles: Vec::new(),
                cpu_percent: 100.0 * cpu / (seconds * threads as f64).max(1e-9),
                threads,
                server_bytes_per_connection: None,
            }
        })
        .collect();
    let ratios: Vec<f64> = runs[0]
        .iter()
        .zip(&runs[1])
        .map(|(a, b)| {
            ratio(
                a.report(args, &common.mix).throughput(),
                b.report(args, &common.mix).throughput(),
            )
        })
        .collect();
    let (median, low, high) = spread(&ratios);
    for (name, report) in ["A", "B"].iter().zip(&reports) {
        println!("== {name}: {}", report.url);
        report.print_table();
    }
    println!(
        "ratio A/B       {median:.3} (median of {} rounds; {low:.3} to {high:.3})",
        ratios.len()
    );
    let verdicts = judge(&args.thresholds, |metric| match metric {
        Metric::Ratio => Some(median),
        other => reports[0].metric(other),
    });
    let mut json = json!({
        "scenario": args.scenario.name(),
        "compare": {
            "servers": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
            "rounds": runs[0].iter().zip(&runs[1]).zip(&ratios).map(|((a, b), ratio)| json!({
                "a_msgs_per_sec": a.report(args, &common.mix).throughput().round(),
                "b_msgs_per_sec": b.report(args, &common.mix).throughput().round(),
                "ratio": ratio,
            })).collect::<Vec<_>>(),
            "ratio": { "median": median, "min": low, "max": high },
        },
    });
    add_verdicts(&mut json, &verdicts);
    write_outputs(args, &json, || {
        let page = Page {
            title: format!("ringws-loadgen: {} compared", args.scenario.name()),
            summary: format!(
                "A = {}, B = {}: {} interleaved rounds; throughput ratio A/B {median:.3} \
                 (median; {low:.3} to {high:.3}).",
                labels[0],
                labels[1],
                ratios.len()
            ),
            curves: reports
                .iter()
                .zip(["A", "B"])
                .map(|(report, name)| Curve {
                    name: format!("{name}: {}", report.url),
                    latency: &report.stats.latency_us,
                    rtt: None,
                })
                .collect(),
            lines: runs
                .iter()
                .zip(["A", "B"])
                .map(|(rounds, name)| Line {
                    name: format!("{name} (mean of rounds)"),
                    points: mean_timeline(rounds),
                })
                .collect(),
            json: serde_json::to_string_pretty(&json).unwrap_or_default(),
        };
        html::page(&page)
    })?;
    let clean = runs.iter().flatten().all(Measured::clean);
    Ok(app::exit(&args.thresholds, &verdicts, clean))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// (median, lowest, highest).
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let Some((&low, &high)) = sorted.first().zip(sorted.last()) else {
        return (0.0, 0.0, 0.0);
    };
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    (median, low, high)
}

/// The rounds' throughput, second by second, averaged over the rounds that reached it.
fn mean_timeline(rounds: &[Measured]) -> Vec<(f64, f64)> {
    let longest = rounds
        .iter()
        .map(|r| r.outcome.timeline.len())
        .max()
        .unwrap_or(0);
    (0..longest)
        .map(|i| {
            let points: Vec<(f64, f64)> = rounds
                .iter()
                .filter_map(|r| r.outcome.timeline.get(i).copied())
                .collect();
            let n = points.len().max(1) as f64;
            (
                points.iter().map(|p| p.0).sum::<f64>() / n,
                points.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn spread_is_median_and_range() {
        assert_eq!(super::spread(&[1.2, 0.9, 1.5]), (1.2, 0.9, 1.5));
        assert_eq!(super::spread(&[1.0, 2.0]), (1.5, 1.0, 2.0));
        assert_eq!(super::spread(&[]), (0.0, 0.0, 0.0));
    }
}
