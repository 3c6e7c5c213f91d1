//! One shard holds 50,000 WebSocket connections: more than two and a half times the
//! process's open-file limit, so more than one direct-descriptor table (the kernel caps each
//! at that limit). Every connection then echoes a message, and a client arriving once
//! `--max-connections` WebSockets are open is answered 503 at once, and counted.
//!
//! No client process can hold 50,000 sockets either: this test runs itself again as worker
//! processes (selected by an environment variable), each holding its share from its own
//! loopback source address.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{held, read_head, upgrade_request};

const TOTAL: usize = 50_000;
const WORKERS: usize = 4;
const WORKER_ENV: &str = "RINGWS_SCALE_50K_WORKER";
const TEST_NAME: &str = "one_shard_holds_50000_connections_in_several_tables";

/// `ringws serve` on a port of the kernel's choice, killed on drop; with the line that says
/// how its capacity was laid out.
struct Serve {
    child: Child,
    addr: SocketAddr,
    layout: String,
}

impl Serve {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringws"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ringws serve");
        let mut lines = BufReader::new(child.stdout.take().expect("server stdout")).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.expect("server output");
            if let Some(at) = line.find("listening on ") {
                addr = line[at + "listening on ".len()..]
                    .split_whitespace()
                    .next()
                    .and_then(|word| word.parse().ok());
            } else if let (Some(addr), true) = (addr, line.contains(" connections: ")) {
                // The layout line follows the listening lines.
                std::thread::spawn(move || lines.for_each(drop));
                return Self {
                    child,
                    addr,
                    layout: line,
                };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("ringws serve ended before saying how its connections are laid out");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn one_shard_holds_50000_connections_in_several_tables() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        let mut parts = spec.split(' ');
        let server = parts
            .next()
            .and_then(|s| s.parse().ok())
            .expect("server address");
        let source = parts
            .next()
            .and_then(|s| s.parse().ok())
            .expect("source address");
        let count = parts.next().and_then(|s| s.parse().ok()).expect("count");
        return held::worker(server, source, count);
    }

    let fd_limit = rlimit_nofile();
    assert!(
        TOTAL as u64 > 2 * fd_limit,
        "the test must need three descriptor tables (fd limit {fd_limit}) to prove anything"
    );
    let total = TOTAL.to_string();
    let server = Serve::start(&[
        "--shards",
        "1",
        "--max-connections",
        &total,
        "--idle-timeout",
        "0",
        // Each worker opens its share before it sends a request: on a busy machine that
        // takes longer than the default handshake timeout.
        "--handshake-timeout",
        "120s",
    ]);
    let rings = server
        .layout
        .split(" x ")
        .nth(1)
        .and_then(|rings| rings.split(' ').next())
        .and_then(|rings| rings.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no layout line: {:?}", server.layout));
    assert!(
        server
            .layout
            .starts_with("ringws: 50000 connections: 1 shard x ")
            && rings >= 3,
        "{}",
        server.layout
    );
    let addr = server.addr;
    let started = Instant::now();
    let mut workers: Vec<Child> = (0..WORKERS)
        .map(|i| held::spawn_worker(addr, i, TEST_NAME, WORKER_ENV, TOTAL / WORKERS))
        .collect();
    let mut outputs: Vec<_> = workers
        .iter_mut()
        .map(|w| BufReader::new(w.stdout.take().expect("worker stdout")).lines())
        .collect();
    for output in &mut outputs {
        held::expect_line(output, "open");
    }
    eprintln!("{TOTAL} connections open in {:?}", started.elapsed());

    // Every WebSocket the server allows is open: the next client is told so at once.
    let mut late = held::connect_from(Ipv4Addr::new(127, 0, 0, 6), addr).expect("connect");
    late.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    late.write_all(upgrade_request(addr, "/scale", &[]).as_bytes())
        .expect("send upgrade");
    let head = read_head(&mut late);
    assert!(head.starts_with("HTTP/1.1 503"), "not refused: {head}");
    let mut rest = Vec::new();
    let _ = late.read_to_end(&mut rest);
    let metrics = support::metrics(addr);
    let full = metrics
        .iter()
        .find(|(name, _)| name.contains("admission_server_full_total"))
        .map(|(_, value)| *value);
    assert_eq!(full, Some(1), "the refusal is not counted");

    for worker in &mut workers {
        worker
            .stdin
            .as_mut()
            .expect("worker stdin")
            .write_all(b"go\n")
            .expect("signal worker");
    }
    for output in &mut outputs {
        held::expect_line(output, "echoed");
    }
    for mut worker in workers {
        assert!(
            worker.wait().expect("worker exit").success(),
            "a worker failed"
        );
    }
    eprintln!("opened and echoed in {:?}", started.elapsed());
}

fn rlimit_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}
