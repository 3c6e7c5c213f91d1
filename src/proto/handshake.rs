//! The opening handshake (RFC 6455 §4): server request parsing and responses, client requests.
