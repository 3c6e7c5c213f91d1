//! Frame headers: decoding and encoding (RFC 6455 §5.2).
