//! The generator over several servers: `fanout` with its publishers on one `ringws serve
//! --cluster` node and its subscribers on another, through a real `nats-server` and
//! `redis-server` (installed by scripts/test.sh); `echo` spread round robin over two plain
//! nodes; `churn` moving to the second node while the first drains.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Peer, count, ringws_serve_with, run_loadgen};

const SETTLE: Duration = Duration::from_secs(15);

/// A broker on a free port, killed when dropped.
struct Broker {
    child: Child,
    url: String,
}

impl Broker {
    fn nats() -> Broker {
        let port = free_port();
        let args = ["-a", "127.0.0.1", "-p", &port.to_string()].map(String::from);
        Broker::start(
            "nats-server",
            &args,
            format!("nats://127.0.0.1:{port}"),
            port,
        )
    }

    fn redis() -> Broker {
        let port = free_port();
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from);
        Broker::start(
            "redis-server",
            &args,
            format!("redis://127.0.0.1:{port}"),
            port,
        )
    }

    fn start(program: &str, args: &[String], url: String, port: u16) -> Broker {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start {program} ({err}): scripts/test.sh installs it")
            });
        let broker = Broker { child, url };
        let deadline = Instant::now() + SETTLE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{program} did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A node's /metrics, unlabelled series and labelled ones by their full name.
fn metrics(addr: &str) -> HashMap<String, u64> {
    let mut stream = TcpStream::connect(addr).expect("connect for /metrics");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("ask for /metrics");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read /metrics");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse::<f64>().ok()? as u64))
        })
        .collect()
}

fn wait_for_metric(node: &Peer, name: &str, value: u64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = metrics(&node.addr).get(name).copied();
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} on {} stayed {now:?}, not {value}",
            node.addr
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A WebSocket upgraded on `path` and then left alone: a subscriber that holds the node's
/// broker subscription from before the run starts.
fn held_subscriber(node: &Peer, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(&node.addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node.addr
    )
    .expect("upgrade request");
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("upgrade response");
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101"), "{response:?}");
    stream
}

fn node(broker: &Broker) -> Peer {
    let node = ringws_serve_with(&["--cluster", &broker.url]);
    wait_for_metric(&node, "ringws_cluster_link_up", 1);
    node
}

fn publishers_on_one_node_subscribers_on_another(broker: Broker) {
    const TOPIC: &str = "/pubsub/loadgen.nodes";
    const SUBSCRIBERS: u64 = 20;
    const PUBLISHERS: u64 = 2;
    let (a, b) = (node(&broker), node(&broker));
    // B's broker subscription is in place before anything is published on A.
    let _held = held_subscriber(&b, TOPIC);
    wait_for_metric(&b, "ringws_cluster_subscriptions", 1);
    let (url_a, url_b) = (a.url(TOPIC), b.url(TOPIC));
    let (output, report) = run_loadgen(&[
        "--scenario",
        "fanout",
        "--url",
        &url_b,
        "--publish-url",
        &url_a,
        "--connections",
        &SUBSCRIBERS.to_string(),
        "--publishers",
        &PUBLISHERS.to_string(),
        "--rate",
        "400",
        "--duration",
        "1.5",
    ]);
    assert!(output.status.success(), "a clean run: {report}");
    let sent = count(&report, "messages_sent");
    assert!(sent > 0);
    assert_eq!(count(&report, "messages_received"), sent * SUBSCRIBERS);
    for field in [
        "messages_lost",
        "messages_corrupted",
        "messages_duplicated",
        "messages_reordered",
        "connect_errors",
        "connections_dropped",
    ] {
        assert_eq!(count(&report, field), 0, "{field}");
    }
    // The report names both nodes, each with its role and share.
    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{report}");
    let (on_b, on_a) = (&nodes[0], &nodes[1]);
    assert_eq!(on_b["url"], url_b.as_str());
    assert_eq!(count(on_b, "connections"), SUBSCRIBERS);
    assert_eq!(count(on_b, "publishers"), 0);
    assert_eq!(count(on_b, "messages_received"), sent * SUBSCRIBERS);
    assert_eq!(on_a["url"], url_a.as_str());
    assert_eq!(count(on_a, "publishers"), PUBLISHERS);
    assert_eq!(count(on_a, "messages_sent"), sent);
    // Every message crossed the broker once, from A to B.
    assert_eq!(metrics(&a.addr)["ringws_cluster_messages_out_total"], sent);
    assert_eq!(metrics(&b.addr)["ringws_cluster_messages_in_total"], sent);
}

#[test]
fn nats_fanout_publishers_on_one_node_subscribers_on_another_lose_nothing() {
    publishers_on_one_node_subscribers_on_another(Broker::nats());
}

#[test]
fn redis_fanout_publishers_on_one_node_subscribers_on_another_lose_nothing() {
    publishers_on_one_node_subscribers_on_another(Broker::redis());
}

#[test]
fn echo_connections_take_the_nodes_in_turn() {
    let nodes = [ringws_serve_with(&[]), ringws_serve_with(&[])];
    let urls = nodes.each_ref().map(|n| n.url("/echo"));
    let (output, report) = run_loadgen(&[
        "--url",
        &urls[0],
        "--url",
        &urls[1],
        "--connections",
        "11",
        "--rate",
        "1000",
        "--duration",
        "1",
    ]);
    assert!(output.status.success(), "a clean run: {report}");
    assert_eq!(report["url"], format!("{} {}", urls[0], urls[1]).as_str());
    let reported = report["nodes"].as_array().expect("nodes");
    let mut sent = 0;
    for ((node, url), (share, reported)) in nodes.iter().zip(&urls).zip([6, 5].iter().zip(reported))
    {
        assert_eq!(reported["url"], url.as_str());
        assert_eq!(count(reported, "connections"), *share);
        assert_eq!(count(reported, "connections_established"), *share);
        // What the node itself counted: its share of the upgrades and of the messages.
        let m = metrics(&node.addr);
        assert_eq!(m["ringws_handshakes_total{status=\"101\"}"], *share);
        let node_sent = count(reported, "messages_sent");
        assert!(node_sent > 0);
        assert_eq!(m["ringws_received_messages_total"], node_sent);
        assert_eq!(count(reported, "messages_received"), node_sent);
        sent += node_sent;
    }
    assert_eq!(count(&report, "messages_sent"), sent);
}

/// The first node drains (SIGTERM, its 1001s spread over a second); its clients move to the
/// second, and the report's reconnect rate shows them arrive over the window.
#[test]
fn churn_clients_of_a_draining_node_reconnect_to_the_next() {
    const CLIENTS: u64 = 40;
    let mut draining = ringws_serve_with(&["--drain-delay", "0s", "--drain-spread", "1s"]);
    let staying = ringws_serve_with(&[]);
    let urls = [draining.url("/churn"), staying.url("/churn")];
    let args: Vec<String> = [
        "--scenario",
        "churn",
        "--url",
        &urls[0],
        "--url",
        &urls[1],
        "--connections",
        &CLIENTS.to_string(),
        // Lifetimes far beyond the run: the drain makes every reconnect.
        "--lifetime",
        "1000000000",
        "--storm-after",
        "-1",
        "--duration",
        "4",
    ]
    .map(String::from)
    .to_vec();
    let run = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_loadgen(&args)
    });
    wait_for_metric(&draining, "ringws_websockets", CLIENTS / 2);
    let pid = draining.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(
        killed.is_ok_and(|s| s.success()),
        "SIGTERM to the first node"
    );
    let (_, report) = run.join().expect("the generator ran");
    let exit = draining.child.wait().expect("the drained node exits");
    assert!(exit.success(), "a drain exits 0: {exit}");

    assert_eq!(count(&report, "reconnects"), CLIENTS / 2);
    assert_eq!(report["errors"]["the server closed with 1001"], CLIENTS / 2);
    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(count(&nodes[0], "connections_dropped"), CLIENTS / 2);
    assert_eq!(count(&nodes[1], "reconnects"), CLIENTS / 2);
    assert_eq!(count(&nodes[1], "connections_dropped"), 0);
    let rate: &Value = &report["reconnect_rate"];
    let series: u64 = rate["per_interval"]
        .as_array()
        .expect("a series")
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(series, CLIENTS / 2);
    // The server spreads its 1001s over its window: the last client cannot be back sooner
    // than the last 1001 (9/10 of a second after the first: two shards, 10 clients each),
    // nor all in one interval.
    assert!(
        rate["all_back_ms"].as_f64().expect("all_back_ms") >= 800.0,
        "{rate}"
    );
    assert!(count(rate, "peak_per_interval") < CLIENTS / 2, "{rate}");
}

#[test]
fn servers_that_cannot_make_one_run_are_refused_with_why() {
    let cases = [
        (
            vec!["--publish-url", "ws://127.0.0.1:9/x"],
            "--publish-url places fanout publishers",
        ),
        (
            vec![
                "--scenario",
                "fanout",
                "--url",
                "ws://127.0.0.1:9/pubsub/a",
                "--publish-url",
                "ws://127.0.0.1:9/pubsub/b",
            ],
            "must name the same topic",
        ),
    ];
    for (args, why) in cases {
        let (output, _) = run_loadgen(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}
