//! The opening handshake (RFC 6455 §4): the server's incremental request parser and its
//! answers, and the client's request and response check.

mod client;
mod extensions;
mod head;
mod request;
mod server;

pub use client::{Accepted, ClientHandshake, ClientRequest, HandshakeError};
pub use extensions::{ExtensionOffer, parse_offers};
pub use request::{Limits, Request, RequestParser};
pub use server::{
    Refusal, UpgradeRequest, accept_key, reason_phrase, select_protocol, validate, write_accept,
    write_response,
};

#[cfg(test)]
mod tests;
