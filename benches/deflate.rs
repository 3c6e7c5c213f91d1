//! permessage-deflate: compression and decompression throughput on JSON-like messages (what
//! dashboards and tickers send), on English-like text, and on random bytes (already
//! compressed media), with and without context takeover. The compression ratio of each
//! corpus is printed before the measurements.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringws::proto::deflate::{Compressor, Decompressor, DeflateConfig, Direction};

/// A small deterministic generator, so every run measures the same bytes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn json(len: usize) -> Vec<u8> {
    let mut rng = Lcg(7);
    let symbols = ["ACME", "GLOBEX", "INITECH", "UMBRELLA", "HOOLI", "STARK"];
    let mut out = String::with_capacity(len + 128);
    out.push('[');
    while out.len() < len {
        let n = rng.next();
        out.push_str(&format!(
            r#"{{"symbol":"{}","price":{}.{:02},"volume":{},"ts":{}}},"#,
            symbols[(n % 6) as usize],
            50 + n % 200,
            n % 100,
            n % 100_000,
            1_700_000_000_000u64 + rng.next() % 1_000_000
        ));
    }
    out.truncate(len);
    out.into_bytes()
}

fn text(len: usize) -> Vec<u8> {
    let words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "server",
        "message",
        "latency",
        "throughput",
    ];
    let mut rng = Lcg(11);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(words[(rng.next() % words.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn random(len: usize) -> Vec<u8> {
    let mut rng = Lcg(13);
    (0..len).map(|_| rng.next() as u8).collect()
}

fn direction(no_context_takeover: bool) -> Direction {
    Direction {
        window_bits: 15,
        no_context_takeover,
    }
}

fn deflate(c: &mut Criterion) {
    let config = DeflateConfig::default();
    let mut group = c.benchmark_group("deflate");
    for len in [256usize, 16 << 10] {
        for (name, corpus) in [
            ("json", json(len)),
            ("text", text(len)),
            ("random", random(len)),
        ] {
            let id = format!("{name}/{len}");
            group.throughput(Throughput::Bytes(len as u64));
            for (mode, fresh) in [("compress_fresh", true), ("compress_takeover", false)] {
                let Some(mut compressor) = Compressor::new(direction(fresh), &config) else {
                    continue;
                };
                let mut out = Vec::new();
                compressor.compress(&corpus, &mut out);
                eprintln!(
                    "{mode} {id}: {} -> {} bytes, ratio {:.2}",
                    len,
                    out.len(),
                    len as f64 / out.len() as f64
                );
                group.bench_function(BenchmarkId::new(mode, &id), |b| {
                    b.iter(|| {
                        out.clear();
                        compressor.compress(black_box(&corpus), &mut out);
                    })
                });
            }
            let Some(mut compressor) = Compressor::new(direction(true), &config) else {
                continue;
            };
            let mut compressed = Vec::new();
            compressor.compress(&corpus, &mut compressed);
            let mut decompressor = Decompressor::new(direction(true));
            let mut out = Vec::with_capacity(len);
            group.bench_function(BenchmarkId::new("inflate", &id), |b| {
                b.iter(|| {
                    out.clear();
                    let _ = decompressor.inflate(black_box(&compressed), &mut out, len + 1024);
                    let _ = decompressor.finish_message(&mut out, len + 1024);
                    assert_eq!(out.len(), len);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, deflate);
criterion_main!(benches);
