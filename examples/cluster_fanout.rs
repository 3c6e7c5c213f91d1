//! Measures what the broker hop costs: one publisher on node A, subscribers first on A
//! (single-node fan-out) then on node B (cross-node, through the broker), at the same rate
//! in the same run; deliveries per second, latency, loss, and the broker's CPU per message.
//!
//! Run: `cargo run --release --example cluster_fanout -- nats|redis SUBSCRIBERS RATE SECONDS`
//! (scripts/bench-cluster.sh runs the set in docs/benchmarks.md). Starts its own
//! nats-server or redis-server and two `target/release/ringws serve` nodes (`RINGWS` names
//! another binary), and stops them all at the end. Prints one Markdown row per path.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use ringws::proto::OpCode;
use ringws::proto::frame::{FrameHead, write_frame};

const SIZE: usize = 64;

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// CPU time used so far, user and system.
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        let fields: Vec<u64> = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
        // SAFETY: sysconf reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn broker(kind: &str) -> (Process, String) {
    let port = free_port();
    let (program, args): (&str, Vec<String>) = match kind {
        "nats" => (
            "nats-server",
            vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
        ),
        "redis" => (
            "redis-server",
            [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .to_vec(),
        ),
        other => panic!("broker {other}: nats or redis"),
    };
    let child = Command::new(program)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("{program}: {err}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{program} did not listen");
        thread::sleep(Duration::from_millis(20));
    }
    (Process(child), format!("{kind}://127.0.0.1:{port}"))
}

fn node(url: &str) -> (Process, SocketAddr) {
    let binary = std::env::var("RINGWS").unwrap_or_else(|_| "target/release/ringws".into());
    let mut child = Command::new(&binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--idle-timeout",
            "0",
        ])
        .args(["--cluster", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("{binary}: {err}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("a line").expect("stdout");
        if let Some((_, addr)) = line.split_once("listening on ") {
            break addr.trim().parse().expect("an address");
        }
    };
    thread::spawn(move || lines.for_each(drop));
    (Process(child), addr)
}

fn open(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("101");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "not upgraded");
    stream
}

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").expect("ask");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Reads `expected` messages (or until 5 s of silence) and returns each one's latency in µs.
fn subscriber(stream: TcpStream, expected: u64) -> Vec<u32> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut head = [0u8; 2];
    let mut payload = [0u8; 125];
    while (latencies.len() as u64) < expected {
        if reader.read_exact(&mut head).is_err() {
            break;
        }
        let len = usize::from(head[1] & 0x7f);
        assert!(len <= 125, "short messages only");
        reader.read_exact(&mut payload[..len]).expect("payload");
        let text = std::str::from_utf8(&payload[..len]).expect("text");
        let sent: u64 = text[11..31].parse().expect("a timestamp");
        let now = start().elapsed().as_nanos() as u64;
        latencies.push(((now.saturating_sub(sent)) / 1000) as u32);
    }
    latencies
}

struct Run {
    delivered: u64,
    expected: u64,
    seconds: f64,
    latencies: Vec<u32>,
}

/// Publishes `rate` messages a second for `seconds` on `publish_to`, to `subscribers`.
fn run(publish_to: SocketAddr, subscribers: Vec<TcpStream>, rate: u64, seconds: u64) -> Run {
    let messages = rate * seconds;
    let expected = messages * subscribers.len() as u64;
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|s| thread::spawn(move || subscriber(s, messages)))
        .collect();
    let mut publisher = open(publish_to, "/pubsub/bench");
    let began = Instant::now();
    let mut frame = Vec::with_capacity(SIZE + 16);
    for seq in 0..messages {
        let due = began + Duration::from_nanos(seq * 1_000_000_000 / rate);
        let now = Instant::now();
        if due > now + Duration::from_micros(500) {
            thread::sleep(due - now);
        }
        let stamp = start().elapsed().as_nanos() as u64;
        let text = format!("{seq:010}:{stamp:020}:");
        let mut payload = text.into_bytes();
        payload.resize(SIZE, b'x');
        frame.clear();
        write_frame(
            &mut frame,
            FrameHead::whole(OpCode::Text),
            &payload,
            Some([1, 2, 3, 4]),
        );
        publisher.write_all(&frame).expect("publish");
    }
    let mut latencies = Vec::new();
    for reader in readers {
        latencies.extend(reader.join().expect("a subscriber"));
    }
    let seconds = began.elapsed().as_secs_f64().max(seconds as f64);
    latencies.sort_unstable();
    Run {
        delivered: latencies.len() as u64,
        expected,
        seconds,
        latencies,
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args.first().map_or("nats", String::as_str).to_owned();
    let count: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let rate: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5);
    start();
    let (broker, url) = broker(&kind);
    let (node_a, a) = node(&url);
    let (node_b, b) = node(&url);
    for (path, subscribe_to) in [("single node", a), ("cross node", b)] {
        let subscribers: Vec<TcpStream> = (0..count)
            .map(|_| open(subscribe_to, "/pubsub/bench"))
            .collect();
        // The subscribing node's broker subscription is in place before the first publish.
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(subscribe_to, "ringws_cluster_subscriptions") < 1 {
            assert!(Instant::now() < deadline, "no broker subscription");
            thread::sleep(Duration::from_millis(10));
        }
        let cpu = (broker.cpu(), node_a.cpu(), node_b.cpu());
        let result = run(a, subscribers, rate, seconds);
        let broker_cpu = broker.cpu().saturating_sub(cpu.0);
        let nodes_cpu = node_a.cpu().saturating_sub(cpu.1) + node_b.cpu().saturating_sub(cpu.2);
        let published = (rate * seconds) as f64;
        println!(
            "| {kind} | {path} | {count} | {rate} | {:.0} | {} | {} | {} | {} | {:.1} | {:.1} |",
            result.delivered as f64 / result.seconds,
            percentile(&result.latencies, 0.5),
            percentile(&result.latencies, 0.99),
            percentile(&result.latencies, 0.999),
            result.expected - result.delivered,
            broker_cpu.as_secs_f64() * 1e6 / published,
            nodes_cpu.as_secs_f64() * 1e6 / published,
        );
        let counters = [
            (a, "ringws_cluster_publish_failures_total"),
            (subscribe_to, "ringws_cluster_inbound_dropped_total"),
            (subscribe_to, "ringws_pubsub_backlog_refused_total"),
            (subscribe_to, "ringws_pubsub_dropped_total"),
            (subscribe_to, "ringws_cluster_messages_in_total"),
            (subscribe_to, "ringws_cluster_reconnects_total"),
            (a, "ringws_cluster_reconnects_total"),
        ];
        let counts: Vec<String> = counters
            .iter()
            .map(|(node, name)| format!("{name}={}", metric(*node, name)))
            .collect();
        eprintln!("{kind} {path}: {}", counts.join(" "));
        // Let the unsubscribe delay pass so that the next path starts clean.
        thread::sleep(Duration::from_millis(2500));
    }
}
