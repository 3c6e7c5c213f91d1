//! What every virtual client says and hears: masked frames out, each with a fresh masking
//! key; frames in, decoded until the server's close.

use std::cell::Cell;

use ringws::proto::frame::{FrameHead, write_frame};
use ringws::proto::{CloseCode, Event, OpCode, Role, Session, SessionConfig};

use crate::link::Link;
use crate::run::Clock;

/// Masking keys for the client's frames: xorshift, seeded per connection. RFC 6455 wants them
/// unpredictable to intermediaries, not secret.
pub struct MaskSource(u64);

impl MaskSource {
    pub fn new(connection: u32) -> Self {
        Self(u64::from(connection).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> [u8; 4] {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 as u32).to_ne_bytes()
    }
}

impl MaskSource {
    /// Appends a masked binary message.
    pub fn binary(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        write_frame(
            out,
            FrameHead::whole(OpCode::Binary),
            payload,
            Some(self.next()),
        );
    }

    /// Appends a masked close frame with 1000.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        let code = u16::from(CloseCode::NORMAL).to_be_bytes();
        write_frame(
            out,
            FrameHead::whole(OpCode::Close),
            &code,
            Some(self.next()),
        );
    }
}

/// What [`read_until_close`] hands its caller.
pub enum Heard<'a> {
    /// A binary message, with the moment its read completed.
    Binary(&'a [u8], u64),
    /// A text message: never sent by these clients, so a corrupted one.
    Text,
    /// Everything one read brought has been handled; `replies` holds the session's answers
    /// (pongs) to send, possibly none.
    Done { replies: Vec<u8> },
    /// The server's close arrived; `replies` holds what the session answers, if anything.
    Closed { replies: Vec<u8> },
}

/// Decodes frames from `pending` and then from the link, until the server's close or the
/// end of the connection. `Ok` when that end was expected (`closing` was set), otherwise the
/// error that ended it.
pub async fn read_until_close(
    link: &Link,
    mut pending: Vec<u8>,
    clock: Clock,
    closing: &Cell<bool>,
    mut heard: impl FnMut(Heard<'_>),
) -> Result<(), String> {
    let mut session = Session::new(Role::Client, SessionConfig::default());
    let mut replies = Vec::new();
    let mut buf = Vec::with_capacity(64 << 10);
    loop {
        // One clock read serves the whole read: its messages all arrived at once.
        let now_ns = clock.now_ns();
        let mut at = 0;
        while at < pending.len() {
            let (used, event) = session
                .read(&mut pending[at..], &mut replies)
                .map_err(|e| format!("protocol error from the server: {}", e.reason))?;
            at += used;
            match event {
                Some(Event::Binary(message)) => heard(Heard::Binary(message, now_ns)),
                Some(Event::Text(_)) => heard(Heard::Text),
                Some(Event::Close(frame)) => {
                    heard(Heard::Closed {
                        replies: std::mem::take(&mut replies),
                    });
                    if closing.get() {
                        return Ok(());
                    }
                    let code = frame.map_or(CloseCode::NO_STATUS, |f| f.code);
                    return Err(format!("the server closed with {}", u16::from(code)));
                }
                Some(Event::Ping(_) | Event::Pong(_)) | None => {}
            }
        }
        pending.clear();
        heard(Heard::Done {
            replies: std::mem::take(&mut replies),
        });
        buf.clear();
        let (result, read) = link.read(buf).await;
        buf = read;
        match result {
            Ok(0) if closing.get() => return Ok(()),
            Ok(0) => return Err("the server closed the connection".to_owned()),
            Ok(_) => pending.extend_from_slice(&buf),
            Err(error) => return Err(format!("read: {error}")),
        }
    }
}
