//! Whether this kernel offers kernel TLS (`CONFIG_TLS`): the TCP upper-layer protocol `tls`
//! that takes record keys by setsockopt(TLS_TX/TLS_RX) and then encrypts and decrypts records
//! itself. Probed once at startup, never assumed.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelTls {
    pub available: bool,
    /// How the probe decided, for the startup log.
    pub detail: String,
}

/// Where the kernel lists the upper-layer protocols already registered.
const AVAILABLE_ULP: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// Probes for kernel TLS: listed in `tcp_available_ulp`, or, when not (the `tls` module may
/// load on demand), attachable to a connected loopback socket.
pub fn probe_kernel_tls() -> KernelTls {
    if let Ok(list) = std::fs::read_to_string(AVAILABLE_ULP)
        && list.split_whitespace().any(|ulp| ulp == "tls")
    {
        return KernelTls {
            available: true,
            detail: format!("`tls` is listed in {AVAILABLE_ULP}"),
        };
    }
    match attach_to_loopback() {
        Ok(()) => KernelTls {
            available: true,
            detail: "setsockopt(TCP_ULP, \"tls\") succeeded on a loopback socket".into(),
        },
        Err(err) => KernelTls {
            available: false,
            detail: format!("setsockopt(TCP_ULP, \"tls\"): {err}"),
        },
    }
}

/// TCP_ULP needs an established socket: make a loopback pair and try it on one end.
fn attach_to_loopback() -> io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (_server, _) = listener.accept()?;
    let name = b"tls";
    // SAFETY: setsockopt reads `name.len()` bytes from a live array; the descriptor belongs
    // to `client`, open for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
