//! What an operator relies on, against the real binary: the settings file against the
//! flags, `check-config`, JSON logs, the counters of /metrics.

mod support;

use std::io::Write;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use ringws::proto::OpCode;
use support::{Server, connect, open, read_frame, read_to_close, send, socket_memory};

/// Log lines until `done` holds for one of them (parsed as JSON); panics after 10 s.
fn wait_for_log(
    logs: &mpsc::Receiver<String>,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = logs.recv_timeout(left).expect("a log line in time");
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("a log line that is not JSON ({err}): {line}"));
        if done(&value) {
            return value;
        }
    }
}

#[test]
fn json_logs_carry_one_object_per_event() {
    let (tx, logs) = mpsc::channel();
    let server = Server::start_logging(
        &["--log-format", "json", "--log-connections", "--shards", "1"],
        tx,
    );
    let mut client = open(server.addr, "/chat");
    let opened = wait_for_log(&logs, |v| v["event"] == "open");
    assert_eq!(opened["level"], "INFO");
    assert_eq!(opened["shard"], 0);
    assert_eq!(opened["path"], "/chat");
    let peer = client.local_addr().expect("address").to_string();
    assert_eq!(opened["peer"], peer.as_str());
    assert!(opened["timestamp"].is_string());

    send(&mut client, OpCode::Close, true, &1000u16.to_be_bytes());
    let (header, _) = read_frame(&mut client);
    assert_eq!(header.opcode, OpCode::Close);
    let closed = wait_for_log(&logs, |v| v["event"] == "close");
    assert_eq!(closed["code"], 1000);
    assert_eq!(closed["peer"], peer.as_str());
    assert!(closed["cause"].is_string());

    let mut refused = connect(server.addr);
    refused
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n")
        .expect("send a bad upgrade");
    read_to_close(&mut refused);
    let refusal = wait_for_log(&logs, |v| v["event"] == "refuse");
    assert_eq!(refusal["status"], 426);
    assert!(refusal["reason"].as_str().is_some_and(|r| !r.is_empty()));
}

#[test]
fn metrics_count_handshakes_closes_messages_and_bytes() {
    let server = Server::start(&["--shards", "1"]);
    let mut client = open(server.addr, "/");
    send(&mut client, OpCode::Binary, true, &[1; 100]);
    read_frame(&mut client);
    send(&mut client, OpCode::Close, true, &1000u16.to_be_bytes());
    read_frame(&mut client);
    let mut bad = connect(server.addr);
    bad.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .expect("send a bad upgrade");
    read_to_close(&mut bad);
    let m = support::wait_for_metrics(server.addr, Duration::from_secs(5), |m| {
        m["ringws_closes_total{code=\"1000\"}"] == 1
    });
    assert_eq!(m["ringws_handshakes_total{status=\"101\"}"], 1);
    assert_eq!(m["ringws_handshakes_total{status=\"405\"}"], 1);
    assert_eq!(m["ringws_received_messages_total"], 1);
    assert_eq!(m["ringws_sent_messages_total"], 1);
    let upgrade_and_frames = m["ringws_received_bytes_total"];
    assert!(upgrade_and_frames > 100 + 8, "{upgrade_and_frames}");
}

#[test]
fn delivery_latency_is_measured_from_publish_to_the_kernel() {
    let server = Server::start(&["--shards", "1"]);
    let mut subscribers: Vec<_> = (0..3).map(|_| open(server.addr, "/pubsub/ticks")).collect();
    let mut publisher = open(server.addr, "/pubsub/ticks");
    support::wait_for_metrics(server.addr, Duration::from_secs(5), |m| {
        m["ringws_pubsub_subscriptions"] == 4
    });
    for i in 0..10u8 {
        send(&mut publisher, OpCode::Binary, true, &[i; 32]);
    }
    for subscriber in &mut subscribers {
        for _ in 0..10 {
            read_frame(subscriber);
        }
    }
    let m = support::wait_for_metrics(server.addr, Duration::from_secs(5), |m| {
        m["ringws_delivery_latency_seconds_count"] == 30
    });
    assert_eq!(m["ringws_delivery_latency_seconds_bucket{le=\"+Inf\"}"], 30);
    // Loopback, an idle machine or not: well under ten seconds each.
    assert_eq!(m["ringws_delivery_latency_seconds_bucket{le=\"10\"}"], 30);
}

#[test]
fn the_settings_file_sets_what_the_flags_do_not() {
    let path = std::env::temp_dir().join(format!("ringws-ops-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "max-message-size = \"1KiB\"\nmax-queued = \"8MiB\"\n",
    )
    .expect("write a settings file");
    let path_text = path.to_str().expect("a UTF-8 path");
    // The file limits messages to 1 KiB; the flag on top raises it back to 2 KiB.
    let server = Server::start(&["--config", path_text, "--max-message-size", "2KiB"]);
    let mut client = open(server.addr, "/");
    send(&mut client, OpCode::Binary, true, &[7; 1500]);
    assert_eq!(
        read_frame(&mut client).1.len(),
        1500,
        "the flag won over the file"
    );
    send(&mut client, OpCode::Binary, true, &[7; 3000]);
    support::expect_close(&mut client, 1009);
    drop(server);

    let check = |text: &str| {
        std::fs::write(&path, text).expect("write a settings file");
        Command::new(env!("CARGO_BIN_EXE_ringws"))
            .args(["check-config", path_text])
            .output()
            .expect("run check-config")
    };
    let ok = check("idle-timeout = \"90s\"\n");
    assert!(ok.status.success());
    let unknown = check("idle-timout = \"90s\"\n");
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("idle-timout"));
    let refused = Command::new(env!("CARGO_BIN_EXE_ringws"))
        .args(["serve", "--config", path_text])
        .output()
        .expect("run serve");
    assert_eq!(refused.status.code(), Some(1), "serve refuses the file too");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("idle-timout"));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn systemd_hears_ready_once_listening_and_stopping_on_sigterm() {
    let path = std::env::temp_dir().join(format!("ringws-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind a notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let server = Server::start_with_env(
        &["--shards", "1"],
        &[("NOTIFY_SOCKET", path.to_str().expect("a UTF-8 path"))],
    );
    let mut message = [0u8; 512];
    let n = socket.recv(&mut message).expect("READY=1");
    let ready = String::from_utf8_lossy(&message[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains(&server.addr.to_string()), "{ready}");
    let status = server.terminate(Duration::from_secs(10));
    assert!(status.success());
    let n = socket.recv(&mut message).expect("STOPPING=1");
    let stopping = String::from_utf8_lossy(&message[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let _ = std::fs::remove_file(&path);
}

/// Every metric name a PromQL expression mentions (`ringws_...`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ringws_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_server_exports() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("contrib/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let server = Server::start(&["--shards", "1"]);
    let exported: std::collections::HashSet<String> = support::metrics(server.addr)
        .keys()
        .map(|key| key.split('{').next().unwrap_or(key).to_owned())
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard worth the name");
    let mut queried = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            for name in metric_names(expr) {
                assert!(
                    exported.contains(&name),
                    "panel {:?} queries {name}, which the server does not export",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= panels.len());
    let variable = &dashboard["templating"]["list"][0]["query"]["query"];
    for name in metric_names(variable.as_str().expect("the instance variable's query")) {
        assert!(exported.contains(&name), "{name}");
    }
}

/// A plain GET of `path`: the status code and the body.
fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = connect(addr);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send a GET");
    let response = String::from_utf8(read_to_close(&mut stream)).expect("a UTF-8 response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn readiness_turns_503_before_any_client_hears_1001_and_closes_spread_out() {
    let mut server = Server::start(&[
        "--shards",
        "2",
        "--drain-delay",
        "1s",
        "--drain-spread",
        "2s",
    ]);
    let addr = server.addr;
    assert_eq!(get(addr, "/healthz").0, 200);
    assert_eq!(get(addr, "/readyz"), (200, "ready\n".to_owned()));
    let clients: Vec<_> = (0..20).map(|_| open(addr, "/")).collect();

    // Each client waits for its 1001 and notes when it came.
    let start = std::time::Instant::now();
    let waiting: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                support::expect_close(&mut client, 1001);
                start.elapsed()
            })
        })
        .collect();
    // SAFETY: kill(2) on the pid of the server this test started.
    unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) };
    // Readiness turns first: polled from the moment of the signal.
    let not_ready = support::within(Duration::from_secs(5), "/readyz answered 503", || {
        get(addr, "/readyz").0 == 503
    });
    // During the drain delay new clients are still welcome.
    let late = open(addr, "/");
    let closes: Vec<Duration> = waiting
        .into_iter()
        .map(|thread| thread.join().expect("a client thread"))
        .collect();
    let first = closes.iter().min().copied().unwrap_or_default();
    let last = closes.iter().max().copied().unwrap_or_default();
    println!("503 after {not_ready:?}; closes from {first:?} to {last:?}");
    assert!(
        not_ready < first,
        "a client heard 1001 before /readyz said 503"
    );
    assert!(
        first >= Duration::from_secs(1),
        "closes began before the drain delay"
    );
    assert!(
        last - first >= Duration::from_millis(1200),
        "the 1001s came all at once ({first:?} to {last:?}), not spread over 2 s"
    );
    drop(late);
    let status = support::within(Duration::from_secs(15), "the server exited", || {
        server.try_wait().is_some()
    });
    let _ = status;
}

#[test]
fn the_watchdog_is_fed_while_the_shards_turn() {
    let path = std::env::temp_dir().join(format!("ringws-watchdog-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind a notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let _server = Server::start_with_env(
        &["--shards", "2"],
        &[
            ("NOTIFY_SOCKET", path.to_str().expect("a UTF-8 path")),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut fed = 0;
    let mut message = [0u8; 512];
    while fed < 3 {
        let n = socket.recv(&mut message).expect("a notification");
        fed += usize::from(&message[..n] == b"WATCHDOG=1");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn send_buffer_sizes_every_accepted_socket_and_a_cap_above_the_kernels_is_named() {
    let server = Server::start(&["--shards", "2", "--send-buffer", "24KiB"]);
    for _ in 0..4 {
        let client = open(server.addr, "/echo");
        let local = client.local_addr().expect("address");
        // The kernel doubles the size for its own bookkeeping; autotuning is off.
        assert_eq!(socket_memory(server.addr, local).send_buffer, 48 << 10);
    }

    let (tx, logs) = mpsc::channel();
    let _capped = Server::start_logging(
        &[
            "--log-format",
            "json",
            "--shards",
            "2",
            "--send-buffer",
            "1GiB",
        ],
        tx,
    );
    let warning = wait_for_log(&logs, |v| v["level"] == "WARN");
    let message = warning["message"].as_str().unwrap_or_default();
    assert!(message.contains("net.core.wmem_max"), "{warning}");
    assert_eq!(warning["requested"], 1u64 << 30);
    // Said once for the server, not once for each shard's listener.
    let again = std::iter::from_fn(|| logs.recv_timeout(Duration::from_millis(500)).ok())
        .filter(|line| line.contains("wmem_max"))
        .count();
    assert_eq!(again, 0);
}
