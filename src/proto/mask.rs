//! Payload masking (RFC 6455 §5.3): XOR with a 4-byte key, and the keys a client draws.
//!
//! Every byte a client sends passes through here, so the hot path uses the widest vector unit
//! the CPU has, picked once at run time: AVX-512, AVX2 or SSE2 on x86-64, NEON on aarch64, and a
//! 64-bit word loop elsewhere. Input may arrive split at any byte, so every kernel takes any
//! length, any alignment and any key phase.
//!
//! [`MaskKeys`] makes the keys: one per frame a client sends.

use std::num::NonZeroU64;
use std::sync::OnceLock;

/// Below this length the setup of a vector loop costs more than it saves.
const VECTOR_MIN_LEN: usize = 32;

/// XORs `buf` with `key`, where `buf[0]` lines up with `key[phase % 4]`.
///
/// `phase` lets a payload split across reads be unmasked piece by piece: the next piece
/// starts at phase `(phase + buf.len()) % 4`.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    let key = rotate(key, phase);
    if buf.len() < VECTOR_MIN_LEN {
        xor_words(buf, key);
    } else {
        Kernel::best().xor(buf, key);
    }
}

/// Masking keys for the frames a client sends: a small, fast generator (xorshift64*), one
/// per connection.
///
/// Masking exists so that a hostile page in a browser cannot choose the bytes an
/// intermediary sees on the wire (RFC 6455 §10.3): browsers must draw keys an attacker
/// cannot predict. This generator is not built for that. Seeded from the operating system
/// ([`MaskKeys::from_entropy`], what a client session uses unless told otherwise) its keys
/// are unpredictable enough to anyone who cannot read the process's memory, and they cost a
/// few instructions each instead of a system call. A load generator or a test that talks to
/// a server under its own control needs keys that vary from frame to frame (so a server that
/// ignored the mask would be caught) and runs it can repeat: [`MaskKeys::seeded`].
#[derive(Clone, Debug)]
pub struct MaskKeys {
    /// Never zero, xorshift's one fixed point (which also keeps `Option<MaskKeys>` at 8 bytes).
    state: NonZeroU64,
}

impl MaskKeys {
    /// Keys that depend only on `seed`: the same seed gives the same keys.
    pub fn seeded(seed: u64) -> Self {
        // Spread consecutive seeds (connection numbers, say) over the whole state.
        let state = (seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        Self {
            state: NonZeroU64::new(state | 1).unwrap_or(NonZeroU64::MIN),
        }
    }

    /// Keys seeded from the operating system's random source (the clock, if it has none).
    pub fn from_entropy() -> Self {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = (nanos ^ (&raw const bytes as u64)).to_ne_bytes();
        }
        Self::seeded(u64::from_ne_bytes(bytes))
    }

    /// The key for the next frame.
    #[inline]
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        // A xorshift step maps every non-zero state to another non-zero state.
        self.state = NonZeroU64::new(x).unwrap_or(NonZeroU64::MIN);
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32).to_ne_bytes()
    }
}

/// The byte-wise reference implementation, kept for tests and benchmarks.
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(phase + i) & 3];
    }
}

/// One implementation of the XOR loop. Benchmarks and tests reach each one by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Portable: eight bytes at a time in a `u64`.
    Word,
    Sse2,
    Avx2,
    Avx512,
    Neon,
}

impl Kernel {
    const ALL: [Kernel; 5] = [
        Kernel::Word,
        Kernel::Sse2,
        Kernel::Avx2,
        Kernel::Avx512,
        Kernel::Neon,
    ];

    /// The kernels this CPU can run, slowest first.
    pub fn available() -> impl Iterator<Item = Kernel> {
        Self::ALL.into_iter().filter(|kernel| kernel.is_available())
    }

    /// The fastest kernel this CPU can run, detected once.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| Self::available().last().unwrap_or(Kernel::Word))
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Word => "word",
            Kernel::Sse2 => "sse2",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
        }
    }

    pub fn is_available(self) -> bool {
        match self {
            Kernel::Word => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Sse2 => std::arch::is_x86_feature_detected!("sse2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Same contract as [`apply_mask`], through this kernel. A kernel the CPU lacks falls back
    /// to [`Kernel::Word`], so no caller can reach an instruction the CPU does not have.
    pub fn apply(self, buf: &mut [u8], key: [u8; 4], phase: usize) {
        let kernel = if self.is_available() {
            self
        } else {
            Kernel::Word
        };
        kernel.xor(buf, rotate(key, phase));
    }

    /// XORs with a key already rotated to phase 0. `self` must be available.
    #[inline]
    fn xor(self, buf: &mut [u8], key: [u8; 4]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `self` came from `available()`/`best()` or was checked by `apply`, both of
            // which only yield kernels whose CPU feature `is_available` detected at run time.
            Kernel::Sse2 => unsafe { x86::xor_sse2(buf, key) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, AVX2 was detected.
            Kernel::Avx2 => unsafe { x86::xor_avx2(buf, key) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, AVX-512F was detected.
            Kernel::Avx512 => unsafe { x86::xor_avx512(buf, key) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above, NEON was detected.
            Kernel::Neon => unsafe { arm::xor_neon(buf, key) },
            _ => xor_words(buf, key),
        }
    }
}

/// The key as seen from a piece that starts at `phase`.
#[inline]
fn rotate(key: [u8; 4], phase: usize) -> [u8; 4] {
    // Byte i of the result is byte (i + phase) % 4 of the key: in a little-endian word,
    // a right rotation by whole bytes.
    u32::from_le_bytes(key)
        .rotate_right(8 * (phase & 3) as u32)
        .to_le_bytes()
}

/// The portable kernel, and the tail of every vector kernel. `key` is at phase 0.
#[inline]
fn xor_words(buf: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so at phase 0 again.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::xor_words;

    // Each kernel walks `buf` in whole vectors with unaligned loads and stores, then hands the
    // rest (shorter than one vector, starting at a multiple of 4 and so at key phase 0) to
    // `xor_words`. Every vector width is a multiple of 4, so the broadcast key stays in phase.

    /// # Safety
    /// The CPU must support SSE2.
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn xor_sse2(buf: &mut [u8], key: [u8; 4]) {
        const WIDTH: usize = 16;
        let mask = _mm_set1_epi32(i32::from_ne_bytes(key));
        let mut chunks = buf.chunks_exact_mut(WIDTH);
        for chunk in &mut chunks {
            let ptr = chunk.as_mut_ptr().cast::<__m128i>();
            // SAFETY: `chunk` is exactly WIDTH bytes of `buf`, exclusively borrowed; the
            // unaligned load and store need no alignment.
            unsafe { _mm_storeu_si128(ptr, _mm_xor_si128(_mm_loadu_si128(ptr), mask)) };
        }
        xor_words(chunks.into_remainder(), key);
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn xor_avx2(buf: &mut [u8], key: [u8; 4]) {
        const WIDTH: usize = 32;
        let mask = _mm256_set1_epi32(i32::from_ne_bytes(key));
        let mut chunks = buf.chunks_exact_mut(2 * WIDTH);
        for chunk in &mut chunks {
            let ptr = chunk.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `chunk` is exactly 2 * WIDTH bytes of `buf`, exclusively borrowed, so
            // `ptr` and `ptr.add(1)` each cover WIDTH bytes inside it; loads and stores are
            // the unaligned forms.
            unsafe {
                let low = _mm256_loadu_si256(ptr);
                let high = _mm256_loadu_si256(ptr.add(1));
                _mm256_storeu_si256(ptr, _mm256_xor_si256(low, mask));
                _mm256_storeu_si256(ptr.add(1), _mm256_xor_si256(high, mask));
            }
        }
        let mut rest = chunks.into_remainder();
        if rest.len() >= WIDTH {
            let (head, tail) = rest.split_at_mut(WIDTH);
            let ptr = head.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `head` is exactly WIDTH bytes, exclusively borrowed; unaligned forms.
            unsafe { _mm256_storeu_si256(ptr, _mm256_xor_si256(_mm256_loadu_si256(ptr), mask)) };
            rest = tail;
        }
        xor_words(rest, key);
    }

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn xor_avx512(buf: &mut [u8], key: [u8; 4]) {
        const WIDTH: usize = 64;
        let mask = _mm512_set1_epi32(i32::from_ne_bytes(key));
        let mut chunks = buf.chunks_exact_mut(WIDTH);
        for chunk in &mut chunks {
            let ptr = chunk.as_mut_ptr().cast::<__m512i>();
            // SAFETY: `chunk` is exactly WIDTH bytes of `buf`, exclusively borrowed; the
            // unaligned load and store need no alignment.
            unsafe { _mm512_storeu_si512(ptr, _mm512_xor_si512(_mm512_loadu_si512(ptr), mask)) };
        }
        xor_words(chunks.into_remainder(), key);
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::xor_words;

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn xor_neon(buf: &mut [u8], key: [u8; 4]) {
        const WIDTH: usize = 16;
        let mask = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_ne_bytes(key)));
        let mut chunks = buf.chunks_exact_mut(WIDTH);
        for chunk in &mut chunks {
            let ptr = chunk.as_mut_ptr();
            // SAFETY: `chunk` is exactly WIDTH bytes of `buf`, exclusively borrowed; vld1q_u8
            // and vst1q_u8 need only byte alignment.
            unsafe { vst1q_u8(ptr, veorq_u8(vld1q_u8(ptr), mask)) };
        }
        xor_words(chunks.into_remainder(), key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    /// Room for every alignment up to the widest vector, with guard bytes on both sides.
    const MAX_ALIGN: usize = 64;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 + 7) as u8).collect()
    }

    /// Every kernel, every length 0..=1024, every alignment within a 64-byte line and every key
    /// phase gives what the byte-wise reference gives, and touches nothing outside its slice.
    #[test]
    fn every_kernel_matches_the_reference() {
        let kernels: Vec<Kernel> = Kernel::available().collect();
        assert!(kernels.contains(&Kernel::Word));
        let guard = 0xa5;
        for len in 0..=1024 {
            let source = pattern(len);
            for phase in 0..4 {
                let mut expected = source.clone();
                apply_mask_scalar(&mut expected, KEY, phase);
                for align in 0..MAX_ALIGN {
                    for &kernel in &kernels {
                        let mut arena = vec![guard; align + len + MAX_ALIGN];
                        arena[align..align + len].copy_from_slice(&source);
                        kernel.apply(&mut arena[align..align + len], KEY, phase);
                        assert_eq!(
                            &arena[align..align + len],
                            &expected[..],
                            "{} len {len} align {align} phase {phase}",
                            kernel.name()
                        );
                        assert!(arena[..align].iter().all(|&b| b == guard));
                        assert!(arena[align + len..].iter().all(|&b| b == guard));
                    }
                }
            }
        }
    }

    #[test]
    fn apply_mask_matches_the_reference_at_every_split() {
        let source = pattern(300);
        let mut expected = source.clone();
        apply_mask_scalar(&mut expected, KEY, 0);
        for split in 0..=source.len() {
            let mut buf = source.clone();
            let (head, tail) = buf.split_at_mut(split);
            apply_mask(head, KEY, 0);
            apply_mask(tail, KEY, split);
            assert_eq!(buf, expected, "split at {split}");
        }
    }

    #[test]
    fn masking_twice_restores_the_input() {
        let source = pattern(4096);
        let mut buf = source.clone();
        apply_mask(&mut buf, KEY, 3);
        assert_ne!(buf, source);
        apply_mask(&mut buf, KEY, 3);
        assert_eq!(buf, source);
    }

    #[test]
    fn seeded_keys_repeat_and_differ_by_seed() {
        let take = |mut keys: MaskKeys| (0..64).map(|_| keys.next_key()).collect::<Vec<_>>();
        assert_eq!(take(MaskKeys::seeded(7)), take(MaskKeys::seeded(7)));
        assert_ne!(take(MaskKeys::seeded(7)), take(MaskKeys::seeded(8)));
        // Seed 0 is as good as any other: the state is never zero.
        let keys = take(MaskKeys::seeded(0));
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "keys repeat within 64 frames");
    }

    /// A client session draws its keys from the generator it was given, so a seeded session
    /// writes the same bytes every time.
    #[test]
    fn a_seeded_client_session_masks_with_the_seeded_keys() {
        use crate::proto::{Role, Session, SessionConfig};
        let frame = |seed| {
            let mut session = Session::new(Role::Client, SessionConfig::default())
                .with_mask_keys(MaskKeys::seeded(seed));
            let mut out = Vec::new();
            session
                .writer
                .send_binary(b"hello", &mut out)
                .expect("open");
            out
        };
        let out = frame(42);
        assert_eq!(out, frame(42));
        assert_ne!(out, frame(43));
        let key = MaskKeys::seeded(42).next_key();
        assert_eq!(&out[2..6], &key, "the frame's key is the generator's first");
        let mut payload = out[6..].to_vec();
        apply_mask(&mut payload, key, 0);
        assert_eq!(payload, b"hello");
        assert_eq!(std::mem::size_of::<Option<MaskKeys>>(), 8);
    }

    #[test]
    fn keys_from_entropy_differ_between_generators() {
        let mut a = MaskKeys::from_entropy();
        let mut b = MaskKeys::from_entropy();
        let a: Vec<_> = (0..4).map(|_| a.next_key()).collect();
        let b: Vec<_> = (0..4).map(|_| b.next_key()).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn best_is_available() {
        assert!(Kernel::best().is_available());
    }
}
