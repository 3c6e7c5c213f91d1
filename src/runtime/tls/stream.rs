//! One TLS connection: the rustls state, and the bytes of a record still arriving.
//!
//! rustls' unbuffered connection keeps no buffers of its own: records are decrypted from
//! the buffer the kernel received them into, and what the handshake answers is encoded into
//! buffers handed straight to the send queue. Between records an idle connection holds the
//! rustls state alone: the carry buffer is freed whenever no record is half-received.

use bytes::Bytes;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

use super::{Secured, TlsAcceptor, TlsFailure};
use crate::runtime::send_queue::SendQueue;

/// The content type of a TLS handshake record: what the first byte of a client must be.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Bytes carried between receives at most: a handshake message (rustls takes up to 64 KiB)
/// spread over records, or one record of the largest size. More is a broken or hostile
/// client.
const MAX_CARRY: usize = (64 << 10) + (18 << 10);

/// What a record adds to its plaintext at most: header (5), explicit nonce (8, TLS 1.2),
/// tag (16), content type (1, TLS 1.3).
const RECORD_OVERHEAD: usize = 5 + 8 + 16 + 1;

/// The largest plaintext of one record.
const MAX_FRAGMENT: usize = 16 << 10;

/// The room first tried for a handshake flight; grown to what rustls asks when too small.
const ENCODE_ROOM: usize = 4 << 10;

/// Steps through rustls states per receive at most: a flight is a handful of records, so
/// this is only a guard against a state machine that never blocks.
const MAX_STEPS: usize = 4096;

type Traffic<'c> = rustls::unbuffered::WriteTraffic<'c, rustls::server::ServerConnectionData>;

pub(crate) struct TlsStream {
    conn: UnbufferedServerConnection,
    /// A record (or handshake message) not yet complete. Empty, without an allocation,
    /// whenever nothing is half-received.
    carry: Vec<u8>,
    phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing received yet: the first byte says whether this is TLS at all.
    New,
    Handshaking,
    Established,
    /// A close_notify went out: nothing more may be sealed.
    Closed,
    Failed(TlsFailure),
}

/// How sealing failed: the connection cannot encrypt (any more).
#[derive(Debug)]
pub(crate) enum Seal {
    /// The handshake has not finished: plaintext must wait.
    NotReady,
    /// The connection failed or closed: its plaintext can never go.
    Never,
}

impl TlsStream {
    pub fn new(acceptor: &TlsAcceptor) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(acceptor.config().clone())?,
            carry: Vec::new(),
            phase: Phase::New,
        })
    }

    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    pub fn failure(&self) -> Option<TlsFailure> {
        match self.phase {
            Phase::Failed(failure) => Some(failure),
            _ => None,
        }
    }

    /// Records that the connection failed for `failure`, unless it already had.
    pub fn fail(&mut self, failure: TlsFailure) {
        if self.failure().is_none() {
            self.phase = Phase::Failed(failure);
        }
        self.carry = Vec::new();
    }

    /// The server is closing: a connection whose handshake did not finish failed.
    pub fn close_unfinished(&mut self) {
        if matches!(self.phase, Phase::New | Phase::Handshaking) {
            self.fail(TlsFailure::Unfinished);
        }
    }

    /// Bytes from the socket: complete records are decrypted into `plain`, and whatever the
    /// handshake answers is queued, sealed, on `queue`. Returns the handshake's outcome when
    /// these bytes completed it; on failure the alert for the client (if any) is queued.
    ///
    /// `not_tls_reply` goes out instead, unencrypted, when the first byte is not a TLS
    /// handshake record.
    pub fn receive(
        &mut self,
        data: &mut [u8],
        plain: &mut Vec<u8>,
        queue: &mut SendQueue,
        not_tls_reply: &Bytes,
    ) -> Result<Option<Secured>, TlsFailure> {
        match self.phase {
            Phase::Failed(_) | Phase::Closed => return Ok(None),
            Phase::New => {
                let Some(&first) = data.first() else {
                    return Ok(None);
                };
                if first != HANDSHAKE_RECORD {
                    queue.push_sealed(not_tls_reply.clone());
                    self.fail(TlsFailure::NotTls);
                    return Err(TlsFailure::NotTls);
                }
                self.phase = Phase::Handshaking;
            }
            Phase::Handshaking | Phase::Established => {}
        }
        let was_established = self.is_established();
        let outcome = if self.carry.is_empty() {
            let outcome = self.process(data, plain, queue);
            if let Ok(used) = outcome {
                self.carry.extend_from_slice(&data[used..]);
            }
            outcome
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(data);
            let outcome = self.process(&mut carry, plain, queue);
            if let Ok(used) = outcome {
                carry.drain(..used);
                if !carry.is_empty() {
                    self.carry = carry;
                }
            }
            outcome
        };
        if let Err(error) = outcome {
            let failure = TlsFailure::of(&error);
            tracing::debug!(%failure, "TLS failed: {error}");
            self.fail(failure);
            return Err(failure);
        }
        if self.carry.len() > MAX_CARRY {
            self.fail(TlsFailure::Protocol);
            return Err(TlsFailure::Protocol);
        }
        if self.carry.is_empty() {
            // Released between records, not kept at its largest.
            self.carry = Vec::new();
        }
        if self.is_established() && !was_established {
            return Ok(Some(Secured {
                resumed: self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                tls13: self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
            }));
        }
        Ok(None)
    }

    /// Runs rustls over `buf` until it needs more bytes; returns how many it used up.
    fn process(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        queue: &mut SendQueue,
    ) -> Result<usize, rustls::Error> {
        let mut used = 0;
        let mut flight = Vec::new();
        for _ in 0..MAX_STEPS {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut buf[used..]);
            let state = match state {
                Ok(state) => state,
                Err(error) => {
                    self.send_alert(&mut buf[used + discard..], &mut flight, queue);
                    return Err(error);
                }
            };
            let mut blocked = false;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        plain.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut flight, |out| encode.encode(out));
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    queue.push_sealed(Bytes::from(std::mem::take(&mut flight)));
                    transmit.done();
                }
                ConnectionState::WriteTraffic(_) => {
                    if self.phase == Phase::Handshaking {
                        self.phase = Phase::Established;
                    }
                    blocked = true;
                }
                // The client's close_notify: nothing more will be read; its FIN follows.
                ConnectionState::PeerClosed => {}
                ConnectionState::BlockedHandshake | ConnectionState::Closed => blocked = true,
                // Early data is never accepted (the configuration allows none).
                _ => {
                    return Err(rustls::Error::General(
                        "unexpected early data or TLS state".into(),
                    ));
                }
            }
            used += discard;
            if blocked {
                queue.push_sealed(Bytes::from(flight));
                return Ok(used);
            }
        }
        Err(rustls::Error::General(
            "TLS state machine did not settle".into(),
        ))
    }

    /// After an error, rustls has queued an alert for the client, perhaps behind the rest
    /// of a flight: encode them and queue the lot. `rest` is what the failed call left of
    /// its buffer, which rustls must be shown again.
    fn send_alert(&mut self, rest: &mut [u8], flight: &mut Vec<u8>, queue: &mut SendQueue) {
        for _ in 0..8 {
            match self.conn.process_tls_records(rest).state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(flight, |out| encode.encode(out));
                }
                _ => break,
            }
        }
        queue.push_sealed(Bytes::from(std::mem::take(flight)));
    }

    /// Encrypts `plaintext` into records.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Bytes, Seal> {
        match self.phase {
            Phase::Established => {}
            Phase::New | Phase::Handshaking => return Err(Seal::NotReady),
            Phase::Closed | Phase::Failed(_) => return Err(Seal::Never),
        }
        let records = plaintext.len().div_ceil(MAX_FRAGMENT).max(1);
        let mut out = vec![0; plaintext.len() + records * RECORD_OVERHEAD];
        let written = self.with_traffic(|traffic| {
            loop {
                match traffic.encrypt(plaintext, &mut out) {
                    Ok(written) => return Ok(written),
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) => out.resize(required_size, 0),
                    Err(EncryptError::EncryptExhausted) => return Err(Seal::Never),
                }
            }
        })?;
        out.truncate(written);
        Ok(Bytes::from(out))
    }

    /// A close_notify alert, the last record this connection sends.
    pub fn close_notify(&mut self) -> Option<Bytes> {
        if self.phase != Phase::Established {
            return None;
        }
        let mut out = vec![0; 64];
        let written = self
            .with_traffic(|traffic| {
                loop {
                    match traffic.queue_close_notify(&mut out) {
                        Ok(written) => return Ok(written),
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => out.resize(required_size, 0),
                        Err(EncryptError::EncryptExhausted) => return Err(Seal::Never),
                    }
                }
            })
            .ok()?;
        self.phase = Phase::Closed;
        out.truncate(written);
        Some(Bytes::from(out))
    }

    /// Runs `f` on rustls' traffic state, which an established connection reaches without
    /// reading anything: every complete record was read as it came, and the carry (which
    /// rustls must see again, as it may have begun joining a message there) holds none.
    fn with_traffic<T>(
        &mut self,
        f: impl FnOnce(&mut Traffic<'_>) -> Result<T, Seal>,
    ) -> Result<T, Seal> {
        let status = self.conn.process_tls_records(&mut self.carry);
        debug_assert_eq!(status.discard, 0, "a complete record was left unread");
        match status.state {
            Ok(ConnectionState::WriteTraffic(mut traffic)) => f(&mut traffic),
            _ => Err(Seal::Never),
        }
    }
}

/// Appends what `encode` writes to `out`, growing it to the size rustls asks for.
fn encode_into(out: &mut Vec<u8>, mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) {
    let start = out.len();
    out.resize(start + ENCODE_ROOM, 0);
    loop {
        match encode(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.resize(start + required_size, 0);
            }
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(start);
                return;
            }
        }
    }
}
