//! ringws: a thread-per-core io_uring WebSocket server engine.
//!
//! The crate is split so that each layer can be read, tested and fuzzed alone:
//! - [`proto`]: the sans-io WebSocket protocol (RFC 6455). Bytes in, events and bytes out;
//!   it never touches a socket, so the server and the load generator share it.
//! - `runtime`: the io_uring driver. It moves bytes for connections and knows nothing of WebSocket.
//! - `server`: composes the two into shards, connections and the application API.

pub mod proto;
pub mod runtime;
pub mod server;
