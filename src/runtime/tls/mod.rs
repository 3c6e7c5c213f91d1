//! TLS as a transport: the runtime encrypts and decrypts records, so that handlers see only
//! plaintext, as they would over a kernel TLS socket.
//!
//! Each connection accepted on a TLS listener carries a [`TlsStream`]: a rustls connection
//! in its unbuffered form, which keeps no buffers of its own, plus the few bytes of a record
//! still arriving. Received records are decrypted before [`Handler::on_data`] sees them, and
//! plaintext the handler queues stays plaintext in the send queue (its cost, droppable
//! messages dropped before they are encrypted) until the flush seals it into records just
//! before the sendmsg. The handshake runs before any plaintext reaches the handler; a
//! handshake that fails ends that connection alone, with [`CloseCause::Tls`] naming why.
//!
//! [`Handler::on_data`]: super::Handler::on_data
//! [`CloseCause::Tls`]: super::CloseCause::Tls

mod control;
mod kernel;
pub(crate) mod offload;
mod rekey;
mod stream;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub(crate) use control::ControlRecord;
pub use kernel::{KernelTls, probe_kernel_tls};
pub use offload::{KernelTlsCounts, REKEY_AFTER_ENV, kernel_tls_counts};
pub(crate) use rekey::{BeforeShutdown, KeyDue, TxUpdate};
pub(crate) use stream::{Handoff, Seal, Sending, TlsStream};

/// What a TLS listener needs to accept connections: the rustls server configuration (its
/// certificate resolver may swap certificates at any time; new handshakes use the new one),
/// and what to answer a client that speaks no TLS at all.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<rustls::ServerConfig>,
    not_tls_reply: Bytes,
    /// Hand each connection's records to the kernel once its handshake is done.
    kernel: bool,
}

impl TlsAcceptor {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            config,
            not_tls_reply: Bytes::new(),
            kernel: false,
        }
    }

    /// Hands each connection's records to the kernel (kernel TLS) once its handshake is
    /// done, where the kernel takes them; a connection it cannot carry stays in user space.
    /// The configuration must allow secret extraction
    /// ([`rustls::ServerConfig::enable_secret_extraction`]), else none is offloaded.
    pub fn with_kernel_offload(mut self, kernel: bool) -> Self {
        self.kernel = kernel && self.config.enable_secret_extraction;
        self
    }

    /// Whether connections are handed to kernel TLS.
    pub fn offloads(&self) -> bool {
        self.kernel
    }

    /// Bytes written, unencrypted, to a client whose first bytes are not a TLS handshake
    /// (plain HTTP on a TLS port, say), before the connection closes. Nothing by default.
    pub fn with_not_tls_reply(mut self, reply: Bytes) -> Self {
        self.not_tls_reply = reply;
        self
    }

    pub fn config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }

    pub(crate) fn not_tls_reply(&self) -> &Bytes {
        &self.not_tls_reply
    }
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

/// Two acceptors are the same when they share one configuration.
impl PartialEq for TlsAcceptor {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
            && self.not_tls_reply == other.not_tls_reply
            && self.kernel == other.kernel
    }
}

/// Why a TLS connection failed. The first four end a handshake the client got wrong; the
/// others, a handshake or a connection that did not finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsFailure {
    /// The first bytes were not a TLS handshake: plain HTTP on a TLS port, say.
    NotTls,
    /// The client named a server (SNI) the certificate does not cover, or named it badly.
    BadServerName,
    /// Nothing in common: no protocol version, cipher suite, key exchange group or ALPN
    /// protocol both sides support.
    Incompatible,
    /// The client broke the protocol: a malformed message, a record that does not decrypt,
    /// a handshake message too large.
    Protocol,
    /// The client ended the handshake with an alert (it does not trust the certificate,
    /// say).
    PeerAlert,
    /// The client closed the connection before the handshake finished.
    PeerClosed,
    /// The server gave up before the handshake finished: its handshake timeout, or a
    /// shutdown.
    Unfinished,
}

impl TlsFailure {
    /// Every kind, for counters that list them all.
    pub const ALL: [TlsFailure; 7] = [
        TlsFailure::NotTls,
        TlsFailure::BadServerName,
        TlsFailure::Incompatible,
        TlsFailure::Protocol,
        TlsFailure::PeerAlert,
        TlsFailure::PeerClosed,
        TlsFailure::Unfinished,
    ];

    /// A short name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            TlsFailure::NotTls => "not_tls",
            TlsFailure::BadServerName => "bad_sni",
            TlsFailure::Incompatible => "no_shared_cipher",
            TlsFailure::Protocol => "protocol",
            TlsFailure::PeerAlert => "peer_alert",
            TlsFailure::PeerClosed => "peer_closed",
            TlsFailure::Unfinished => "timeout",
        }
    }

    /// Sorts a rustls error.
    fn of(error: &rustls::Error) -> Self {
        use rustls::{Error, PeerMisbehaved};
        match error {
            Error::PeerIncompatible(_) | Error::NoApplicationProtocol => TlsFailure::Incompatible,
            Error::AlertReceived(_) => TlsFailure::PeerAlert,
            Error::PeerMisbehaved(PeerMisbehaved::ServerNameMustContainOneHostName) => {
                TlsFailure::BadServerName
            }
            // What rustls says when the certificate resolver declines the client's SNI.
            Error::General(message) if message.contains("no server certificate") => {
                TlsFailure::BadServerName
            }
            _ => TlsFailure::Protocol,
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A TLS handshake that completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Secured {
    /// The client resumed an earlier session (a ticket): no certificate, no signature.
    pub resumed: bool,
    /// TLS 1.3 (else 1.2).
    pub tls13: bool,
}
