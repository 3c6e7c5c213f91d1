//! Nodes sharing topics through a real broker: `nats-server` and `redis-server` (installed
//! by scripts/test.sh), three `ringws serve --cluster` nodes, subscribers spread over them,
//! publishers on each and a backend publishing straight to the broker; topic churn; the
//! broker killed and restarted under traffic.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ringws::proto::OpCode;
use support::{Server, metrics, open, read_frame, send, wait_for_metrics, within};

const SETTLE: Duration = Duration::from_secs(15);
/// A topic holding characters a NATS subject would misread.
const TOPIC: &str = "desk.eu*>%41";
/// Its subject and channel, as docs/cluster.md tells backends to write them.
const SUBJECT: &str = "ringws.desk%2Eeu%2A%3E%2541";
const CHANNEL: &str = "ringws:desk.eu*>%41";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Nats,
    Redis,
}

/// A broker process on a fixed port, so that it can be restarted where the nodes expect it.
struct Broker {
    kind: Kind,
    port: u16,
    /// NATS's monitoring port.
    monitor: u16,
    /// More arguments: credentials, TLS.
    extra: Vec<String>,
    /// Redis listens on its TLS port only.
    tls: bool,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Broker {
    fn start(kind: Kind) -> Broker {
        Self::start_with(kind, Vec::new(), false)
    }

    fn start_with(kind: Kind, extra: Vec<String>, tls: bool) -> Broker {
        let mut broker = Broker {
            kind,
            port: free_port(),
            monitor: free_port(),
            extra,
            tls,
            child: None,
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let (program, args) = match self.kind {
            Kind::Nats => (
                "nats-server",
                vec![
                    "-a".to_string(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    self.port.to_string(),
                    "-m".into(),
                    self.monitor.to_string(),
                ],
            ),
            Kind::Redis => {
                let port = self.port.to_string();
                let ports: Vec<String> = match self.tls {
                    false => vec!["--port".into(), port],
                    true => vec!["--port".into(), "0".into(), "--tls-port".into(), port],
                };
                let rest = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
                (
                    "redis-server",
                    ports.into_iter().chain(rest.map(String::from)).collect(),
                )
            }
        };
        let child = Command::new(program)
            .args(&args)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start {program} ({err}): scripts/test.sh installs it")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{program} did not listen");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        match self.kind {
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// A backend: publishes `payloads` to `TOPIC` straight to the broker, in order.
    fn publish(&self, payloads: &[String]) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        match self.kind {
            Kind::Nats => {
                reader.read_line(&mut line).expect("INFO");
                let mut out = String::from("CONNECT {\"verbose\":false}\r\n");
                for payload in payloads {
                    out.push_str(&format!("PUB {SUBJECT} {}\r\n{payload}\r\n", payload.len()));
                }
                out.push_str("PING\r\n");
                stream.write_all(out.as_bytes()).expect("publish");
                loop {
                    line.clear();
                    reader.read_line(&mut line).expect("PONG");
                    assert!(!line.starts_with("-ERR"), "{line}");
                    if line.starts_with("PONG") {
                        break;
                    }
                }
            }
            Kind::Redis => {
                for payload in payloads {
                    stream
                        .write_all(&resp(&["PUBLISH", CHANNEL, payload]))
                        .expect("publish");
                }
                for _ in payloads {
                    line.clear();
                    reader.read_line(&mut line).expect("a reply");
                    assert!(line.starts_with(':'), "{line}");
                }
            }
        }
    }

    /// Subscriptions the broker holds for the nodes (connections named `ringws-…` on
    /// NATS; `ringws:` channels on Redis).
    fn node_subscriptions(&self) -> u64 {
        match self.kind {
            Kind::Nats => {
                let mut stream = TcpStream::connect(("127.0.0.1", self.monitor)).expect("monitor");
                write!(stream, "GET /connz?subs=1 HTTP/1.0\r\nHost: x\r\n\r\n").expect("ask");
                let mut text = String::new();
                stream.read_to_string(&mut text).expect("connz");
                let body = text.split("\r\n\r\n").nth(1).expect("a body");
                let connz: serde_json::Value = serde_json::from_str(body).expect("JSON");
                connz["connections"]
                    .as_array()
                    .expect("connections")
                    .iter()
                    .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("ringws-")))
                    .map(|c| c["subscriptions"].as_u64().unwrap_or(0))
                    .sum()
            }
            Kind::Redis => {
                let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut ask = |args: &[&str]| -> Vec<String> {
                    (&stream).write_all(&resp(args)).expect("ask");
                    read_array(&mut reader)
                };
                let channels = ask(&["PUBSUB", "CHANNELS", "ringws:*"]);
                if channels.is_empty() {
                    return 0;
                }
                let mut numsub = vec!["PUBSUB", "NUMSUB"];
                numsub.extend(channels.iter().map(String::as_str));
                let counts = ask(&numsub);
                counts
                    .chunks(2)
                    .map(|pair| pair[1].parse::<u64>().expect("a count"))
                    .sum()
            }
        }
    }
}

/// Reads a RESP array of bulk strings or integers, as strings.
fn read_array(reader: &mut impl BufRead) -> Vec<String> {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a reply");
    let count: usize = line
        .trim()
        .trim_start_matches('*')
        .parse()
        .expect("an array");
    (0..count)
        .map(|_| {
            line.clear();
            reader.read_line(&mut line).expect("an element");
            if let Some(n) = line.strip_prefix(':') {
                return n.trim().to_owned();
            }
            line.clear();
            reader.read_line(&mut line).expect("a bulk string");
            line.trim_end().to_owned()
        })
        .collect()
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A RESP command.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for arg in args {
        out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    out.into_bytes()
}

/// Three nodes on `broker`, each with two shards.
fn nodes(broker: &Broker, count: usize) -> Vec<Server> {
    let url = broker.url();
    (0..count)
        .map(|_| {
            Server::start(&[
                "--shards",
                "2",
                "--cluster",
                &url,
                "--cluster-unsubscribe-delay",
                "300ms",
            ])
        })
        .collect()
}

fn link_up(node: &Server) {
    wait_for_metrics(node.addr, SETTLE, |m| m["ringws_cluster_link_up"] == 1);
}

fn topic_path() -> String {
    format!("/pubsub/{TOPIC}")
}

/// `publisher:sequence`.
fn parse(payload: &[u8]) -> (String, u32) {
    let text = std::str::from_utf8(payload).expect("text");
    let (publisher, seq) = text.split_once(':').expect("publisher:sequence");
    (publisher.to_owned(), seq.parse().expect("a number"))
}

fn every_subscriber_gets_every_message_once_in_order(kind: Kind) {
    const MESSAGES: u32 = 200;
    let broker = Broker::start(kind);
    let nodes = nodes(&broker, 3);
    nodes.iter().for_each(link_up);
    let subscribers: Vec<(usize, TcpStream)> = (0..6)
        .map(|i| (i % 3, open(nodes[i % 3].addr, &topic_path())))
        .collect();
    for node in &nodes {
        wait_for_metrics(node.addr, SETTLE, |m| {
            m["ringws_cluster_subscriptions"] == 1
        });
    }
    assert_eq!(
        broker.node_subscriptions(),
        3,
        "one per node, not per client"
    );

    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|(node, mut stream)| {
            thread::spawn(move || {
                let mut next: HashMap<String, u32> = HashMap::new();
                for _ in 0..4 * MESSAGES {
                    let (header, payload) = read_frame(&mut stream);
                    assert_eq!(header.opcode, OpCode::Text);
                    let (publisher, seq) = parse(&payload);
                    let expected = next.entry(publisher.clone()).or_default();
                    assert_eq!(
                        seq, *expected,
                        "a subscriber on node {node}: publisher {publisher} out of order or duplicated"
                    );
                    *expected += 1;
                }
                // Nothing more: no message arrives twice.
                stream
                    .set_read_timeout(Some(Duration::from_millis(500)))
                    .expect("timeout");
                let mut byte = [0u8; 1];
                assert!(
                    stream.read(&mut byte).is_err(),
                    "a subscriber on node {node} got more than every message once"
                );
                next
            })
        })
        .collect();
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let mut stream = open(node.addr, &topic_path());
            thread::spawn(move || {
                for seq in 0..MESSAGES {
                    send(
                        &mut stream,
                        OpCode::Text,
                        true,
                        format!("n{n}:{seq}").as_bytes(),
                    );
                }
                stream
            })
        })
        .collect();
    let payloads: Vec<String> = (0..MESSAGES).map(|seq| format!("backend:{seq}")).collect();
    broker.publish(&payloads);
    for reader in readers {
        let seen = reader.join().expect("every message, once, in order");
        assert_eq!(
            seen.len(),
            4,
            "three nodes' publishers and the backend: {seen:?}"
        );
        assert!(seen.values().all(|&n| n == MESSAGES), "{seen:?}");
    }
    let publishers: Vec<TcpStream> = publishers
        .into_iter()
        .map(|p| p.join().expect("sent"))
        .collect();
    for node in &nodes {
        let m = metrics(node.addr);
        assert_eq!(m["ringws_cluster_messages_out_total"], u64::from(MESSAGES));
        assert_eq!(m["ringws_cluster_publish_failures_total"], 0);
        // From the other two nodes and the backend; none of its own.
        assert_eq!(
            m["ringws_cluster_messages_in_total"],
            3 * u64::from(MESSAGES)
        );
    }
    drop(publishers);
}

#[test]
fn nats_every_subscriber_on_every_node_gets_every_message_once_in_order() {
    every_subscriber_gets_every_message_once_in_order(Kind::Nats);
}

#[test]
fn redis_every_subscriber_on_every_node_gets_every_message_once_in_order() {
    every_subscriber_gets_every_message_once_in_order(Kind::Redis);
}

fn churn_leaves_no_broker_subscription(kind: Kind) {
    let broker = Broker::start(kind);
    let nodes = nodes(&broker, 3);
    nodes.iter().for_each(link_up);
    // Waves of subscribers to 12 topics over the nodes, each wave closed before the next.
    for wave in 0..4 {
        let held: Vec<TcpStream> = (0..24)
            .map(|i| {
                open(
                    nodes[(i + wave) % 3].addr,
                    &format!("/pubsub/churn.{}", i % 12),
                )
            })
            .collect();
        if wave == 0 {
            for node in &nodes {
                wait_for_metrics(node.addr, SETTLE, |m| {
                    m["ringws_cluster_subscriptions"] == 4
                });
            }
            assert_eq!(broker.node_subscriptions(), 12, "four topics on each node");
        }
        drop(held);
    }
    for node in &nodes {
        wait_for_metrics(node.addr, SETTLE, |m| {
            m["ringws_pubsub_topics"] == 0 && m["ringws_cluster_subscriptions"] == 0
        });
    }
    let deadline = Instant::now() + SETTLE;
    while broker.node_subscriptions() != 0 {
        assert!(
            Instant::now() < deadline,
            "the broker still holds subscriptions"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nats_topic_churn_leaves_zero_broker_subscriptions() {
    churn_leaves_no_broker_subscription(Kind::Nats);
}

#[test]
fn redis_topic_churn_leaves_zero_broker_subscriptions() {
    churn_leaves_no_broker_subscription(Kind::Redis);
}

fn readyz(addr: SocketAddr) -> String {
    let mut stream = support::connect(addr);
    write!(stream, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").expect("ask");
    String::from_utf8(support::read_to_close(&mut stream)).expect("text")
}

/// Reads numbered messages (`p:seq`) until `quiet` passes without one; returns each with
/// the time it arrived.
fn collect(mut stream: TcpStream, quiet: Duration) -> thread::JoinHandle<Vec<(u32, Instant)>> {
    thread::spawn(move || {
        stream.set_read_timeout(Some(quiet)).expect("timeout");
        let mut seen = Vec::new();
        loop {
            let mut first = [0u8; 1];
            match stream.read(&mut first) {
                Ok(1) => {}
                _ => return seen,
            }
            // The frame's first byte is in hand: read the rest with a generous timeout.
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut rest = [0u8; 1];
            stream.read_exact(&mut rest).expect("length");
            let len = usize::from(rest[0] & 0x7f);
            assert!(len < 126, "short test messages");
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).expect("payload");
            seen.push((parse(&payload).1, Instant::now()));
            stream.set_read_timeout(Some(quiet)).expect("timeout");
        }
    })
}

fn an_outage_is_survived_counted_and_recovered(kind: Kind) {
    const MESSAGES: u32 = 600;
    const EVERY: Duration = Duration::from_millis(5);
    let mut broker = Broker::start(kind);
    let nodes = nodes(&broker, 2);
    nodes.iter().for_each(link_up);
    let local = open(nodes[0].addr, &topic_path());
    let remote = open(nodes[1].addr, &topic_path());
    for node in &nodes {
        wait_for_metrics(node.addr, SETTLE, |m| {
            m["ringws_cluster_subscriptions"] == 1
        });
    }
    let local = collect(local, Duration::from_secs(3));
    let remote = collect(remote, Duration::from_secs(3));
    let mut publisher = open(nodes[0].addr, &topic_path());
    let (published_tx, published_rx) = mpsc::channel();
    let pace = thread::spawn(move || {
        let start = Instant::now();
        for seq in 0..MESSAGES {
            send(
                &mut publisher,
                OpCode::Text,
                true,
                format!("a:{seq}").as_bytes(),
            );
            let _ = published_tx.send((seq, Instant::now()));
            let due = start + EVERY * (seq + 1);
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        publisher
    });
    thread::sleep(Duration::from_millis(700));
    broker.kill();
    let killed = Instant::now();
    wait_for_metrics(nodes[0].addr, SETTLE, |m| m["ringws_cluster_link_up"] == 0);
    let ready = readyz(nodes[0].addr);
    assert!(
        ready.starts_with("HTTP/1.1 200"),
        "local fan-out still serves: {ready}"
    );
    assert!(ready.contains("cluster link down"), "{ready}");
    thread::sleep(Duration::from_millis(700));
    broker.launch();
    let restarted = Instant::now();
    for node in &nodes {
        wait_for_metrics(node.addr, SETTLE, |m| m["ringws_cluster_link_up"] == 1);
    }
    let links_back = restarted.elapsed();
    let publisher = pace.join().expect("published");
    let published: Vec<(u32, Instant)> = published_rx.iter().collect();

    let local = local.join().expect("the local subscriber");
    let local_seqs: Vec<u32> = local.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        local_seqs,
        (0..MESSAGES).collect::<Vec<_>>(),
        "local delivery carries on through the outage"
    );
    let remote = remote.join().expect("the remote subscriber");
    let seqs: Vec<u32> = remote.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, nothing twice: {seqs:?}"
    );
    assert_eq!(seqs.last(), Some(&(MESSAGES - 1)), "the link recovered");
    // The first message published after the restart that reached the other node.
    let first_after = published
        .iter()
        .find(|(_, at)| *at >= restarted)
        .map(|(seq, _)| *seq)
        .expect("messages after the restart");
    let recovered_at = remote
        .iter()
        .find(|(seq, _)| *seq >= first_after)
        .map(|(_, at)| *at)
        .expect("delivery after the restart");
    let lost = MESSAGES as usize - seqs.len();
    let m = metrics(nodes[0].addr);
    assert!(m["ringws_cluster_reconnects_total"] >= 1);
    println!(
        "{kind:?} outage: broker down {:?}; links back {links_back:?} after the restart, \
         cross-node delivery {:?} after it; {lost} of {MESSAGES} messages lost across nodes, \
         0 locally; node A counted {} publish failures, sent {} to the broker",
        restarted - killed,
        recovered_at.saturating_duration_since(restarted),
        m["ringws_cluster_publish_failures_total"],
        m["ringws_cluster_messages_out_total"],
    );
    drop(publisher);
}

#[test]
fn nats_broker_outage_keeps_local_delivery_and_recovers() {
    an_outage_is_survived_counted_and_recovered(Kind::Nats);
}

#[test]
fn redis_broker_outage_keeps_local_delivery_and_recovers() {
    an_outage_is_survived_counted_and_recovered(Kind::Redis);
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl in `dir`.
fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl (scripts/test.sh installs it)");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &["-keyout", "ca.key", "-out", "ca.pem"],
    ]
    .concat()
    .into_iter()
    .chain(["-days", "1", "-subj", "/CN=ringws test CA"])
    .collect::<Vec<_>>());
    run(&[
        &["req"],
        &ec[..],
        &["-keyout", "server.key", "-out", "server.csr"],
    ]
    .concat()
    .into_iter()
    .chain(["-subj", "/CN=127.0.0.1"])
    .collect::<Vec<_>>());
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
}

/// Ten messages from a publisher on one node to a subscriber on another, over `url`.
fn one_way(url: &str, ca: &str) {
    let args = ["--shards", "1", "--cluster", url, "--cluster-tls-ca", ca];
    let a = Server::start(&args);
    let b = Server::start(&args);
    link_up(&a);
    link_up(&b);
    let mut subscriber = open(b.addr, "/pubsub/secure");
    wait_for_metrics(b.addr, SETTLE, |m| m["ringws_cluster_subscriptions"] == 1);
    let mut publisher = open(a.addr, "/pubsub/secure");
    // B's subscription reaches the broker on its own time (a slow TLS link on a busy
    // machine may take longer than the node waits for its confirmation): probe until a
    // message crosses, then count.
    subscriber
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a read timeout");
    within(SETTLE, "a probe crossing the broker", || {
        send(&mut publisher, OpCode::Text, true, PROBE);
        subscriber.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0)
    });
    subscriber
        .set_read_timeout(Some(SETTLE))
        .expect("a read timeout");
    for seq in 0..10 {
        send(
            &mut publisher,
            OpCode::Text,
            true,
            format!("a:{seq}").as_bytes(),
        );
    }
    let mut seq = 0;
    while seq < 10 {
        let (_, payload) = read_frame(&mut subscriber);
        if payload != PROBE {
            assert_eq!(parse(&payload).1, seq);
            seq += 1;
        }
    }
}

const PROBE: &[u8] = b"probe";

#[test]
fn nats_and_redis_links_use_tls_and_passwords() {
    let dir = std::env::temp_dir().join(format!("ringws-cluster-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    certificates(&dir);
    let file = |name: &str| dir.join(name).to_str().expect("UTF-8").to_owned();
    let nats = Broker::start_with(
        Kind::Nats,
        [
            "--tls",
            "--tlscert",
            &file("server.pem"),
            "--tlskey",
            &file("server.key"),
        ]
        .into_iter()
        .chain(["--user", "ringws", "--pass", "s3cret"])
        .map(String::from)
        .collect(),
        false,
    );
    one_way(
        &format!("tls://ringws:s3cret@127.0.0.1:{}", nats.port),
        &file("ca.pem"),
    );
    let redis = Broker::start_with(
        Kind::Redis,
        [
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
        ]
        .into_iter()
        .chain([
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .chain(["--requirepass", "s3cret"])
        .map(String::from)
        .collect(),
        true,
    );
    one_way(
        &format!("rediss://:s3cret@127.0.0.1:{}", redis.port),
        &file("ca.pem"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Nodes started before their broker serve alone, then join it with every topic they hold.
fn nodes_started_before_the_broker_join_it(kind: Kind) {
    let mut broker = Broker::start(kind);
    broker.kill();
    let nodes = nodes(&broker, 2);
    let mut subscriber = open(nodes[1].addr, &topic_path());
    let ready = readyz(nodes[1].addr);
    assert!(ready.contains("cluster link down"), "{ready}");
    broker.launch();
    nodes.iter().for_each(link_up);
    wait_for_metrics(nodes[1].addr, SETTLE, |m| {
        m["ringws_cluster_subscriptions"] == 1
    });
    let mut publisher = open(nodes[0].addr, &topic_path());
    // The subscription made while the broker was away is in place once the link is up.
    for seq in 0..10 {
        send(
            &mut publisher,
            OpCode::Text,
            true,
            format!("a:{seq}").as_bytes(),
        );
    }
    for seq in 0..10 {
        let (_, payload) = read_frame(&mut subscriber);
        assert_eq!(parse(&payload), ("a".to_owned(), seq));
    }
}

#[test]
fn nats_nodes_started_before_the_broker_join_it() {
    nodes_started_before_the_broker_join_it(Kind::Nats);
}

#[test]
fn redis_nodes_started_before_the_broker_join_it() {
    nodes_started_before_the_broker_join_it(Kind::Redis);
}

/// Three redis-server processes made into one Redis Cluster (no replicas).
struct RedisCluster {
    dir: std::path::PathBuf,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("ringws-redis-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory");
        // Each node also listens on its port + 10000 for the cluster bus.
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = 20_000 + (free_port() % 10_000);
            let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
            if !ports.contains(&port) && free(port) && free(port + 10_000) {
                ports.push(port);
            }
        }
        let mut cluster = RedisCluster {
            dir,
            children: ports.iter().map(|_| None).collect(),
            ports,
        };
        for node in 0..3 {
            cluster.launch(node);
        }
        let mut create = vec!["--cluster".to_string(), "create".into()];
        create.extend(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let status = Command::new("redis-cli")
            .args(&create)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli (redis-tools, with redis-server)");
        assert!(status.success(), "redis-cli --cluster create");
        cluster.wait_ok();
        cluster
    }

    fn launch(&mut self, node: usize) {
        let port = self.ports[node].to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
            ])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.children[node] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.ports[node])).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cli(&self, node: usize, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-c", "-p", &self.ports[node].to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + SETTLE;
        while !(0..3).all(|n| {
            self.cli(n, &["cluster", "info"])
                .contains("cluster_state:ok")
        }) {
            assert!(Instant::now() < deadline, "the Redis Cluster never settled");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Shard channels of the nodes, and how many subscribers each has, over the cluster.
    fn shard_subscriptions(&self) -> (usize, u64) {
        let mut channels = 0;
        let mut subscribers = 0;
        for node in 0..3 {
            let names = self.cli(node, &["pubsub", "shardchannels", "ringws:*"]);
            for name in names.lines().filter(|l| !l.is_empty()) {
                channels += 1;
                let counts = self.cli(node, &["pubsub", "shardnumsub", name]);
                subscribers += counts
                    .lines()
                    .nth(1)
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        (channels, subscribers)
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .flat_map(|p| ["--cluster".to_string(), format!("redis://127.0.0.1:{p}")])
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in 0..3 {
            self.kill(node);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads `count` messages and checks each publisher's come in order, from `next` on.
fn read_in_order(stream: &mut TcpStream, count: usize, next: &mut HashMap<String, u32>) {
    for _ in 0..count {
        let (_, payload) = read_frame(stream);
        let (publisher, seq) = parse(&payload);
        let expected = next.entry(publisher.clone()).or_default();
        assert_eq!(
            seq, *expected,
            "publisher {publisher}: out of order or twice"
        );
        *expected += 1;
    }
}

const TOPICS: usize = 6;
const MESSAGES: u32 = 50;

fn room(t: usize) -> String {
    format!("/pubsub/room.{t}")
}

/// `MESSAGES` from a publisher on every node to every topic, numbered from `from`, and 5
/// from a backend to every topic's shard channel, numbered from `backend_from`.
fn publish_round(
    nodes: &[Server],
    redis: &RedisCluster,
    from: u32,
    backend_from: u32,
) -> Vec<TcpStream> {
    let publishers = (0..3 * TOPICS)
        .map(|i| {
            let mut stream = open(nodes[i / TOPICS].addr, &room(i % TOPICS));
            for seq in from..from + MESSAGES {
                let text = format!("n{}:{seq}", i / TOPICS);
                send(&mut stream, OpCode::Text, true, text.as_bytes());
            }
            stream
        })
        .collect();
    for t in 0..TOPICS {
        for seq in backend_from..backend_from + 5 {
            let channel = format!("ringws:room.{t}");
            redis.cli(2, &["spublish", &channel, &format!("backend:{seq}")]);
        }
    }
    publishers
}

#[test]
fn redis_cluster_uses_sharded_pubsub_and_survives_a_node_restart() {
    let mut redis = RedisCluster::start();
    let mut args = vec!["--shards".to_string(), "1".into()];
    args.extend(redis.urls());
    args.extend(["--cluster-unsubscribe-delay", "300ms"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nodes: Vec<Server> = (0..3).map(|_| Server::start(&args)).collect();
    nodes.iter().for_each(link_up);
    // A subscriber to every topic on every node.
    let mut subscribers: Vec<(usize, TcpStream, HashMap<String, u32>)> = (0..3 * TOPICS)
        .map(|i| {
            (
                i % TOPICS,
                open(nodes[i / TOPICS].addr, &room(i % TOPICS)),
                HashMap::new(),
            )
        })
        .collect();
    for node in &nodes {
        wait_for_metrics(node.addr, SETTLE, |m| {
            m["ringws_cluster_subscriptions"] == TOPICS as u64
        });
    }
    let (channels, held) = redis.shard_subscriptions();
    assert_eq!(
        (channels, held),
        (TOPICS, 3 * TOPICS as u64),
        "a shard channel per topic, one subscription per node"
    );
    let spread = (0..3)
        .filter(|&n| !redis.cli(n, &["pubsub", "shardchannels"]).trim().is_empty())
        .count();
    assert!(spread >= 2, "the topics' slots live on several Redis nodes");

    // Publishers on every node to every topic, and a backend straight to the shard channel.
    let publishers = publish_round(&nodes, &redis, 0, 0);
    for (_, stream, next) in subscribers.iter_mut() {
        read_in_order(stream, 3 * MESSAGES as usize + 5, next);
    }
    drop(publishers);

    // A Redis node goes away and comes back with its slots: every node's link notices,
    // recovers, and the channels on it are subscribed again.
    redis.kill(1);
    for node in &nodes {
        wait_for_metrics(node.addr, SETTLE, |m| m["ringws_cluster_link_up"] == 0);
    }
    redis.launch(1);
    redis.wait_ok();
    nodes.iter().for_each(link_up);
    let deadline = Instant::now() + SETTLE;
    while redis.shard_subscriptions() != (TOPICS, 3 * TOPICS as u64) {
        assert!(
            Instant::now() < deadline,
            "resubscribed: {:?}",
            redis.shard_subscriptions()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Each sequence carries on where the first round stopped.
    let publishers = publish_round(&nodes, &redis, MESSAGES, 5);
    for (_, stream, next) in subscribers.iter_mut() {
        read_in_order(stream, 3 * MESSAGES as usize + 5, next);
    }
    drop(publishers);
    drop(subscribers);
    for node in &nodes {
        wait_for_metrics(node.addr, SETTLE, |m| {
            m["ringws_cluster_subscriptions"] == 0
        });
    }
    let deadline = Instant::now() + SETTLE;
    while redis.shard_subscriptions() != (0, 0) {
        assert!(
            Instant::now() < deadline,
            "the cluster still holds shard channels"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
