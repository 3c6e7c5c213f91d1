//! Negotiation and the codec, against the RFC's rules and each other.

use super::*;
use crate::proto::frame::OpCode;

fn offer(text: &str) -> Vec<(&str, Option<&str>)> {
    text.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (p, None),
        })
        .collect()
}

#[test]
fn incompressible_messages_go_out_plain_only_without_context_takeover() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    for (no_context_takeover, compressed) in [(true, false), (false, true)] {
        let direction = Direction {
            window_bits: 15,
            no_context_takeover,
        };
        let mut compressor =
            Compressor::new(direction, &DeflateConfig::default()).expect("window 15");
        let mut out = Vec::new();
        compressor.write_frame(OpCode::Binary, &noise, None, &mut out);
        assert_eq!(out[0] & 0x40 != 0, compressed, "RSV1 with {direction:?}");
    }
}

#[test]
fn negotiation_follows_rfc7692() {
    let config = DeflateConfig {
        no_context_takeover: false,
        peer_no_context_takeover: false,
        ..DeflateConfig::default()
    };
    let agreed = accept_offer(&config, offer("")).unwrap();
    assert_eq!(agreed.response, "permessage-deflate");
    let agreed = accept_offer(
        &config,
        offer("server_no_context_takeover; server_max_window_bits=9"),
    )
    .unwrap();
    assert_eq!(
        agreed.response,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=9"
    );
    assert_eq!(
        agreed.params.server(),
        Direction {
            window_bits: 9,
            no_context_takeover: true
        }
    );
    // A window the client asked to limit is answered even at the full 15.
    let agreed = accept_offer(&config, offer("server_max_window_bits=15")).unwrap();
    assert_eq!(
        agreed.response,
        "permessage-deflate; server_max_window_bits=15"
    );
    // client_max_window_bits without a value: the server may limit it, or not.
    let limited = DeflateConfig {
        peer_max_window_bits: 10,
        ..config
    };
    let agreed = accept_offer(&limited, offer("client_max_window_bits")).unwrap();
    assert_eq!(
        agreed.response,
        "permessage-deflate; client_max_window_bits=10"
    );
    // Not offered: never in the response.
    let agreed = accept_offer(&limited, offer("")).unwrap();
    assert_eq!(agreed.params.client_max_window_bits, 15);
    assert_eq!(
        accept_offer(&config, offer("foo")),
        Err(Declined::UnknownParameter)
    );
    assert_eq!(
        accept_offer(
            &config,
            offer("server_no_context_takeover; server_no_context_takeover")
        ),
        Err(Declined::DuplicateParameter)
    );
    for bad in [
        "server_max_window_bits=7",
        "server_max_window_bits=16",
        "server_max_window_bits=010",
        "server_max_window_bits",
        "client_max_window_bits=abc",
        "server_no_context_takeover=1",
    ] {
        assert_eq!(
            accept_offer(&config, offer(bad)),
            Err(Declined::InvalidValue),
            "{bad}"
        );
    }
    // Memory-saving default: neither side keeps context, and the server says so (it
    // may ask it of a client that did not offer it).
    let agreed = accept_offer(&DeflateConfig::default(), offer("")).unwrap();
    assert_eq!(
        agreed.response,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
}

#[test]
fn window_of_eight_means_uncompressed_sending() {
    let agreed =
        accept_offer(&DeflateConfig::default(), offer("server_max_window_bits=8")).unwrap();
    assert_eq!(agreed.params.server_max_window_bits, 8);
    assert!(Compressor::new(agreed.params.server(), &DeflateConfig::default()).is_none());
}

fn roundtrip(direction: Direction, messages: &[Vec<u8>]) {
    let mut tx = Compressor::new(
        direction,
        &DeflateConfig {
            level: 6,
            ..DeflateConfig::default()
        },
    )
    .unwrap();
    let mut rx = Decompressor::new(direction);
    for message in messages {
        let mut wire = Vec::new();
        tx.compress(message, &mut wire);
        // Feed the compressed bytes in awkward pieces.
        let mut plain = Vec::new();
        for piece in wire.chunks(7) {
            rx.inflate(piece, &mut plain, usize::MAX - 1).unwrap();
        }
        rx.finish_message(&mut plain, usize::MAX - 1).unwrap();
        assert_eq!(&plain, message);
    }
}

#[test]
fn codec_roundtrips_with_and_without_context() {
    let json = br#"{"symbol":"ACME","price":123.45,"volume":1000}"#.repeat(50);
    let random: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let messages = vec![json.clone(), Vec::new(), json, random, b"x".to_vec()];
    for bits in [9, 12, 15] {
        for no_context_takeover in [false, true] {
            roundtrip(
                Direction {
                    window_bits: bits,
                    no_context_takeover,
                },
                &messages,
            );
        }
    }
}

#[test]
fn empty_message_compresses_to_one_byte() {
    let mut tx = Compressor::new(
        Direction {
            window_bits: 15,
            no_context_takeover: true,
        },
        &DeflateConfig::default(),
    )
    .unwrap();
    let mut wire = Vec::new();
    tx.compress(b"", &mut wire);
    assert_eq!(wire, [0x00]);
}

#[test]
fn deflate_bomb_stops_at_the_limit() {
    let direction = Direction {
        window_bits: 15,
        no_context_takeover: true,
    };
    let mut tx = Compressor::new(
        direction,
        &DeflateConfig {
            level: 9,
            ..DeflateConfig::default()
        },
    )
    .unwrap();
    let mut wire = Vec::new();
    tx.compress(&vec![0u8; 50 << 20], &mut wire);
    assert!(wire.len() < 100 << 10, "{}", wire.len());
    let mut rx = Decompressor::new(direction);
    let mut plain = Vec::new();
    let limit = 1 << 20;
    let err = rx.inflate(&wire, &mut plain, limit).unwrap_err();
    assert_eq!(err.code, super::super::CloseCode::MESSAGE_TOO_BIG);
    assert!(plain.len() <= limit + 1, "inflated {} bytes", plain.len());
    assert!(
        plain.capacity() <= 2 * limit + 2,
        "capacity {}",
        plain.capacity()
    );
}

#[test]
fn corrupt_data_is_invalid_payload() {
    let mut rx = Decompressor::new(Direction {
        window_bits: 15,
        no_context_takeover: true,
    });
    let err = rx
        .inflate(&[0xFF, 0xFF, 0xFF, 0xFF], &mut Vec::new(), 1 << 20)
        .unwrap_err();
    assert_eq!(err.code, super::super::CloseCode::INVALID_PAYLOAD);
}
