//! `ringws serve` over real sockets, byte by byte where it matters: HTTP answers to bad
//! upgrades, input split at every byte, the handshake deadline, limits, backpressure and
//! shutdown.

mod support;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use ringws::proto::OpCode;
use support::{
    Server, connect, expect_close, frame, open, read_frame, read_head, read_to_close, send,
    upgrade_request,
};

/// Sends a raw request and returns the whole response (the server closes after refusing).
fn exchange(server: &Server, request: &str) -> String {
    let mut stream = connect(server.addr);
    stream.write_all(request.as_bytes()).expect("send request");
    String::from_utf8_lossy(&read_to_close(&mut stream)).into_owned()
}

#[test]
fn plain_get_gets_a_page_saying_what_the_server_is() {
    let server = Server::start(&[]);
    let response = exchange(
        &server,
        &format!("GET /about HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr),
    );
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.contains("Content-Type: text/plain"), "{response}");
    assert!(response.contains("WebSocket server"), "{response}");
}

#[test]
fn bad_upgrades_get_the_status_the_rfc_asks_for() {
    let server = Server::start(&["--allowed-origin", "https://good.example"]);
    let addr = server.addr;
    let cases: [(String, &str, &str); 6] = [
        (
            upgrade_request(addr, "/", &["Origin: https://evil.example"]),
            "403",
            "origin",
        ),
        (
            upgrade_request(addr, "/", &["Origin: https://good.example"])
                .replace("Version: 13", "Version: 8"),
            "426",
            "Sec-WebSocket-Version: 13",
        ),
        (
            upgrade_request(addr, "/", &["Origin: https://good.example"])
                .replace(support::SAMPLE_KEY, "c2hvcnQ="),
            "400",
            "Sec-WebSocket-Key",
        ),
        (
            upgrade_request(addr, "/", &["Origin: https://good.example"])
                .replace("GET /", "POST /"),
            "405",
            "",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(9000)
            ),
            "431",
            "",
        ),
        ("this is not http\r\n\r\n".to_owned(), "400", ""),
    ];
    for (request, status, mentions) in cases {
        let response = exchange(&server, &request);
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "expected {status} for {request:?}, got {response}"
        );
        assert!(
            response.contains(mentions),
            "the {status} should mention {mentions:?}: {response}"
        );
    }
    // The refusals cost nothing to anyone else: an allowed client still gets through.
    let mut stream = connect(addr);
    stream
        .write_all(upgrade_request(addr, "/", &["Origin: https://good.example"]).as_bytes())
        .expect("send upgrade");
    assert!(read_head(&mut stream).starts_with("HTTP/1.1 101 "));
}

#[test]
fn input_split_at_every_byte_gives_the_same_echo() {
    let server = Server::start(&[]);
    let mut stream = connect(server.addr);
    let mut wire = upgrade_request(server.addr, "/bytes", &[]).into_bytes();
    // Right behind the request: a text message in three fragments with a ping between them,
    // then a binary message with a 16-bit length.
    wire.extend(frame(OpCode::Text, false, "Grüße, ".as_bytes()));
    wire.extend(frame(OpCode::Ping, true, b"mid"));
    wire.extend(frame(OpCode::Continuation, false, "世".as_bytes()));
    wire.extend(frame(OpCode::Continuation, true, "界!".as_bytes()));
    let binary: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    wire.extend(frame(OpCode::Binary, true, &binary));
    for byte in &wire {
        stream
            .write_all(std::slice::from_ref(byte))
            .expect("send one byte");
    }
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (pong, payload) = read_frame(&mut stream);
    assert_eq!((pong.opcode, &payload[..]), (OpCode::Pong, &b"mid"[..]));
    let (text, payload) = read_frame(&mut stream);
    assert_eq!(text.opcode, OpCode::Text);
    assert_eq!(String::from_utf8(payload).expect("utf-8"), "Grüße, 世界!");
    let (bin, payload) = read_frame(&mut stream);
    assert_eq!((bin.opcode, payload), (OpCode::Binary, binary));
}

#[test]
fn a_slow_handshake_is_dropped_at_its_deadline_while_others_are_served() {
    let server = Server::start(&["--handshake-timeout", "1s"]);
    let mut slow = connect(server.addr);
    let request = upgrade_request(server.addr, "/", &[]);
    let started = Instant::now();
    slow.write_all(&request.as_bytes()[..20])
        .expect("send a piece");

    // While the slow one dawdles, others come and go.
    let mut echoed = 0;
    while started.elapsed() < Duration::from_millis(800) {
        let mut fast = open(server.addr, "/fast");
        send(&mut fast, OpCode::Text, true, b"quick");
        let (header, payload) = read_frame(&mut fast);
        assert_eq!((header.opcode, &payload[..]), (OpCode::Text, &b"quick"[..]));
        echoed += 1;
        thread::sleep(Duration::from_millis(50));
    }
    assert!(echoed > 0);
    // Trickling more bytes does not extend the deadline.
    slow.write_all(&request.as_bytes()[20..30])
        .expect("send another piece");
    let response = String::from_utf8_lossy(&read_to_close(&mut slow)).into_owned();
    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[test]
fn an_announced_message_over_the_limit_is_refused_before_its_payload() {
    let server = Server::start(&["--max-message-size", "1KiB"]);
    let mut stream = open(server.addr, "/");
    // Only the header of a 2 KiB frame: the server must not wait for the payload.
    let whole = frame(OpCode::Binary, true, &[0u8; 2048]);
    stream.write_all(&whole[..8]).expect("send the header");
    let reason = expect_close(&mut stream, 1009);
    assert!(!reason.is_empty());
    // Fragments count together.
    let mut stream = open(server.addr, "/");
    send(&mut stream, OpCode::Binary, false, &[1u8; 600]);
    send(&mut stream, OpCode::Continuation, true, &[2u8; 600]);
    expect_close(&mut stream, 1009);
}

#[test]
fn protocol_errors_close_with_their_codes() {
    let server = Server::start(&[]);
    let cases: [(Vec<u8>, u16); 4] = [
        (frame(OpCode::Text, true, b"ok\xff"), 1007),
        (
            {
                let mut unmasked = Vec::new();
                ringws::proto::frame::write_frame(
                    &mut unmasked,
                    ringws::proto::frame::FrameHead::whole(OpCode::Text),
                    b"hi",
                    None,
                );
                unmasked
            },
            1002,
        ),
        (frame(OpCode::Continuation, true, b"orphan"), 1002),
        (frame(OpCode::Close, true, &[0x03, 0xed]), 1002),
    ];
    for (bytes, code) in cases {
        let mut stream = open(server.addr, "/");
        stream.write_all(&bytes).expect("send");
        expect_close(&mut stream, code);
        // Then the server closes the TCP connection.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).expect("read to the end");
    }
}

#[test]
fn a_client_that_never_reads_is_closed_with_1008_under_the_close_policy() {
    let server = Server::start(&["--max-queued", "256KiB", "--backpressure", "close"]);
    let mut stalled = open(server.addr, "/");
    let message = vec![0x42u8; 64 << 10];
    // Echoes pile up in the server's queue once the socket buffers fill. Writing may fail
    // once the server gives up: that is the point.
    let writer = {
        let mut stream = stalled.try_clone().expect("clone the socket");
        thread::spawn(move || {
            for _ in 0..2000 {
                if stream
                    .write_all(&frame(OpCode::Binary, true, &message))
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    // Now read: first the echoes that made it, then a close with 1008.
    let code = loop {
        let (header, payload) = read_frame(&mut stalled);
        if header.opcode == OpCode::Close {
            break u16::from_be_bytes([payload[0], payload[1]]);
        }
    };
    assert_eq!(code, 1008);
    let _ = writer.join();
    // Nobody else noticed.
    let mut other = open(server.addr, "/");
    send(&mut other, OpCode::Text, true, b"still here");
    assert_eq!(read_frame(&mut other).1, b"still here");
}

#[test]
fn sigterm_sends_1001_to_every_connection_and_exits_0() {
    let server = Server::start(&["--shards", "2"]);
    let mut streams: Vec<_> = (0..8).map(|_| open(server.addr, "/")).collect();
    for stream in &mut streams {
        send(stream, OpCode::Text, true, b"hi");
        assert_eq!(read_frame(stream).1, b"hi");
    }
    let closer = thread::spawn(move || server.terminate(Duration::from_secs(15)));
    for stream in &mut streams {
        expect_close(stream, 1001);
        send(stream, OpCode::Close, true, &1001u16.to_be_bytes());
    }
    let status = closer.join().expect("join");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn compression_skips_messages_below_the_threshold() {
    let server = Server::start(&["--deflate", "shared", "--deflate-min-size", "100"]);
    let mut stream = connect(server.addr);
    let request = upgrade_request(
        server.addr,
        "/",
        &["Sec-WebSocket-Extensions: permessage-deflate"],
    );
    stream.write_all(request.as_bytes()).expect("send upgrade");
    let head = read_head(&mut stream);
    assert!(head.contains("permessage-deflate"), "{head}");
    // A client may always send uncompressed messages; the echoes show the server's choice.
    send(&mut stream, OpCode::Text, true, &[b'a'; 50]);
    let (short, payload) = read_frame(&mut stream);
    assert!(
        !short.rsv1,
        "a 50-byte message under a 100-byte threshold was compressed"
    );
    assert_eq!(payload, [b'a'; 50]);
    send(&mut stream, OpCode::Text, true, &[b'a'; 500]);
    let (long, payload) = read_frame(&mut stream);
    assert!(
        long.rsv1,
        "a compressible 500-byte message went out uncompressed"
    );
    assert!(
        payload.len() < 50,
        "500 equal bytes compressed to {} bytes",
        payload.len()
    );
}

#[test]
fn a_second_server_on_a_busy_port_refuses_to_start() {
    let first = Server::start(&[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringws"))
        .args(["serve", "--listen", &first.addr.to_string()])
        .output()
        .expect("run a second ringws serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the second server started: {stderr}"
    );
    assert!(stderr.contains("another process is listening"), "{stderr}");
    // The first one is untouched.
    let mut client = open(first.addr, "/");
    send(&mut client, OpCode::Text, true, b"still mine");
    assert_eq!(read_frame(&mut client).1, b"still mine");
}
