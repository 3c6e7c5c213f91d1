//! permessage-deflate through the session: inflating in any split, the rules, round trips.

use super::*;

fn deflate_config(max_message_size: usize, client_no_context_takeover: bool) -> SessionConfig {
    SessionConfig {
        max_message_size,
        deflate: Some(DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }),
    }
}

/// Client frames of `messages`, compressed, each split into `fragments` frames.
fn compressed_stream(
    messages: &[&[u8]],
    text: bool,
    fragments: usize,
    takeover: bool,
    level: u32,
) -> Vec<u8> {
    let direction = Direction {
        window_bits: 15,
        no_context_takeover: !takeover,
    };
    let config = DeflateConfig {
        min_size: 0,
        level,
        ..DeflateConfig::default()
    };
    let mut compressor = Compressor::new(direction, &config).unwrap();
    let mut stream = Vec::new();
    for message in messages {
        // Always the compressed form, even where write_frame would send a short message plain.
        let mut compressed = Vec::new();
        compressor.compress(message, &mut compressed);
        let payload = &compressed[..];
        let size = payload.len().div_ceil(fragments).max(1);
        let pieces: Vec<&[u8]> = if payload.is_empty() {
            vec![&[][..]]
        } else {
            payload.chunks(size).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let opcode = match (i, text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let mut f = Vec::new();
            let head = FrameHead {
                opcode,
                fin: i + 1 == pieces.len(),
                compressed: i == 0,
            };
            write_frame(&mut f, head, piece, Some([1, 2, 3, 4]));
            stream.extend(f);
        }
    }
    stream
}

#[test]
fn compressed_messages_inflate_in_any_split() {
    let json = br#"{"id":1,"price":99.5,"tags":["a","b"]}"#.repeat(200);
    let messages: Vec<&[u8]> = vec![&json, b"", b"short", &json];
    for takeover in [false, true] {
        for fragments in [1, 3] {
            let stream = compressed_stream(&messages, true, fragments, takeover, 1);
            let cuts: Vec<usize> = (0..stream.len()).step_by(97).collect();
            let (seen, out) = feed(
                Role::Server,
                deflate_config(1 << 20, !takeover),
                &stream,
                &cuts,
            );
            let expected: Vec<Seen> = messages
                .iter()
                .map(|m| Seen::Text(String::from_utf8(m.to_vec()).unwrap()))
                .collect();
            assert_eq!(seen, expected, "takeover {takeover}, fragments {fragments}");
            assert!(out.is_empty());
        }
    }
}

#[test]
fn compression_rules() {
    // RSV1 on a continuation frame.
    let mut stream = cframe(OpCode::Text, false, b"a");
    let mut cont = cframe(OpCode::Continuation, true, b"b");
    cont[0] |= 0x40;
    stream.extend(cont);
    assert_eq!(
        feed(Role::Server, deflate_config(1000, true), &stream, &[]).0,
        vec![Seen::Failed(1002)]
    );
    // RSV1 on a control frame.
    let mut ping = cframe(OpCode::Ping, true, b"");
    ping[0] |= 0x40;
    assert_eq!(
        feed(Role::Server, deflate_config(1000, true), &ping, &[]).0,
        vec![Seen::Failed(1002)]
    );
    // A deflate bomb: 64 MiB of zeros, compressed ~1000:1, fails with 1009 once the inflated
    // bytes pass the 256 KiB limit, holding no more than about that much.
    let zeros = vec![0u8; 64 << 20];
    let bomb = compressed_stream(&[&zeros], false, 1, false, 9);
    let limit = 256 << 10;
    assert!(bomb.len() < limit, "{}", bomb.len());
    let mut session = Session::new(Role::Server, deflate_config(limit, true));
    let mut data = bomb;
    let err = session.read(&mut data, &mut Vec::new()).unwrap_err();
    assert_eq!(err.code, CloseCode::MESSAGE_TOO_BIG);
}

#[test]
fn compressed_invalid_utf8_fails_with_1007() {
    let stream = compressed_stream(&[b"ok \xed\xa0\x80 no".as_slice()], true, 1, false, 1);
    assert_eq!(
        feed(Role::Server, deflate_config(1000, true), &stream, &[]).0,
        vec![Seen::Failed(1007)]
    );
}

#[test]
fn compressed_roundtrip_between_sessions() {
    let params = deflate_config(1 << 20, false).deflate;
    let mut client = Session::new(
        Role::Client,
        SessionConfig {
            deflate: params,
            ..SessionConfig::default()
        },
    );
    let mut server = Session::new(
        Role::Server,
        SessionConfig {
            deflate: params,
            ..SessionConfig::default()
        },
    );
    let config = DeflateConfig {
        min_size: 16,
        ..DeflateConfig::default()
    };
    let mut client_tx = Compressor::new(client.writer.own_direction().unwrap(), &config).unwrap();
    let mut server_tx = Compressor::new(server.writer.own_direction().unwrap(), &config).unwrap();
    let text = "ticker update ".repeat(100);
    let mut wire = Vec::new();
    client
        .writer
        .send_compressed(OpCode::Text, text.as_bytes(), &mut client_tx, &mut wire)
        .unwrap();
    client
        .writer
        .send_compressed(OpCode::Text, b"tiny", &mut client_tx, &mut wire)
        .unwrap();
    assert!(wire.len() < text.len() / 4);
    assert_ne!(wire[0] & 0x40, 0, "compressed frame sets RSV1");
    let mut back = Vec::new();
    let mut rest = &mut wire[..];
    while !rest.is_empty() {
        let (used, event) = server.read(rest, &mut back).unwrap();
        if let Some(Event::Text(t)) = event {
            let t = t.to_owned();
            server
                .writer
                .send_compressed(OpCode::Text, t.as_bytes(), &mut server_tx, &mut back)
                .unwrap();
        }
        rest = &mut rest[used..];
    }
    let (seen, _) = feed(
        Role::Client,
        SessionConfig {
            deflate: params,
            ..SessionConfig::default()
        },
        &back,
        &[],
    );
    assert_eq!(seen, vec![Seen::Text(text), Seen::Text("tiny".into())]);
}
