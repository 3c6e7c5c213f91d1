//! Payload masking (RFC 6455 §5.3): XOR with a 4-byte key.

/// XORs `buf` with `key`, where `buf[0]` lines up with `key[phase % 4]`.
///
/// `phase` lets a payload split across reads be unmasked piece by piece: the next piece
/// starts at phase `(phase + buf.len()) % 4`.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    apply_mask_scalar(buf, key, phase);
}

/// The byte-wise reference implementation.
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(phase + i) & 3];
    }
}
