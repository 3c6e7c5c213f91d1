//! Bursts of messages in one write against the real `ringws serve`: the replies to one read
//! are queued together, so order, pongs between messages and messages larger than a receive
//! buffer or the frame arena's room must come back exactly as sent.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
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
    burst_and_check_on(&server, path, frames, expected);
}

fn burst_and_check_on(
    server: &Server,
    path: &str,
    frames: Vec<u8>,
    expected: Vec<(OpCode, Vec<u8>)>,
) {
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

/// A burst mixing messages sent from the receive buffer they arrived in (4 KiB and up) with
/// small ones, pings and messages that span buffers, so lent payloads and the frames written
/// around them must keep their order.
fn mixed_burst(seed: u32) -> (Vec<u8>, Vec<(OpCode, Vec<u8>)>) {
    let sizes = [
        4096,
        20,
        16 << 10,
        4095,
        9_000,
        1,
        70_000,
        16 << 10,
        125,
        40_000,
    ];
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for (i, &len) in sizes.iter().cycle().take(30).enumerate() {
        let body = payload(seed.wrapping_mul(1_000).wrapping_add(i as u32), len);
        if i % 11 == 5 {
            wire.extend(frame(OpCode::Ping, true, &body[..body.len().min(125)]));
            expected.push((OpCode::Pong, body[..body.len().min(125)].to_vec()));
        }
        wire.extend(frame(OpCode::Binary, true, &body));
        expected.push((OpCode::Binary, body));
    }
    (wire, expected)
}

#[test]
fn large_echoes_over_many_connections_come_back_intact_when_receive_buffers_run_short() {
    // Eight receive buffers for 24 connections bursting at once: at most four can be lent,
    // so some echoes are sent from the receive buffer and the rest are copied, and the
    // kernel runs out of buffers to receive into now and then.
    let server = Server::start(&["--recv-buffers", "8"]);
    thread::scope(|scope| {
        for seed in 0..24u32 {
            let server = &server;
            scope.spawn(move || {
                let (wire, expected) = mixed_burst(seed);
                burst_and_check_on(server, "/many", wire, expected);
            });
        }
    });
}

/// Sets SO_LINGER 0, so closing `stream` resets the connection.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor `stream` owns, with a pointer to a local of the
    // size given.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "SO_LINGER");
}

#[test]
fn connections_reset_while_their_echoes_wait_leave_the_server_serving() {
    // Each client sends 4 MiB of 16 KiB messages and reads none of the echoes, so the
    // server's queue fills with payloads that may be lent from its few receive buffers;
    // then the client resets the connection. Buffers lent to a queue that is dropped must
    // come back: after many such connections, bursts still echo intact.
    let server = Server::start(&["--recv-buffers", "8", "--max-queued", "16MiB"]);
    let body = payload(7, 16 << 10);
    let burst: Vec<u8> = (0..256)
        .flat_map(|_| frame(OpCode::Binary, true, &body))
        .collect();
    for _ in 0..12 {
        let stream = open(server.addr, "/reset");
        reset_on_close(&stream);
        let mut writer = stream.try_clone().expect("clone the socket");
        writer
            .set_write_timeout(Some(std::time::Duration::from_millis(500)))
            .expect("set a write timeout");
        // The write stops when both sides' buffers are full; either way, reset now.
        let _ = writer.write_all(&burst);
        drop(writer);
        drop(stream);
    }
    for seed in 0..3 {
        let (wire, expected) = mixed_burst(seed);
        burst_and_check_on(&server, "/after", wire, expected);
    }
}

#[test]
fn a_burst_beyond_the_receive_buffers_is_echoed_whole_after_a_quiet_spell() {
    // A spell of one client's round trips reuses the same warm buffers, which the shard
    // posts where the kernel takes its next ones. Then 96 connections burst at once into 16
    // buffers, many lent to echoes still being sent: receives find none posted and start
    // again, buffers come back in every order, and every echo must come back intact.
    let (logs, lines) = std::sync::mpsc::channel();
    let server = Server::start_logging(&["--recv-buffers", "16"], logs);
    let mut quiet = open(server.addr, "/quiet");
    for i in 0..400 {
        let body = payload(i, 20);
        send(&mut quiet, OpCode::Binary, true, &body);
        assert_eq!(read_frame(&mut quiet).1, body, "round trip {i}");
    }
    let streams: Vec<TcpStream> = (0..96).map(|_| open(server.addr, "/burst")).collect();
    let start = std::sync::Barrier::new(streams.len());
    thread::scope(|scope| {
        for (seed, mut stream) in streams.into_iter().enumerate() {
            let start = &start;
            scope.spawn(move || {
                let (wire, expected) = mixed_burst(seed as u32);
                let mut writer = stream.try_clone().expect("clone the socket");
                start.wait();
                let sender = thread::spawn(move || writer.write_all(&wire).expect("the burst"));
                for (index, (opcode, body)) in expected.iter().enumerate() {
                    let (header, got) = read_frame(&mut stream);
                    assert_eq!(header.opcode, *opcode, "connection {seed}, frame {index}");
                    assert!(
                        got == *body,
                        "connection {seed}, frame {index}: payload differs"
                    );
                }
                sender.join().expect("the sender thread");
            });
        }
    });
    let dry = support::metrics(server.addr)["ringws_receives_ran_dry_total"];
    assert!(dry > 0, "the burst never ran the receive buffers short");
    send(&mut quiet, OpCode::Binary, true, b"still served");
    assert_eq!(read_frame(&mut quiet).1, b"still served");
    // The count of buffers the kernel took held throughout (a debug build also checks it
    // against the kernel's own after every turn).
    let out_of_order: Vec<String> = lines
        .try_iter()
        .filter(|line| line.contains("out of the order posted"))
        .collect();
    assert!(out_of_order.is_empty(), "{out_of_order:?}");
}
