//! Bursts of messages in one write against the real `ringws serve`: the replies to one read
//! are queued together, so order, pongs between messages and messages larger than a receive
//! buffer or the frame arena's room must come back exactly as sent.

mod support;

use std::io::Write;
use std::thread;

use ringws::proto::OpCode;
use support::{Server, expect_close, frame, open, read_frame, send};

/// A payload of `len` bytes that differs with `seed` at every offset.
fn payload(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(2_654_435_761)) as u8)
        .collect()
}

/// Writes `frames` in one go from another thread (a burst larger than the socket buffers
/// would otherwise block against the echoes nobody reads yet), then reads `expected` back
/// in order and checks the close handshake that ends it.
fn burst_and_check(path: &str, frames: Vec<u8>, expected: Vec<(OpCode, Vec<u8>)>) {
    let server = Server::start(&[]);
    let mut stream = open(server.addr, path);
    let mut writer = stream.try_clone().expect("clone the socket");
    let sender = thread::spawn(move || {
        writer.write_all(&frames).expect("send the burst");
        send(&mut writer, OpCode::Close, true, &1000u16.to_be_bytes());
    });
    for (index, (opcode, body)) in expected.iter().enumerate() {
        let (header, got) = read_frame(&mut stream);
        assert_eq!(header.opcode, *opcode, "frame {index}");
        assert!(header.fin, "frame {index} is whole");
        assert_eq!(got.len(), body.len(), "frame {index}: length");
        assert!(got == *body, "frame {index}: payload differs");
    }
    expect_close(&mut stream, 1000);
    sender.join().expect("the sender thread");
}

#[test]
fn a_burst_of_small_messages_and_pings_comes_back_in_order() {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..2_000u32 {
        let body = payload(i, (i % 40) as usize);
        if i % 97 == 0 {
            wire.extend(frame(OpCode::Ping, true, &body));
            expected.push((OpCode::Pong, body));
        } else if i % 3 == 0 {
            let text = format!("message {i}").into_bytes();
            wire.extend(frame(OpCode::Text, true, &text));
            expected.push((OpCode::Text, text));
        } else {
            wire.extend(frame(OpCode::Binary, true, &body));
            expected.push((OpCode::Binary, body));
        }
    }
    burst_and_check("/small", wire, expected);
}

#[test]
fn a_burst_of_large_messages_comes_back_whole_and_in_order() {
    // Sizes around the receive buffer (64 KiB) and the arena's block (256 KiB), so messages
    // span buffers and the replies of one read outgrow the arena's room.
    let sizes = [
        16 << 10,
        65_530,
        70_000,
        1,
        200_000,
        300_000,
        16 << 10,
        125,
        65_536,
    ];
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for (i, &len) in sizes.iter().cycle().take(40).enumerate() {
        let body = payload(i as u32, len);
        wire.extend(frame(OpCode::Binary, true, &body));
        expected.push((OpCode::Binary, body));
    }
    burst_and_check("/large", wire, expected);
}
