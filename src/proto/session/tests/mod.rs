//! Session tests: the RFC's answers to every violation, and properties that hold for any
//! valid stream however it is split.

use super::*;
use crate::proto::deflate::{Compressor, DeflateConfig, DeflateParams, Direction};
use crate::proto::frame::{FrameHead, write_frame};

/// An event with its payload owned, or the error that ended the stream.
#[derive(Clone, PartialEq, Eq)]
enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Failed(u16),
}

/// Payloads print as their length and a digest: proptest failures stay readable.
impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digest = |b: &[u8]| {
            b.iter()
                .fold(0u32, |h, &x| h.wrapping_mul(31).wrapping_add(u32::from(x)))
        };
        match self {
            Seen::Text(t) => write!(f, "Text(len {}, #{:08x})", t.len(), digest(t.as_bytes())),
            Seen::Binary(b) => write!(f, "Binary(len {}, #{:08x})", b.len(), digest(b)),
            Seen::Ping(p) => write!(f, "Ping({p:?})"),
            Seen::Pong(p) => write!(f, "Pong({p:?})"),
            Seen::Close(c) => write!(f, "Close({c:?})"),
            Seen::Failed(code) => write!(f, "Failed({code})"),
        }
    }
}

impl Seen {
    fn from_event(event: Event<'_>) -> Self {
        match event {
            Event::Text(t) => Seen::Text(t.to_owned()),
            Event::Binary(b) => Seen::Binary(b.to_vec()),
            Event::Ping(p) => Seen::Ping(p.to_vec()),
            Event::Pong(p) => Seen::Pong(p.to_vec()),
            Event::Close(c) => Seen::Close(c.map(|c| (c.code.as_u16(), c.reason.to_owned()))),
        }
    }
}

/// Feeds `bytes` to a fresh session in pieces ending at `cuts`; returns events and output.
fn feed(role: Role, config: SessionConfig, bytes: &[u8], cuts: &[usize]) -> (Vec<Seen>, Vec<u8>) {
    let mut session = Session::new(role, config);
    let mut data = bytes.to_vec();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < data.len()).collect();
    bounds.sort_unstable();
    bounds.dedup();
    bounds.push(data.len());
    let mut start = 0;
    for end in bounds {
        let mut piece = &mut data[start..end];
        while !piece.is_empty() {
            match session.read(piece, &mut out) {
                Ok((used, event)) => {
                    if let Some(event) = event {
                        seen.push(Seen::from_event(event));
                    }
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

fn server_reads(bytes: &[u8]) -> Vec<Seen> {
    feed(Role::Server, SessionConfig::default(), bytes, &[]).0
}

/// A masked (client) frame.
fn cframe(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(
        &mut out,
        FrameHead {
            opcode,
            fin,
            compressed: false,
        },
        payload,
        Some([0x37, 0xfa, 0x21, 0x3d]),
    );
    out
}

/// A server session that has read the first `at` bytes of `frame`, all taken and no event
/// yet, and what it wrote.
fn server_read_first(frame: &[u8], at: usize) -> (Session, Vec<u8>) {
    let mut session = Session::new(Role::Server, SessionConfig::default());
    let mut out = Vec::new();
    let mut first = frame[..at].to_vec();
    let (used, event) = session.read(&mut first, &mut out).unwrap();
    assert_eq!((used, event), (at, None));
    (session, out)
}

fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

#[test]
fn single_frames() {
    let stream = concat(&[
        cframe(OpCode::Text, true, b"hello"),
        cframe(OpCode::Binary, true, &[0, 255, 7]),
    ]);
    assert_eq!(
        server_reads(&stream),
        vec![Seen::Text("hello".into()), Seen::Binary(vec![0, 255, 7])]
    );
}

#[test]
fn fragmented_with_interleaved_ping() {
    let stream = concat(&[
        cframe(OpCode::Text, false, "frag".as_bytes()),
        cframe(OpCode::Ping, true, b"p"),
        cframe(OpCode::Continuation, false, "men".as_bytes()),
        cframe(OpCode::Continuation, true, "ted ✓".as_bytes()),
    ]);
    let (seen, out) = feed(Role::Server, SessionConfig::default(), &stream, &[]);
    assert_eq!(
        seen,
        vec![Seen::Ping(b"p".to_vec()), Seen::Text("fragmented ✓".into())]
    );
    assert_eq!(
        out,
        [0x8A, 0x01, b'p'],
        "the pong echoes the ping's payload, unmasked"
    );
}

#[test]
fn empty_messages_and_fragments() {
    let stream = concat(&[
        cframe(OpCode::Text, true, b""),
        cframe(OpCode::Binary, false, b""),
        cframe(OpCode::Continuation, false, b""),
        cframe(OpCode::Continuation, true, b""),
    ]);
    assert_eq!(
        server_reads(&stream),
        vec![Seen::Text(String::new()), Seen::Binary(vec![])]
    );
}

#[test]
fn protocol_violations_fail_with_1002() {
    let mut unmasked = Vec::new();
    write_frame(&mut unmasked, FrameHead::whole(OpCode::Text), b"x", None);
    let mut rsv1 = cframe(OpCode::Text, true, b"x");
    rsv1[0] |= 0x40;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked from a client", unmasked),
        ("rsv1 without extension", rsv1),
        ("reserved opcode", vec![0x83, 0x80, 0, 0, 0, 0]),
        (
            "continuation first",
            cframe(OpCode::Continuation, true, b"x"),
        ),
        (
            "text inside a fragmented message",
            concat(&[
                cframe(OpCode::Text, false, b"a"),
                cframe(OpCode::Text, true, b"b"),
            ]),
        ),
        ("close of one byte", cframe(OpCode::Close, true, &[3])),
        (
            "close code 1005",
            cframe(OpCode::Close, true, &1005u16.to_be_bytes()),
        ),
        (
            "close code 999",
            cframe(OpCode::Close, true, &999u16.to_be_bytes()),
        ),
    ];
    for (name, stream) in cases {
        let (seen, out) = feed(Role::Server, SessionConfig::default(), &stream, &[]);
        assert_eq!(seen.last(), Some(&Seen::Failed(1002)), "{name}");
        assert_eq!(
            &out[..4],
            &[0x88, out[1], 0x03, 0xEA],
            "{name}: close frame with 1002"
        );
    }
}

#[test]
fn client_rejects_masked_frames() {
    let (seen, out) = feed(
        Role::Client,
        SessionConfig::default(),
        &cframe(OpCode::Text, true, b"x"),
        &[],
    );
    assert_eq!(seen, vec![Seen::Failed(1002)]);
    assert_eq!(out[0], 0x88);
    assert_ne!(out[1] & 0x80, 0, "a client's close frame is masked");
}

#[test]
fn invalid_utf8_fails_fast_inside_a_fragmented_message() {
    let first = cframe(
        OpCode::Text,
        false,
        b"ok \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
    );
    // No final fragment: the error must come from the first fragment alone.
    let (seen, out) = feed(Role::Server, SessionConfig::default(), &first, &[]);
    assert_eq!(seen, vec![Seen::Failed(1007)]);
    assert_eq!(&out[2..4], &1007u16.to_be_bytes());
    // Likewise within one frame whose payload arrives over several reads.
    let whole = cframe(OpCode::Text, true, b"abc\xf4\x90\x80\x80xyz");
    let header = whole.len() - 10;
    let (seen, _) = feed(
        Role::Server,
        SessionConfig::default(),
        &whole[..header + 5],
        &[header + 1],
    );
    assert_eq!(seen, vec![Seen::Failed(1007)]);
}

#[test]
fn text_ending_mid_sequence_is_invalid() {
    let stream = concat(&[
        cframe(OpCode::Text, false, b"a\xe2\x82"),
        cframe(OpCode::Continuation, true, b""),
    ]);
    assert_eq!(server_reads(&stream), vec![Seen::Failed(1007)]);
}

#[test]
fn message_size_is_checked_against_the_announced_length() {
    let config = SessionConfig {
        max_message_size: 1000,
        ..SessionConfig::default()
    };
    // Only the header of a 2000-byte frame: the error comes before any payload.
    let frame = cframe(OpCode::Binary, true, &[0u8; 2000]);
    let (seen, out) = feed(Role::Server, config, &frame[..8], &[]);
    assert_eq!(seen, vec![Seen::Failed(1009)]);
    assert_eq!(&out[2..4], &1009u16.to_be_bytes());
    // Fragments count together.
    let stream = concat(&[
        cframe(OpCode::Binary, false, &[1; 600]),
        cframe(OpCode::Continuation, true, &[2; 600]),
    ]);
    assert_eq!(
        feed(Role::Server, config, &stream, &[]).0,
        vec![Seen::Failed(1009)]
    );
    // Exactly the limit is fine.
    let stream = concat(&[
        cframe(OpCode::Binary, false, &[1; 500]),
        cframe(OpCode::Continuation, true, &[2; 500]),
    ]);
    assert!(
        matches!(feed(Role::Server, config, &stream, &[]).0[..], [Seen::Binary(ref b)] if b.len() == 1000)
    );
}

#[test]
fn many_tiny_fragments_are_not_capped() {
    // 65,536 fragments of 64 bytes: only the size limit applies, never a fragment count.
    let mut stream = cframe(OpCode::Binary, false, &[7; 64]);
    for _ in 1..65_535 {
        stream.extend(cframe(OpCode::Continuation, false, &[7; 64]));
    }
    stream.extend(cframe(OpCode::Continuation, true, &[7; 64]));
    let seen = server_reads(&stream);
    assert!(matches!(&seen[..], [Seen::Binary(b)] if b.len() == 4 << 20));
}

#[test]
fn close_handshake_initiated_by_peer() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice("bye ✓".as_bytes());
    let stream = concat(&[
        cframe(OpCode::Close, true, &payload),
        cframe(OpCode::Text, true, b"ignored"),
    ]);
    let mut session = Session::new(Role::Server, SessionConfig::default());
    let mut data = stream.clone();
    let mut out = Vec::new();
    let (used, event) = session.read(&mut data, &mut out).unwrap();
    assert_eq!(
        event,
        Some(Event::Close(Some(CloseFrame {
            code: CloseCode::NORMAL,
            reason: "bye ✓"
        })))
    );
    assert_eq!(out, [0x88, 0x02, 0x03, 0xE8], "the reply echoes the code");
    assert_eq!(session.state(), State::Closed);
    // Anything after the close is discarded, and nothing can be sent.
    let (rest, event) = session.read(&mut data[used..], &mut out).unwrap();
    assert_eq!((rest, event), (stream.len() - used, None));
    assert_eq!(
        session.writer.send_text("late", &mut out),
        Err(SendError::Closed)
    );
}

#[test]
fn close_handshake_initiated_here() {
    let mut session = Session::new(Role::Server, SessionConfig::default());
    let mut out = Vec::new();
    session
        .writer
        .close(CloseCode::GOING_AWAY, "shutting down", &mut out)
        .unwrap();
    assert_eq!(session.state(), State::CloseSent);
    assert_eq!(
        session.writer.close(CloseCode::NORMAL, "", &mut out),
        Err(SendError::Closed)
    );
    // A ping that arrives now gets no pong (nothing may follow our close).
    let mut stream = concat(&[
        cframe(OpCode::Ping, true, b"x"),
        cframe(OpCode::Close, true, &[]),
    ]);
    let sent = out.len();
    let mut rest = &mut stream[..];
    let mut seen = Vec::new();
    while !rest.is_empty() {
        let (used, event) = session.read(rest, &mut out).unwrap();
        seen.extend(event.map(Seen::from_event));
        rest = &mut rest[used..];
    }
    assert_eq!(seen, vec![Seen::Ping(b"x".to_vec()), Seen::Close(None)]);
    assert_eq!(out.len(), sent, "no pong and no second close frame");
    assert_eq!(session.state(), State::Closed);
}

#[test]
fn close_reason_must_be_utf8() {
    let stream = cframe(
        OpCode::Close,
        true,
        b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
    );
    assert_eq!(server_reads(&stream), vec![Seen::Failed(1007)]);
}

#[test]
fn sending_checks_its_arguments() {
    let mut session = Session::new(Role::Client, SessionConfig::default());
    let mut out = Vec::new();
    assert_eq!(
        session.writer.ping(&[0; 126], &mut out),
        Err(SendError::ControlTooLong)
    );
    assert_eq!(
        session.writer.close(CloseCode::ABNORMAL, "", &mut out),
        Err(SendError::InvalidCloseCode)
    );
    assert!(out.is_empty());
}

#[test]
fn idle_session_is_small_and_frees_message_buffers() {
    assert!(
        std::mem::size_of::<Session>() <= 56,
        "{}",
        std::mem::size_of::<Session>()
    );
    let stream = concat(&[
        cframe(OpCode::Binary, false, &[1; 100]),
        cframe(OpCode::Continuation, true, &[2; 100]),
    ]);
    let mut session = Session::new(Role::Server, SessionConfig::default());
    let mut data = stream;
    let mut out = Vec::new();
    let mut rest = &mut data[..];
    while !rest.is_empty() {
        let (used, _) = session.read(rest, &mut out).unwrap();
        rest = &mut rest[used..];
    }
    session.read(&mut [], &mut out).unwrap();
    assert!(
        session.reader.pieces.is_none(),
        "a delivered message leaves no buffers behind"
    );
}

#[test]
fn a_header_split_across_reads_is_held_only_until_it_is_whole() {
    let frame = cframe(OpCode::Binary, true, &[7; 300]);
    // Two bytes of an eight-byte header (a masked frame with a 16-bit length), then the rest.
    let (mut session, mut out) = server_read_first(&frame, 2);
    assert!(
        session.reader.pieces.is_some(),
        "the partial header is kept"
    );
    assert_eq!(session.reader.buffered_bytes(), 2);
    let mut rest = frame[2..].to_vec();
    let (_, event) = session.read(&mut rest, &mut out).unwrap();
    assert_eq!(event, Some(Event::Binary(&[7; 300][..])));
    session.read(&mut [], &mut out).unwrap();
    assert!(
        session.reader.pieces.is_none(),
        "nothing is held once the frame is read"
    );
}

#[test]
fn a_frame_split_across_reads_is_assembled_in_room_for_its_whole_length() {
    let payload: Vec<u8> = (0..16_384u32).map(|i| i as u8).collect();
    let frame = cframe(OpCode::Binary, true, &payload);
    let (mut session, mut out) = server_read_first(&frame, 5_000);
    assert_eq!(
        session.reader.held_bytes(),
        payload.len(),
        "room for the announced length, taken once"
    );
    let mut rest = frame[5_000..].to_vec();
    let (_, event) = session.read(&mut rest, &mut out).unwrap();
    assert_eq!(event, Some(Event::Binary(&payload[..])));
}

#[test]
fn an_assembled_message_is_shared_with_the_caller_and_one_read_whole_is_not() {
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let frame = cframe(OpCode::Binary, true, &payload);
    let mut session = Session::new(Role::Server, SessionConfig::default());
    let mut out = Vec::new();
    let (first, rest) = frame.split_at(3_000);
    let (mut first, mut rest) = (first.to_vec(), rest.to_vec());
    let mut shared = None;
    let (_, event) = session
        .reader
        .read_sharing(&mut first, &mut session.writer, &mut out, Some(&mut shared))
        .unwrap();
    assert_eq!((event, &shared), (None, &None));
    let (_, event) = session
        .reader
        .read_sharing(&mut rest, &mut session.writer, &mut out, Some(&mut shared))
        .unwrap();
    let Some(Event::Binary(delivered)) = event else {
        panic!("the message: {event:?}");
    };
    let shared = shared.expect("the assembled payload is shared");
    assert_eq!(delivered, &payload[..]);
    assert_eq!(
        (shared.as_ptr(), shared.len()),
        (delivered.as_ptr(), delivered.len()),
        "the same memory, not a copy"
    );
    session.read(&mut [], &mut out).unwrap();
    assert!(
        session.reader.pieces.is_none(),
        "the reader lets go of it; the caller's handle keeps it"
    );
    assert_eq!(&shared[..], &payload[..]);

    let mut whole = frame.clone();
    let mut shared = None;
    let (_, event) = session
        .reader
        .read_sharing(&mut whole, &mut session.writer, &mut out, Some(&mut shared))
        .unwrap();
    assert_eq!(event, Some(Event::Binary(&payload[..])));
    assert!(shared.is_none(), "read in place: nothing of the reader's");
}

#[test]
fn an_announced_length_alone_reserves_at_most_one_receive_buffer() {
    // A 1 MiB frame announced, and 100 bytes of it sent.
    let frame = cframe(OpCode::Binary, true, &vec![1; 1 << 20]);
    let (session, _) = server_read_first(&frame, 114);
    assert_eq!(session.reader.buffered_bytes(), 100);
    assert_eq!(session.reader.held_bytes(), 64 << 10);
}

mod deflate;
mod properties;
mod small_messages;
