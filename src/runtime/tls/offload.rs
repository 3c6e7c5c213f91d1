//! Kernel TLS offload: the requests that hand an established connection's record keys to
//! the kernel (`TCP_ULP "tls"`, then `TLS_TX` and `TLS_RX`), the key blocks they carry, and
//! the process-wide counts of connections offloaded and of those that stayed in user space.
//!
//! Setsockopt goes through io_uring, as connections are direct descriptors. The handoff
//! itself (when it is safe, what happens to queued plaintext) is `Io`'s: see
//! `io_handle/offload.rs`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::Fixed;
use rustls::{CipherSuite, ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};

use libc::{
    SOL_TLS, TLS_1_2_VERSION, TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128, TLS_CIPHER_AES_GCM_256,
    TLS_CIPHER_CHACHA20_POLY1305, TLS_RX, TLS_TX,
};

/// The upper-layer protocol's name, read by the kernel from here.
static ULP_NAME: [u8; 3] = *b"tls";

/// The largest `tls12_crypto_info_*` the kernel takes: AES-GCM-256 and ChaCha20-Poly1305.
const MAX_INFO: usize = 56;

/// Whether the kernel's TLS can carry this suite's records: AES-GCM (128, 256) and
/// ChaCha20-Poly1305, in TLS 1.3 or 1.2.
pub(crate) fn kernel_can_carry(suite: Option<SupportedCipherSuite>) -> bool {
    use CipherSuite::*;
    matches!(
        suite.map(|suite| suite.suite()),
        Some(
            TLS13_AES_128_GCM_SHA256
                | TLS13_AES_256_GCM_SHA384
                | TLS13_CHACHA20_POLY1305_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        )
    )
}

/// One direction's `struct tls12_crypto_info_*`: version, cipher, IV, key, salt, record
/// sequence number. Zeroed when dropped.
pub(crate) struct KeyBlock {
    bytes: [u8; MAX_INFO],
    len: usize,
}

impl KeyBlock {
    /// The block for `secrets`, whose next record has sequence number `seq`; `None` for a
    /// version or cipher the kernel does not take.
    pub fn new(
        version: ProtocolVersion,
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
    ) -> Option<Self> {
        let version = match version {
            ProtocolVersion::TLSv1_3 => TLS_1_3_VERSION,
            ProtocolVersion::TLSv1_2 => TLS_1_2_VERSION,
            _ => return None,
        };
        let mut block = Self {
            bytes: [0; MAX_INFO],
            len: 0,
        };
        // GCM's 12-byte nonce base is the salt (4) then the IV (8); ChaCha20-Poly1305 takes
        // all 12 as its IV and has no salt.
        let (cipher, key, iv, key_len, salted) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (TLS_CIPHER_AES_GCM_128, key, iv, 16, true)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (TLS_CIPHER_AES_GCM_256, key, iv, 32, true)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (TLS_CIPHER_CHACHA20_POLY1305, key, iv, 32, false)
            }
            _ => return None,
        };
        let (iv, key) = (iv.as_ref(), key.as_ref());
        // The kernel checks the block's size against the cipher's: a key of another length
        // would misplace every field after it.
        if key.len() != key_len || iv.len() != 12 {
            return None;
        }
        block.put(&version.to_ne_bytes());
        block.put(&cipher.to_ne_bytes());
        if salted {
            block.put(&iv[4..]);
            block.put(key);
            block.put(&iv[..4]);
        } else {
            block.put(iv);
            block.put(key);
        }
        block.put(&seq.to_be_bytes());
        Some(block)
    }

    fn put(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Drop for KeyBlock {
    fn drop(&mut self) {
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

/// setsockopt(SOL_TCP, TCP_ULP, "tls") on `fd`.
pub(crate) fn attach_ulp(fd: Fixed) -> squeue::Entry {
    opcode::SetSockOpt::new(
        fd,
        libc::SOL_TCP as u32,
        libc::TCP_ULP as u32,
        ULP_NAME.as_ptr().cast(),
        ULP_NAME.len() as u32,
    )
    .build()
}

/// setsockopt(SOL_TLS, TLS_TX or TLS_RX, `block`) on `fd`. The entry points into `block`,
/// which must stay put until the completion.
pub(crate) fn set_key(fd: Fixed, transmit: bool, block: &KeyBlock) -> squeue::Entry {
    opcode::SetSockOpt::new(
        fd,
        // Small positive constants of <linux/tls.h>, as io_uring takes them.
        SOL_TLS as u32,
        (if transmit { TLS_TX } else { TLS_RX }) as u32,
        block.bytes.as_ptr().cast(),
        block.len as u32,
    )
    .build()
}

/// The environment variable that sets how many records one transmit key seals before it
/// is replaced, in place of half the cipher's confidentiality limit: for tests, which must
/// see a key update without sending millions of records.
pub const REKEY_AFTER_ENV: &str = "RINGWS_TLS_KERNEL_REKEY_AFTER_RECORDS";

/// The override of [`REKEY_AFTER_ENV`], read once.
pub(crate) fn rekey_after_override() -> Option<u64> {
    static OVERRIDE: OnceLock<Option<u64>> = OnceLock::new();
    *OVERRIDE.get_or_init(|| {
        let value = std::env::var(REKEY_AFTER_ENV)
            .ok()
            .filter(|v| !v.is_empty())?;
        match value.parse::<u64>() {
            Ok(records) if records > 0 => Some(records),
            _ => {
                tracing::warn!("{REKEY_AFTER_ENV}={value:?} is not a positive count; ignored");
                None
            }
        }
    })
}

/// Connections whose records the kernel took, those that stayed in user space (or, past
/// the point of no return, closed), and the TLS 1.3 key updates of offloaded connections,
/// over the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelTlsCounts {
    pub offloaded: u64,
    pub fallbacks: u64,
    /// The peer's KeyUpdate, its new receive key set.
    pub key_updates_received: u64,
    /// Our KeyUpdate sent and the new transmit key set.
    pub key_updates_sent: u64,
}

static OFFLOADED: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static KEY_UPDATES_RECEIVED: AtomicU64 = AtomicU64::new(0);
static KEY_UPDATES_SENT: AtomicU64 = AtomicU64::new(0);
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// The counts so far.
pub fn kernel_tls_counts() -> KernelTlsCounts {
    KernelTlsCounts {
        offloaded: OFFLOADED.load(Ordering::Relaxed),
        fallbacks: FALLBACKS.load(Ordering::Relaxed),
        key_updates_received: KEY_UPDATES_RECEIVED.load(Ordering::Relaxed),
        key_updates_sent: KEY_UPDATES_SENT.load(Ordering::Relaxed),
    }
}

pub(crate) fn count_key_update(sent: bool) {
    let counter = if sent {
        &KEY_UPDATES_SENT
    } else {
        &KEY_UPDATES_RECEIVED
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_offloaded() {
    OFFLOADED.fetch_add(1, Ordering::Relaxed);
}

/// Counts a connection that could not be offloaded; the first is logged as a warning, the
/// rest at debug level, so a kernel that refuses every connection does not flood the log.
pub(crate) fn count_fallback(shard: usize, why: &str) {
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
    if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            shard,
            "kernel TLS: a connection stays on user-space records: {why} (logged once; \
             ringws_tls_kernel_fallbacks_total counts them all)"
        );
    } else {
        tracing::debug!(
            shard,
            "kernel TLS: a connection stays on user-space records: {why}"
        );
    }
}

static KEY_UPDATE_LOGGED: AtomicBool = AtomicBool::new(false);

/// A key update of a kernel TLS connection failed (a kernel before 6.14 refuses a second
/// key): the connection closes. Logged once as a warning, the rest at debug level.
pub(crate) fn log_key_update_failed(shard: usize, why: &str) {
    if !KEY_UPDATE_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            shard,
            "kernel TLS: a TLS 1.3 key update failed, so its connection is closed: {why} \
             (kernel TLS takes new keys from Linux 6.14; logged once)"
        );
    } else {
        tracing::debug!(shard, "kernel TLS: a key update failed: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn iv() -> Iv {
        Iv::from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn aes_gcm_256_block_is_laid_out_as_the_kernel_reads_it() {
        let secrets = ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([7; 32]),
            iv: iv(),
        };
        let block = KeyBlock::new(ProtocolVersion::TLSv1_3, 0x0102, &secrets).expect("a block");
        let bytes = block.as_bytes();
        assert_eq!(
            bytes.len(),
            56,
            "sizeof(struct tls12_crypto_info_aes_gcm_256)"
        );
        assert_eq!(&bytes[..4], &[0x04, 0x03, 52, 0][..], "version, cipher");
        assert_eq!(&bytes[4..12], &[5, 6, 7, 8, 9, 10, 11, 12][..], "iv");
        assert_eq!(&bytes[12..44], &[7; 32][..], "key");
        assert_eq!(&bytes[44..48], &[1, 2, 3, 4][..], "salt");
        assert_eq!(
            &bytes[48..],
            &[0, 0, 0, 0, 0, 0, 1, 2][..],
            "record sequence"
        );
    }

    #[test]
    fn a_key_of_the_wrong_length_gets_no_block() {
        let secrets = ConnectionTrafficSecrets::Aes128Gcm {
            key: AeadKey::from([7; 32]),
            iv: iv(),
        };
        assert!(KeyBlock::new(ProtocolVersion::TLSv1_3, 0, &secrets).is_none());
    }

    #[test]
    fn chacha_block_has_the_kernels_size_and_no_salt() {
        let chacha = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from([7; 32]),
            iv: iv(),
        };
        let block = KeyBlock::new(ProtocolVersion::TLSv1_3, 1, &chacha).expect("a block");
        let bytes = block.as_bytes();
        assert_eq!(
            bytes.len(),
            56,
            "sizeof(struct tls12_crypto_info_chacha20_poly1305)"
        );
        assert_eq!(
            &bytes[4..16],
            iv().as_ref(),
            "the whole nonce base is the iv"
        );
    }
}
