//! The load generator against real servers: `ringws serve`, a Python `websockets` echo
//! server, and a deliberately faulty one whose losses and corruptions must be caught.
//!
//! `scripts/test.sh` provides the Python (`RINGWS_TEST_PYTHON`) and builds `ringws` in the same
//! target directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// A server process, killed when dropped.
struct Peer {
    child: Child,
    addr: String,
}

impl Peer {
    fn start(mut command: Command) -> Peer {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.expect("server output");
            if let Some(at) = line.find("listening on ") {
                let addr = line[at + "listening on ".len()..].trim().to_owned();
                std::thread::spawn(move || lines.for_each(drop));
                return Peer { child, addr };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server exited before listening");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ringws_serve() -> Peer {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_ringws-loadgen"));
    let ringws = loadgen.with_file_name("ringws");
    assert!(
        ringws.exists(),
        "{} is missing: build the workspace first (cargo test --workspace does)",
        ringws.display()
    );
    let mut command = Command::new(ringws);
    command.args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"]);
    Peer::start(command)
}

fn python_echo(faulty: bool) -> Peer {
    let python = std::env::var("RINGWS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("RINGWS_TEST_PYTHON is not set: run scripts/test.sh, which installs `websockets`")
    });
    let mut command = Command::new(python);
    command.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/clients/echo_server.py"
    ));
    if faulty {
        command.arg("--faulty");
    }
    Peer::start(command)
}

/// Runs the generator and returns its exit status and JSON report.
fn loadgen(addr: &str, args: &[&str]) -> (Output, Value) {
    loadgen_at(addr, "/loadgen", args)
}

/// Runs the generator against `path` on the server.
fn loadgen_at(addr: &str, path: &str, args: &[&str]) -> (Output, Value) {
    let dir = tempdir();
    let json = dir.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_ringws-loadgen"))
        .args(["--url", &format!("ws://{addr}{path}"), "--quiet", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("run ringws-loadgen");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    let report = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_dir_all(&dir);
    (output, serde_json::from_str(&report).expect("valid JSON"))
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringws-loadgen-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}` missing from {report}"))
}

/// The fields other tooling reads, present and consistent with a clean run.
fn assert_clean(report: &Value, connections: u64) {
    assert_eq!(count(report, "connections_established"), connections);
    assert_eq!(count(report, "connect_errors"), 0);
    for field in ["messages_lost", "messages_corrupted"] {
        assert_eq!(count(report, field), 0, "{field}");
    }
    let sent = count(report, "messages_sent");
    assert!(sent > 0);
    assert_eq!(count(report, "messages_received"), sent);
    assert!(report["throughput_msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
    let latency = &report["latency_us"];
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(latency[p].as_u64().is_some(), "latency_us.{p} missing");
    }
    assert!(latency["p50"].as_u64() <= latency["p99"].as_u64());
    assert!(latency["p99"].as_u64() <= latency["max"].as_u64());
}

#[test]
fn closed_loop_against_ringws_is_clean() {
    let server = ringws_serve();
    let (output, report) = loadgen(
        &server.addr,
        &[
            "--connections",
            "50",
            "--pipeline",
            "8",
            "--duration",
            "2",
            "--message-size",
            "100",
        ],
    );
    assert!(output.status.success(), "exit {}", output.status);
    assert_clean(&report, 50);
}

#[test]
fn open_loop_sends_at_the_rate_asked() {
    let server = ringws_serve();
    let (output, report) = loadgen(
        &server.addr,
        &["--connections", "20", "--rate", "2000", "--duration", "2"],
    );
    assert!(output.status.success(), "exit {}", output.status);
    assert_clean(&report, 20);
    // 2,000 msg/s for about 2 s: the schedule, not the server's speed, sets the count.
    let sent = count(&report, "messages_sent");
    assert!((3000..=5000).contains(&sent), "sent {sent}");
}

#[test]
fn works_against_a_python_websockets_server() {
    let server = python_echo(false);
    let (output, report) = loadgen(
        &server.addr,
        &["--connections", "10", "--pipeline", "4", "--duration", "2"],
    );
    assert!(output.status.success(), "exit {}", output.status);
    assert_clean(&report, 10);
}

#[test]
fn a_faulty_server_is_caught_losing_and_corrupting_messages() {
    let server = python_echo(true);
    let (output, report) = loadgen(
        &server.addr,
        &[
            "--connections",
            "4",
            "--pipeline",
            "4",
            "--duration",
            "2",
            "--drain",
            "1",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "a faulty run must not exit 0"
    );
    assert!(count(&report, "messages_lost") > 0, "{report}");
    assert!(count(&report, "messages_corrupted") > 0, "{report}");
}

#[test]
fn fanout_delivers_every_publish_to_every_subscriber() {
    let server = ringws_serve();
    let (output, report) = loadgen_at(
        &server.addr,
        "/pubsub/loadgen",
        &[
            "--scenario",
            "fanout",
            "--connections",
            "200",
            "--publishers",
            "2",
            "--rate",
            "400",
            "--duration",
            "2",
            "--message-size",
            "64",
        ],
    );
    assert!(output.status.success(), "exit {}", output.status);
    assert_eq!(count(&report, "connections_established"), 202);
    for field in [
        "messages_lost",
        "messages_corrupted",
        "messages_duplicated",
        "messages_reordered",
    ] {
        assert_eq!(count(&report, field), 0, "{field}");
    }
    let published = count(&report, "messages_sent");
    assert!((600..=1000).contains(&published), "published {published}");
    assert_eq!(count(&report, "messages_received"), published * 200);
}

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

/// Worker processes split the connections, and their results merge exactly: a fanout whose
/// publisher runs in one process reaches subscribers in all of them, connecting from two
/// loopback addresses.
#[test]
fn worker_processes_merge_into_one_clean_report() {
    let server = ringws_serve();
    let (output, report) = loadgen_at(
        &server.addr,
        "/pubsub/processes",
        &[
            "--scenario",
            "fanout",
            "--connections",
            "90",
            "--rate",
            "200",
            "--duration",
            "2",
            "--processes",
            "3",
            "--source-ips",
            "127.0.0.1,127.0.0.2",
        ],
    );
    assert!(output.status.success(), "exit {}", output.status);
    assert_eq!(count(&report, "connections_established"), 91);
    for field in ["messages_lost", "messages_corrupted", "messages_duplicated"] {
        assert_eq!(count(&report, field), 0, "{field}");
    }
    let published = count(&report, "messages_sent");
    assert!(published > 0);
    assert_eq!(count(&report, "messages_received"), published * 90);
    assert_eq!(report["latency_us"]["count"].as_u64(), Some(published * 90));
}

#[test]
fn handshake_scenario_counts_handshakes_per_second() {
    let server = ringws_serve();
    let (output, report) = loadgen(
        &server.addr,
        &[
            "--scenario",
            "handshake",
            "--connections",
            "4",
            "--duration",
            "2",
        ],
    );
    assert!(output.status.success(), "exit {}", output.status);
    let handshakes = count(&report, "messages_received");
    assert!(handshakes > 100, "{handshakes} handshakes in 2 s");
    assert_eq!(count(&report, "connections_established"), handshakes);
    assert_eq!(count(&report, "connect_errors"), 0);
    assert!(report["throughput_msgs_per_sec"].as_f64().unwrap_or(0.0) > 50.0);
}

#[test]
fn churn_reconnects_and_times_the_storm_recovery() {
    let server = ringws_serve();
    let (output, report) = loadgen(
        &server.addr,
        &[
            "--scenario",
            "churn",
            "--connections",
            "50",
            "--lifetime",
            "0.5",
            "--duration",
            "3",
            "--storm-after",
            "1",
            "--storm-jitter",
            "0.5",
        ],
    );
    assert!(output.status.success(), "exit {}", output.status);
    assert!(count(&report, "reconnects") >= 50, "{report}");
    assert_eq!(count(&report, "connect_errors"), 0);
    let recovery = report["storm_recovery_ms"]
        .as_f64()
        .expect("storm_recovery_ms");
    // Every client was dropped and came back after a jitter of at most 0.5 s.
    assert!(
        recovery > 0.0 && recovery < 5_000.0,
        "recovery {recovery} ms"
    );
}

/// `hold` opens connections at the ramp's pace, never faster, and reads the server's memory.
#[test]
fn hold_ramps_and_reports_the_server_memory_per_connection() {
    let server = ringws_serve();
    let pid = server.child.id().to_string();
    let started = std::time::Instant::now();
    let (output, report) = loadgen(
        &server.addr,
        &[
            "--scenario",
            "hold",
            "--connections",
            "300",
            "--ramp",
            "300",
            "--duration",
            "0.5",
            "--server-pid",
            &pid,
        ],
    );
    assert!(output.status.success(), "exit {}", output.status);
    assert_eq!(count(&report, "connections_established"), 300);
    // The 300th connection starts 299/300 s in: the run cannot be shorter than that.
    assert!(
        started.elapsed().as_secs_f64() >= 1.4,
        "{:?}",
        started.elapsed()
    );
    let per_connection = report["server_rss_bytes_per_connection"].as_f64();
    assert!(per_connection.is_some_and(|b| b >= 0.0), "{report}");
}
