//! wss against the real binary: TLS 1.3 and 1.2 with each key format and a chain through an
//! intermediate, ALPN, session tickets, every kind of handshake error ending that connection
//! alone (and counted in /metrics), and the certificate reloaded on SIGHUP under live
//! connections.
//!
//! Clients: rustls as a library (to choose versions, server names, ALPN and resumption),
//! Debian's `openssl s_client` (a cipher the server does not have), and raw sockets.
//! `scripts/test.sh` installs openssl.

mod support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringws::proto::OpCode;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use support::certs::{KeyFormat, TestPki};
use support::{
    SAMPLE_ACCEPT, Server, connect, metrics, read_frame, read_head, read_to_close, send,
    upgrade_request, wait_for_metrics,
};

type Tls = StreamOwned<ClientConnection, TcpStream>;

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

fn start(pki: &TestPki, extra: &[&str]) -> Server {
    let mut args: Vec<String> = pki.serve_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

fn tls_addr(server: &Server) -> SocketAddr {
    server.tls_addr.expect("a TLS listener")
}

/// Connects and completes the TLS handshake, naming the server `name`.
fn handshake(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> io::Result<Tls> {
    let name = ServerName::try_from(name.to_owned()).map_err(io::Error::other)?;
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, connect(addr));
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Upgrades to WebSocket over `tls`.
fn upgrade(tls: &mut Tls, path: &str) {
    let addr = tls.sock.peer_addr().expect("peer address");
    tls.write_all(upgrade_request(addr, path, &[]).as_bytes())
        .expect("send the upgrade request");
    let head = read_head(tls);
    assert!(head.starts_with("HTTP/1.1 101 "), "not upgraded: {head}");
    assert!(head.contains(SAMPLE_ACCEPT), "{head}");
}

/// A wss connection, upgraded on `/tls`.
fn open_wss(addr: SocketAddr, config: &Arc<ClientConfig>) -> Tls {
    let mut tls = handshake(addr, config, "localhost").expect("a TLS handshake");
    upgrade(&mut tls, "/tls");
    tls
}

/// Sends `payload` and checks it comes back unchanged.
fn echo(stream: &mut (impl Read + Write), opcode: OpCode, payload: &[u8]) {
    send(stream, opcode, true, payload);
    stream.flush().expect("flush");
    let (header, back) = read_frame(stream);
    assert_eq!(header.opcode, opcode);
    assert!(
        back == payload,
        "{} bytes came back different",
        payload.len()
    );
}

fn config(
    pki: &TestPki,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut config = pki.client_config(versions);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[test]
fn echo_over_tls13_and_tls12_with_every_key_format() {
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    for format in [KeyFormat::EcPkcs8, KeyFormat::EcSec1, KeyFormat::RsaPkcs1] {
        let pki = TestPki::new(&format!("{format:?}"), format);
        let server = start(&pki, &["--shards", "2"]);
        for (versions, expected) in [
            (TLS13, rustls::ProtocolVersion::TLSv1_3),
            (TLS12, rustls::ProtocolVersion::TLSv1_2),
        ] {
            let mut tls = open_wss(tls_addr(&server), &config(&pki, versions));
            assert_eq!(tls.conn.protocol_version(), Some(expected));
            assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
            echo(&mut tls, OpCode::Text, b"hello over TLS");
            echo(&mut tls, OpCode::Binary, &big[..100_000]);
            echo(&mut tls, OpCode::Binary, &big);
            println!("ok: {format:?} key, {expected:?}");
        }
        let seen = metrics(server.addr);
        assert_eq!(seen["ringws_tls_handshakes_total"], 2, "{seen:?}");
    }
}

#[test]
fn session_tickets_resume_tls13_and_tls12() {
    let pki = TestPki::new("resume", KeyFormat::EcPkcs8);
    let server = start(&pki, &[]);
    for versions in [TLS13, TLS12] {
        let config = config(&pki, versions);
        let mut first = open_wss(tls_addr(&server), &config);
        // Reading the echo also reads the tickets sent after the handshake.
        echo(&mut first, OpCode::Text, b"first");
        assert_eq!(
            first.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        let mut second = open_wss(tls_addr(&server), &config);
        assert_eq!(
            second.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{versions:?}"
        );
        echo(&mut second, OpCode::Text, b"resumed");
    }
    let seen = metrics(server.addr);
    assert_eq!(seen["ringws_tls_handshakes_total"], 4, "{seen:?}");
    assert_eq!(seen["ringws_tls_resumed_total"], 2, "{seen:?}");
}

/// What a failed client saw: the alert it got, or how the connection ended.
fn refused(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> String {
    match handshake(addr, config, name) {
        Ok(_) => panic!("the handshake as {name} succeeded"),
        Err(err) => err.to_string(),
    }
}

/// How long the server took to end a connection it was sent `bytes` on.
fn ended_after(addr: SocketAddr, bytes: &[u8]) -> Duration {
    let mut stream = connect(addr);
    stream.write_all(bytes).expect("send");
    let start = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    start.elapsed()
}

fn failures(server: &Server, kind: &str) -> u64 {
    metrics(server.addr)[&format!("ringws_tls_failures_total{{kind=\"{kind}\"}}")]
}

#[test]
fn each_handshake_error_ends_that_connection_alone() {
    let pki = TestPki::new("errors", KeyFormat::EcPkcs8);
    let server = start(&pki, &["--handshake-timeout", "1s", "--shards", "1"]);
    let addr = tls_addr(&server);
    let good_config = config(&pki, TLS13);
    let mut good = open_wss(addr, &good_config);
    echo(&mut good, OpCode::Text, b"before");

    // Plain HTTP on the TLS port: a plain 400 that says why.
    let mut plain = connect(addr);
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    let answer = String::from_utf8(read_to_close(&mut plain)).expect("a plain answer");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("This port speaks TLS"), "{answer}");
    println!("ok: plain HTTP gets 400");

    // A server name the certificate does not cover.
    let alert = refused(addr, &good_config, "elsewhere.example");
    assert!(alert.contains("AccessDenied"), "{alert}");
    println!("ok: a foreign server name is refused: {alert}");

    // Nothing in common: an ALPN protocol the server does not speak, and a TLS 1.2 cipher
    // it does not have (from openssl, as rustls has none such).
    let mut h2_only = pki.client_config(TLS13);
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    let alert = refused(addr, &Arc::new(h2_only), "localhost");
    assert!(alert.contains("NoApplicationProtocol"), "{alert}");
    let openssl = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-tls1_2",
            "-cipher",
        ])
        .arg("AES128-SHA")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let said = String::from_utf8_lossy(&openssl.stderr);
    assert!(
        !openssl.status.success() && said.contains("handshake failure"),
        "{said}"
    );
    println!("ok: no shared ALPN protocol, no shared cipher");

    // A handshake record that is not a ClientHello.
    let garbage = ended_after(
        addr,
        &[0x16, 0x03, 0x01, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff],
    );
    assert!(garbage < Duration::from_secs(1), "{garbage:?}");
    println!("ok: a broken handshake message ends the connection");

    // Stalls: half a record, and nothing at all. The handshake timeout (1 s) ends both.
    let half = ended_after(addr, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
    let silent = ended_after(addr, &[]);
    for stalled in [half, silent] {
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(3)).contains(&stalled),
            "{stalled:?}"
        );
    }
    println!("ok: stalled handshakes end within the handshake timeout: {half:?}, {silent:?}");

    echo(&mut good, OpCode::Text, b"after every failure");
    let seen = wait_for_metrics(server.addr, Duration::from_secs(5), |m| {
        m["ringws_tls_failures_total{kind=\"timeout\"}"] == 2
    });
    for (kind, count) in [
        ("not_tls", 1),
        ("bad_sni", 1),
        ("no_shared_cipher", 2),
        ("protocol", 1),
        ("timeout", 2),
    ] {
        assert_eq!(failures(&server, kind), count, "{kind}: {seen:?}");
    }
    assert_eq!(seen["ringws_tls_handshakes_total"], 1, "{seen:?}");
    // The good connection and the /metrics request are all that is left.
    assert!(seen["ringws_connections"] <= 2, "{seen:?}");
}

/// Copies `from`'s chain and key to `cert` and `key`.
fn install(from: &TestPki, cert: &std::path::Path, key: &std::path::Path) {
    std::fs::copy(from.chain(), cert).expect("copy the chain");
    std::fs::copy(from.key(), key).expect("copy the key");
}

#[test]
fn sighup_reloads_the_certificate_under_live_connections() {
    let (old, new) = (
        TestPki::new("reload-old", KeyFormat::EcPkcs8),
        TestPki::new("reload-new", KeyFormat::RsaPkcs1),
    );
    let dir = old.dir().join("live");
    std::fs::create_dir_all(&dir).expect("a directory");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    install(&old, &cert, &key);
    let (logs, log_lines) = std::sync::mpsc::channel();
    let cert_arg = cert.display().to_string();
    let key_arg = key.display().to_string();
    let server = Server::start_logging(
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
            "--shards",
            "2",
        ],
        logs,
    );
    let addr = tls_addr(&server);
    let (trusts_old, trusts_new) = (config(&old, TLS13), config(&new, TLS13));
    let mut live: Vec<Tls> = (0..20).map(|_| open_wss(addr, &trusts_old)).collect();
    let hup = |server: &Server| {
        // SAFETY: kill(2) on the pid of the server this test started and has not reaped.
        unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGHUP) };
    };
    let wait_for_log = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(line) = log_lines.recv_timeout(Duration::from_millis(100))
                && line.contains(needle)
            {
                return line;
            }
        }
        panic!("no log line with `{needle}`");
    };

    install(&new, &cert, &key);
    hup(&server);
    wait_for_log("TLS certificate reloaded");
    let mut fresh = open_wss(addr, &trusts_new);
    echo(&mut fresh, OpCode::Text, b"new certificate");
    // A client with no ticket from before (tickets outlive a reload, as they should).
    let alert = refused(addr, &config(&old, TLS13), "localhost");
    assert!(alert.contains("UnknownIssuer"), "{alert}");
    for (i, conn) in live.iter_mut().enumerate() {
        echo(conn, OpCode::Text, format!("still here {i}").as_bytes());
    }
    println!("ok: reloaded; 20 connections from before carry on");

    // A broken file, then a key that does not match: the pair in use stays.
    std::fs::write(&cert, "not a certificate\n").expect("break the certificate");
    hup(&server);
    let kept = wait_for_log("TLS certificate kept");
    assert!(kept.contains("cert.pem"), "{kept}");
    install(&new, &cert, &key);
    std::fs::copy(old.key(), &key).expect("a key of another pair");
    hup(&server);
    let kept = wait_for_log("TLS certificate kept");
    println!("ok: bad files keep the pair in use: {kept}");
    let mut again = open_wss(addr, &trusts_new);
    echo(&mut again, OpCode::Text, b"still the new certificate");
    for conn in &mut live {
        echo(conn, OpCode::Text, b"and still here");
    }
    let seen = metrics(server.addr);
    assert_eq!(
        seen["ringws_tls_failures_total{kind=\"peer_alert\"}"], 1,
        "{seen:?}"
    );
}

#[test]
fn tls_settings_are_checked_at_start() {
    let refuse = |args: &[&str], needle: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_ringws"))
            .arg("serve")
            .args(args)
            .output()
            .expect("run ringws serve");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && said.contains(needle),
            "{args:?}: {said}"
        );
    };
    refuse(&["--tls-listen", "127.0.0.1:0"], "tls-cert");
    refuse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"], "tls-listen");
    refuse(
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "k",
        ],
        "/nonexistent/c.pem: cannot read it",
    );
    let pki = TestPki::new("mismatch", KeyFormat::EcPkcs8);
    let other = TestPki::new("mismatch-other", KeyFormat::EcSec1);
    let (cert, key) = (
        pki.chain().display().to_string(),
        other.key().display().to_string(),
    );
    refuse(
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        "key",
    );
}

/// `--tls-kernel always` hands every connection to kernel TLS after its handshake. Where
/// the kernel has none (this machine's), the `tls` ULP is refused and each connection goes
/// on with user-space records: the upgrade request that arrived during the handoff, and
/// everything after, echo intact; each is counted as a fallback. Where the kernel has it,
/// each is counted as offloaded instead. `--tls-kernel off` tries nothing, and neither does
/// the default (`auto`) unless the kernel has kernel TLS that takes new keys.
#[test]
fn kernel_tls_handoff_falls_back_or_offloads_and_loses_nothing() {
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let pki = TestPki::new("kernel-tls", KeyFormat::EcPkcs8);
    let probe = ringws::runtime::tls::probe_kernel_tls();
    let offered = probe.available;
    let auto = if probe.available && probe.rekey { 2 } else { 0 };
    for (mode, args, tried) in [
        ("always", &["--tls-kernel", "always"][..], 2),
        ("off", &["--tls-kernel", "off"][..], 0),
        ("auto (the default)", &[][..], auto),
    ] {
        let server = start(&pki, args);
        for versions in [TLS13, TLS12] {
            let mut tls = open_wss(tls_addr(&server), &config(&pki, versions));
            echo(&mut tls, OpCode::Text, b"hello after the handoff");
            echo(&mut tls, OpCode::Binary, &big);
        }
        let seen = metrics(server.addr);
        let offloaded = seen["ringws_tls_kernel_offloaded_total"];
        let fallbacks = seen["ringws_tls_kernel_fallbacks_total"];
        assert_eq!(
            offloaded + fallbacks,
            tried,
            "--tls-kernel {mode}: {seen:?}"
        );
        if !offered {
            assert_eq!(
                offloaded, 0,
                "no kernel TLS here, yet offloads were counted"
            );
        }
        println!("--tls-kernel {mode}: {offloaded} offloaded, {fallbacks} fell back");
    }
}
