//! One server process holds 25,000 WebSocket connections at once: more than the process's
//! 20,000 open files, which only direct descriptors make possible. Every connection then
//! completes an echo.
//!
//! The client side cannot hold that many sockets in one process either, so this test runs
//! itself again as worker processes (selected by an environment variable), each holding its
//! share from its own loopback source address.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringws::proto::OpCode;
use ringws::proto::frame::{FrameHead, write_frame};
use support::{Server, read_head};

const TOTAL: usize = 25_000;
const WORKERS: usize = 2;
const WORKER_ENV: &str = "RINGWS_SCALE_WORKER";

/// A worker: opens `count` connections from `source`, upgrades them all, reports, waits for
/// the word, then echoes one message on every connection and reports again.
fn worker(server: SocketAddr, source: Ipv4Addr, count: usize) {
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let stream = connect_from(source, server).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        conns.push(stream);
    }
    // Pipeline every upgrade request first, then read the answers: quick even at 12,500.
    for stream in &mut conns {
        let request = format!(
            "GET /scale HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send upgrade");
    }
    for (i, stream) in conns.iter_mut().enumerate() {
        let head = read_head(stream);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "connection {i} not upgraded: {head}"
        );
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "wrong accept key: {head}"
        );
    }
    println!("scale-worker: open {count}");
    let mut word = String::new();
    std::io::stdin()
        .read_line(&mut word)
        .expect("wait for the parent");

    for (i, stream) in conns.iter_mut().enumerate() {
        let payload = format!("echo {i}");
        let mut frame = Vec::new();
        write_frame(
            &mut frame,
            FrameHead::whole(OpCode::Text),
            payload.as_bytes(),
            Some([7, 7, 7, 7]),
        );
        stream.write_all(&frame).expect("send message");
    }
    for (i, stream) in conns.iter_mut().enumerate() {
        let expected = format!("echo {i}");
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).expect("echo header");
        assert_eq!(
            header,
            [0x81, expected.len() as u8],
            "connection {i}: unexpected frame header"
        );
        let mut body = vec![0u8; expected.len()];
        stream.read_exact(&mut body).expect("echo body");
        assert_eq!(body, expected.as_bytes(), "connection {i}: wrong echo");
    }
    println!("scale-worker: echoed {count}");
}

fn connect_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    // std cannot bind before connect; do it with libc and hand the fd to std.
    // SAFETY: plain socket syscalls on a fresh descriptor this function owns; on success the
    // descriptor is moved into the TcpStream exactly once, on failure it is closed here.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let bind_to = sockaddr(SocketAddrV4::new(source, 0));
        let SocketAddr::V4(server) = server else {
            unreachable!("the server listens on IPv4")
        };
        let to = sockaddr(server);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&raw const bind_to).cast(), len) != 0
            || libc::connect(fd, (&raw const to).cast(), len) != 0
        {
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(err);
        }
        Ok(<TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd))
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn spawn_worker(server: SocketAddr, index: usize) -> Child {
    Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            "holds_25000_connections_beyond_the_fd_limit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            WORKER_ENV,
            format!("{server} 127.0.0.{} {}", index + 2, TOTAL / WORKERS),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start worker")
}

/// Waits for a worker to report `word` (the test harness may print on the same line).
fn expect_line(lines: &mut impl Iterator<Item = std::io::Result<String>>, word: &str) {
    for line in lines.by_ref() {
        let line = line.expect("worker output");
        if line.contains(&format!("scale-worker: {word}")) {
            return;
        }
    }
    panic!("worker ended before saying `{word}`");
}

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
        return worker(server, source, count);
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
    let mut workers: Vec<Child> = (0..WORKERS).map(|i| spawn_worker(addr, i)).collect();
    let mut outputs: Vec<_> = workers
        .iter_mut()
        .map(|w| BufReader::new(w.stdout.take().expect("worker stdout")).lines())
        .collect();
    for output in &mut outputs {
        expect_line(output, "open");
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
        expect_line(output, "echoed");
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
