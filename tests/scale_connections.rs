//! One server process holds 25,000 WebSocket connections at once: more than the process's
//! 20,000 open files, which only direct descriptors make possible. Every connection then
//! completes an echo.
//!
//! The client side cannot hold that many sockets in one process either, so this test runs
//! itself again as worker processes (selected by an environment variable), each holding its
//! share from its own loopback source address.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::time::Duration;

use support::{Server, held};

const TOTAL: usize = 25_000;
const WORKERS: usize = 2;
const WORKER_ENV: &str = "RINGWS_SCALE_WORKER";
const TEST_NAME: &str = "holds_25000_connections_beyond_the_fd_limit";

#[test]
fn holds_25000_connections_beyond_the_fd_limit() {
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

    let server = Server::start(&[
        "--shards",
        "2",
        "--max-connections",
        "40000",
        "--idle-timeout",
        "0",
        // Each worker opens its share before it sends a request: on a busy machine that
        // takes longer than the default handshake timeout.
        "--handshake-timeout",
        "120s",
    ]);
    let addr = server.addr;
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
    // All 25,000 are open at this moment: the server holds them all at once.
    let fd_limit = rlimit_nofile();
    assert!(
        TOTAL as u64 > fd_limit,
        "the test must exceed the fd limit ({fd_limit}) to prove anything"
    );
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
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "server exited with {status}");
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
