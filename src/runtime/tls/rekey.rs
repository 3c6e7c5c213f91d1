//! Kernel TLS after the handoff: the record keys rustls still derives (TLS 1.3 KeyUpdate,
//! both ways), a bound on the records sealed under the current transmit key, and the control
//! records the server sends (its KeyUpdate, its close_notify).
//!
//! A received KeyUpdate stops the kernel's decryption (reads fail with `EKEYEXPIRED`) until
//! the new receive key is set with `TLS_RX`: the receive stays stopped until then. Our own
//! KeyUpdate is sealed under the old key and the new one set with `TLS_TX` right after
//! (linked), with no plaintext sent in between: the flush sends nothing while it is in
//! flight. Kernels before 6.14 refuse a second key; the connection then closes.

use io_uring::squeue;
use io_uring::types::Fixed;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ProtocolVersion, SupportedCipherSuite};

use super::control::{ControlRead, ControlWrite, Outgoing};
use super::offload::{KeyBlock, set_key};

/// The largest plaintext of one record.
const MAX_FRAGMENT: u64 = 16 << 10;

/// The share of a cipher's confidentiality limit (RFC 8446 5.5) one transmit key may reach,
/// by the count below, before it is replaced: half, as that count is only a bound.
const LIMIT_SHARE: u64 = 2;

pub(crate) struct KernelKeys {
    conn: KernelConnection<ServerConnectionData>,
    /// Records the current transmit key may seal before it is replaced (TLS 1.3) or the
    /// connection closes (TLS 1.2, which cannot replace it).
    limit: u64,
    /// Sends and bytes written under the current transmit key: the kernel seals one
    /// sendmsg into full records and at most one short one, or two when it waited for
    /// memory in between, so `bytes / 16 KiB + 2 * sends` bounds the records sealed.
    sends: u64,
    written_at_key: u64,
    /// The peer asked for our key to change: before our next application data (RFC 8446
    /// 4.6.3).
    peer_asked: bool,
    tx: Transmit,
    /// The write queue drained while our KeyUpdate was in flight: the shutdown (and its
    /// close_notify) waits for the new key.
    shutdown_waits: bool,
    /// The new receive key, while its setsockopt is in flight.
    rx_key: Option<Box<KeyBlock>>,
    /// The recvmsg reading a record that is not application data, while in flight.
    control: Option<Box<ControlRead>>,
    /// The sendmsg of our KeyUpdate or close_notify, while in flight.
    write: Option<Box<ControlWrite>>,
    /// The new transmit key that follows our KeyUpdate, while its setsockopt is in flight.
    tx_key: Option<Box<KeyBlock>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transmit {
    Current,
    /// Our KeyUpdate and `TLS_TX` are submitted, this many not complete; `failed`, one
    /// did not do what it should.
    Updating {
        left: u8,
        failed: bool,
    },
}

/// What the flush must do before sending more application data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyDue {
    /// Nothing: send.
    No,
    /// Replace the transmit key first (TLS 1.3).
    Update,
    /// The key reached its limit and cannot be replaced (TLS 1.2): close.
    Exhausted,
}

/// Where our KeyUpdate is, after one of its two requests completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxUpdate {
    Pending,
    /// Both done; whether the shutdown waited for them.
    Done {
        shutdown_waits: bool,
    },
    /// The KeyUpdate or the new key failed: the connection cannot go on. Whether the
    /// shutdown waited.
    Failed {
        shutdown_waits: bool,
    },
}

/// What goes before the server's shutdown of its side.
pub(crate) enum BeforeShutdown {
    /// Our close_notify: this sendmsg, which reads from memory the keys keep until the
    /// connection is freed.
    CloseNotify(squeue::Entry),
    /// Our KeyUpdate is in flight: the shutdown waits for it ([`TxUpdate::Done`]).
    Wait,
    /// Our close_notify went already.
    Nothing,
}

impl KernelKeys {
    /// `limit_override`: records per TLS 1.3 transmit key, to make updates happen in tests.
    pub fn new(conn: KernelConnection<ServerConnectionData>, limit_override: Option<u64>) -> Self {
        let common = match conn.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(suite) => &suite.common,
            SupportedCipherSuite::Tls12(suite) => &suite.common,
        };
        let limit = match limit_override {
            // Only a key that can be replaced is worn out on purpose.
            Some(records) if conn.protocol_version() == ProtocolVersion::TLSv1_3 => records,
            _ => common.confidentiality_limit / LIMIT_SHARE,
        };
        Self {
            conn,
            limit,
            sends: 0,
            written_at_key: 0,
            peer_asked: false,
            tx: Transmit::Current,
            shutdown_waits: false,
            rx_key: None,
            control: None,
            write: None,
            tx_key: None,
        }
    }

    fn tls13(&self) -> bool {
        self.conn.protocol_version() == ProtocolVersion::TLSv1_3
    }

    /// The bound on records sealed under the current transmit key, `written` bytes having
    /// been written since the connection opened.
    fn records_bound(&self, written: u64) -> u64 {
        records_bound(written.saturating_sub(self.written_at_key), self.sends)
    }

    /// Whether the transmit key must change (or the connection end) before the next send.
    pub fn due(&self, written: u64) -> KeyDue {
        let worn = self.records_bound(written) >= self.limit;
        match (self.tls13(), worn || self.peer_asked) {
            (_, false) => KeyDue::No,
            (true, true) => KeyDue::Update,
            (false, true) => KeyDue::Exhausted,
        }
    }

    /// A sendmsg of application data starts.
    pub fn count_send(&mut self) {
        self.sends += 1;
    }

    /// Whether our KeyUpdate is in flight: nothing else may be sent meanwhile.
    pub fn updating_tx(&self) -> bool {
        matches!(self.tx, Transmit::Updating { .. })
    }

    /// Whether the receive must stay stopped: a control record is being read, or the new
    /// receive key is on its way.
    pub fn holds_recv(&self) -> bool {
        self.control.is_some() || self.rx_key.is_some()
    }

    /// Starts reading a control record on `fd`, unless one is being read.
    pub fn start_control_read(&mut self, fd: Fixed) -> Option<squeue::Entry> {
        if self.control.is_some() {
            return None;
        }
        Some(self.control.insert(ControlRead::new()).entry(fd))
    }

    pub fn take_control_read(&mut self) -> Option<Box<ControlRead>> {
        self.control.take()
    }

    /// The peer sent a KeyUpdate (`requested`: it wants ours too): the setsockopt of the
    /// new receive key on `fd`, which reads from memory this keeps until
    /// [`KernelKeys::rx_key_set`].
    pub fn update_rx(&mut self, fd: Fixed, requested: bool) -> Result<squeue::Entry, String> {
        if self.rx_key.is_some() {
            return Err("a KeyUpdate came before the last one's key was set".into());
        }
        let (seq, secrets) = self
            .conn
            .update_rx_secret()
            .map_err(|err| format!("rustls derived no new receive key: {err}"))?;
        let block = KeyBlock::new(self.conn.protocol_version(), seq, &secrets)
            .ok_or("the new receive key is not one the kernel takes")?;
        self.peer_asked |= requested;
        Ok(set_key(fd, false, self.rx_key.insert(Box::new(block))))
    }

    /// The new receive key's setsockopt completed.
    pub fn rx_key_set(&mut self) {
        self.rx_key = None;
    }

    /// Our KeyUpdate, then the new transmit key: the sendmsg (linked) and the setsockopt on
    /// `fd`, which read from memory this keeps until both complete.
    pub fn update_tx(&mut self, fd: Fixed) -> Result<[squeue::Entry; 2], String> {
        if self.updating_tx() || self.write.is_some() {
            return Err("a control record is already being sent".into());
        }
        let (seq, secrets) = self
            .conn
            .update_tx_secret()
            .map_err(|err| format!("rustls derived no new transmit key: {err}"))?;
        let block = KeyBlock::new(self.conn.protocol_version(), seq, &secrets)
            .ok_or("the new transmit key is not one the kernel takes")?;
        let record = self.write.insert(ControlWrite::new(Outgoing::KeyUpdate));
        let send = record.entry(fd).flags(squeue::Flags::IO_LINK);
        let key = set_key(fd, true, self.tx_key.insert(Box::new(block)));
        self.tx = Transmit::Updating {
            left: 2,
            failed: false,
        };
        self.peer_asked = false;
        Ok([send, key])
    }

    /// One request of our KeyUpdate completed with `result`; `written` is the bytes written
    /// since the connection opened.
    pub fn tx_step(&mut self, result: i32, written: u64) -> TxUpdate {
        let Transmit::Updating { left, failed } = self.tx else {
            return TxUpdate::Pending;
        };
        // The sendmsg returns the record's length, the setsockopt 0.
        let expected = if left == 2 {
            self.write.as_ref().map_or(0, |write| write.len())
        } else {
            0
        };
        let failed = failed || usize::try_from(result).ok() != Some(expected);
        if left > 1 {
            self.tx = Transmit::Updating {
                left: left - 1,
                failed,
            };
            return TxUpdate::Pending;
        }
        self.tx = Transmit::Current;
        self.write = None;
        self.tx_key = None;
        self.sends = 0;
        self.written_at_key = written;
        let shutdown_waits = std::mem::take(&mut self.shutdown_waits);
        if failed {
            TxUpdate::Failed { shutdown_waits }
        } else {
            TxUpdate::Done { shutdown_waits }
        }
    }

    /// The server shuts its side down: what goes first.
    pub fn before_shutdown(&mut self, fd: Fixed) -> BeforeShutdown {
        if self.updating_tx() {
            self.shutdown_waits = true;
            return BeforeShutdown::Wait;
        }
        if self.write.is_some() {
            return BeforeShutdown::Nothing;
        }
        let record = self.write.insert(ControlWrite::new(Outgoing::CloseNotify));
        BeforeShutdown::CloseNotify(record.entry(fd))
    }
}

/// A bound on the records the kernel sealed from `bytes` written in `sends` sendmsg calls.
fn records_bound(bytes: u64, sends: u64) -> u64 {
    bytes / MAX_FRAGMENT + 2 * sends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_bound_counts_full_records_and_two_per_send() {
        assert_eq!(records_bound(0, 0), 0);
        assert_eq!(
            records_bound(100, 1),
            2,
            "one short send: at most two records"
        );
        assert_eq!(
            records_bound(64 << 10, 1),
            6,
            "four full records, two short ones"
        );
        assert_eq!(records_bound(1 << 30, 1), (1 << 16) + 2);
    }
}
