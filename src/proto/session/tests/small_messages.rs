//! The short paths for small whole messages, the client's (two-byte header) and the
//! server's (six-byte header), decide nothing on their own: every stream gives the same
//! events, errors and replies whether a short path takes its first frame or the general
//! decoder does.

use super::*;
use crate::proto::mask::apply_mask;

/// Feeds `bytes` to a client session in pieces ending at `cuts`, with seeded masking keys
/// so the replies it writes compare byte for byte.
fn client_reads(config: SessionConfig, bytes: &[u8], cuts: &[usize]) -> (Vec<Seen>, Vec<u8>) {
    reads(Role::Client, config, bytes, cuts)
}

/// The same for a server session.
fn server_reads(config: SessionConfig, bytes: &[u8], cuts: &[usize]) -> (Vec<Seen>, Vec<u8>) {
    reads(Role::Server, config, bytes, cuts)
}

fn reads(role: Role, config: SessionConfig, bytes: &[u8], cuts: &[usize]) -> (Vec<Seen>, Vec<u8>) {
    let mut session = Session::new(role, config).with_mask_keys(MaskKeys::seeded(9));
    let mut data = bytes.to_vec();
    let (mut seen, mut out) = (Vec::new(), Vec::new());
    let mut start = 0;
    for end in cuts.iter().copied().chain([data.len()]) {
        let mut piece = &mut data[start..end];
        while !piece.is_empty() {
            match session.read(piece, &mut out) {
                Ok((used, event)) => {
                    seen.extend(event.map(Seen::from_event));
                    piece = &mut piece[used..];
                }
                Err(err) => {
                    seen.push(Seen::Failed(err.code.as_u16()));
                    return (seen, out);
                }
            }
        }
        start = end;
    }
    (seen, out)
}

fn configs() -> [SessionConfig; 3] {
    let deflate = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    [
        SessionConfig::default(),
        SessionConfig {
            max_message_size: 10,
            ..SessionConfig::default()
        },
        SessionConfig {
            deflate: Some(deflate),
            ..SessionConfig::default()
        },
    ]
}

/// What follows the two header bytes: ASCII, bytes that are never UTF-8, and two-byte
/// sequences a length can cut in half.
fn tails() -> [Vec<u8>; 3] {
    [
        vec![b'a'; 130],
        vec![0xFF; 130],
        "é".repeat(65).into_bytes(),
    ]
}

#[test]
fn every_two_byte_header_decodes_as_the_general_path_decodes_it() {
    for config in configs() {
        for tail in tails() {
            for b0 in 0..=u8::MAX {
                for b1 in 0..=u8::MAX {
                    let bytes = [&[b0, b1][..], &tail].concat();
                    // A read of one byte leaves half a header, so the general path decodes
                    // this frame; whole, the small-message path may take it.
                    let general = client_reads(config, &bytes, &[1]);
                    let whole = client_reads(config, &bytes, &[]);
                    assert_eq!(whole, general, "header {b0:02x} {b1:02x}");
                }
            }
        }
    }
}

#[test]
fn inside_a_fragmented_message_the_general_path_decides() {
    let mut first = Vec::new();
    write_frame(
        &mut first,
        FrameHead {
            opcode: OpCode::Binary,
            fin: false,
            compressed: false,
        },
        b"ab",
        None,
    );
    for b0 in [0x00, 0x80, 0x81, 0x82, 0xC2] {
        for b1 in 0..=u8::MAX {
            let bytes = [&first[..], &[b0, b1], &[b'a'; 130]].concat();
            let general = client_reads(SessionConfig::default(), &bytes, &[first.len() + 1]);
            let whole = client_reads(SessionConfig::default(), &bytes, &[]);
            assert_eq!(whole, general, "header {b0:02x} {b1:02x}");
        }
    }
}

#[test]
fn only_whole_small_unmasked_final_data_frames_take_the_short_path() {
    let reader = Session::new(Role::Client, SessionConfig::default()).reader;
    let frame = |b0: u8, b1: u8, len: usize| [&[b0, b1][..], &vec![b'x'; len]].concat();
    let taken = |bytes: &[u8]| reader.small_server_message(bytes).map(|(n, _)| n);
    assert_eq!(taken(&frame(0x82, 20, 20)), Some(22));
    assert_eq!(taken(&frame(0x81, 125, 130)), Some(127), "text, then more");
    assert_eq!(taken(&frame(0x82, 0, 0)), Some(2), "empty");
    for (b0, b1, len, why) in [
        (0x82, 20, 19, "payload not all here"),
        (0x82, 0x80 | 20, 24, "masked"),
        (0xC2, 20, 20, "RSV1"),
        (0xA2, 20, 20, "RSV2"),
        (0x92, 20, 20, "RSV3"),
        (0x02, 20, 20, "not final"),
        (0x80, 20, 20, "continuation"),
        (0x89, 20, 20, "ping"),
        (0x8A, 20, 20, "pong"),
        (0x88, 2, 2, "close"),
        (0x83, 20, 20, "reserved opcode"),
        (0x82, 126, 200, "16-bit length"),
        (0x82, 127, 200, "64-bit length"),
    ] {
        assert_eq!(taken(&frame(b0, b1, len)), None, "{why}");
    }
    assert_eq!(taken(&[0x81, 2, 0xC3, 0x28]), None, "invalid UTF-8");
    let server = Session::new(Role::Server, SessionConfig::default()).reader;
    assert!(server.small_server_message(&frame(0x82, 20, 20)).is_none());
    let small = SessionConfig {
        max_message_size: 19,
        ..SessionConfig::default()
    };
    let reader = Session::new(Role::Client, small).reader;
    assert!(reader.small_server_message(&frame(0x82, 20, 20)).is_none());
}

/// A client's masking key for the server's tests.
const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// `b0 b1`, the key, then `payload` masked with it: what a client sends.
fn masked(b0: u8, b1: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = payload.to_vec();
    apply_mask(&mut body, KEY, 0);
    [&[b0, b1][..], &KEY, &body].concat()
}

#[test]
fn every_header_before_a_masking_key_decodes_as_the_general_path_decodes_it() {
    for config in configs() {
        for tail in tails() {
            for b0 in 0..=u8::MAX {
                for b1 in 0..=u8::MAX {
                    let bytes = masked(b0, b1, &tail);
                    // Cut inside the key, the general path decodes this frame; whole, the
                    // small-message path may take it.
                    let general = server_reads(config, &bytes, &[4]);
                    let whole = server_reads(config, &bytes, &[]);
                    assert_eq!(whole, general, "header {b0:02x} {b1:02x}");
                }
            }
        }
    }
}

#[test]
fn inside_a_client_s_fragmented_message_the_general_path_decides() {
    let mut first = Vec::new();
    let head = FrameHead {
        opcode: OpCode::Binary,
        fin: false,
        compressed: false,
    };
    write_frame(&mut first, head, b"ab", Some(KEY));
    for b0 in [0x00, 0x80, 0x81, 0x82, 0xC2] {
        for b1 in 0..=u8::MAX {
            let bytes = [&first[..], &masked(b0, b1, &[b'a'; 130])].concat();
            let general = server_reads(SessionConfig::default(), &bytes, &[first.len() + 4]);
            let whole = server_reads(SessionConfig::default(), &bytes, &[]);
            assert_eq!(whole, general, "header {b0:02x} {b1:02x}");
        }
    }
}

#[test]
fn only_whole_masked_final_data_frames_take_the_servers_short_path() {
    let reader = Session::new(Role::Server, SessionConfig::default()).reader;
    let frame = |b0: u8, b1: u8, len: usize| {
        let mut bytes = masked(b0, b1, &vec![b'x'; len]);
        bytes.truncate(6 + len);
        bytes
    };
    let taken = |bytes: &[u8]| {
        let mut bytes = bytes.to_vec();
        let taken = reader.whole_client_message(&mut bytes).map(|(n, _, _)| n);
        (taken, bytes)
    };
    let (n, unmasked) = taken(&frame(0x82, 0x80 | 20, 20));
    assert_eq!(n, Some(26));
    assert_eq!(&unmasked[6..], &[b'x'; 20], "unmasked in place");
    let (n, _) = taken(&[frame(0x81, 0x80 | 125, 125), vec![0x81]].concat());
    assert_eq!(n, Some(131), "text, then more");
    assert_eq!(taken(&frame(0x82, 0x80, 0)).0, Some(6), "empty");
    for (b0, b1, len, why) in [
        (0x82, 0x80 | 20, 19, "payload not all here"),
        (0x82, 20, 20, "unmasked"),
        (0xC2, 0x80 | 20, 20, "RSV1"),
        (0xA2, 0x80 | 20, 20, "RSV2"),
        (0x92, 0x80 | 20, 20, "RSV3"),
        (0x02, 0x80 | 20, 20, "not final"),
        (0x80, 0x80 | 20, 20, "continuation"),
        (0x89, 0x80 | 20, 20, "ping"),
        (0x8A, 0x80 | 20, 20, "pong"),
        (0x88, 0x80 | 2, 2, "close"),
        (0x83, 0x80 | 20, 20, "reserved opcode"),
        (0x82, 0x80 | 127, 200, "64-bit length"),
    ] {
        let bytes = frame(b0, b1, len);
        assert_eq!(taken(&bytes), (None, bytes.clone()), "{why}");
    }
    let invalid = masked(0x81, 0x80 | 2, &[0xC3, 0x28]);
    assert_eq!(
        taken(&invalid),
        (None, invalid.clone()),
        "invalid UTF-8, left masked"
    );
    let long = [&[0x82, 0x80 | 126, 0x01, 0x00][..], &KEY, &[0; 256]].concat();
    assert_eq!(taken(&long).0, Some(264), "a 16-bit length");
    assert_eq!(taken(&long[..263]).0, None, "a 16-bit length, not all here");
    let client = Session::new(Role::Client, SessionConfig::default()).reader;
    let mut bytes = frame(0x82, 0x80 | 20, 20);
    assert!(client.whole_client_message(&mut bytes).is_none());
    let small = SessionConfig {
        max_message_size: 19,
        ..SessionConfig::default()
    };
    let reader = Session::new(Role::Server, small).reader;
    let mut bytes = frame(0x82, 0x80 | 20, 20);
    assert!(reader.whole_client_message(&mut bytes).is_none());
}

#[test]
fn sixteen_bit_lengths_decode_as_the_general_path_decodes_them() {
    let tail = "é".repeat(600).into_bytes();
    for config in configs() {
        for b0 in 0..=u8::MAX {
            // Lengths a 7-bit field could carry too (not minimal, accepted either way),
            // around the small configuration's limit, and one past the tail.
            for len in [0u16, 1, 9, 10, 11, 125, 126, 127, 1000, 1001, 1200, 1201] {
                let mut body = tail.clone();
                apply_mask(&mut body, KEY, 0);
                let header = [&[b0, 0x80 | 126][..], &len.to_be_bytes(), &KEY].concat();
                let bytes = [&header[..], &body].concat();
                let general = server_reads(config, &bytes, &[3]);
                let whole = server_reads(config, &bytes, &[]);
                assert_eq!(whole, general, "header {b0:02x}, length {len}");
            }
        }
    }
}
