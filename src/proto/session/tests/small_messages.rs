//! The client's two-byte-header path for small whole messages decides nothing on its own:
//! every stream gives the same events, errors and replies whether that path takes its first
//! frame or the general decoder does.

use super::*;

/// Feeds `bytes` to a client session in pieces ending at `cuts`, with seeded masking keys
/// so the replies it writes compare byte for byte.
fn client_reads(config: SessionConfig, bytes: &[u8], cuts: &[usize]) -> (Vec<Seen>, Vec<u8>) {
    let mut session = Session::new(Role::Client, config).with_mask_keys(MaskKeys::seeded(9));
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
