//! The shard's ring: set up with the fastest flags the kernel has, a clear error for what it
//! lacks, and the one place requests are handed to the kernel.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fixed, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, Submitter, cqueue, opcode, squeue};

use super::socket;
use super::user_data::{Op, pack};

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

/// SO_LINGER {on, 0}: a close that resets the connection. A static, so the kernel may read
/// it whenever it runs the request.
pub(crate) static LINGER_ZERO: libc::linger = libc::linger {
    l_onoff: 1,
    l_linger: 0,
};

/// What this kernel can do beyond the required opcodes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Features {
    /// IORING_OP_URING_CMD setsockopt on a direct descriptor (Linux 6.7): aborts reset.
    pub setsockopt: bool,
}

/// Fails with a message naming each missing io_uring feature and the kernel it needs; finds
/// out what optional features there are.
pub(crate) fn check_kernel() -> io::Result<Features> {
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
    let setsockopt = match try_setsockopt(ring, &probe) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(
                "io_uring setsockopt unavailable ({err}; Linux 6.7): aborted connections close without a reset"
            );
            false
        }
    };
    Ok(Features { setsockopt })
}

/// Sets SO_LINGER {on, 0} through io_uring on a fresh socket registered as a direct
/// descriptor, exactly as an abort does: the probe cannot tell, only a first attempt.
fn try_setsockopt(mut ring: IoUring, probe: &Probe) -> io::Result<()> {
    if !probe.is_supported(opcode::SetSockOpt::CODE) {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let socket = socket::tcp_socket_for(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    ring.submitter().register_files(&[socket.as_raw_fd()])?;
    let entry = linger_zero(Fixed(0)).user_data(1);
    // SAFETY: the entry points only at the static LINGER_ZERO; the socket it names stays
    // registered (and open) until the ring is dropped, after the completion is reaped below.
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| io::Error::other("a new ring has no room"))?;
    ring.submit_and_wait(1)?;
    let result = ring
        .completion()
        .next()
        .map_or(-libc::EIO, |completion| completion.result());
    if result < 0 {
        return Err(io::Error::from_raw_os_error(-result));
    }
    Ok(())
}

/// setsockopt(SO_LINGER, {on, 0}) on `fd`.
pub(crate) fn linger_zero(fd: Fixed) -> squeue::Entry {
    opcode::SetSockOpt::new(
        fd,
        libc::SOL_SOCKET as u32,
        libc::SO_LINGER as u32,
        (&raw const LINGER_ZERO).cast(),
        std::mem::size_of::<libc::linger>() as u32,
    )
    .build()
}

/// One completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    /// Which of the shard's rings posted it.
    pub ring: usize,
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

/// A shard's ring and the count of requests the kernel still holds.
///
/// Dropping it cancels every request and waits (boundedly) for their completions, so memory
/// the kernel was given is not freed under it: declare it before that memory.
pub(crate) struct Ring {
    uring: IoUring,
    /// Requests pushed whose last completion is not reaped yet.
    in_flight: usize,
    /// Whether the kernel runs this ring's task work only inside our entries (deferred
    /// task running), never behind our back.
    defers: bool,
    /// Whether every completion of our entries so far has been reaped (see
    /// [`Ring::settled`]).
    reaped_all: bool,
}

/// How many times one reap enters the kernel for completions it still holds: enough for a
/// whole table closing at once, bounded so a turn still ends.
const MAX_REAP_ENTRIES: usize = 64;

/// Deferred completions (DEFER_TASKRUN) one entry runs when asked to. Since Linux 6.13 an
/// entry runs only as many as it waits for, at least 20, and keeps the rest for a later
/// entry without raising the task-run flag again: an extra ring, entered only when that
/// flag is up, would otherwise leave them (the cancellations of a mass close among them)
/// until new work arrives on it.
const DEFERRED_BATCH: usize = 4096;

/// What an entry waiting for one completion runs of the deferred work (Linux 6.13 and later).
const KERNEL_DEFERRED_PER_ENTRY: usize = 20;

impl Ring {
    /// A ring for one shard's thread, single issuer with deferred task running where the
    /// kernel has them (6.1), else the plain setup; and a sparse table of `table` direct
    /// descriptors.
    ///
    /// A shard's extra rings (`wake` given) are never waited on: they signal the eventfd
    /// `wake` when they have work, which wakes the shard's first ring, and raise the
    /// task-run flag, which [`Ring::submit_pending`] reads to know whether to enter.
    pub fn new(entries: u32, table: u32, wake: Option<RawFd>) -> io::Result<Self> {
        let cq = entries.saturating_mul(4);
        let mut builder = IoUring::builder();
        builder
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_submit_all()
            .setup_cqsize(cq);
        if wake.is_some() {
            builder.setup_taskrun_flag();
        }
        let (uring, defers) = match builder.build(entries) {
            Ok(ring) => (ring, true),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    "io_uring SINGLE_ISSUER/DEFER_TASKRUN unavailable (Linux 6.1): using the plain setup"
                );
                (IoUring::builder().setup_cqsize(cq).build(entries)?, false)
            }
            Err(err) => return Err(err),
        };
        uring
            .submitter()
            .register_files_sparse(table)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot register a direct-descriptor table of {table}: {e}"),
                )
            })?;
        if let Some(wake) = wake {
            uring.submitter().register_eventfd(wake)?;
        }
        Ok(Self {
            uring,
            in_flight: 0,
            defers,
            reaped_all: false,
        })
    }

    pub fn submitter(&self) -> Submitter<'_> {
        self.uring.submitter()
    }

    pub fn fd(&self) -> RawFd {
        self.uring.as_raw_fd()
    }

    /// Whether nothing the kernel did for this ring is unknown to us: it runs task work
    /// only inside our entries, and every completion since the last of them was reaped
    /// (none waits in the overflow list). Then every receive buffer it took was named by a
    /// completion we saw, and the entries it has not taken are ours to rewrite until the
    /// next entry.
    pub fn settled(&self) -> bool {
        self.defers && self.reaped_all
    }

    /// Queues `entry` for the next kernel entry, handing the queue over first if it is full.
    ///
    /// # Safety
    ///
    /// Every pointer `entry` carries (buffers, message headers, address slots, option
    /// values) must stay valid, and not be written by us where the kernel reads or read where
    /// it writes, until the request's last completion is reaped. The ring keeps that promise
    /// to the end: dropping it waits for every request to complete.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: the caller upholds this function's contract for `entry`.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                self.in_flight += 1;
                return;
            }
            // The submission queue is full: hand it to the kernel and retry.
            self.reaped_all = false;
            if let Err(err) = self.uring.submit() {
                tracing::error!("io_uring submit failed with a full queue: {err}");
                std::thread::yield_now();
            }
        }
    }

    /// Moves every completion the kernel has for this ring into `into`, marked as ring
    /// `ring`'s: those posted, those the completion queue had no room for, and those the
    /// ring's deferred work has yet to post.
    ///
    /// The deadlines fired after reaping would otherwise count requests whose completions
    /// already exist as stuck, and a busy turn would see a fraction of what is ready. A mass
    /// close (a shard's every connection at once) posts more completions than the queue
    /// holds, and the kernel keeps the rest in its overflow list until an entry asks for
    /// events; and an entry waiting for one completion runs only 20 pieces of deferred work
    /// (a cancellation's completion is one): 15,000 cancellations took over a second of
    /// turns, 20 at a time.
    pub fn reap(&mut self, ring: usize, into: &mut Vec<Completion>) {
        let start = into.len();
        for _ in 0..MAX_REAP_ENTRIES {
            let before = into.len();
            into.extend(self.uring.completion().map(|c| Completion {
                ring,
                user_data: c.user_data(),
                result: c.result(),
                flags: c.flags(),
            }));
            let (overflow, waiting) = {
                let submission = self.uring.submission();
                let overflow = submission.cq_overflow();
                (overflow, overflow || submission.taskrun())
            };
            self.reaped_all = !overflow;
            // An entry that ran as much deferred work as the kernel runs by default may have
            // left more behind, without a flag to say so.
            let large = into.len() - before >= KERNEL_DEFERRED_PER_ENTRY;
            if !waiting && !large {
                break;
            }
            if let Err(err) = self.run_deferred() {
                tracing::debug!("io_uring entry to run deferred completions failed: {err}");
                break;
            }
        }
        let ended = into[start..]
            .iter()
            .filter(|c| !cqueue::more(c.flags))
            .count();
        self.in_flight = self.in_flight.saturating_sub(ended);
    }

    /// Submits what was pushed and waits up to `wait` for a completion (not at all for zero).
    pub fn enter(&mut self, wait: Duration) -> io::Result<()> {
        self.enter_for(1, wait)
    }

    /// Submits what was pushed, runs up to [`DEFERRED_BATCH`] pieces of the kernel's deferred
    /// work (asking for that many completions, without waiting for them) and moves
    /// overflowed completions into the queue.
    fn run_deferred(&mut self) -> io::Result<()> {
        self.enter_for(DEFERRED_BATCH, Duration::ZERO)
    }

    /// Submits what was pushed and waits up to `wait` for `want` completions.
    fn enter_for(&mut self, want: usize, wait: Duration) -> io::Result<()> {
        self.reaped_all = false;
        let timeout = Timespec::from(wait);
        let args = SubmitArgs::new().timespec(&timeout);
        match self.uring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Submits what was pushed and runs the kernel's deferred work, without waiting: for a
    /// shard's extra rings, entered only when they have something to do.
    pub fn submit_pending(&mut self) -> io::Result<()> {
        let pending = {
            let submission = self.uring.submission();
            !submission.is_empty() || submission.taskrun() || submission.cq_overflow()
        };
        if !pending {
            return Ok(());
        }
        self.run_deferred()
    }

    /// Whether completions wait to be reaped.
    pub fn has_completions(&mut self) -> bool {
        !self.uring.completion().is_empty()
    }

    /// Cancels every request and reaps completions until none is left or `bound` passes.
    fn cancel_everything(&mut self, bound: Duration) {
        if self.in_flight == 0 {
            return;
        }
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any()).build();
        // SAFETY: a cancel carries no pointers.
        unsafe { self.push(&cancel.user_data(pack(Op::Cancel, 0, 0))) };
        let deadline = Instant::now() + bound;
        let mut completions = Vec::new();
        while self.in_flight > 0 && Instant::now() < deadline {
            if self.enter(Duration::from_millis(10)).is_err() {
                break;
            }
            completions.clear();
            self.reap(0, &mut completions);
        }
        if self.in_flight > 0 {
            tracing::warn!(
                in_flight = self.in_flight,
                "io_uring requests still in flight as the ring closes"
            );
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.cancel_everything(Duration::from_secs(1));
    }
}
