//! Handshake tests: the RFC's answers, any split of the input, and a client-server round trip.

use proptest::prelude::*;

use super::*;

const BROWSER: &str = "GET /chat?room=1 HTTP/1.1\r\n\
Host: example.com:9001\r\n\
Connection: keep-alive, Upgrade\r\n\
Pragma: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Cookie: session=abc123; theme=\"dark\"\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Protocol: chat.v2, chat.v1\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// Feeds `bytes` in pieces ending at `cuts`; returns the parse outcome and the bytes left over.
fn parse_split(bytes: &[u8], cuts: &[usize]) -> (Result<Option<Request>, Refusal>, Vec<u8>) {
    let mut parser = RequestParser::new(Limits::default());
    let mut bounds: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < bytes.len())
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    bounds.push(bytes.len());
    let mut start = 0;
    for end in bounds {
        match parser.feed(&bytes[start..end]) {
            Err(rejection) => return (Err(rejection), Vec::new()),
            Ok(Some(consumed)) => {
                let rest = bytes[start + consumed..].to_vec();
                return (Ok(parser.request().cloned()), rest);
            }
            Ok(None) => start = end,
        }
    }
    (Ok(None), Vec::new())
}

fn status_of(request: &str) -> u16 {
    match parse_split(request.as_bytes(), &[]) {
        (Err(rejection), _) => rejection.status,
        (Ok(Some(request)), _) => match validate(&request) {
            Ok(_) => 101,
            Err(rejection) => rejection.status,
        },
        (Ok(None), _) => 0,
    }
}

#[test]
fn rfc_sample_accept_key() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn browser_request_has_everything_the_application_needs() {
    let mut bytes = BROWSER.as_bytes().to_vec();
    bytes.extend_from_slice(b"\x81\x85frame");
    let (request, rest) = parse_split(&bytes, &[]);
    let request = request.unwrap().unwrap();
    assert_eq!(rest, b"\x81\x85frame", "frames after the head are kept");
    assert_eq!(
        (request.method(), request.path(), request.query()),
        ("GET", "/chat", Some("room=1"))
    );
    assert_eq!(request.version(), (1, 1));
    assert_eq!(request.origin(), Some("https://example.com"));
    assert_eq!(request.host(), Some("example.com:9001"));
    assert_eq!(
        request.protocols().collect::<Vec<_>>(),
        ["chat.v2", "chat.v1"]
    );
    assert_eq!(
        request.cookies().collect::<Vec<_>>(),
        [("session", "abc123"), ("theme", "dark")]
    );
    let offers = request.extension_offers();
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].name, "permessage-deflate");
    assert_eq!(request.headers().count(), 12);
    assert_eq!(validate(&request).unwrap().key, "dGhlIHNhbXBsZSBub25jZQ==");
    let preference = ["chat.v1".to_string(), "chat.v2".to_string()];
    assert_eq!(
        select_protocol(request.protocols(), &preference),
        Some("chat.v1")
    );
    assert_eq!(
        select_protocol(request.protocols(), &["other".to_string()]),
        None
    );
}

#[test]
fn every_violation_gets_its_status() {
    let upgrade = |replace: &str, with: &str| BROWSER.replacen(replace, with, 1);
    let cases = [
        (upgrade("GET ", "POST "), 405),
        (upgrade("HTTP/1.1\r\nHost", "HTTP/1.0\r\nHost"), 400),
        (upgrade("HTTP/1.1\r\nHost", "HTTP/2.0\r\nHost"), 505),
        (upgrade("Host: example.com:9001\r\n", ""), 400),
        (upgrade("Upgrade: websocket", "Upgrade: h2c"), 400),
        (
            upgrade("Connection: keep-alive, Upgrade", "Connection: keep-alive"),
            400,
        ),
        (
            upgrade("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            426,
        ),
        (upgrade("Sec-WebSocket-Version: 13\r\n", ""), 426),
        (upgrade("dGhlIHNhbXBsZSBub25jZQ==", "dG9vIHNob3J0"), 400),
        (upgrade("dGhlIHNhbXBsZSBub25jZQ==", "not base64!"), 400),
        (
            upgrade("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            400,
        ),
        (upgrade("Pragma: no-cache", "Bad Header: x"), 400),
        (
            upgrade("GET /chat?room=1 HTTP/1.1", "GET  /chat HTTP/1.1"),
            400,
        ),
        (
            upgrade("Pragma: no-cache", &format!("X-Big: {}", "a".repeat(9000))),
            431,
        ),
        (upgrade("Pragma: no-cache", &"X-A: 1\r\n".repeat(70)), 431),
    ];
    for (request, status) in cases {
        assert_eq!(status_of(&request), status, "{request}");
    }
    assert_eq!(status_of(BROWSER), 101);
}

#[test]
fn refusals_name_the_problem() {
    let request = BROWSER.replacen("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 1);
    let (parsed, _) = parse_split(request.as_bytes(), &[]);
    let rejection = validate(&parsed.unwrap().unwrap()).unwrap_err();
    let mut out = Vec::new();
    rejection.write(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert!(text.ends_with("this server speaks 13\n"), "{text}");
}

#[test]
fn plain_get_is_told_apart() {
    let (parsed, _) = parse_split(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[]);
    let rejection = validate(&parsed.unwrap().unwrap()).unwrap_err();
    assert!(rejection.is_plain_http());
    let (parsed, _) = parse_split(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", &[]);
    assert!(
        !validate(&parsed.unwrap().unwrap())
            .unwrap_err()
            .is_plain_http()
    );
}

#[test]
fn client_and_server_agree() {
    let request = ClientRequest {
        host: "localhost:9001",
        path: "/pubsub/ticks",
        origin: Some("http://localhost"),
        protocols: &["v2", "v1"],
        extensions: Some("permessage-deflate; client_max_window_bits"),
        headers: &[("Authorization", "Bearer t")],
    };
    let mut wire = Vec::new();
    let mut client = ClientHandshake::new(&request, &mut wire);
    let (parsed, rest) = parse_split(&wire, &[]);
    assert!(rest.is_empty());
    let parsed = parsed.unwrap().unwrap();
    assert_eq!(parsed.path(), "/pubsub/ticks");
    assert_eq!(parsed.header("authorization"), Some("Bearer t"));
    let key = validate(&parsed).unwrap().key;
    let mut response = Vec::new();
    write_accept(&mut response, key, Some("v1"), Some("permessage-deflate"));
    response.extend_from_slice(b"\x81\x02hi");
    // One byte at a time.
    let mut accepted = None;
    for (i, byte) in response.iter().enumerate() {
        if let Some(done) = client.feed(std::slice::from_ref(byte)).unwrap() {
            accepted = Some((i, done));
            break;
        }
    }
    let (at, accepted) = accepted.unwrap();
    assert_eq!(at + 1, response.len() - 4, "frames follow the head");
    assert_eq!(accepted.protocol.as_deref(), Some("v1"));
    assert_eq!(accepted.extensions.as_deref(), Some("permessage-deflate"));
}

#[test]
fn client_refuses_a_bad_answer() {
    let request = ClientRequest {
        host: "h",
        path: "/",
        protocols: &["a"],
        ..ClientRequest::default()
    };
    let mut wire = Vec::new();
    let mut client = ClientHandshake::new(&request, &mut wire);
    let wrong = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n";
    assert_eq!(client.feed(wrong), Err(HandshakeError::BadAccept));
    let mut client = ClientHandshake::new(&request, &mut Vec::new());
    let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(
        client.feed(refused),
        Err(HandshakeError::Status { status: 403, .. })
    ));
}

proptest! {
    #[test]
    fn any_split_parses_the_same(cuts in proptest::collection::vec(0usize..700, 0..30)) {
        let mut bytes = BROWSER.as_bytes().to_vec();
        bytes.extend_from_slice(b"trailing frame bytes");
        let (whole, whole_rest) = parse_split(&bytes, &[]);
        let (split, split_rest) = parse_split(&bytes, &cuts);
        let whole = whole.unwrap().unwrap();
        let split = split.unwrap().unwrap();
        prop_assert_eq!(whole.headers().collect::<Vec<_>>(), split.headers().collect::<Vec<_>>());
        prop_assert_eq!(whole.target(), split.target());
        prop_assert_eq!(whole_rest, split_rest);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000), cut in 0usize..2000) {
        let (outcome, _) = parse_split(&bytes, &[cut]);
        if let Ok(Some(request)) = outcome {
            let _ = validate(&request);
            let _ = request.extension_offers();
            let _ = request.cookies().count();
        }
        let mut client = ClientHandshake::new(&ClientRequest { host: "h", path: "/", ..ClientRequest::default() }, &mut Vec::new());
        let _ = client.feed(&bytes);
    }

    #[test]
    fn header_shaped_garbage_never_panics(lines in proptest::collection::vec("[ -~]{0,40}", 0..20)) {
        let request = format!("GET / HTTP/1.1\r\n{}\r\n\r\n", lines.join("\r\n"));
        let (outcome, _) = parse_split(request.as_bytes(), &[]);
        if let Ok(Some(request)) = outcome {
            let _ = validate(&request);
            let _ = request.extension_offers();
        }
    }
}
