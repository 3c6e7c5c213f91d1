//! What every message carries, so that the report can count each loss, duplicate, reordering
//! and corruption: the sender, a sequence number, a timestamp and a checksum.
//!
//! Layout (little-endian): sender u32 · sequence u32 · sent_at_ns u64 · checksum u32 ·
//! filler. 20 bytes is the smallest message. The checksum covers the first 16 bytes, a word
//! at a time; the filler is a byte ramp that starts where the sequence number says, checked
//! against the ramp it should be, so any flipped bit anywhere is caught while writing and
//! checking a message costs a copy and a compare, not a hash over every byte.

use std::fmt;

pub const MIN_SIZE: usize = 20;

/// 0, 1, ..., 255 twice: any 256-byte run of the filler is one slice of it.
static RAMP: [u8; 512] = {
    let mut ramp = [0u8; 512];
    let mut i = 0;
    while i < 512 {
        ramp[i] = i as u8;
        i += 1;
    }
    ramp
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The connection (echo) or publisher (fanout) that sent the message.
    pub sender: u32,
    pub sequence: u32,
    /// The machine's monotonic clock in nanoseconds: when the message was sent or due.
    pub sent_at_ns: u64,
}

/// Why a received message is not one that was sent intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    Length,
    Checksum,
    Filler,
    /// Intact, but from a sender that cannot have sent it here.
    Sender,
    /// Text where binary was sent, or the other way round.
    Kind,
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Corrupt::Length => "wrong length",
            Corrupt::Checksum => "stamp checksum mismatch",
            Corrupt::Filler => "payload bytes changed",
            Corrupt::Sender => "from the wrong sender",
            Corrupt::Kind => "wrong message type",
        })
    }
}

impl Stamp {
    /// Appends the message of `size` bytes (at least [`MIN_SIZE`]) to `out`.
    pub fn write(&self, size: usize, out: &mut Vec<u8>) {
        let mut head = [0u8; MIN_SIZE];
        head[..4].copy_from_slice(&self.sender.to_le_bytes());
        head[4..8].copy_from_slice(&self.sequence.to_le_bytes());
        head[8..16].copy_from_slice(&self.sent_at_ns.to_le_bytes());
        let sum = checksum(&head[..16]);
        head[16..].copy_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(&head);
        let mut left = size.saturating_sub(MIN_SIZE);
        let mut start = ramp_start(self.sequence);
        while left > 0 {
            let n = left.min(256);
            out.extend_from_slice(&RAMP[start..start + n]);
            start = (start + n) % 256;
            left -= n;
        }
    }

    /// Reads and checks a message that should have `size` bytes.
    pub fn read(message: &[u8], size: usize) -> Result<Stamp, Corrupt> {
        if message.len() != size.max(MIN_SIZE) {
            return Err(Corrupt::Length);
        }
        let word = |at: usize| {
            u32::from_le_bytes([
                message[at],
                message[at + 1],
                message[at + 2],
                message[at + 3],
            ])
        };
        if checksum(&message[..16]) != word(16) {
            return Err(Corrupt::Checksum);
        }
        let mut sent_at = [0u8; 8];
        sent_at.copy_from_slice(&message[8..16]);
        let stamp = Stamp {
            sender: word(0),
            sequence: word(4),
            sent_at_ns: u64::from_le_bytes(sent_at),
        };
        let mut start = ramp_start(stamp.sequence);
        for piece in message[MIN_SIZE..].chunks(256) {
            if !same_bytes(piece, &RAMP[start..start + piece.len()]) {
                return Err(Corrupt::Filler);
            }
            start = (start + piece.len()) % 256;
        }
        Ok(stamp)
    }

    /// The stamp as text, for messages that carry it in a field: `SENDER-SEQUENCE-NS-SUM`,
    /// the sum over the other three and `extra` (what else the message must hold intact).
    pub fn to_text(self, extra: u32) -> String {
        format!(
            "{}-{}-{}-{}",
            self.sender,
            self.sequence,
            self.sent_at_ns,
            self.text_sum(extra)
        )
    }

    /// Reads a stamp written by [`Stamp::to_text`] with the same `extra`.
    pub fn from_text(text: &str, extra: u32) -> Result<Stamp, Corrupt> {
        let mut parts = text.split('-');
        let mut next = || parts.next().ok_or(Corrupt::Checksum);
        let (sender, sequence, sent_at, sum) = (next()?, next()?, next()?, next()?);
        let stamp = Stamp {
            sender: sender.parse().map_err(|_| Corrupt::Checksum)?,
            sequence: sequence.parse().map_err(|_| Corrupt::Checksum)?,
            sent_at_ns: sent_at.parse().map_err(|_| Corrupt::Checksum)?,
        };
        if sum.parse::<u32>() != Ok(stamp.text_sum(extra)) {
            return Err(Corrupt::Checksum);
        }
        Ok(stamp)
    }

    fn text_sum(&self, extra: u32) -> u32 {
        let mut bytes = [0u8; 20];
        bytes[..4].copy_from_slice(&self.sender.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.sent_at_ns.to_le_bytes());
        bytes[16..].copy_from_slice(&extra.to_le_bytes());
        checksum(&bytes)
    }
}

/// Whether two slices of equal length hold the same bytes, compared eight at a time in
/// line: the filler of a small message is a few words, where a slice comparison would call
/// `memcmp`.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |bytes: &[u8]| {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        u64::from_ne_bytes(word)
    };
    let (mut left, mut right) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut differ = 0;
    for (x, y) in (&mut left).zip(&mut right) {
        differ |= word(x) ^ word(y);
    }
    let tail = left.remainder().iter().zip(right.remainder());
    differ == 0 && tail.fold(0, |differ, (x, y)| differ | (x ^ y)) == 0
}

fn ramp_start(sequence: u32) -> usize {
    (sequence as usize).wrapping_mul(31) % 256
}

/// FNV-1a over little-endian 32-bit words (a short tail is zero-padded). Each step, an XOR
/// then a multiplication by an odd number, is a bijection of the running hash, so a change
/// confined to one word (any single flipped bit) always changes the result; four
/// multiplications for a stamp instead of sixteen.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(4);
    let mut hash = 0x811c_9dc5u32;
    for word in &mut words {
        let word = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        hash = (hash ^ word).wrapping_mul(0x0100_0193);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut word = [0u8; 4];
        word[..tail.len()].copy_from_slice(tail);
        hash = (hash ^ u32::from_le_bytes(word)).wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_every_size() {
        for size in [0, 20, 21, 64, 276, 277, 1000, 5000] {
            let stamp = Stamp {
                sender: 7,
                sequence: 42,
                sent_at_ns: 123_456_789,
            };
            let mut out = Vec::new();
            stamp.write(size, &mut out);
            assert_eq!(out.len(), size.max(MIN_SIZE));
            assert_eq!(Stamp::read(&out, size), Ok(stamp));
        }
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let stamp = Stamp {
            sender: 1,
            sequence: 2,
            sent_at_ns: 3,
        };
        // Fillers of whole words, of words and a tail, and longer than one ramp.
        for size in [20, 27, 64, 300] {
            let mut out = Vec::new();
            stamp.write(size, &mut out);
            for bit in 0..out.len() * 8 {
                let mut bad = out.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(Stamp::read(&bad, size).is_err(), "size {size}, bit {bit}");
            }
            let short = &out[..size - 1];
            assert_eq!(Stamp::read(short, size), Err(Corrupt::Length));
        }
    }

    #[test]
    fn text_stamps_round_trip_and_catch_changes() {
        let stamp = Stamp {
            sender: 3,
            sequence: 99,
            sent_at_ns: 1_000_000_007,
        };
        let text = stamp.to_text(5);
        assert_eq!(Stamp::from_text(&text, 5), Ok(stamp));
        assert!(Stamp::from_text(&text, 6).is_err(), "another template");
        assert!(Stamp::from_text(&text.replace("-99-", "-98-"), 5).is_err());
        assert!(Stamp::from_text("3-99", 5).is_err());
    }
}
