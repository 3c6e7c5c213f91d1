//! The WebSocket server: shards of connections on the io_uring runtime, the application API,
//! echo and pub/sub.

pub mod config;
