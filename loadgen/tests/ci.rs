//! What CI uses: thresholds with their verdicts and exit status, the search for the highest
//! rate under a latency target, and the comparison of two servers; against `ringws serve`
//! and a Python `websockets` server.

mod support;

use serde_json::Value;
use support::{Peer, count, python_echo, ringws_serve, run_loadgen};

fn verdicts(report: &Value) -> Vec<(String, bool)> {
    report["thresholds"]
        .as_array()
        .expect("thresholds in the JSON")
        .iter()
        .map(|v| {
            (
                v["expression"].as_str().expect("expression").to_owned(),
                v["pass"].as_bool().expect("pass"),
            )
        })
        .collect()
}

fn thresholds_decide_the_exit_status(server: &Peer) {
    let url = server.url("/ci");
    let base = [
        "--url",
        &url,
        "--connections",
        "4",
        "--pipeline",
        "4",
        "--duration",
        "1",
    ];
    let passing = [
        "--threshold",
        "p99<5s",
        "--threshold",
        "lost=0",
        "--threshold",
        "rate>=10",
    ];
    let (output, report) = run_loadgen(&[&base[..], &passing[..]].concat());
    assert_eq!(output.status.code(), Some(0), "every threshold passes");
    assert_eq!(
        verdicts(&report),
        [("p99<5s", true), ("lost=0", true), ("rate>=10", true)].map(|(e, p)| (e.to_owned(), p))
    );
    assert_eq!(report["thresholds_passed"], true);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("threshold       pass  lost=0  (0 messages)"),
        "{stdout}"
    );

    let failing = ["--threshold", "lost=0", "--threshold", "rate>=1e12"];
    let (output, report) = run_loadgen(&[&base[..], &failing[..]].concat());
    assert_eq!(
        output.status.code(),
        Some(99),
        "a failed threshold exits 99"
    );
    assert_eq!(
        verdicts(&report),
        [
            ("lost=0".to_owned(), true),
            ("rate>=1e12".to_owned(), false)
        ]
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("threshold       FAIL  rate>=1e12"),
        "{stdout}"
    );
}

#[test]
fn thresholds_against_ringws() {
    thresholds_decide_the_exit_status(&ringws_serve());
}

#[test]
fn thresholds_against_python_websockets() {
    thresholds_decide_the_exit_status(&python_echo(false));
}

#[test]
fn a_bad_threshold_is_a_usage_error() {
    let (output, _) = run_loadgen(&["--threshold", "p99 fast"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a threshold"), "{stderr}");
}

/// Four steps that all meet an easy target: the rate doubles each time, and the last is
/// the answer.
fn the_search_reports_each_step(server: &Peer) {
    let url = server.url("/search");
    let (output, report) = run_loadgen(&[
        "--url",
        &url,
        "--find-max-rate",
        "--p99",
        "2s",
        "--rate",
        "100",
        "--steps",
        "4",
        "--connections",
        "4",
        "--duration",
        "0.5",
        "--threshold",
        "max_rate>=800",
    ]);
    assert_eq!(output.status.code(), Some(0), "exit {}", output.status);
    let search = &report["find_max_rate"];
    let steps = search["steps"].as_array().expect("steps");
    let rates: Vec<f64> = steps.iter().filter_map(|s| s["rate"].as_f64()).collect();
    assert_eq!(rates, [100.0, 200.0, 400.0, 800.0]);
    assert!(steps.iter().all(|s| s["pass"] == true), "{search}");
    assert_eq!(search["max_rate"].as_f64(), Some(800.0));
    assert_eq!(search["p99_target_us"].as_f64(), Some(2e6));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("step ").count(), 4, "{stdout}");
    // The report is the best step's run.
    assert!(count(&report, "messages_received") > 0);
}

#[test]
fn find_max_rate_against_ringws() {
    the_search_reports_each_step(&ringws_serve());
}

#[test]
fn find_max_rate_against_python_websockets() {
    the_search_reports_each_step(&python_echo(false));
}

/// A target no rate can meet: every step fails, the rate halves, and there is no answer.
#[test]
fn an_impossible_target_finds_no_rate() {
    let server = ringws_serve();
    let url = server.url("/search");
    let (output, report) = run_loadgen(&[
        "--url",
        &url,
        "--find-max-rate",
        "--p99",
        "1us",
        "--rate",
        "400",
        "--steps",
        "3",
        "--connections",
        "2",
        "--duration",
        "0.3",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let search = &report["find_max_rate"];
    let rates: Vec<f64> = search["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["rate"].as_f64())
        .collect();
    assert_eq!(rates, [400.0, 200.0, 100.0]);
    assert!(search["max_rate"].is_null());
}

#[test]
fn compare_runs_interleaved_rounds_against_two_servers() {
    let (a, b) = (ringws_serve(), python_echo(false));
    let dir = support::tempdir();
    let html = dir.join("compare.html");
    let html_arg = html.to_string_lossy().into_owned();
    let (output, report) = run_loadgen(&[
        "--url",
        &a.url("/a"),
        "--compare",
        &b.url("/b"),
        "--rounds",
        "2",
        "--connections",
        "4",
        "--pipeline",
        "4",
        "--duration",
        "0.5",
        "--html",
        &html_arg,
        "--threshold",
        "ratio>0",
    ]);
    assert_eq!(output.status.code(), Some(0), "exit {}", output.status);
    let compare = &report["compare"];
    let servers = compare["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["url"], a.url("/a"));
    assert_eq!(servers[1]["url"], b.url("/b"));
    for server in servers {
        assert_eq!(count(server, "messages_lost"), 0);
        assert_eq!(
            count(server, "connections_established"),
            8,
            "two rounds of four"
        );
    }
    let rounds = compare["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    let ratios: Vec<f64> = rounds.iter().filter_map(|r| r["ratio"].as_f64()).collect();
    let (low, high) = (ratios[0].min(ratios[1]), ratios[0].max(ratios[1]));
    let summary = |field: &str| compare["ratio"][field].as_f64().unwrap_or(f64::NAN);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(close(summary("min"), low), "{compare}");
    assert!(close(summary("max"), high), "{compare}");
    assert!(close(summary("median"), (low + high) / 2.0), "{compare}");
    let page = std::fs::read_to_string(&html).expect("the HTML report");
    assert!(
        page.contains(&format!("A: {}", a.url("/a"))),
        "both servers on one plot"
    );
    assert!(page.contains(&format!("B: {}", b.url("/b"))));
    let _ = std::fs::remove_dir_all(dir);
}

/// The default thread count follows the CPUs the process may run on, not the machine's.
#[test]
fn default_threads_follow_the_affinity_mask() {
    let server = ringws_serve();
    let dir = support::tempdir();
    let json = dir.join("report.json");
    let output = std::process::Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_ringws-loadgen")])
        .args([
            "--quiet",
            "--connections",
            "4",
            "--duration",
            "0.3",
            "--url",
        ])
        .arg(server.url("/affinity"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("taskset (util-linux) runs the generator");
    assert!(output.status.success(), "exit {}", output.status);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("JSON");
    assert_eq!(report["loadgen_threads"], 1);
    let _ = std::fs::remove_dir_all(dir);
}
