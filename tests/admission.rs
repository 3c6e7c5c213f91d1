//! Admission in `ringws serve` against the real binary over real sockets: tokens (from the
//! header, the query and a cookie; expired, wrongly signed, for a topic their claims do not
//! allow), who may publish in each mode, per-address caps and handshake rates from several
//! 127.0.0.x addresses, 503 when the server is full, PROXY protocol v1 and v2, and
//! X-Forwarded-For believed only from trusted proxies; and Python's `websockets` and
//! `http.client` as the real clients of a token-guarded fan-out tier.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use ringws::proto::OpCode;
use support::{
    Server, expect_close, metrics, read_frame, read_head, read_to_close, send, upgrade_request,
    wait_for_metrics, within,
};

const SECRET: &str = "a test secret, not for production";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
const SETTLE: Duration = Duration::from_secs(10);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// An HS256 token with these claims.
fn hs256(claims: serde_json::Value, secret: &str) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("a key");
    encode(&Header::default(), &claims, &key).expect("a token")
}

fn signed_with(algorithm: Algorithm, private_pem: &str, claims: serde_json::Value) -> String {
    let pem = std::fs::read(format!("{KEYS}/{private_pem}")).expect("a test key");
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .expect("a private key");
    encode(&Header::new(algorithm), &claims, &key).expect("a token")
}

/// The server's answer to an upgrade: its status, head and body (the body only when it
/// refused; an accepted stream is returned for use).
struct Answer {
    status: u16,
    head: String,
    body: String,
    stream: Option<TcpStream>,
}

fn answer_on(mut stream: TcpStream, request: impl AsRef<[u8]>) -> Answer {
    stream
        .write_all(request.as_ref())
        .expect("send the request");
    let head = read_head(&mut stream);
    let status = head[9..12].parse().expect("a status code");
    if status == 101 {
        return Answer {
            status,
            head,
            body: String::new(),
            stream: Some(stream),
        };
    }
    let body = String::from_utf8(read_to_close(&mut stream)).expect("a text body");
    Answer {
        status,
        head,
        body,
        stream: None,
    }
}

/// Upgrades `path` with `extra` header lines, from 127.0.0.1.
fn upgrade(addr: SocketAddr, path: &str, extra: &[&str]) -> Answer {
    answer_on(support::connect(addr), upgrade_request(addr, path, extra))
}

/// Upgrades from the source address `from` (any 127.0.0.x).
fn upgrade_from(from: Ipv4Addr, addr: SocketAddr, path: &str, extra: &[&str]) -> Answer {
    answer_on(connect_from(from, addr), upgrade_request(addr, path, extra))
}

/// A connection from `source`: std cannot bind before it connects, so libc does.
fn connect_from(source: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let SocketAddr::V4(server) = server else {
        panic!("the server listens on IPv4")
    };
    let sockaddr = |addr: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let (from, to) = (sockaddr(SocketAddrV4::new(source, 0)), sockaddr(server));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; it is handed to the
    // TcpStream once on success and closed here on failure.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        if libc::bind(fd, (&raw const from).cast(), len) != 0
            || libc::connect(fd, (&raw const to).cast(), len) != 0
        {
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            panic!("connect from {source}: {err}");
        }
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    stream
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

#[test]
fn tokens_from_the_header_the_query_and_a_cookie_and_every_refusal_named() {
    let dir = std::env::temp_dir().join(format!("ringws-admission-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let secret_file = dir.join("jwt.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write the secret");
    let server = Server::start(&[
        "--jwt-secret-file",
        secret_file.to_str().expect("a UTF-8 path"),
        "--jwt-cookie",
        "session",
    ]);
    let addr = server.addr;
    let good = hs256(
        serde_json::json!({"sub": "alice", "exp": now() + 300}),
        SECRET,
    );

    let bearer = format!("Authorization: Bearer {good}");
    assert_eq!(
        upgrade(addr, "/echo", &[&bearer]).status,
        101,
        "from the header"
    );
    assert_eq!(
        upgrade(addr, &format!("/echo?token={good}"), &[]).status,
        101,
        "from the query"
    );
    let cookie = format!("Cookie: theme=dark; session={good}");
    let mut open = upgrade(addr, "/echo", &[&cookie]);
    assert_eq!(open.status, 101, "from the cookie");
    let stream = open.stream.as_mut().expect("open");
    send(stream, OpCode::Text, true, b"still echoes");
    assert_eq!(read_frame(stream).1, b"still echoes");

    let missing = upgrade(addr, "/echo", &[]);
    assert_eq!(missing.status, 401);
    assert!(missing.body.contains("no token"), "{}", missing.body);
    assert_eq!(
        header(&missing.head, "WWW-Authenticate"),
        Some("Bearer realm=\"ringws\"")
    );

    let expired = hs256(serde_json::json!({"exp": now() - 3600}), SECRET);
    let refused = upgrade(
        addr,
        "/echo",
        &[&format!("Authorization: Bearer {expired}")],
    );
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("token expired"), "{}", refused.body);
    let challenge = header(&refused.head, "WWW-Authenticate").expect("a challenge");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

    let forged = hs256(
        serde_json::json!({"exp": now() + 300}),
        "someone else's secret",
    );
    let refused = upgrade(addr, &format!("/echo?token={forged}"), &[]);
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("bad signature"), "{}", refused.body);

    // Pages are not guarded: load balancers and Prometheus carry no tokens.
    let m = metrics(addr);
    assert_eq!(m["ringws_admission_token_refused_total"], 3);
    assert_eq!(m["ringws_handshakes_total{status=\"401\"}"], 3);
    assert_eq!(m["ringws_handshakes_total{status=\"101\"}"], 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn rs256_and_es256_tokens_are_checked_with_a_public_key() {
    let claims = || serde_json::json!({"exp": now() + 300});
    for (public, algorithm, private, other, other_private) in [
        (
            "rs256-public.pem",
            Algorithm::RS256,
            "rs256-private.pem",
            Algorithm::ES256,
            "es256-private.pem",
        ),
        (
            "es256-public.pem",
            Algorithm::ES256,
            "es256-private.pem",
            Algorithm::RS256,
            "rs256-private.pem",
        ),
    ] {
        let key = format!("{KEYS}/{public}");
        let server = Server::start(&["--jwt-public-key", &key]);
        let token = signed_with(algorithm, private, claims());
        let accepted = upgrade(server.addr, &format!("/x?token={token}"), &[]);
        assert_eq!(accepted.status, 101, "{algorithm:?} with {public}");
        let wrong = signed_with(other, other_private, claims());
        let refused = upgrade(server.addr, &format!("/x?token={wrong}"), &[]);
        assert_eq!(refused.status, 401, "{other:?} against {public}");
        assert!(refused.body.contains("algorithm"), "{}", refused.body);
        let hmac = hs256(claims(), SECRET);
        assert_eq!(
            upgrade(server.addr, &format!("/x?token={hmac}"), &[]).status,
            401
        );
    }
}

#[test]
fn claims_decide_the_topics_a_token_may_subscribe_to_and_publish_on() {
    let server = Server::start(&["--jwt-secret", SECRET, "--publish", "token"]);
    let addr = server.addr;
    let token = hs256(
        serde_json::json!({
            "exp": now() + 300,
            "subscribe": ["prices.*"],
            "publish": ["prices.eur"],
        }),
        SECRET,
    );
    let bearer = format!("Authorization: Bearer {token}");
    let forbidden = upgrade(addr, "/pubsub/news", &[&bearer]);
    assert_eq!(forbidden.status, 403);
    assert!(
        forbidden.body.contains("subscribing to `news`"),
        "{}",
        forbidden.body
    );
    let challenge = header(&forbidden.head, "WWW-Authenticate").expect("a challenge");
    assert!(challenge.contains("insufficient_scope"), "{challenge}");

    let mut publisher = upgrade(addr, "/pubsub/prices.eur", &[&bearer])
        .stream
        .expect("open");
    let mut listener = upgrade(addr, "/pubsub/prices.eur", &[&bearer])
        .stream
        .expect("open");
    let mut reader = upgrade(addr, "/pubsub/prices.usd", &[&bearer])
        .stream
        .expect("open");
    wait_for_metrics(addr, SETTLE, |m| m["ringws_pubsub_subscriptions"] == 3);
    send(&mut publisher, OpCode::Text, true, b"1.08");
    assert_eq!(
        read_frame(&mut listener).1,
        b"1.08",
        "the claim lets it publish"
    );
    // Subscribing is allowed on prices.usd, publishing is not.
    send(&mut reader, OpCode::Text, true, b"1.00");
    let reason = expect_close(&mut reader, 1008);
    assert!(reason.contains("does not allow publishing"), "{reason}");

    // Without tokens' say, `token` publishing allows nothing: no claim, no publishing.
    let plain = hs256(serde_json::json!({"exp": now() + 300}), SECRET);
    let mut quiet = upgrade(addr, &format!("/pubsub/prices.eur?token={plain}"), &[])
        .stream
        .expect("subscribing is open without a subscribe claim");
    send(&mut quiet, OpCode::Text, true, b"x");
    expect_close(&mut quiet, 1008);
    let m = metrics(addr);
    assert_eq!(m["ringws_admission_topic_refused_total"], 1);
    assert_eq!(m["ringws_pubsub_client_publish_refused_total"], 2);
}

#[test]
fn publish_anyone_lets_subscribers_publish_and_nobody_makes_them_listen_only() {
    for mode in ["anyone", "nobody"] {
        let server = Server::start(&["--publish", mode]);
        let addr = server.addr;
        let mut talker = upgrade(addr, "/pubsub/chat", &[]).stream.expect("open");
        let mut listener = upgrade(addr, "/pubsub/chat", &[]).stream.expect("open");
        wait_for_metrics(addr, SETTLE, |m| m["ringws_pubsub_subscriptions"] == 2);
        send(&mut talker, OpCode::Text, true, b"hello");
        if mode == "anyone" {
            assert_eq!(read_frame(&mut listener).1, b"hello");
            continue;
        }
        let reason = expect_close(&mut talker, 1008);
        assert!(reason.contains("subscribe-only"), "{reason}");
        // The listener heard nothing: its next frame is the answer to its own ping.
        send(&mut listener, OpCode::Ping, true, b"p");
        let (head, payload) = read_frame(&mut listener);
        assert_eq!(
            (head.opcode, payload.as_slice()),
            (OpCode::Pong, b"p".as_slice())
        );
        assert_eq!(
            metrics(addr)["ringws_pubsub_client_publish_refused_total"],
            1
        );
    }
}

#[test]
fn connections_per_address_are_capped_and_counted() {
    let server = Server::start(&["--max-connections-per-ip", "2"]);
    let addr = server.addr;
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let first = upgrade_from(a, addr, "/x", &[]);
    let second = upgrade_from(a, addr, "/x", &[]);
    assert_eq!((first.status, second.status), (101, 101));
    let third = upgrade_from(a, addr, "/x", &[]);
    assert_eq!(third.status, 429);
    assert!(third.body.contains("maximum of 2"), "{}", third.body);
    assert_eq!(
        upgrade_from(b, addr, "/x", &[]).status,
        101,
        "another address"
    );
    // A closed connection gives its place back.
    drop(first);
    within(SETTLE, "a place freed", || {
        upgrade_from(a, addr, "/x", &[]).status == 101
    });
    let m = metrics(addr);
    assert!(m["ringws_admission_ip_cap_total"] >= 1);
    assert!(m["ringws_handshakes_total{status=\"429\"}"] >= 1);
}

#[test]
fn handshakes_per_address_are_rate_limited_with_a_retry_after() {
    let server = Server::start(&[
        "--handshake-rate-per-ip",
        "0.1",
        "--handshake-burst-per-ip",
        "3",
    ]);
    let addr = server.addr;
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 4), Ipv4Addr::new(127, 0, 0, 5));
    for _ in 0..3 {
        assert_eq!(upgrade_from(a, addr, "/x", &[]).status, 101);
    }
    let limited = upgrade_from(a, addr, "/x", &[]);
    assert_eq!(limited.status, 429);
    assert!(
        limited.body.contains("too many handshakes"),
        "{}",
        limited.body
    );
    let retry: u64 = header(&limited.head, "Retry-After")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    // One handshake every ten seconds: the next is due within ten.
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(
        upgrade_from(b, addr, "/x", &[]).status,
        101,
        "another address"
    );
    assert_eq!(metrics(addr)["ringws_admission_rate_limited_total"], 1);
}

#[test]
fn a_full_server_answers_503_and_takes_clients_again_once_one_leaves() {
    let server = Server::start(&["--shards", "1", "--max-connections", "3"]);
    let addr = server.addr;
    let mut open: Vec<Answer> = (0..3).map(|_| upgrade(addr, "/x", &[])).collect();
    assert!(open.iter().all(|a| a.status == 101));
    let full = upgrade(addr, "/x", &[]);
    assert_eq!(full.status, 503);
    assert!(full.body.contains("the server is full"), "{}", full.body);
    assert_eq!(header(&full.head, "Retry-After"), Some("5"));
    let m = metrics(addr);
    assert_eq!(
        (
            m["ringws_admission_server_full_total"],
            m["ringws_websockets"]
        ),
        (1, 3)
    );
    open.pop();
    within(SETTLE, "room again", || {
        upgrade(addr, "/x", &[]).status == 101
    });
}

/// A `ringws serve` whose every listening line is read: plain and PROXY listeners.
struct Listening {
    child: Child,
    plain: SocketAddr,
    proxied: SocketAddr,
    logs: mpsc::Receiver<String>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_with_proxy_listener(args: &[&str]) -> Listening {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringws"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--listen-proxy",
            "127.0.0.1:0",
        ])
        .args(["--log-connections", "--log-format", "json", "--shards", "1"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringws serve");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, logs) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = |suffix: &str| {
        let line = lines.next().expect("a listening line").expect("text");
        let rest = line.split("listening on ").nth(1).expect("listening on");
        let rest = rest.strip_suffix(suffix).expect(suffix);
        rest.trim().parse::<SocketAddr>().expect("an address")
    };
    let plain = addr("");
    let proxied = addr(" (PROXY protocol)");
    std::thread::spawn(move || lines.for_each(drop));
    Listening {
        child,
        plain,
        proxied,
        logs,
    }
}

fn v2_header(source: SocketAddrV4) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    out.extend_from_slice(&source.ip().octets());
    out.extend_from_slice(&[127, 0, 0, 1]);
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&9001u16.to_be_bytes());
    out
}

#[test]
fn proxy_protocol_v1_and_v2_name_the_client_and_only_their_listener_takes_them() {
    let server = start_with_proxy_listener(&["--max-connections-per-ip", "1"]);
    let (plain, proxied) = (server.plain, server.proxied);
    let request = upgrade_request(proxied, "/x", &[]);
    let v1 = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 40000 9001\r\n{request}");

    // The header names the client: the cap of one counts 198.51.100.1 and .2 apart, though
    // every connection comes from the balancer at 127.0.0.1.
    let first = answer_on(support::connect(proxied), v1("198.51.100.1"));
    assert_eq!(first.status, 101);
    // The header in its own segment, as a balancer sends it before the client's bytes.
    let mut split = support::connect(proxied);
    split
        .write_all(b"PROXY TCP4 198.51.100.2 127.0.0.1 40001 9001\r\n")
        .expect("send the header");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(answer_on(split, &request).status, 101);
    let v2 = [
        v2_header(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 40002)),
        request.clone().into_bytes(),
    ]
    .concat();
    let again = answer_on(support::connect(proxied), &v2);
    assert_eq!(
        again.status, 429,
        "v2 names 198.51.100.1 again: {}",
        again.body
    );
    let log = within_logs(&server.logs, r#""peer":"198.51.100.1:40000""#);
    assert!(log.contains("connection opened"), "{log}");

    // A listener expects the header or it does not.
    let bare = answer_on(support::connect(proxied), &request);
    assert_eq!(bare.status, 400);
    assert!(
        bare.body.contains("expected a PROXY protocol header"),
        "{}",
        bare.body
    );
    let unexpected = answer_on(support::connect(plain), v1("198.51.100.3"));
    assert_eq!(unexpected.status, 400);
    assert!(
        unexpected.body.contains("does not expect one"),
        "{}",
        unexpected.body
    );
    let mut v2_plain = support::connect(plain);
    v2_plain.write_all(&v2).expect("send a v2 header");
    let head = read_head(&mut v2_plain);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

/// Waits for a log line containing `needle`.
fn within_logs(logs: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + SETTLE;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match logs.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no log line with `{needle}`");
}

#[test]
fn x_forwarded_for_is_believed_from_trusted_proxies_only() {
    let (tx, logs) = mpsc::channel();
    let server = Server::start_logging(
        &[
            "--trusted-proxy",
            "127.0.0.2",
            "--max-connections-per-ip",
            "1",
            "--log-connections",
            "--log-format",
            "json",
        ],
        tx,
    );
    let addr = server.addr;
    let (proxy, stranger) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let forwarded = |client: &str| format!("X-Forwarded-For: 6.6.6.6, {client}");
    let first = upgrade_from(proxy, addr, "/x", &[&forwarded("198.51.100.9")]);
    assert_eq!(first.status, 101);
    within_logs(&logs, r#""peer":"198.51.100.9:0""#);
    // The same client through the proxy again: over its cap of one.
    assert_eq!(
        upgrade_from(proxy, addr, "/x", &[&forwarded("198.51.100.9")]).status,
        429
    );
    assert_eq!(
        upgrade_from(proxy, addr, "/x", &[&forwarded("198.51.100.10")]).status,
        101
    );
    // From an address that is not a trusted proxy the header means nothing: 127.0.0.3 is
    // the client, whatever it claims.
    let own = upgrade_from(stranger, addr, "/x", &[&forwarded("198.51.100.11")]);
    assert_eq!(own.status, 101);
    let claimed = upgrade_from(stranger, addr, "/x", &[&forwarded("198.51.100.12")]);
    assert_eq!(
        claimed.status, 429,
        "the header did not make 127.0.0.3 someone else"
    );
}

#[test]
fn real_clients_send_tokens_and_a_backend_publishes_over_keep_alive() {
    let python = std::env::var("RINGWS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "RINGWS_TEST_PYTHON is not set: run scripts/test.sh, which installs the Python \
             websockets client, or point it at a Python that has `websockets`"
        )
    });
    let key = "a publish key";
    let server = Server::start(&[
        "--jwt-secret",
        SECRET,
        "--jwt-cookie",
        "session",
        "--publish",
        "token",
        "--publish-key",
        key,
    ]);
    let token = hs256(
        serde_json::json!({"exp": now() + 300, "subscribe": ["prices.*"], "publish": ["prices.*"]}),
        SECRET,
    );
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/admission.py"
        ))
        .args([&server.url(""), &token, key])
        .output()
        .expect("run the Python clients");
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("all scenarios passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
