//! What every message carries, so that the report can count each loss, duplicate, reordering
//! and corruption: the connection, a sequence number, a timestamp and a checksum.
//!
//! Layout (little-endian): connection u32 · sequence u32 · sent_at_ns u64 · checksum u32 ·
//! filler. 20 bytes is the smallest message; longer ones add filler derived from the sequence
//! number, covered by the checksum.

pub const MIN_SIZE: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub connection: u32,
    pub sequence: u32,
    /// The machine's monotonic clock in nanoseconds: when the message was sent or due.
    pub sent_at_ns: u64,
}

/// Why a received message is not one this connection sent intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    Length,
    Checksum,
    Connection,
}

impl Stamp {
    /// Appends the message of `size` bytes (at least [`MIN_SIZE`]) to `out`.
    pub fn write(&self, size: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.connection.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.sent_at_ns.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let filler = size.max(MIN_SIZE) - MIN_SIZE;
        out.extend((0..filler).map(|i| filler_byte(self.sequence, i)));
        let sum = checksum(&out[start..start + 16], &out[start + MIN_SIZE..]);
        out[start + 16..start + MIN_SIZE].copy_from_slice(&sum.to_le_bytes());
    }

    /// Reads and checks a message that `connection` should have sent with `size` bytes.
    pub fn read(message: &[u8], size: usize, connection: u32) -> Result<Stamp, Corrupt> {
        let stamp = Self::read_any(message, size)?;
        if stamp.connection != connection {
            return Err(Corrupt::Connection);
        }
        Ok(stamp)
    }

    /// Reads and checks a message of `size` bytes from any sender.
    pub fn read_any(message: &[u8], size: usize) -> Result<Stamp, Corrupt> {
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
        let mut sent_at = [0u8; 8];
        sent_at.copy_from_slice(&message[8..16]);
        if checksum(&message[..16], &message[MIN_SIZE..]) != word(16) {
            return Err(Corrupt::Checksum);
        }
        let stamp = Stamp {
            connection: word(0),
            sequence: word(4),
            sent_at_ns: u64::from_le_bytes(sent_at),
        };
        let filler_intact = message[MIN_SIZE..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == filler_byte(stamp.sequence, i));
        if !filler_intact {
            return Err(Corrupt::Checksum);
        }
        Ok(stamp)
    }
}

fn filler_byte(sequence: u32, index: usize) -> u8 {
    (sequence as usize).wrapping_mul(31).wrapping_add(index) as u8
}

/// FNV-1a over the header and the filler: cheap, and any flipped bit changes it.
fn checksum(head: &[u8], filler: &[u8]) -> u32 {
    head.iter().chain(filler).fold(0x811c_9dc5u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_every_size() {
        for size in [0, 20, 21, 64, 1000] {
            let stamp = Stamp {
                connection: 7,
                sequence: 42,
                sent_at_ns: 123_456_789,
            };
            let mut out = Vec::new();
            stamp.write(size, &mut out);
            assert_eq!(out.len(), size.max(MIN_SIZE));
            assert_eq!(Stamp::read(&out, size, 7), Ok(stamp));
        }
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let stamp = Stamp {
            connection: 1,
            sequence: 2,
            sent_at_ns: 3,
        };
        let mut out = Vec::new();
        stamp.write(40, &mut out);
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(Stamp::read(&bad, 40, 1).is_err(), "bit {bit}");
        }
        assert_eq!(Stamp::read(&out, 40, 2), Err(Corrupt::Connection));
        assert_eq!(Stamp::read(&out[..39], 40, 1), Err(Corrupt::Length));
    }
}
