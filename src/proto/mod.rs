//! The sans-io WebSocket protocol core (RFC 6455).
//!
//! Nothing here performs I/O: callers feed the bytes they read and send the bytes they are
//! given. Input may arrive in pieces of any size, down to one byte at a time.

pub mod close;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

/// Which side of the connection this endpoint plays; it decides the masking rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones.
    Server,
    /// Receives unmasked frames, sends masked ones.
    Client,
}
