//! One echo connection: the opening handshake (blocking), then masked binary frames out and
//! the server's frames in, each echo checked against what this connection sent.
//!
//! A message is `connection u32 · sequence u32 · filler`, the filler a function of the
//! sequence, so every byte of an echo can be checked. Echoes of one connection come back in
//! order: an echo whose sequence is not the next expected counts as unexpected.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// The RFC 6455 example key and its accept value (RFC 6455 §1.3): the server's answer is
/// checked without a SHA-1 of our own.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The smallest message: connection and sequence.
pub const MIN_SIZE: usize = 8;

#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub sent: u64,
    /// Echoes identical to what was sent, in order.
    pub intact: u64,
    /// Echoes with a wrong byte or length.
    pub corrupted: u64,
    /// Echoes of a sequence already passed (duplicated or reordered).
    pub unexpected: u64,
    /// Reads and writes that moved bytes: messages per call tell how well they batch.
    pub reads: u64,
    pub writes: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.sent += other.sent;
        self.intact += other.intact;
        self.corrupted += other.corrupted;
        self.unexpected += other.unexpected;
        self.reads += other.reads;
        self.writes += other.writes;
    }

    pub fn arrived(&self) -> u64 {
        self.intact + self.corrupted + self.unexpected
    }
}

pub struct Conn {
    pub stream: TcpStream,
    id: u32,
    /// Whose messages arrive here: this connection's own (echo) or the publisher's.
    sender: u32,
    size: usize,
    next_sequence: u32,
    expected: u32,
    /// The start of a frame split across reads.
    partial: Vec<u8>,
    /// Frames not yet accepted by the kernel, from `written` on.
    outbox: Vec<u8>,
    written: usize,
    rng: u64,
    pub counts: Counts,
    /// The server closed or the socket failed.
    pub ended: bool,
}

impl Conn {
    /// Connects, upgrades, and leaves the socket nonblocking. Messages from `sender` are
    /// expected back.
    pub fn open(
        addr: SocketAddr,
        host: &str,
        path: &str,
        (id, sender): (u32, u32),
        size: usize,
    ) -> io::Result<Conn> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        let mut response = Vec::new();
        let mut byte = [0u8; 1];
        // Byte by byte, so nothing after the response is read here: the server sends
        // nothing unasked, but this keeps the handshake exact regardless.
        while !response.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte)? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed in the handshake",
                ));
            }
            response.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&response);
        if !text.starts_with("HTTP/1.1 101") || !text.contains(ACCEPT) {
            return Err(io::Error::other(format!("not upgraded: {text}")));
        }
        stream.set_nonblocking(true)?;
        Ok(Conn {
            stream,
            id,
            sender,
            size: size.max(MIN_SIZE),
            next_sequence: 0,
            expected: 0,
            partial: Vec::new(),
            outbox: Vec::with_capacity(4096),
            written: 0,
            rng: u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            counts: Counts::default(),
            ended: false,
        })
    }

    pub fn in_flight(&self) -> u64 {
        self.counts.sent.saturating_sub(self.counts.arrived())
    }

    /// Messages from the sender received so far, intact or not, in sequence.
    pub fn expected(&self) -> u32 {
        self.expected
    }

    /// Appends `count` new messages to the outbox.
    pub fn queue(&mut self, count: u32) {
        for _ in 0..count {
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            self.counts.sent += 1;
            let key = self.mask_key();
            let len = self.size;
            self.outbox.push(0x82);
            match len {
                0..=125 => self.outbox.push(0x80 | len as u8),
                126..=0xFFFF => {
                    self.outbox.push(0x80 | 126);
                    self.outbox.extend_from_slice(&(len as u16).to_be_bytes());
                }
                _ => {
                    self.outbox.push(0x80 | 127);
                    self.outbox.extend_from_slice(&(len as u64).to_be_bytes());
                }
            }
            self.outbox.extend_from_slice(&key);
            let start = self.outbox.len();
            self.outbox.extend_from_slice(&self.id.to_le_bytes());
            self.outbox.extend_from_slice(&sequence.to_le_bytes());
            self.outbox
                .extend((MIN_SIZE..len).map(|i| filler(sequence, i)));
            for (i, byte) in self.outbox[start..].iter_mut().enumerate() {
                *byte ^= key[i & 3];
            }
        }
    }

    fn mask_key(&mut self) -> [u8; 4] {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_ne_bytes()
    }

    /// One read: checks every whole echo in it and returns how many arrived.
    pub fn read(&mut self, scratch: &mut [u8]) -> u32 {
        let n = match self.stream.read(scratch) {
            Ok(0) => {
                self.ended = true;
                return 0;
            }
            Ok(n) => {
                self.counts.reads += 1;
                n
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                return 0;
            }
            Err(_) => {
                self.ended = true;
                return 0;
            }
        };
        if self.partial.is_empty() {
            let used = self.frames(&scratch[..n]);
            let arrived = used.1;
            self.partial.extend_from_slice(&scratch[used.0..n]);
            arrived
        } else {
            self.partial.extend_from_slice(&scratch[..n]);
            let input = std::mem::take(&mut self.partial);
            let (used, arrived) = self.frames(&input);
            self.partial = input;
            self.partial.drain(..used);
            arrived
        }
    }

    /// Handles the whole frames at the front of `input`: (bytes used, echoes).
    fn frames(&mut self, input: &[u8]) -> (usize, u32) {
        let (mut at, mut arrived) = (0, 0);
        while let Some((opcode, payload, len)) = frame(&input[at..]) {
            at += len;
            match opcode {
                0x2 => {
                    self.check(payload);
                    arrived += 1;
                }
                0x9 => self.pong(payload),
                0x8 => self.ended = true,
                _ => self.counts.unexpected += 1,
            }
        }
        (at, arrived)
    }

    fn check(&mut self, payload: &[u8]) {
        let word = |at: usize| {
            payload
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (Some(id), Some(sequence)) = (word(0), word(4)) else {
            self.counts.corrupted += 1;
            return;
        };
        if id != self.sender {
            self.counts.corrupted += 1;
            return;
        }
        if sequence < self.expected {
            // Already passed: a duplicate or a late one.
            self.counts.unexpected += 1;
            return;
        }
        // Skipped sequences never come (an echo keeps order): they stay lost.
        self.expected = sequence + 1;
        let intact = payload.len() == self.size
            && payload[MIN_SIZE..]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == filler(sequence, MIN_SIZE + i));
        if intact {
            self.counts.intact += 1;
        } else {
            self.counts.corrupted += 1;
        }
    }

    fn pong(&mut self, payload: &[u8]) {
        let key = self.mask_key();
        self.outbox.push(0x8A);
        self.outbox.push(0x80 | payload.len().min(125) as u8);
        self.outbox.extend_from_slice(&key);
        self.outbox.extend(
            payload
                .iter()
                .take(125)
                .enumerate()
                .map(|(i, b)| b ^ key[i & 3]),
        );
    }

    /// Writes what the outbox holds; true when some is left (wait until writable).
    pub fn flush(&mut self) -> bool {
        while self.written < self.outbox.len() {
            match self.stream.write(&self.outbox[self.written..]) {
                Ok(n) => {
                    self.counts.writes += 1;
                    self.written += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.ended = true;
                    return false;
                }
            }
        }
        self.outbox.clear();
        self.written = 0;
        false
    }
}

fn filler(sequence: u32, index: usize) -> u8 {
    (sequence as usize).wrapping_mul(31).wrapping_add(index) as u8
}

/// The server frame at the front of `input` (unmasked, FIN set, as an echo sends):
/// (opcode, payload, frame length), or `None` until it is whole.
fn frame(input: &[u8]) -> Option<(u8, &[u8], usize)> {
    let [b0, b1, ..] = *input else { return None };
    let (len, header) = match b1 & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes(input.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(input.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let end = header + usize::try_from(len).ok()?;
    let payload = input.get(header..end)?;
    Some((b0 & 0x0F, payload, end))
}
