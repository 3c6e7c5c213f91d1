//! What the integration tests share: the real `ringws serve` binary on a free port, and a
//! minimal blocking WebSocket client over a plain TCP socket, so that a test controls every
//! byte on the wire.
#![allow(dead_code)] // Each test binary uses its own subset.

pub mod certs;
pub mod held;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ringws::proto::OpCode;
use ringws::proto::frame::{Decoded, FrameHead, FrameHeader, decode_header, write_frame};

/// The key of RFC 6455's example handshake, and the accept value it must produce.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A running `ringws serve`, stopped when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The first `--tls-listen` address, when the server has one.
    pub tls_addr: Option<SocketAddr>,
}

impl Server {
    /// Starts `ringws serve --listen 127.0.0.1:0` with `args` and waits for `listening on`.
    pub fn start(args: &[&str]) -> Server {
        Self::start_on("127.0.0.1:0", args)
    }

    /// Starts `ringws serve --listen LISTEN` with `args` and waits for `listening on`.
    pub fn start_on(listen: &str, args: &[&str]) -> Server {
        Self::launch(listen, args, None, &[])
    }

    /// Like [`Server::start`], with `env` added to the server's environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::launch("127.0.0.1:0", args, None, env)
    }

    /// Like [`Server::start`], with every line the server writes to stderr sent to `logs`.
    pub fn start_logging(args: &[&str], logs: std::sync::mpsc::Sender<String>) -> Server {
        Self::launch("127.0.0.1:0", args, Some(logs), &[])
    }

    fn launch(
        listen: &str,
        args: &[&str],
        logs: Option<std::sync::mpsc::Sender<String>>,
        env: &[(&str, &str)],
    ) -> Server {
        let stderr = if logs.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringws"))
            .args(["serve", "--listen", listen])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start ringws serve");
        if let (Some(logs), Some(stderr)) = (logs, child.stderr.take()) {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if logs.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stdout = child.stdout.take().expect("server stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let tls_wanted = args.contains(&"--tls-listen");
        let (mut addr, mut tls_addr) = (None, None);
        while Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(at) = line.find("listening on ") {
                let rest = &line[at + "listening on ".len()..];
                let parsed: SocketAddr = rest
                    .split_whitespace()
                    .next()
                    .and_then(|word| word.parse().ok())
                    .expect("address after `listening on`");
                if rest.ends_with("(TLS)") {
                    tls_addr = tls_addr.or(Some(parsed));
                } else {
                    addr = addr.or(Some(parsed));
                }
            }
            if let Some(addr) = addr
                && (tls_addr.is_some() || !tls_wanted)
            {
                // Keep draining stdout so the server never blocks on a full pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return Server {
                    child,
                    addr,
                    tls_addr,
                };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("ringws serve did not print `listening on` within 30 s");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc status")
            * 1024
    }

    /// CPU time the server has used, user and system, from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read the server's /proc stat");
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf reads a constant of the system.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Whether the process has exited, with its status.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the server")
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`.
    pub fn terminate(mut self, limit: Duration) -> ExitStatus {
        // SAFETY: kill(2) on the pid of a child this struct spawned and has not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects with a receive buffer of `rcvbuf` bytes, set before the handshake so the
/// window stays that small: a client that reads nothing then stops the server's sends soon.
/// Blocking, with a read timeout of `read_timeout`.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub fn connect_small(addr: SocketAddr, rcvbuf: i32, read_timeout: Duration) -> TcpStream {
    use ringws::runtime::socket::{set_int_option, tcp_socket_for, to_sockaddr};
    let socket = tcp_socket_for(addr).expect("a socket");
    set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf).expect("SO_RCVBUF");
    let (remote, len) = to_sockaddr(addr);
    // SAFETY: `remote` holds a sockaddr of `len` bytes for the socket's family.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            (&raw const remote).cast(),
            len,
        )
    };
    let err = std::io::Error::last_os_error();
    assert!(
        rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
        "{err}"
    );
    let stream = TcpStream::from(socket);
    // Blocking again: the first write waits for the connection to be up.
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(read_timeout))
        .expect("a read timeout");
    stream
}

/// Connects with a read timeout, so a test that waits for bytes that never come fails
/// instead of hanging.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("set a read timeout");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
}

/// An upgrade request for `path` with the sample key and `extra` header lines.
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &[&str]) -> String {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

/// Connects and upgrades; panics unless the answer is a correct 101.
pub fn open(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = connect(addr);
    stream
        .write_all(upgrade_request(addr, path, &[]).as_bytes())
        .expect("send the upgrade request");
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "not upgraded: {head}");
    assert!(head.contains(SAMPLE_ACCEPT), "wrong accept key: {head}");
    stream
}

/// Reads an HTTP response head, byte by byte so that nothing after it is consumed.
pub fn read_head(stream: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read a response head");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("an ASCII response head")
}

/// Reads everything until the server closes the connection.
pub fn read_to_close(stream: &mut impl Read) -> Vec<u8> {
    let mut all = Vec::new();
    stream
        .read_to_end(&mut all)
        .expect("read until the server closes");
    all
}

/// A masked client frame, as bytes.
pub fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(
        &mut out,
        FrameHead {
            opcode,
            fin,
            compressed: false,
        },
        payload,
        Some([0x12, 0x34, 0x56, 0x78]),
    );
    out
}

pub fn send(stream: &mut impl Write, opcode: OpCode, fin: bool, payload: &[u8]) {
    stream
        .write_all(&frame(opcode, fin, payload))
        .expect("send a frame");
}

/// Reads one server frame: its header and its payload.
pub fn read_frame(stream: &mut impl Read) -> (FrameHeader, Vec<u8>) {
    let mut buf = Vec::with_capacity(14);
    let (header, used) = loop {
        match decode_header(&buf).expect("a valid frame header from the server") {
            Decoded::Header(header, used) => break (header, used),
            Decoded::NeedBytes(total) => {
                let have = buf.len();
                buf.resize(total, 0);
                stream
                    .read_exact(&mut buf[have..])
                    .expect("read a frame header");
            }
        }
    };
    assert_eq!(used, buf.len());
    assert!(header.mask.is_none(), "a server frame must not be masked");
    let len = usize::try_from(header.payload_len).expect("payload length fits usize");
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .expect("read a frame payload");
    (header, payload)
}

/// Reads the next frame and checks it is a close with `code`; returns the reason.
pub fn expect_close(stream: &mut impl Read, code: u16) -> String {
    let (header, payload) = read_frame(stream);
    assert_eq!(header.opcode, OpCode::Close, "expected a close frame");
    assert!(payload.len() >= 2, "close frame without a code");
    assert_eq!(
        u16::from_be_bytes([payload[0], payload[1]]),
        code,
        "close reason: {}",
        String::from_utf8_lossy(&payload[2..])
    );
    String::from_utf8(payload[2..].to_vec()).expect("a UTF-8 close reason")
}

/// The server's `/metrics` page as name (with labels) → value.
pub fn metrics(addr: SocketAddr) -> std::collections::HashMap<String, u64> {
    let mut stream = connect(addr);
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("ask for metrics");
    let response = String::from_utf8(read_to_close(&mut stream)).expect("a UTF-8 page");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Polls `/metrics` until `done` holds for them; panics after `limit`.
pub fn wait_for_metrics(
    addr: SocketAddr,
    limit: Duration,
    done: impl Fn(&std::collections::HashMap<String, u64>) -> bool,
) -> std::collections::HashMap<String, u64> {
    let deadline = Instant::now() + limit;
    loop {
        let now = metrics(addr);
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "metrics never settled: {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the kernel holds for the server's side of one connection, as `ss -m` reads it.
#[derive(Clone, Copy, Debug)]
pub struct SocketMemory {
    /// The send buffer's size (`tb`): the kernel doubles what was set, for its bookkeeping.
    pub send_buffer: u64,
    /// Bytes queued for sending, with their overhead (`w`).
    pub queued: u64,
}

/// [`SocketMemory`] of the server's side of the connection from `client`.
pub fn socket_memory(server: SocketAddr, client: SocketAddr) -> SocketMemory {
    let filter = format!(
        "( sport = :{} and dport = :{} )",
        server.port(),
        client.port()
    );
    let out = Command::new("ss")
        .args(["-Htmn", "state", "established", &filter])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        let at = text
            .find(&format!(",{name}"))
            .unwrap_or_else(|| panic!("no {name} in ss's answer: {text}"));
        text[at + 1 + name.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number for {name} in ss's answer: {text}"))
    };
    SocketMemory {
        send_buffer: field("tb"),
        queued: field("w"),
    }
}

/// The kernel's state of the TCP connection between `local` and `remote` (as seen from
/// `local`), from /proc/net/tcp: `None` once no socket of that pair exists.
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<&'static str> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let encode = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let (local, remote) = (encode(local), encode(remote));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        Some(match *fields.get(3)? {
            "01" => "ESTABLISHED",
            "02" => "SYN_SENT",
            "03" => "SYN_RECV",
            "04" => "FIN_WAIT1",
            "05" => "FIN_WAIT2",
            "06" => "TIME_WAIT",
            "07" => "CLOSE",
            "08" => "CLOSE_WAIT",
            "09" => "LAST_ACK",
            "0A" => "LISTEN",
            "0B" => "CLOSING",
            _ => "UNKNOWN",
        })
    })
}

/// Polls `check` every 50 ms until it holds; returns how long that took, or panics after
/// `limit` naming `what`.
pub fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
