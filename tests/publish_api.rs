//! The publish API of `ringws serve` against the real binary: `POST /publish/<topic>`
//! reaching subscribers on every shard, over a kept-alive connection, refused without the
//! key or with a wrong one, the body's framing and bounds, and the JSON batch.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ringws::proto::OpCode;
use support::{Server, connect, metrics, open, read_frame, send, wait_for_metrics};

const KEY: &str = "publish-key-for-tests";
const SETTLE: Duration = Duration::from_secs(10);

/// Opens subscribers to `topic` until both shards of a 2-shard server hold some.
fn subscribers_on_both_shards(addr: SocketAddr, topic: &str) -> Vec<TcpStream> {
    let mut subscribers = Vec::new();
    for _ in 0..64 {
        subscribers.push(open(addr, &format!("/pubsub/{topic}")));
        let now = metrics(addr);
        let on = |shard: u32| now[&format!("ringws_shard_subscriptions{{shard=\"{shard}\"}}")];
        if subscribers.len() >= 2 && on(0) > 0 && on(1) > 0 {
            return subscribers;
        }
    }
    panic!("64 connections never reached both shards");
}

/// A POST with `headers` (each a full line) and `body`.
fn post(addr: SocketAddr, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn auth() -> String {
    format!("Authorization: Bearer {KEY}")
}

/// One response: status, head and body (read by its Content-Length, so a kept-alive
/// connection can carry on).
fn response(stream: &mut TcpStream) -> (u16, String, String) {
    let head = support::read_head(stream);
    let status = head[9..12].parse().expect("a status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("the body");
    (status, head, String::from_utf8(body).expect("a text body"))
}

fn ask(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut stream = connect(addr);
    stream.write_all(request).expect("send");
    response(&mut stream)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn a_post_reaches_subscribers_on_every_shard_over_a_kept_alive_connection() {
    let server = Server::start(&["--shards", "2", "--publish-key", KEY, "--publish", "nobody"]);
    let addr = server.addr;
    let mut subscribers = subscribers_on_both_shards(addr, "news");
    let count = subscribers.len() as u64;
    let auth = auth();
    let mut backend = connect(addr);
    backend
        .write_all(&post(
            addr,
            "/publish/news",
            &["Content-Type: text/plain", &auth],
            b"hello",
        ))
        .expect("send");
    let (status, head, body) = response(&mut backend);
    assert_eq!(status, 200, "{body}");
    assert!(!head.contains("Connection: close"), "kept alive: {head}");
    assert_eq!(
        json(&body),
        serde_json::json!({"topic": "news", "subscribers": count})
    );
    // The same connection, twice more in one write (pipelined): binary, then text.
    let mut two = post(addr, "/publish/news", &[&auth], &[0, 1, 2]);
    two.extend(post(
        addr,
        "/publish/news",
        &["Content-Type: application/json", &auth],
        b"{}",
    ));
    backend.write_all(&two).expect("send");
    assert_eq!(response(&mut backend).0, 200);
    assert_eq!(response(&mut backend).0, 200);
    for subscriber in &mut subscribers {
        let (head, payload) = read_frame(subscriber);
        assert_eq!(
            (head.opcode, payload.as_slice()),
            (OpCode::Text, b"hello".as_slice())
        );
        let (head, payload) = read_frame(subscriber);
        assert_eq!(
            (head.opcode, payload.as_slice()),
            (OpCode::Binary, [0, 1, 2].as_slice())
        );
        let (head, payload) = read_frame(subscriber);
        assert_eq!(
            (head.opcode, payload.as_slice()),
            (OpCode::Text, b"{}".as_slice())
        );
    }
    // A topic nobody listens to: published to no one.
    let (_, _, body) = ask(addr, &post(addr, "/publish/empty", &[&auth], b"x"));
    assert_eq!(json(&body)["subscribers"], 0);
    // Asking to close is honoured.
    let (status, head, _) = ask(
        addr,
        &post(addr, "/publish/news", &[&auth, "Connection: close"], b"x"),
    );
    assert!(
        status == 200 && head.contains("Connection: close"),
        "{head}"
    );
    // Deliveries on the other shard are counted when that shard gets to them.
    let m = wait_for_metrics(addr, SETTLE, |m| {
        m["ringws_publish_api_messages_total"] == 5
            && m["ringws_pubsub_delivered_total"] == 4 * count
    });
    assert_eq!(m["ringws_publish_api_responses_total{status=\"200\"}"], 5);
}

#[test]
fn the_key_the_method_and_the_body_are_checked_before_anything_is_read() {
    let server = Server::start(&["--publish-key", KEY, "--max-message-size", "1KiB"]);
    let addr = server.addr;
    let refused = |request: Vec<u8>| ask(addr, &request);

    let (status, head, body) = refused(post(addr, "/publish/news", &[], b"x"));
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    let (status, _, body) = refused(post(
        addr,
        "/publish/news",
        &["Authorization: Bearer nope"],
        b"x",
    ));
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (403, Some("wrong publish key"))
    );

    let auth = auth();
    let get = format!("GET /publish/news HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n\r\n");
    let (status, head, _) = refused(get.into_bytes());
    assert!(status == 405 && head.contains("Allow: POST"), "{head}");
    let chunked = format!(
        "POST /publish/news HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
    );
    let (status, _, body) = refused(chunked.into_bytes());
    assert_eq!(status, 411, "{body}");
    assert!(body.contains("chunked"), "{body}");
    let no_length = format!("POST /publish/news HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n\r\n");
    assert_eq!(refused(no_length.into_bytes()).0, 411);
    // Refused on its head alone: the 2 KiB body is never sent.
    let big = format!(
        "POST /publish/news HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nContent-Length: 2048\r\n\r\n"
    );
    let (status, _, body) = refused(big.into_bytes());
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("--max-message-size"), "{body}");
    let (status, _, _) = refused(post(
        addr,
        "/publish",
        &[&auth, "Content-Type: text/plain"],
        b"[]",
    ));
    assert_eq!(status, 415);
    let bad_text = post(
        addr,
        "/publish/news",
        &[&auth, "Content-Type: text/plain"],
        &[0xff],
    );
    assert_eq!(refused(bad_text).0, 400);
    let (status, _, _) = refused(post(addr, "/publish/", &[&auth], b"x"));
    assert_eq!(status, 400);

    // `Expect: 100-continue`: the server asks for the body once the head passes.
    let mut stream = connect(addr);
    let head = format!(
        "POST /publish/news HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("send the head");
    assert_eq!(
        support::read_head(&mut stream),
        "HTTP/1.1 100 Continue\r\n\r\n"
    );
    stream.write_all(b"hi").expect("send the body");
    assert_eq!(response(&mut stream).0, 200);

    let m = metrics(addr);
    for (status, count) in [
        (401, 1),
        (403, 1),
        (405, 1),
        (411, 2),
        (413, 1),
        (415, 1),
        (400, 2),
    ] {
        let key = format!("ringws_publish_api_responses_total{{status=\"{status}\"}}");
        assert_eq!(m[&key], count, "{key}");
    }

    // Without a key the API is off, and says how to turn it on.
    let off = Server::start(&[]);
    let (status, _, body) = ask(off.addr, &post(off.addr, "/publish/news", &[&auth], b"x"));
    assert_eq!(status, 404);
    assert!(body.contains("--publish-key"), "{body}");
    let page = format!("GET /publish/news HTTP/1.1\r\nHost: {}\r\n\r\n", off.addr);
    let mut stream = connect(off.addr);
    stream.write_all(page.as_bytes()).expect("send");
    let answer = String::from_utf8(support::read_to_close(&mut stream)).expect("text");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "a GET there is a page, as before: {answer}"
    );
}

#[test]
fn a_batch_publishes_to_many_topics_or_nothing_when_one_message_is_bad() {
    let server = Server::start(&["--publish-key", KEY]);
    let addr = server.addr;
    let mut a = open(addr, "/pubsub/a");
    let mut b = open(addr, "/pubsub/b");
    let mut c = open(addr, "/pubsub/c");
    wait_for_metrics(addr, SETTLE, |m| m["ringws_pubsub_subscriptions"] == 3);
    let auth = auth();
    let headers = [auth.as_str(), "Content-Type: application/json"];

    let bad = br#"[{"topic": "a", "text": "never"}, {"text": "no topic"}]"#;
    let (status, _, body) = ask(addr, &post(addr, "/publish", &headers, bad));
    assert_eq!(status, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("message 1")),
        "{body}"
    );

    let batch = br#"[
        {"topic": "a", "text": "to a"},
        {"topics": ["b", "c"], "binary": "AAEC"},
        {"topic": "a", "json": {"price": 1.08}}
    ]"#;
    let (status, _, body) = ask(addr, &post(addr, "/publish", &headers, batch));
    assert_eq!(status, 200, "{body}");
    let one = |topic: &str| serde_json::json!({"topic": topic, "subscribers": 1});
    assert_eq!(
        json(&body),
        serde_json::json!({"results": [one("a"), one("b"), one("c"), one("a")]})
    );
    // The bad batch published nothing: "to a" is the first thing a hears.
    assert_eq!(read_frame(&mut a).1, b"to a");
    assert_eq!(read_frame(&mut a).1, br#"{"price":1.08}"#);
    for stream in [&mut b, &mut c] {
        let (head, payload) = read_frame(stream);
        assert_eq!(
            (head.opcode, payload.as_slice()),
            (OpCode::Binary, [0, 1, 2].as_slice())
        );
    }
    // Subscribers still publish to each other as before (`--publish anyone`).
    let mut a2 = open(addr, "/pubsub/a");
    wait_for_metrics(addr, SETTLE, |m| m["ringws_pubsub_subscriptions"] == 4);
    send(&mut a2, OpCode::Text, true, b"from a client");
    assert_eq!(read_frame(&mut a).1, b"from a client");
    assert_eq!(metrics(addr)["ringws_publish_api_messages_total"], 4);
}
