//! Unmasking throughput: the byte-wise reference, every vector kernel this CPU has, the kernel
//! `apply_mask` picks at run time (`simd`), and a `memcpy` of the same buffer as the ceiling.
//!
//! The ids are read by other tooling; keep them: group `unmask`, functions `scalar`, `simd`,
//! `memcpy`, parameterised by the buffer length in bytes.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringws::proto::mask::{Kernel, apply_mask, apply_mask_scalar};

const LENGTHS: [usize; 9] = [16, 64, 256, 1024, 4096, 16384, 65536, 262_144, 1 << 20];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for len in LENGTHS {
        group.throughput(Throughput::Bytes(len as u64));
        let mut buf = vec![0x5au8; len];
        let source = vec![0xa5u8; len];

        group.bench_with_input(BenchmarkId::new("scalar", len), &len, |b, _| {
            b.iter(|| apply_mask_scalar(black_box(&mut buf), KEY, 1))
        });
        group.bench_with_input(BenchmarkId::new("simd", len), &len, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), KEY, 1))
        });
        for kernel in Kernel::available() {
            group.bench_with_input(BenchmarkId::new(kernel.name(), len), &len, |b, _| {
                b.iter(|| kernel.apply(black_box(&mut buf), KEY, 1))
            });
        }
        group.bench_with_input(BenchmarkId::new("memcpy", len), &len, |b, _| {
            b.iter(|| black_box(&mut buf).copy_from_slice(black_box(&source)))
        });
    }
    group.finish();
}

criterion_group!(benches, unmask);
criterion_main!(benches);
