//! Whether this kernel offers kernel TLS (`CONFIG_TLS`): the TCP upper-layer protocol `tls`
//! that takes record keys by setsockopt(TLS_TX/TLS_RX) and then encrypts and decrypts records
//! itself; and whether it takes a second key (TLS 1.3 key updates, Linux 6.14). Probed once
//! at startup, never assumed.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

use super::offload::KeyBlock;

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelTls {
    pub available: bool,
    /// The kernel replaces a connection's keys (TLS 1.3 KeyUpdate), so an offloaded
    /// connection can update its keys as user-space records do.
    pub rekey: bool,
    /// How the probe decided, for the startup log.
    pub detail: String,
}

/// Where the kernel lists the upper-layer protocols already registered.
const AVAILABLE_ULP: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// Probes for kernel TLS on a connected loopback socket: the `tls` upper-layer protocol
/// attached (or listed in `tcp_available_ulp`), then a TLS 1.3 transmit key set twice, which
/// kernels before 6.14 refuse the second time.
pub fn probe_kernel_tls() -> KernelTls {
    let listed = std::fs::read_to_string(AVAILABLE_ULP)
        .is_ok_and(|list| list.split_whitespace().any(|ulp| ulp == "tls"));
    match probe_loopback() {
        Ok(Ok(())) => KernelTls {
            available: true,
            rekey: true,
            detail: "the `tls` upper-layer protocol took a TLS 1.3 key, and a second one \
                     (key updates)"
                .into(),
        },
        Ok(Err(err)) => KernelTls {
            available: true,
            rekey: false,
            detail: format!(
                "the `tls` upper-layer protocol attached, but took no second TLS 1.3 key \
                 (key updates need Linux 6.14): {err}"
            ),
        },
        Err(err) if listed => KernelTls {
            available: true,
            rekey: false,
            detail: format!(
                "`tls` is listed in {AVAILABLE_ULP}, but a loopback socket refused it: {err}"
            ),
        },
        Err(err) => KernelTls {
            available: false,
            rekey: false,
            detail: format!("setsockopt(TCP_ULP, \"tls\"): {err}"),
        },
    }
}

/// TCP_ULP needs an established socket: makes a loopback pair and tries it on one end.
/// The outer error: no `tls` upper-layer protocol; the inner: no second key.
fn probe_loopback() -> io::Result<io::Result<()>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (_server, _) = listener.accept()?;
    let fd = client.as_raw_fd();
    setsockopt(fd, libc::SOL_TCP, libc::TCP_ULP, b"tls")?;
    let secrets = ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from([0x5a; 32]),
        iv: Iv::from([0xa5; 12]),
    };
    let Some(block) = KeyBlock::new(ProtocolVersion::TLSv1_3, 0, &secrets) else {
        return Ok(Err(io::Error::other("no key block for AES-256-GCM")));
    };
    let key = block.as_bytes();
    Ok(setsockopt(fd, libc::SOL_TLS, libc::TLS_TX, key)
        .and_then(|()| setsockopt(fd, libc::SOL_TLS, libc::TLS_TX, key)))
}

fn setsockopt(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: setsockopt reads `value.len()` bytes from a live slice; `fd` belongs to a
    // socket the caller keeps open for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
