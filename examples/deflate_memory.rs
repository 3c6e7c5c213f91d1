//! Measures what one connection's permessage-deflate state costs in memory: the resident
//! growth of holding 500 compressors (or decompressors), each having handled one message, per
//! window size, each measured in a fresh process so no freed memory is reused.
//! Run: `cargo run --release --example deflate_memory`.

use ringws::proto::deflate::{Compressor, Decompressor, DeflateConfig, Direction};

const COUNT: usize = 500;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    if let Some(bits) = std::env::args().nth(1).and_then(|b| b.parse().ok()) {
        return measure(bits);
    }
    println!("| window bits | compressor with context | decompressor with context |");
    println!("|---|---|---|");
    let exe = std::env::current_exe().expect("own path");
    for bits in [9u8, 10, 12, 15] {
        let output = std::process::Command::new(&exe)
            .arg(bits.to_string())
            .output()
            .expect("run the measurement");
        print!("{}", String::from_utf8_lossy(&output.stdout));
    }
}

fn measure(bits: u8) {
    let message: Vec<u8> = br#"{"symbol":"ACME","price":101.25,"volume":3000} "#.repeat(400);
    let config = DeflateConfig::default();
    let direction = Direction {
        window_bits: bits,
        no_context_takeover: false,
    };
    let mut sample = Vec::new();
    Compressor::new(direction, &config)
        .expect("window of 9 or more")
        .compress(&message, &mut sample);
    let before = resident_bytes();
    let compressors: Vec<Compressor> = (0..COUNT)
        .filter_map(|_| Compressor::new(direction, &config))
        .map(|mut c| {
            let mut out = Vec::new();
            c.compress(&message, &mut out);
            c
        })
        .collect();
    let compress_cost = (resident_bytes() - before) / COUNT;
    let before = resident_bytes();
    let decompressors: Vec<Decompressor> = (0..COUNT)
        .map(|_| {
            let mut d = Decompressor::new(direction);
            let mut out = Vec::new();
            let _ = d.inflate(&sample, &mut out, 1 << 20);
            let _ = d.finish_message(&mut out, 1 << 20);
            d
        })
        .collect();
    let decompress_cost = (resident_bytes() - before) / COUNT;
    println!(
        "| {bits} | {} KiB | {} KiB |",
        compress_cost / 1024,
        decompress_cost / 1024
    );
    drop((compressors, decompressors));
}
