//! The frame and message decoder, as server and as client, with and without
//! permessage-deflate, on arbitrary bytes fed in arbitrary pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws::proto::deflate::DeflateParams;
use ringws::proto::{Event, Role, Session, SessionConfig, State};

/// Keeps every run's memory small; the limit itself is under test too.
const MAX_MESSAGE_SIZE: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let deflate = (flags & 2 != 0).then_some(DeflateParams {
        server_no_context_takeover: flags & 4 != 0,
        client_no_context_takeover: flags & 8 != 0,
        server_max_window_bits: 15,
        client_max_window_bits: if flags & 16 != 0 { 9 } else { 15 },
    });
    let piece = usize::from(flags >> 5) * 97 + 1;
    let mut session = Session::new(
        role,
        SessionConfig {
            max_message_size: MAX_MESSAGE_SIZE,
            deflate,
        },
    );
    let mut input = input.to_vec();
    let mut out = Vec::new();
    for chunk in input.chunks_mut(piece) {
        let mut at = 0;
        while at < chunk.len() {
            match session.read(&mut chunk[at..], &mut out) {
                Ok((used, event)) => {
                    match &event {
                        // The decoder hands text out unchecked after validating it itself.
                        Some(Event::Text(text)) => {
                            assert!(std::str::from_utf8(text.as_bytes()).is_ok());
                            assert!(text.len() <= MAX_MESSAGE_SIZE);
                        }
                        Some(Event::Binary(payload)) => assert!(payload.len() <= MAX_MESSAGE_SIZE),
                        _ => {}
                    }
                    if used == 0 && event.is_none() {
                        panic!("no progress on {} bytes", chunk.len() - at);
                    }
                    at += used;
                }
                Err(error) => {
                    assert!(error.code.is_valid_on_wire());
                    assert_eq!(session.state(), State::Closed);
                    return;
                }
            }
        }
    }
});
