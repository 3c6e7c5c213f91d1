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

use super::control::ControlRecord;
use super::offload::{KeyBlock, kernel_can_carry, rekey_after_override};
use super::rekey::{BeforeShutdown, KernelKeys, KeyDue, TxUpdate};
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
    /// Who seals and opens the records.
    records: Records,
    /// A record (or handshake message) not yet complete. Empty, without an allocation,
    /// whenever nothing is half-received.
    carry: Vec<u8>,
    phase: Phase,
    /// The record keys on their way to the kernel: the setsockopt requests read them from
    /// here until they complete (the slot, and so this, outlives them).
    keys: Option<Box<[KeyBlock; 2]>>,
}

/// Who seals and opens a connection's records. What rustls leaves once it gave its keys to
/// the kernel takes the place of its connection, so an offloaded connection holds no more
/// than a user-space one.
#[allow(
    clippy::large_enum_variant,
    reason = "one replaces the other in place: boxing either costs every connection an allocation"
)]
enum Records {
    /// rustls.
    Rustls(UnbufferedServerConnection),
    /// The kernel: rustls' remains derive the next keys; the control records in flight.
    Kernel(KernelKeys),
    /// Neither: rustls gave its keys away and the kernel did not take them.
    Gone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing received yet: the first byte says whether this is TLS at all.
    New,
    Handshaking,
    Established,
    /// Handing the records to the kernel: no plaintext is sealed, the receive is stopped.
    Handoff(Handoff),
    /// The kernel encrypts and decrypts: plaintext goes to and comes from the socket.
    Kernel,
    /// A close_notify went out: nothing more may be sealed.
    Closed,
    Failed(TlsFailure),
}

/// Where a handoff to kernel TLS is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handoff {
    /// Waiting until nothing is in flight either way: the receive stopped, the sealed
    /// records written.
    Draining,
    /// `TCP_ULP "tls"` is submitted. Until the keys are set the socket still carries
    /// whatever is written to it unchanged, so the connection can stay in user space.
    Attaching,
    /// `TLS_TX` and `TLS_RX` are submitted, this many not yet complete; rustls' keys are
    /// given away.
    Keying(u8),
}

/// How a connection's queue is written out, by where its records are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sending {
    /// Sealed records only, as rustls makes them.
    Sealed,
    /// Nothing for now: the keys are on their way to the kernel.
    Wait,
    /// Plaintext, which the kernel seals.
    Plain,
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
            records: Records::Rustls(UnbufferedServerConnection::new(acceptor.config().clone())?),
            carry: Vec::new(),
            phase: Phase::New,
            keys: None,
        })
    }

    /// rustls' connection, while it holds the keys.
    fn rustls(&self) -> Option<&UnbufferedServerConnection> {
        match &self.records {
            Records::Rustls(conn) => Some(conn),
            _ => None,
        }
    }

    fn rustls_mut(&mut self) -> Option<&mut UnbufferedServerConnection> {
        match &mut self.records {
            Records::Rustls(conn) => Some(conn),
            _ => None,
        }
    }

    fn kernel(&self) -> Option<&KernelKeys> {
        match &self.records {
            Records::Kernel(keys) => Some(keys),
            _ => None,
        }
    }

    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// Where a handoff to kernel TLS is, if one is under way.
    pub fn handoff(&self) -> Option<Handoff> {
        match self.phase {
            Phase::Handoff(stage) => Some(stage),
            _ => None,
        }
    }

    /// Whether the receive must stay stopped: a handoff, a control record being read, a new
    /// receive key on its way.
    pub fn holds_recv(&self) -> bool {
        self.handoff().is_some() || self.kernel().is_some_and(|keys| keys.holds_recv())
    }

    /// The keys of a connection the kernel carries.
    pub fn kernel_keys(&mut self) -> Option<&mut KernelKeys> {
        match &mut self.records {
            Records::Kernel(keys) => Some(keys),
            _ => None,
        }
    }

    /// Starts reading a control record (the kernel TLS receive failed with EIO): the
    /// recvmsg for `fd`, writing into memory this keeps until [`TlsStream::end_control_read`].
    pub fn start_control_read(
        &mut self,
        fd: io_uring::types::Fixed,
    ) -> Option<io_uring::squeue::Entry> {
        if self.phase != Phase::Kernel {
            return None;
        }
        self.kernel_keys()?.start_control_read(fd)
    }

    /// The control record's recvmsg completed with `len` bytes (0 when none).
    pub fn end_control_read(&mut self, len: usize) -> Option<ControlRecord> {
        let read = self.kernel_keys()?.take_control_read()?;
        (len > 0).then(|| read.record(len))
    }

    /// Whether the transmit key must change first, before the next send of application
    /// data; `written` is the bytes written since the connection opened.
    pub fn key_due(&self, written: u64) -> KeyDue {
        self.kernel().map_or(KeyDue::No, |keys| keys.due(written))
    }

    /// A sendmsg of application data starts on a kernel TLS connection.
    pub fn count_send(&mut self) {
        if let Some(keys) = self.kernel_keys() {
            keys.count_send();
        }
    }

    /// One request of our KeyUpdate completed.
    pub fn tx_step(&mut self, result: i32, written: u64) -> Option<TxUpdate> {
        Some(self.kernel_keys()?.tx_step(result, written))
    }

    /// The server shuts its side down: what goes first (nothing in user space, where the
    /// close_notify was queued as a sealed record).
    pub fn before_shutdown(&mut self, fd: io_uring::types::Fixed) -> BeforeShutdown {
        match &mut self.records {
            Records::Kernel(keys) if self.phase == Phase::Kernel => keys.before_shutdown(fd),
            _ => BeforeShutdown::Nothing,
        }
    }

    /// The kernel holds the record keys.
    pub fn in_kernel(&self) -> bool {
        self.phase == Phase::Kernel
    }

    pub fn sending(&self) -> Sending {
        match self.phase {
            Phase::Kernel if self.kernel().is_some_and(|keys| keys.updating_tx()) => Sending::Wait,
            Phase::Kernel => Sending::Plain,
            Phase::Handoff(Handoff::Keying(_)) => Sending::Wait,
            _ => Sending::Sealed,
        }
    }

    /// Starts handing the records to the kernel, if the handshake is done and the kernel
    /// can carry the negotiated suite.
    pub fn begin_handoff(&mut self) -> bool {
        let carried = self
            .rustls()
            .is_some_and(|conn| kernel_can_carry(conn.negotiated_cipher_suite()));
        if self.phase != Phase::Established || !carried {
            return false;
        }
        self.phase = Phase::Handoff(Handoff::Draining);
        true
    }

    /// Whether a record is half-received: its start is here, its rest still in the
    /// socket, where the kernel would take it for a record of its own.
    pub fn holds_partial_record(&self) -> bool {
        !self.carry.is_empty()
    }

    pub fn set_handoff(&mut self, stage: Handoff) {
        if matches!(self.phase, Phase::Handoff(_)) {
            self.phase = Phase::Handoff(stage);
        }
    }

    /// Gives the handoff up while rustls still holds the keys: records stay in user space.
    /// Returns whether it did (a handoff past that point cannot be given up).
    pub fn abandon_handoff(&mut self) -> bool {
        match self.phase {
            Phase::Handoff(Handoff::Draining | Handoff::Attaching) => {
                self.phase = Phase::Established;
                true
            }
            _ => false,
        }
    }

    /// Takes rustls' record keys and sequence numbers for the kernel: transmit, then
    /// receive. From here the connection cannot seal or open a record itself.
    pub fn extract_keys(&mut self) -> Result<&[KeyBlock; 2], String> {
        let Records::Rustls(conn) = std::mem::replace(&mut self.records, Records::Gone) else {
            return Err("rustls' connection is gone".into());
        };
        let version = conn
            .protocol_version()
            .ok_or("no protocol version was negotiated")?;
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(|err| format!("rustls would not give its keys: {err}"))?;
        let tx = KeyBlock::new(version, secrets.tx.0, &secrets.tx.1);
        let rx = KeyBlock::new(version, secrets.rx.0, &secrets.rx.1);
        match (tx, rx) {
            (Some(tx), Some(rx)) => {
                self.records = Records::Kernel(KernelKeys::new(kernel, rekey_after_override()));
                Ok(self.keys.insert(Box::new([tx, rx])))
            }
            _ => Err(format!(
                "{version:?} with this cipher is not one the kernel takes"
            )),
        }
    }

    /// The kernel set both keys.
    pub fn finish_handoff(&mut self) {
        self.phase = Phase::Kernel;
        self.keys = None;
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
            Phase::Failed(_) | Phase::Closed | Phase::Kernel => return Ok(None),
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
            Phase::Handshaking | Phase::Established | Phase::Handoff(_) => {}
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
            let conn = self.rustls();
            return Ok(Some(Secured {
                resumed: conn.and_then(|c| c.handshake_kind())
                    == Some(rustls::HandshakeKind::Resumed),
                tls13: conn.and_then(|c| c.protocol_version())
                    == Some(rustls::ProtocolVersion::TLSv1_3),
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
            let Some(conn) = self.rustls_mut() else {
                return Err(rustls::Error::General("the kernel holds the keys".into()));
            };
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut buf[used..]);
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
            let Some(conn) = self.rustls_mut() else {
                break;
            };
            match conn.process_tls_records(rest).state {
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
            Phase::New | Phase::Handshaking | Phase::Handoff(_) | Phase::Kernel => {
                return Err(Seal::NotReady);
            }
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
        let Records::Rustls(conn) = &mut self.records else {
            return Err(Seal::Never);
        };
        let status = conn.process_tls_records(&mut self.carry);
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
