//! Exact accounting, held to the server's own counts: a Python `websockets` echo server that
//! drops, corrupts and duplicates messages on purpose and prints how many of each it did.
//! Each arrival is counted once (a corrupted one is not also lost), so the report must give
//! exactly the server's numbers, on both drivers: the io_uring engine (plain links) and the
//! tasks over the link model (shaped links).

mod support;

use support::{count, loadgen, python_peer};

/// Runs against the faulty server with `args` and checks every count against its own.
fn counts_match_the_servers_own(args: &[&str]) {
    let peer = python_peer("faulty_echo", &[]);
    let mut all = vec!["--connections", "4", "--duration", "2", "--drain", "2"];
    all.extend_from_slice(args);
    let (output, report) = loadgen(&peer.addr, &all);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a faulty run must not exit 0"
    );
    let lines = peer.wait_for_lines("connection ", 4);
    assert_eq!(lines.len(), 4, "the server's counts: {lines:?}");
    let total = |name: &str| -> u64 {
        lines
            .iter()
            .flat_map(|line| line.split_whitespace())
            .filter_map(|field| field.strip_prefix(&format!("{name}=")))
            .map(|n| n.parse::<u64>().expect("a count"))
            .sum()
    };
    let (received, dropped, corrupted, duplicated) = (
        total("received"),
        total("dropped"),
        total("corrupted"),
        total("duplicated"),
    );
    assert!(dropped > 0 && corrupted > 0 && duplicated > 0, "{lines:?}");
    assert_eq!(count(&report, "messages_sent"), received, "{report}");
    assert_eq!(count(&report, "messages_lost"), dropped, "{report}");
    assert_eq!(count(&report, "messages_corrupted"), corrupted, "{report}");
    assert_eq!(
        count(&report, "messages_duplicated"),
        duplicated,
        "{report}"
    );
    assert_eq!(count(&report, "messages_reordered"), 0, "{report}");
    // Every message sent is lost, received intact, or arrived corrupted: once.
    assert_eq!(
        count(&report, "messages_lost")
            + count(&report, "messages_received")
            + count(&report, "messages_corrupted"),
        count(&report, "messages_sent")
    );
}

#[test]
fn open_loop_on_the_engine_counts_what_the_server_did() {
    counts_match_the_servers_own(&["--rate", "2000"]);
}

/// In the closed loop a dropped message keeps its place in flight, so the pipeline shrinks;
/// a corrupted answer frees its place.
#[test]
fn closed_loop_on_the_engine_counts_what_the_server_did() {
    counts_match_the_servers_own(&["--pipeline", "16"]);
}

#[test]
fn shaped_links_count_what_the_server_did() {
    counts_match_the_servers_own(&["--rate", "2000", "--profile", "custom,rtt=2ms"]);
}
