//! What real servers ask of the upgrade: custom headers and a bearer token, subprotocols,
//! and client-side permessage-deflate with its window and takeover options, whose effect
//! shows as bytes on the wire per message. Against `ringws serve` and a Python `websockets`
//! server that refuses upgrades without the token and header.

mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::{assert_clean, count, python_peer, ringws_serve_with, run_loadgen};

/// JSON messages that compress well: a ticker's fields, repeated with small changes.
fn ticks() -> (PathBuf, usize) {
    let dir = support::tempdir();
    let path = dir.join("ticks.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "{{\"type\":\"tick\",\"symbol\":\"ACME\",\"exchange\":\"XNAS\",\"price\":{},\
                 \"size\":{},\"conditions\":[\"regular\",\"odd-lot\"],\"note\":\"{}\"}}",
                100 + i,
                10 * i,
                "quote update from the consolidated feed ".repeat(3)
            )
        })
        .collect();
    let size = lines[0].len();
    std::fs::write(&path, lines.join("\n")).expect("write the payload file");
    (path, size)
}

fn wire(report: &Value, field: &str) -> f64 {
    report["wire"][field]
        .as_f64()
        .unwrap_or_else(|| panic!("wire.{field} in {report}"))
}

#[test]
fn token_header_and_subprotocol_reach_a_python_server() {
    let server = python_peer("auth_echo", &["s3cret"]);
    let url = server.url("/auth");
    let base = [
        "--url",
        &url,
        "--connections",
        "3",
        "--pipeline",
        "2",
        "--duration",
        "0.5",
    ];
    let (output, report) = run_loadgen(
        &[
            &base[..],
            &[
                "--token",
                "s3cret",
                "--header",
                "X-Client: ringws-loadgen",
                "--subprotocol",
                "chat",
            ],
        ]
        .concat(),
    );
    assert!(output.status.success(), "exit {}", output.status);
    assert_clean(&report, 3);
    assert_eq!(report["negotiated"]["protocol"], "chat");
    let upgrades = server.wait_for_lines("upgrade ", 3);
    assert!(
        upgrades
            .iter()
            .all(|l| l.starts_with("upgrade protocol=chat ")),
        "{upgrades:?}"
    );

    // Without the token the server answers 401, and every connection says so.
    let (output, report) =
        run_loadgen(&[&base[..], &["--header", "X-Client: ringws-loadgen"]].concat());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(count(&report, "connect_errors"), 3);
    let errors = report["errors"].as_object().expect("errors");
    assert!(
        errors.keys().any(|e| e.contains("401")),
        "the refusal is named: {errors:?}"
    );
}

#[test]
fn a_subprotocol_the_server_does_not_speak_is_an_error() {
    let server = ringws_serve_with(&["--subprotocol", "chat"]);
    let url = server.url("/p");
    let (output, report) = run_loadgen(&[
        "--url",
        &url,
        "--connections",
        "2",
        "--duration",
        "0.3",
        "--subprotocol",
        "mqtt",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(count(&report, "connect_errors"), 2);
    let (output, report) = run_loadgen(&[
        "--url",
        &url,
        "--connections",
        "2",
        "--duration",
        "0.3",
        "--subprotocol",
        "mqtt",
        "--subprotocol",
        "chat",
        "--token",
        "t",
        "--header",
        "X-Trace: 1",
    ]);
    assert!(output.status.success(), "exit {}", output.status);
    assert_eq!(report["negotiated"]["protocol"], "chat");
}

/// Compressed both ways with context takeover: far fewer bytes on the wire than the
/// messages hold. Without takeover on our side, fewer savings.
fn deflate_saves_bytes(url: &str, server_takeover: bool) {
    let (payload, size) = ticks();
    let payload = payload.to_string_lossy().into_owned();
    let base = [
        "--url",
        url,
        "--connections",
        "2",
        "--pipeline",
        "4",
        "--duration",
        "0.5",
        "--payload",
        &payload,
        "--deflate",
    ];
    let (output, report) = run_loadgen(&base);
    assert!(output.status.success(), "exit {}", output.status);
    assert_clean(&report, 2);
    let extensions = report["negotiated"]["extensions"].as_str().expect("agreed");
    assert!(extensions.starts_with("permessage-deflate"), "{extensions}");
    // Each message is a template plus the stamp's field, framed.
    let plain = size as f64 + 40.0;
    let sent = wire(&report, "bytes_sent_per_message");
    assert!(
        sent < plain / 2.0,
        "{sent} B per message sent for {plain} B messages"
    );
    if server_takeover {
        let received = wire(&report, "bytes_received_per_message");
        assert!(received < plain / 2.0, "{received} B per message received");
    }

    let (output, fresh) = run_loadgen(&[&base[..], &["--deflate-no-takeover"]].concat());
    assert!(output.status.success(), "exit {}", output.status);
    let fresh_sent = wire(&fresh, "bytes_sent_per_message");
    assert!(
        fresh_sent > sent,
        "without takeover {fresh_sent} B, with {sent} B"
    );
    assert!(fresh_sent < plain, "{fresh_sent} B still compressed");
}

#[test]
fn deflate_against_ringws() {
    let server = ringws_serve_with(&["--deflate", "dedicated"]);
    deflate_saves_bytes(&server.url("/deflate"), true);
}

#[test]
fn deflate_against_python_websockets() {
    let server = python_peer("auth_echo", &["t"]);
    let url = server.url("/deflate");
    // The Python peer wants its token and header; it compresses with takeover.
    let (payload, _) = ticks();
    let payload = payload.to_string_lossy().into_owned();
    let (output, report) = run_loadgen(&[
        "--url",
        &url,
        "--connections",
        "2",
        "--pipeline",
        "4",
        "--duration",
        "0.5",
        "--payload",
        &payload,
        "--deflate",
        "--token",
        "t",
        "--header",
        "X-Client: ringws-loadgen",
        "--subprotocol",
        "chat",
    ]);
    assert!(output.status.success(), "exit {}", output.status);
    assert_clean(&report, 2);
    assert!(wire(&report, "bytes_sent_per_message") < 150.0, "{report}");
    assert!(
        wire(&report, "bytes_received_per_message") < 150.0,
        "{report}"
    );
}

/// The window options reach the offer, and the server's answer is honoured.
#[test]
fn deflate_window_options_are_offered() {
    let server = python_peer("auth_echo", &["t"]);
    let url = server.url("/window");
    let (output, report) = run_loadgen(&[
        "--url",
        &url,
        "--connections",
        "1",
        "--duration",
        "0.3",
        "--deflate",
        "--deflate-server-window",
        "10",
        "--deflate-window",
        "11",
        "--deflate-server-no-takeover",
        "--token",
        "t",
        "--header",
        "X-Client: ringws-loadgen",
        "--subprotocol",
        "chat",
    ]);
    assert!(output.status.success(), "exit {}", output.status);
    let extensions = report["negotiated"]["extensions"].as_str().expect("agreed");
    assert!(
        extensions.contains("server_max_window_bits=10"),
        "{extensions}"
    );
    assert!(
        extensions.contains("server_no_context_takeover"),
        "{extensions}"
    );
    let upgrades = server.wait_for_lines("upgrade ", 1);
    assert!(
        upgrades[0].contains("server_max_window_bits=10"),
        "{upgrades:?}"
    );
}

#[test]
fn a_window_zlib_cannot_use_is_refused() {
    let (output, _) = run_loadgen(&["--deflate", "--deflate-window", "8"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--deflate-window must be 9 to 15"),
        "{stderr}"
    );
}
