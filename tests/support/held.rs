//! Holding more connections than one process may open: a test runs itself again as worker
//! processes, each holding its share from its own loopback source address.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};

use ringws::proto::OpCode;
use ringws::proto::frame::{FrameHead, write_frame};

use super::{read_head, upgrade_request};

/// A worker: opens `count` connections from `source`, upgrades them all, reports, waits for
/// the word, then echoes one message on every connection and reports again.
pub fn worker(server: SocketAddr, source: Ipv4Addr, count: usize) {
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let stream = connect_from(source, server).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        conns.push(stream);
    }
    // Pipeline every upgrade request first, then read the answers: quick even at 12,500.
    let request = upgrade_request(server, "/scale", &[]);
    for stream in &mut conns {
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

pub fn connect_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
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

/// Runs test `test` of this binary again as worker `index`, told by `env` to hold `count`
/// connections to `server` from 127.0.0.(index + 2).
pub fn spawn_worker(
    server: SocketAddr,
    index: usize,
    test: &str,
    env: &str,
    count: usize,
) -> Child {
    Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env, format!("{server} 127.0.0.{} {count}", index + 2))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start worker")
}

/// Waits for a worker to report `word` (the test harness may print on the same line).
pub fn expect_line(lines: &mut impl Iterator<Item = std::io::Result<String>>, word: &str) {
    for line in lines.by_ref() {
        let line = line.expect("worker output");
        if line.contains(&format!("scale-worker: {word}")) {
            return;
        }
    }
    panic!("worker ended before saying `{word}`");
}
