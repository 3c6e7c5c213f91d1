//! Close frames: codes and payload validation (RFC 6455 §5.5.1, §7.4).

use std::fmt;

use super::ProtocolError;
use super::utf8;

/// A close status code (RFC 6455 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(u16);

impl CloseCode {
    pub const NORMAL: Self = Self(1000);
    pub const GOING_AWAY: Self = Self(1001);
    pub const PROTOCOL_ERROR: Self = Self(1002);
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// Never on the wire: stands for "the close frame had no code".
    pub const NO_STATUS: Self = Self(1005);
    /// Never on the wire: stands for "the connection dropped without a close frame".
    pub const ABNORMAL: Self = Self(1006);
    pub const INVALID_PAYLOAD: Self = Self(1007);
    pub const POLICY_VIOLATION: Self = Self(1008);
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    pub const INTERNAL_ERROR: Self = Self(1011);
    pub const SERVICE_RESTART: Self = Self(1012);
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    pub const BAD_GATEWAY: Self = Self(1014);
    /// Never on the wire: stands for "the TLS handshake failed".
    pub const TLS_HANDSHAKE: Self = Self(1015);

    /// Wraps any code; use [`CloseCode::is_valid_on_wire`] to check it before sending.
    pub const fn new(code: u16) -> Self {
        Self(code)
    }

    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// Whether an endpoint may put this code in a close frame: the codes RFC 6455 defines for
    /// use on the wire, those IANA registered since (1012-1014), and the ranges for libraries
    /// and applications (3000-4999). 1004-1006, 1015, other unassigned 1xxx codes and
    /// anything below 1000 or above 4999 are not.
    pub const fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.0
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A received close frame's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: CloseCode,
    pub reason: &'a str,
}

/// Parses a close payload: empty (no code), or a valid code followed by a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::protocol("close payload of 1 byte")),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::protocol(
                    "close code not allowed on the wire",
                ));
            }
            let reason = utf8::validate(reason)
                .map_err(|_| ProtocolError::invalid_payload("close reason is not valid UTF-8"))?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1010, 1011, 1012, 1014, 3000, 4999,
        ] {
            assert!(CloseCode::new(ok).is_valid_on_wire(), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode::new(bad).is_valid_on_wire(), "{bad}");
        }
    }

    #[test]
    fn payloads() {
        assert_eq!(parse_close_payload(b""), Ok(None));
        assert_eq!(
            parse_close_payload(b"\x03").unwrap_err().code,
            CloseCode::PROTOCOL_ERROR
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8bye"),
            Ok(Some(CloseFrame {
                code: CloseCode::NORMAL,
                reason: "bye"
            }))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xedok").unwrap_err().code,
            CloseCode::PROTOCOL_ERROR
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff").unwrap_err().code,
            CloseCode::INVALID_PAYLOAD
        );
    }
}
