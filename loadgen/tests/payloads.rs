//! Payloads from a file: JSON lines or a directory of JSON messages, sent in order or at
//! random, each carrying the integrity stamp in a field the server echoes, and checked byte
//! for byte on the way back. Against `ringws serve` and a Python `websockets` server.

mod support;

use support::{Peer, assert_clean, count, python_echo, ringws_serve, run_loadgen};

fn payload_file() -> std::path::PathBuf {
    let dir = support::tempdir();
    let path = dir.join("messages.jsonl");
    std::fs::write(
        &path,
        "{\"op\":\"subscribe\",\"channel\":\"ticks\"}\n\n{\"op\":\"order\",\"side\":\"buy\",\
         \"qty\":3,\"price\":101.25}\n{}\n{\"text\":\"Grüße 世界\"}\n",
    )
    .expect("write");
    path
}

fn payload_dir() -> std::path::PathBuf {
    let dir = support::tempdir().join("messages");
    std::fs::create_dir_all(&dir).expect("dir");
    for (name, body) in [
        ("a.json", "{\"n\": 1}"),
        ("b.json", "{\n  \"n\": [2, 3]\n}\n"),
    ] {
        std::fs::write(dir.join(name), body).expect("write");
    }
    dir
}

fn clean_with_payloads(server: &Peer) {
    let url = server.url("/payloads");
    for (source, order, field) in [
        (payload_file(), "in-order", "ringws_stamp"),
        (payload_file(), "random", "id"),
        (payload_dir(), "random", "ringws_stamp"),
    ] {
        let source = source.to_string_lossy().into_owned();
        let (output, report) = run_loadgen(&[
            "--url",
            &url,
            "--connections",
            "3",
            "--pipeline",
            "4",
            "--duration",
            "0.5",
            "--payload",
            &source,
            "--payload-order",
            order,
            "--stamp-field",
            field,
        ]);
        assert!(
            output.status.success(),
            "{source} {order}: exit {}",
            output.status
        );
        assert_clean(&report, 3);
        assert_eq!(count(&report, "messages_duplicated"), 0);
    }
}

#[test]
fn payloads_against_ringws() {
    clean_with_payloads(&ringws_serve());
}

#[test]
fn payloads_against_python_websockets() {
    clean_with_payloads(&python_echo(false));
}

#[test]
fn payloads_work_for_fanout() {
    let server = ringws_serve();
    let source = payload_file().to_string_lossy().into_owned();
    let (output, report) = run_loadgen(&[
        "--url",
        &server.url("/pubsub/payloads"),
        "--scenario",
        "fanout",
        "--connections",
        "20",
        "--rate",
        "200",
        "--duration",
        "1",
        "--payload",
        &source,
    ]);
    assert!(output.status.success(), "exit {}", output.status);
    let published = count(&report, "messages_sent");
    assert!(published > 0);
    assert_eq!(count(&report, "messages_received"), published * 20);
    assert_eq!(count(&report, "messages_corrupted"), 0);
}

#[test]
fn a_payload_that_is_not_a_json_object_is_refused() {
    let dir = support::tempdir();
    let path = dir.join("bad.jsonl");
    std::fs::write(&path, "{\"ok\":1}\n[1, 2]\n").expect("write");
    let (output, _) = run_loadgen(&["--payload", &path.to_string_lossy()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.jsonl:2: a message must be a JSON object"),
        "{stderr}"
    );
}
