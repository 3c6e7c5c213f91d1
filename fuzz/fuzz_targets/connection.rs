//! The server's connection state machine: handshake, frames, deadlines and queue events
//! interleaved in any order, driven in memory on a virtual clock.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringws::proto::deflate::DeflateConfig;
use ringws::proto::{CloseCode, OpCode};
use ringws::server::Message;
use ringws::server::config::ServerConfig;
use ringws::server::echo::Echo;
use ringws::server::testing::Harness;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut ops)) = data.split_first() else {
        return;
    };
    let mut config = ServerConfig::default();
    config.max_message_size = 64 << 10;
    config.max_queued_bytes = 4 << 10;
    config.handshake_timeout = Duration::from_secs(1);
    config.idle_timeout = Duration::from_secs(u64::from(flags & 3));
    config.close_timeout = Duration::from_secs(1);
    if flags & 4 != 0 {
        config.deflate = Some(DeflateConfig {
            no_context_takeover: flags & 8 != 0,
            ..DeflateConfig::default()
        });
    }
    let mut h = Harness::new(config, Echo);
    if flags & 16 != 0 {
        h.upgrade("/", "Sec-WebSocket-Extensions: permessage-deflate\r\n");
    }
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let arg = usize::from(op >> 3);
        match op & 7 {
            0 => {
                // Raw bytes from the client, in one read.
                let take = (arg + 1).min(ops.len());
                let (bytes, rest) = ops.split_at(take);
                h.receive(bytes);
                ops = rest;
            }
            1 => h.advance(Duration::from_millis(arg as u64 * 97)),
            2 => {
                h.write_out(arg * 131);
            }
            3 => h.deliver("t", Message::Binary(&[0x5a; 300][..arg * 9])),
            4 => {
                let opcode = [
                    OpCode::Text,
                    OpCode::Binary,
                    OpCode::Continuation,
                    OpCode::Ping,
                ][arg & 3];
                let take = (arg * 3).min(ops.len());
                let (payload, rest) = ops.split_at(take);
                h.send_frame(opcode, arg & 4 == 0, payload);
                ops = rest;
            }
            5 => h.server_close(CloseCode::GOING_AWAY, "shutting down"),
            6 => h.shed(),
            _ => {
                h.seen();
            }
        }
    }
    h.seen();
    h.closed();
    assert_eq!(
        h.incomplete_bytes(),
        0,
        "a closed connection holds no budget"
    );
});
