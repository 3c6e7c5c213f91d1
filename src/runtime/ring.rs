//! Ring setup: the fastest flags the kernel has, and a clear error for what it lacks.

use std::io;

use io_uring::{IoUring, Probe, opcode};

/// The opcodes the runtime cannot work without, with the kernel that brought each.
const REQUIRED: &[(u8, &str, &str)] = &[
    (opcode::Accept::CODE, "IORING_OP_ACCEPT", "5.5"),
    (
        opcode::RecvMulti::CODE,
        "IORING_OP_RECV (multishot, provided buffer rings)",
        "6.0",
    ),
    (opcode::SendMsg::CODE, "IORING_OP_SENDMSG", "5.3"),
    (
        opcode::Close::CODE,
        "IORING_OP_CLOSE (direct descriptors)",
        "5.15",
    ),
    (opcode::Shutdown::CODE, "IORING_OP_SHUTDOWN", "5.11"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
    (opcode::Read::CODE, "IORING_OP_READ", "5.6"),
];

/// Fails with a message naming each missing io_uring feature and the kernel it needs.
pub(crate) fn check_kernel() -> io::Result<()> {
    let ring = IoUring::new(8).map_err(|e| {
        io::Error::new(e.kind(), format!("io_uring is not available ({e}); ringws needs Linux 6.0 or newer with io_uring enabled"))
    })?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|(code, ..)| !probe.is_supported(*code))
        .map(|(_, name, kernel)| format!("{name} (Linux {kernel})"))
        .collect();
    if !missing.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("this kernel lacks {}", missing.join(", ")),
        ));
    }
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)",
        ));
    }
    Ok(())
}

/// A ring for one shard's thread: single issuer with deferred task running where the kernel
/// has them (6.1), else the plain setup.
pub(crate) fn build(entries: u32) -> io::Result<IoUring> {
    let cq = entries.saturating_mul(4);
    let best = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_submit_all()
        .setup_cqsize(cq)
        .build(entries);
    match best {
        Ok(ring) => Ok(ring),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                "io_uring SINGLE_ISSUER/DEFER_TASKRUN unavailable (Linux 6.1): using the plain setup"
            );
            IoUring::builder().setup_cqsize(cq).build(entries)
        }
        Err(err) => Err(err),
    }
}
