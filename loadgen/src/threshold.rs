//! `--threshold`: pass/fail conditions on a run's result, as k6 has them, for CI.
//!
//! `METRIC OP VALUE`: `p99<50ms`, `lost=0`, `rate>=100000`, `errors=0`. Latencies take a
//! unit (`us`, `ms`, `s`; milliseconds when none is given, as in k6).

use std::fmt;

use serde_json::{Value, json};

/// What a threshold can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// A latency percentile (or the maximum, or the mean) in microseconds.
    Latency(Latency),
    /// Handshake latency percentiles, in microseconds.
    Handshake(Latency),
    /// Messages received per second in the measured window.
    Rate,
    Lost,
    Corrupted,
    Duplicated,
    Reordered,
    /// Connect errors and dropped connections.
    Errors,
    ConnectErrors,
    Dropped,
    /// The generator's own CPU use, in percent of its threads.
    Cpu,
    /// `--compare`: the first server's throughput over the second's (median of rounds).
    Ratio,
    /// `--find-max-rate`: the highest rate that met the latency target.
    MaxRate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// A percentile, in parts per million: p99 is 990,000.
    Percentile(u32),
    Max,
    Mean,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    Equal,
    NotEqual,
}

impl Op {
    fn holds(self, actual: f64, limit: f64) -> bool {
        match self {
            Op::Less => actual < limit,
            Op::LessOrEqual => actual <= limit,
            Op::Greater => actual > limit,
            Op::GreaterOrEqual => actual >= limit,
            Op::Equal => actual == limit,
            Op::NotEqual => actual != limit,
        }
    }
}

/// One parsed `--threshold`.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub expression: String,
    pub metric: Metric,
    pub op: Op,
    /// In the metric's own unit (microseconds for latencies).
    pub limit: f64,
}

/// Why a `--threshold` cannot be read.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ThresholdError {
    #[error("`{0}` is not a threshold: use METRIC OP VALUE, like p99<50ms, lost=0 or rate>=100000")]
    Syntax(String),
    #[error("`{metric}` in `{expression}` is not a metric; known: {KNOWN}")]
    Metric { expression: String, metric: String },
    #[error("`{value}` in `{expression}` is not a number{unit_hint}")]
    Value {
        expression: String,
        value: String,
        unit_hint: &'static str,
    },
}

const KNOWN: &str = "pNN such as p50, p95, p99, p99.9 (or p999), max, mean (latency), \
                     handshake_pNN, rate, lost, corrupted, duplicated, reordered, errors, connect_errors, \
                     dropped, cpu, ratio (--compare), max_rate (--find-max-rate)";

impl Threshold {
    pub fn parse(expression: &str) -> Result<Threshold, ThresholdError> {
        let text: String = expression.split_whitespace().collect();
        let at = text
            .find(['<', '>', '=', '!'])
            .ok_or_else(|| ThresholdError::Syntax(expression.to_owned()))?;
        let (name, rest) = text.split_at(at);
        let (op, value) = [
            ("<=", Op::LessOrEqual),
            (">=", Op::GreaterOrEqual),
            ("==", Op::Equal),
            ("!=", Op::NotEqual),
            ("<", Op::Less),
            (">", Op::Greater),
            ("=", Op::Equal),
        ]
        .iter()
        .find_map(|(symbol, op)| rest.strip_prefix(symbol).map(|value| (*op, value)))
        .ok_or_else(|| ThresholdError::Syntax(expression.to_owned()))?;
        if name.is_empty() || value.is_empty() {
            return Err(ThresholdError::Syntax(expression.to_owned()));
        }
        let metric = metric(name).ok_or_else(|| ThresholdError::Metric {
            expression: expression.to_owned(),
            metric: name.to_owned(),
        })?;
        let limit = match metric {
            Metric::Latency(_) | Metric::Handshake(_) => micros(value),
            _ => value.parse::<f64>().ok().filter(|v| v.is_finite()),
        }
        .ok_or_else(|| ThresholdError::Value {
            expression: expression.to_owned(),
            value: value.to_owned(),
            unit_hint: match metric {
                Metric::Latency(_) | Metric::Handshake(_) => " with us, ms or s",
                _ => "",
            },
        })?;
        Ok(Threshold {
            expression: expression.to_owned(),
            metric,
            op,
            limit,
        })
    }

    /// Judges `actual` (in the metric's unit; `None` when the run has no such value).
    pub fn judge(&self, actual: Option<f64>) -> Verdict<'_> {
        Verdict {
            threshold: self,
            actual,
            pass: actual.is_some_and(|actual| self.op.holds(actual, self.limit)),
        }
    }
}

fn metric(name: &str) -> Option<Metric> {
    let name = name.to_ascii_lowercase();
    // k6 writes p(99); so may we.
    let name = name.replace(['(', ')'], "");
    let latency = |name: &str| {
        Some(match name {
            "med" | "median" => Latency::Percentile(500_000),
            "max" => Latency::Max,
            "mean" | "avg" => Latency::Mean,
            // p999 is the report's name for p99.9.
            "p999" => Latency::Percentile(999_000),
            _ => {
                let percent: f64 = name.strip_prefix('p')?.parse().ok()?;
                if !(0.0..=100.0).contains(&percent) {
                    return None;
                }
                Latency::Percentile((percent * 10_000.0).round() as u32)
            }
        })
    };
    if let Some(latency) = latency(&name) {
        return Some(Metric::Latency(latency));
    }
    if let Some(latency) = name.strip_prefix("handshake_").and_then(latency) {
        return Some(Metric::Handshake(latency));
    }
    Some(match name.as_str() {
        "rate" | "throughput" => Metric::Rate,
        "lost" => Metric::Lost,
        "corrupted" => Metric::Corrupted,
        "duplicated" => Metric::Duplicated,
        "reordered" => Metric::Reordered,
        "errors" => Metric::Errors,
        "connect_errors" => Metric::ConnectErrors,
        "dropped" => Metric::Dropped,
        "cpu" => Metric::Cpu,
        "ratio" => Metric::Ratio,
        "max_rate" => Metric::MaxRate,
        _ => return None,
    })
}

/// `50ms`, `2s`, `750us`; a bare number is milliseconds.
fn micros(value: &str) -> Option<f64> {
    let at = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let number: f64 = value[..at].parse().ok()?;
    let scale = match &value[at..] {
        "us" | "µs" => 1.0,
        "ms" | "" => 1e3,
        "s" => 1e6,
        _ => return None,
    };
    Some(number * scale)
}

/// A threshold and how the run measured against it.
pub struct Verdict<'a> {
    pub threshold: &'a Threshold,
    pub actual: Option<f64>,
    pub pass: bool,
}

impl Verdict<'_> {
    pub fn to_json(&self) -> Value {
        json!({
            "expression": self.threshold.expression,
            "actual": self.actual,
            "unit": unit(self.threshold.metric),
            "pass": self.pass,
        })
    }
}

fn unit(metric: Metric) -> &'static str {
    match metric {
        Metric::Latency(_) | Metric::Handshake(_) => "us",
        Metric::Rate | Metric::MaxRate => "msg/s",
        Metric::Cpu => "%",
        Metric::Ratio => "",
        _ => "messages",
    }
}

impl fmt::Display for Verdict<'_> {
    /// `threshold  pass  p99<50ms  (p99 = 2.10 ms)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.pass { "pass" } else { "FAIL" };
        write!(
            f,
            "threshold       {word}  {}  (",
            self.threshold.expression
        )?;
        match (self.actual, self.threshold.metric) {
            (None, _) => write!(f, "not measured in this run")?,
            (Some(us), Metric::Latency(_) | Metric::Handshake(_)) => {
                write!(f, "{:.2} ms", us / 1000.0)?
            }
            (Some(value), Metric::Ratio) => write!(f, "{value:.3}")?,
            (Some(value), Metric::Cpu) => write!(f, "{value:.0}%")?,
            (Some(value), metric) => write!(f, "{value:.0} {}", unit(metric))?,
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k6_style_expressions() {
        let t = Threshold::parse("p99<50ms").expect("p99");
        assert_eq!(
            (t.metric, t.op, t.limit),
            (
                Metric::Latency(Latency::Percentile(990_000)),
                Op::Less,
                50_000.0
            )
        );
        let t = Threshold::parse("p(95) <= 2s").expect("k6's p(95)");
        assert_eq!(t.metric, Metric::Latency(Latency::Percentile(950_000)));
        assert_eq!(t.limit, 2_000_000.0);
        let t = Threshold::parse("p99.9<2").expect("bare milliseconds");
        assert_eq!(
            (t.metric, t.limit),
            (Metric::Latency(Latency::Percentile(999_000)), 2_000.0)
        );
        assert!(matches!(
            Threshold::parse("p101<1ms"),
            Err(ThresholdError::Metric { .. })
        ));
        let t = Threshold::parse("lost=0").expect("lost");
        assert_eq!((t.metric, t.op, t.limit), (Metric::Lost, Op::Equal, 0.0));
        let t = Threshold::parse("rate>=100000").expect("rate");
        assert_eq!((t.metric, t.op), (Metric::Rate, Op::GreaterOrEqual));
        let t = Threshold::parse("handshake_p99<750us").expect("handshake");
        assert_eq!(t.limit, 750.0);
        assert!(matches!(
            Threshold::parse("p99 fast"),
            Err(ThresholdError::Syntax(_))
        ));
        assert!(matches!(
            Threshold::parse("p99<50 parsecs"),
            Err(ThresholdError::Value { .. })
        ));
        assert!(matches!(
            Threshold::parse("lost=none"),
            Err(ThresholdError::Value { .. })
        ));
    }

    #[test]
    fn verdicts_compare_in_the_metrics_unit() {
        let p99 = Threshold::parse("p99<50ms").expect("p99");
        assert!(p99.judge(Some(49_999.0)).pass);
        assert!(!p99.judge(Some(50_000.0)).pass);
        assert!(!p99.judge(None).pass, "an unmeasured metric fails");
        let lost = Threshold::parse("lost!=3").expect("lost");
        assert!(lost.judge(Some(0.0)).pass);
        let line = p99.judge(Some(2_100.0)).to_string();
        assert!(line.contains("pass  p99<50ms  (2.10 ms)"), "{line}");
    }
}
