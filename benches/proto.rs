//! The protocol core's other hot paths: UTF-8 validation, frame header decoding and parsing
//! an upgrade request.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringws::proto::frame::{
    Decoded, FrameHeader, MAX_HEADER_LEN, OpCode, decode_header, encode_header,
};
use ringws::proto::handshake::{Limits, RequestParser, validate};
use ringws::proto::utf8::{Utf8Validator, validate as validate_utf8};

fn utf8(c: &mut Criterion) {
    let len = 64 << 10;
    let ascii = "The quick brown fox jumps over the lazy dog. ".repeat(len / 45);
    let mixed = "Grüße, 世界! Привет 👋 ascii ascii ascii. ".repeat(len / 50);
    let mut invalid = mixed.clone().into_bytes();
    let last = invalid.len() - 1;
    invalid[last] = 0xff;

    let mut group = c.benchmark_group("utf8");
    for (name, input) in [
        ("ascii", ascii.as_bytes()),
        ("mixed", mixed.as_bytes()),
        ("invalid", &invalid[..]),
    ] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::new("whole", name), input, |b, input| {
            b.iter(|| validate_utf8(black_box(input)).is_ok())
        });
        // The streaming validator fed in 1 KiB reads, as a message arrives off the socket.
        group.bench_with_input(BenchmarkId::new("streaming_1k", name), input, |b, input| {
            b.iter(|| {
                let mut validator = Utf8Validator::default();
                input
                    .chunks(1024)
                    .try_for_each(|piece| validator.feed(black_box(piece)))
                    .and_then(|()| validator.finish())
                    .is_ok()
            })
        });
    }
    group.finish();
}

fn frame_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header");
    for (name, len) in [("7bit", 20u64), ("16bit", 1000), ("64bit", 1 << 20)] {
        let header = FrameHeader {
            fin: true,
            rsv1: false,
            opcode: OpCode::Binary,
            mask: Some([1, 2, 3, 4]),
            payload_len: len,
        };
        let mut wire = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut wire, &header);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| match decode_header(black_box(&wire[..n])) {
                Ok(Decoded::Header(header, used)) => black_box((header.payload_len, used)),
                _ => unreachable!(),
            })
        });
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            let mut out = [0u8; MAX_HEADER_LEN];
            b.iter(|| encode_header(black_box(&mut out), black_box(&header)))
        });
    }
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let request = b"GET /chat?room=1 HTTP/1.1\r\n\
Host: server.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Origin: https://example.com\r\n\
Cookie: session=abc123; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_and_validate", |b| {
        b.iter(|| {
            let mut parser = RequestParser::new(Limits::default());
            let used = parser.feed(black_box(request)).ok().flatten();
            let valid = parser.request().map(|request| validate(request).is_ok());
            black_box((used, valid))
        })
    });
    group.finish();
}

criterion_group!(benches, utf8, frame_header, handshake);
criterion_main!(benches);
