//! The load generator over `wss://`: against `ringws serve --tls-listen` and a Python
//! `websockets` server on the standard library's ssl module, with certificates from a test
//! CA made by openssl (which `scripts/test.sh` installs).

mod support;

#[allow(dead_code)] // The server's tests use the rest.
#[path = "../../tests/support/certs.rs"]
mod certs;

use certs::{KeyFormat, TestPki};
use serde_json::Value;
use support::{Peer, assert_clean, count, python_peer, ringws_serve_with, run_loadgen};

/// `ringws serve` with a TLS listener for `pki`'s leaf, and that listener's `wss://` base.
fn ringws_wss(pki: &TestPki, extra: &[&str]) -> (Peer, String) {
    let mut args: Vec<String> = pki.serve_args();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ringws_serve_with(&args);
    let tls = server
        .wait_for_lines("ringws: listening on", 1)
        .into_iter()
        .find_map(|line| {
            let rest = line.strip_prefix("ringws: listening on ")?;
            rest.strip_suffix(" (TLS)").map(str::to_owned)
        })
        .expect("the server names its TLS listener");
    (server, format!("wss://{tls}"))
}

/// Runs the generator at `url` with `args`, trusting `pki`'s CA.
fn loadgen_trusting(pki: &TestPki, url: &str, args: &[&str]) -> (bool, Value) {
    let ca = pki.ca().display().to_string();
    let mut all = vec!["--url", url, "--ca", &ca];
    all.extend_from_slice(args);
    let (output, report) = run_loadgen(&all);
    (output.status.success(), report)
}

fn tls(report: &Value, field: &str) -> u64 {
    report["tls"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("`tls.{field}` missing from {report}"))
}

#[test]
fn echo_over_wss_against_ringws_is_clean() {
    let pki = TestPki::new("loadgen-echo", KeyFormat::EcPkcs8);
    let (_server, base) = ringws_wss(&pki, &["--max-message-size", "1MiB"]);
    // Small messages pipelined, then messages larger than a TLS record (16 KiB) and than
    // rustls' default send buffer (64 KiB).
    for (connections, pipeline, size) in [(20, "4", "100"), (4, "1", "70000")] {
        let url = format!("{base}/echo");
        let (ok, report) = loadgen_trusting(
            &pki,
            &url,
            &[
                "--connections",
                &connections.to_string(),
                "--pipeline",
                pipeline,
                "--duration",
                "1",
                "--message-size",
                size,
            ],
        );
        assert!(ok, "size {size}: {report}");
        assert_clean(&report, connections);
        assert_eq!(tls(&report, "handshakes"), connections);
        let handshake = &report["tls"]["handshake_latency_us"];
        let upgrade = &report["tls"]["upgrade_latency_us"];
        assert!(handshake["p50"].as_u64() > Some(0), "{report}");
        assert!(upgrade["p50"].as_u64() > Some(0), "{report}");
    }
}

#[test]
fn churn_resumes_sessions_and_handshake_can_refuse_to() {
    let pki = TestPki::new("loadgen-churn", KeyFormat::EcPkcs8);
    let (_server, base) = ringws_wss(&pki, &[]);
    let url = format!("{base}/churn");
    let (ok, report) = loadgen_trusting(
        &pki,
        &url,
        &[
            "--scenario",
            "churn",
            "--connections",
            "10",
            "--duration",
            "2",
            "--lifetime",
            "0.2",
        ],
    );
    assert!(ok, "{report}");
    assert_eq!(count(&report, "connect_errors"), 0);
    assert!(count(&report, "reconnects") > 0, "{report}");
    let (handshakes, resumed) = (tls(&report, "handshakes"), tls(&report, "resumed"));
    assert_eq!(handshakes, count(&report, "connections_established"));
    // Every client's first connect is a full handshake; reconnects resume with a ticket
    // an earlier connection received.
    assert!(resumed > 0 && resumed < handshakes, "{report}");

    let url = format!("{base}/handshake");
    let (ok, report) = loadgen_trusting(
        &pki,
        &url,
        &[
            "--scenario",
            "handshake",
            "--connections",
            "4",
            "--duration",
            "1",
            "--no-resumption",
        ],
    );
    assert!(ok, "{report}");
    assert!(tls(&report, "handshakes") > 4, "{report}");
    assert_eq!(tls(&report, "resumed"), 0, "{report}");
}

#[test]
fn an_untrusted_certificate_needs_ca_or_insecure() {
    let pki = TestPki::new("loadgen-untrusted", KeyFormat::EcPkcs8);
    let (_server, base) = ringws_wss(&pki, &[]);
    let url = format!("{base}/echo");
    let args = ["--connections", "3", "--duration", "0.5", "--url", &url];
    let (output, report) = run_loadgen(&args);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(count(&report, "connect_errors"), 3);
    let errors = report["errors"].as_object().expect("errors");
    let (error, times) = errors.iter().next().expect("an error");
    assert_eq!(times.as_u64(), Some(3), "{report}");
    for part in [
        "certificate is not trusted",
        "UnknownIssuer",
        "--ca",
        "--insecure",
    ] {
        assert!(error.contains(part), "`{part}` not in `{error}`");
    }

    let mut insecure = args.to_vec();
    insecure.extend(["--insecure", "--pipeline", "2"]);
    let (output, report) = run_loadgen(&insecure);
    assert!(output.status.success(), "{report}");
    assert_clean(&report, 3);
}

#[test]
fn a_bad_ca_file_is_a_usage_error_that_names_it() {
    let dir = support::tempdir();
    let ca = dir.join("not-a-ca.pem");
    std::fs::write(&ca, "no certificate here\n").expect("write");
    let ca = ca.display().to_string();
    let (output, _) = run_loadgen(&["--url", "wss://127.0.0.1:1/", "--ca", &ca]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("--ca {ca}")) && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn works_against_python_websockets_over_tls_on_a_shaped_link() {
    let pki = TestPki::new("loadgen-python", KeyFormat::RsaPkcs1);
    let (chain, key) = (
        pki.chain().display().to_string(),
        pki.key().display().to_string(),
    );
    let server = python_peer("tls_echo", &[&chain, &key]);
    let port = server
        .addr
        .rsplit_once(':')
        .map(|(_, p)| p)
        .expect("a port");
    let url = format!("wss://127.0.0.1:{port}/");
    // The link model carries the TLS records: a 20 ms round trip at wifi's bandwidth.
    let (ok, report) = loadgen_trusting(
        &pki,
        &url,
        &[
            "--connections",
            "5",
            "--rate",
            "200",
            "--duration",
            "1",
            "--profile",
            "wifi",
        ],
    );
    assert!(ok, "{report}");
    assert_clean(&report, 5);
    assert_eq!(tls(&report, "handshakes"), 5);
    // The handshake takes a round trip of the link's 20 ms at least.
    let handshake = report["tls"]["handshake_latency_us"]["p50"].as_u64();
    assert!(handshake >= Some(20_000), "{report}");
}
