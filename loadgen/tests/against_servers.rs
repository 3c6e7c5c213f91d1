//! The load generator against real servers: `ringws serve` and a Python `websockets` echo
//! server. (A deliberately faulty one is in `accounting.rs`.)
//!
//! `scripts/test.sh` provides the Python (`RINGWS_TEST_PYTHON`) and builds `ringws` in the same
//! target directory.

mod support;

use support::{assert_clean, count, loadgen, loadgen_at, python_echo, ringws_serve};

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
    // Bytes on the wire, exactly: a 100-byte message is a 6-byte masked header and its
    // payload; each connection ends with a masked close carrying 1000 (8 bytes); the
    // upgrade request is not a frame. The server's frames are unmasked: 2 + 100.
    let wire = &report["wire"];
    let sent = count(&report, "messages_sent");
    assert_eq!(
        wire["bytes_sent"].as_u64(),
        Some(sent * 106 + 50 * 8),
        "{wire}"
    );
    assert_eq!(
        wire["bytes_received"].as_u64(),
        Some(sent * 102 + 50 * 4),
        "{wire}"
    );
}

#[test]
fn messages_larger_than_the_send_bound_go_one_at_a_time() {
    // 1 MiB is four times what a connection queues before it waits for its socket: such
    // a message must still go, alone, whenever nothing else is queued.
    let server = ringws_serve();
    let (output, report) = loadgen(
        &server.addr,
        &[
            "--connections",
            "2",
            "--pipeline",
            "2",
            "--duration",
            "1",
            "--message-size",
            "1048576",
        ],
    );
    assert!(output.status.success(), "exit {}", output.status);
    assert_clean(&report, 2);
    assert!(count(&report, "messages_received") > 0, "{report}");
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

/// An open loop far faster than the server reads: the generator queues a bounded amount
/// per connection and owes the rest (it used to queue everything due and grow without
/// bound); the run still ends on time, everything it did send unanswered.
#[test]
fn an_open_loop_faster_than_the_server_owes_rather_than_queues() {
    let server = support::python_peer("silent", &[]);
    let started = std::time::Instant::now();
    let (output, report) = loadgen(
        &server.addr,
        &[
            "--connections",
            "2",
            "--rate",
            "4000000",
            "--duration",
            "1",
            "--drain",
            "0",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "nothing comes back");
    let sent = count(&report, "messages_sent");
    // Four million were due; the sockets and a 256 KiB queue per connection hold far
    // fewer 26-byte frames.
    assert!(sent > 0 && sent < 1_000_000, "{sent} sent");
    assert_eq!(count(&report, "messages_lost"), sent);
    // One second, then at most the close timeout for a server that never answers.
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
}
