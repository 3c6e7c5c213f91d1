//! The live progress line on stderr: connections, messages per second, p99 so far, errors.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where a run stands, a few times a second.
pub enum Status {
    Connecting {
        open: u64,
        total: u64,
    },
    Running {
        elapsed: Duration,
        connections: u64,
        messages_per_sec: f64,
        p99_us: u64,
        errors: u64,
    },
    Draining,
}

/// The progress line, or nothing with `--quiet`.
pub struct Display {
    bar: Option<ProgressBar>,
}

impl Display {
    pub fn new(quiet: bool) -> Display {
        let bar = (!quiet).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Display { bar }
    }

    pub fn show(&self, status: Status) {
        let Some(bar) = &self.bar else {
            return;
        };
        bar.set_message(match status {
            Status::Connecting { open, total } => format!("connecting: {open} of {total} open"),
            Status::Running {
                elapsed,
                connections,
                messages_per_sec,
                p99_us,
                errors,
            } => format!(
                "{:>5.1} s  {connections} connections  {messages_per_sec:.0} msg/s  \
                 p99 {:.1} ms  {errors} errors",
                elapsed.as_secs_f64(),
                p99_us as f64 / 1000.0
            ),
            Status::Draining => "draining: waiting for messages in flight".to_owned(),
        });
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
