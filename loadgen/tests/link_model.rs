//! The link model's accuracy against `ringws serve`: shaped bandwidth and added round trip
//! within 10% of what was asked, and latency reported per profile.
//!
//! A test binary of its own, so that no other test's load shares the machine while these
//! measure.

mod support;

use serde_json::Value;
use support::{count, loadgen, ringws_serve};

fn p50(report: &Value) -> f64 {
    report["latency_us"]["p50"]
        .as_f64()
        .expect("latency_us.p50")
}

/// The link model's accuracy: a shaped downlink moves data at its configured bandwidth,
/// within 10%.
#[test]
fn a_shaped_downlink_delivers_at_its_bandwidth() {
    let server = ringws_serve();
    let (output, report) = loadgen(
        &server.addr,
        &[
            "--connections",
            "1",
            "--profile",
            "custom,down=2mbit",
            "--pipeline",
            "16",
            "--message-size",
            "4096",
            "--duration",
            "4",
        ],
    );
    assert!(output.status.success(), "exit {}", output.status);
    let messages = report["throughput_msgs_per_sec"]
        .as_f64()
        .expect("throughput");
    // 4 header bytes per 4,096-byte frame.
    let bits_per_sec = messages * 4100.0 * 8.0;
    let ratio = bits_per_sec / 2e6;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{bits_per_sec} bit/s for 2 Mbit/s"
    );
}

/// The link model's accuracy: a shaped link adds its configured round trip to every
/// message, within 10%.
#[test]
fn a_shaped_link_adds_its_round_trip() {
    let server = ringws_serve();
    let args = ["--connections", "2", "--rate", "20", "--duration", "3"];
    let (_, plain) = loadgen(&server.addr, &args);
    let shaped_args: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--profile", "custom,rtt=100ms"])
        .collect();
    let (output, shaped) = loadgen(&server.addr, &shaped_args);
    assert!(output.status.success(), "exit {}", output.status);
    let added_ms = (p50(&shaped) - p50(&plain)) / 1000.0;
    assert!(
        (100.0..=110.0).contains(&added_ms),
        "added {added_ms} ms for 100 ms"
    );
    assert_eq!(shaped["profiles"][0]["name"], "custom");
}

/// A population on two profiles reports each one's latency apart.
#[test]
fn a_profile_mix_reports_latency_per_profile() {
    let server = ringws_serve();
    let html = std::env::temp_dir().join(format!("ringws-loadgen-{}.html", std::process::id()));
    let html_arg = html.to_string_lossy().into_owned();
    let (output, report) = loadgen(
        &server.addr,
        &[
            "--html",
            &html_arg,
            "--connections",
            "10",
            "--rate",
            "50",
            "--duration",
            "2",
            "--profile-mix",
            "80:wifi,20:slow-3g",
        ],
    );
    assert!(output.status.success(), "exit {}", output.status);
    let profiles = report["profiles"].as_array().expect("profiles");
    let names: Vec<&str> = profiles.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["wifi", "slow-3g"]);
    assert_eq!(count(&profiles[0], "connections_established"), 8);
    assert_eq!(count(&profiles[1], "connections_established"), 2);
    let slow = p50(&profiles[1]);
    assert!(
        slow > 400_000.0,
        "slow-3g p50 {slow} µs is below its 400 ms round trip"
    );
    assert!(p50(&profiles[0]) < slow);
}
