//! What a completion belongs to, packed into the 64-bit user data of its submission.
//!
//! `[op: 8 bits][generation: 24 bits][index: 32 bits]`: the generation tells a completion of a
//! closed connection from one of the connection that reused its slot.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    /// `index` is the accept buffer; the generation field holds the ring it was armed on.
    Accept = 1,
    Recv,
    Send,
    /// shutdown(2) on the connection.
    Shutdown,
    Close,
    Cancel,
    /// The eventfd read that wakes the shard for its mailbox.
    Wake,
    /// setsockopt(2) on the connection.
    SockOpt,
    /// The eventfd read that wakes the shard when one of its extra rings has work.
    RingWake,
    /// A setsockopt that hands a TLS connection's records to the kernel.
    TlsOffload,
    /// The recvmsg reading a record other than application data from kernel TLS.
    TlsControl,
    /// The setsockopt of a kernel TLS connection's new receive key (the peer's KeyUpdate).
    TlsRxKey,
    /// Our KeyUpdate on a kernel TLS connection, and the setsockopt of the new transmit key.
    TlsTxKey,
    /// Our close_notify on a kernel TLS connection.
    TlsCloseNotify,
}

impl Op {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            1 => Self::Accept,
            2 => Self::Recv,
            3 => Self::Send,
            4 => Self::Shutdown,
            5 => Self::Close,
            6 => Self::Cancel,
            7 => Self::Wake,
            8 => Self::SockOpt,
            9 => Self::RingWake,
            10 => Self::TlsOffload,
            11 => Self::TlsControl,
            12 => Self::TlsRxKey,
            13 => Self::TlsTxKey,
            14 => Self::TlsCloseNotify,
            _ => return None,
        })
    }
}

const GENERATION_MASK: u32 = 0x00FF_FFFF;

pub(crate) fn pack(op: Op, index: u32, generation: u32) -> u64 {
    (u64::from(op as u8) << 56) | (u64::from(generation & GENERATION_MASK) << 32) | u64::from(index)
}

/// `(op, index, generation)`; `None` for user data this runtime never submits.
pub(crate) fn unpack(user_data: u64) -> Option<(Op, u32, u32)> {
    let op = Op::from_bits((user_data >> 56) as u8)?;
    Some((
        op,
        user_data as u32,
        (user_data >> 32) as u32 & GENERATION_MASK,
    ))
}

/// Generations wrap within the bits user data has for them.
pub(crate) fn next_generation(generation: u32) -> u32 {
    generation.wrapping_add(1) & GENERATION_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for op in [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Shutdown,
            Op::Close,
            Op::Cancel,
            Op::Wake,
            Op::SockOpt,
            Op::RingWake,
            Op::TlsOffload,
            Op::TlsControl,
            Op::TlsRxKey,
            Op::TlsTxKey,
            Op::TlsCloseNotify,
        ] {
            let packed = pack(op, 0xDEAD_BEEF, 0x12_3456);
            assert_eq!(unpack(packed), Some((op, 0xDEAD_BEEF, 0x12_3456)));
        }
        assert_eq!(unpack(0), None);
        assert_eq!(next_generation(GENERATION_MASK), 0);
    }
}
