//! The server's request parser, validation and extension negotiation, and the client's
//! response parser, on arbitrary bytes fed in arbitrary pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringws::proto::deflate::{DeflateConfig, EXTENSION_NAME, accept_offer};
use ringws::proto::handshake::{
    ClientHandshake, ClientRequest, Limits, RequestParser, select_protocol, validate, write_accept,
};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, input)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    server_side(input, piece);
    client_side(input, piece);
});

fn server_side(input: &[u8], piece: usize) {
    let limits = Limits {
        max_head_bytes: 4096,
        max_headers: 32,
    };
    let mut parser = RequestParser::new(limits);
    for chunk in input.chunks(piece) {
        match parser.feed(chunk) {
            Ok(Some(used)) => assert!(used <= chunk.len()),
            Ok(None) => continue,
            Err(rejection) => {
                let mut out = Vec::new();
                rejection.write(&mut out);
                assert!((400..600).contains(&rejection.status));
                assert!(out.starts_with(b"HTTP/1.1 "));
                return;
            }
        }
        break;
    }
    let Some(request) = parser.request() else {
        return;
    };
    let _ = (
        request.path(),
        request.query(),
        request.host(),
        request.origin(),
    );
    let _ = request.cookies().count();
    let preference = ["chat".to_owned(), "superchat".to_owned()];
    let protocol = select_protocol(request.protocols(), &preference);
    let config = DeflateConfig::default();
    let agreement = request
        .extension_offers()
        .into_iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case(EXTENSION_NAME))
        .find_map(|offer| {
            let params = offer.params.iter().map(|(n, v)| (n.as_str(), v.as_deref()));
            accept_offer(&config, params).ok()
        });
    if let Ok(upgrade) = validate(request) {
        let mut out = Vec::new();
        write_accept(
            &mut out,
            upgrade.key,
            protocol,
            agreement.as_ref().map(|a| a.response.as_str()),
        );
        assert!(out.starts_with(b"HTTP/1.1 101"));
    }
}

fn client_side(input: &[u8], piece: usize) {
    let request = ClientRequest {
        host: "localhost",
        path: "/",
        protocols: &["chat"],
        extensions: Some("permessage-deflate; client_max_window_bits"),
        ..ClientRequest::default()
    };
    let mut out = Vec::new();
    let mut handshake = ClientHandshake::new(&request, &mut out);
    for chunk in input.chunks(piece) {
        match handshake.feed(chunk) {
            Ok(None) => continue,
            Ok(Some(accepted)) => assert!(accepted.consumed <= chunk.len()),
            Err(_) => {}
        }
        return;
    }
}
