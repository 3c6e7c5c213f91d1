//! Close frames: codes and payload validation (RFC 6455 §5.5.1, §7.4).
