//! The sans-io WebSocket protocol core (RFC 6455).
//!
//! Nothing here performs I/O: callers feed the bytes they read and send the bytes they are
//! given. Input may arrive in pieces of any size, down to one byte at a time.

pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod session;
pub mod utf8;

use std::fmt;

pub use close::{CloseCode, CloseFrame};
pub use frame::OpCode;
pub use session::{Event, SendError, Session, SessionConfig, State};

/// Which side of the connection this endpoint plays; it decides the masking rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones.
    Server,
    /// Receives unmasked frames, sends masked ones.
    Client,
}

/// The peer broke the protocol: the close code to fail the connection with, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: CloseCode,
    /// Names the violation; sent as the close reason.
    pub reason: &'static str,
}

impl ProtocolError {
    /// 1002: a frame or sequence of frames the protocol forbids.
    pub const fn protocol(reason: &'static str) -> Self {
        Self {
            code: CloseCode::PROTOCOL_ERROR,
            reason,
        }
    }

    /// 1007: data inconsistent with the message type, such as invalid UTF-8 in text.
    pub const fn invalid_payload(reason: &'static str) -> Self {
        Self {
            code: CloseCode::INVALID_PAYLOAD,
            reason,
        }
    }

    /// 1009: a message larger than the configured maximum.
    pub const fn too_big(reason: &'static str) -> Self {
        Self {
            code: CloseCode::MESSAGE_TOO_BIG,
            reason,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close code {})", self.reason, self.code)
    }
}

impl std::error::Error for ProtocolError {}
