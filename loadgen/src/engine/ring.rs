//! The thread's ring: set up with the cheapest completion delivery the kernel has, and
//! submissions that never fail for a full queue.

use std::io;
use std::time::Duration;

use io_uring::{IoUring, squeue, types};

pub struct Ring {
    ring: IoUring,
}

impl Ring {
    /// A ring with room for `entries` submissions. SINGLE_ISSUER | DEFER_TASKRUN (Linux
    /// 6.1) make completions wait for this thread's next enter instead of interrupting it:
    /// the server's writes wake it only when it sleeps. Older kernels get the plain setup.
    pub fn new(entries: u32, completions: u32) -> io::Result<Ring> {
        let best = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_submit_all()
            .setup_cqsize(completions)
            .build(entries);
        let ring = match best {
            Ok(ring) => ring,
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
                .setup_cqsize(completions)
                .build(entries)?,
            Err(error) => return Err(error),
        };
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)",
            ));
        }
        Ok(Ring { ring })
    }

    pub fn submitter(&self) -> io_uring::Submitter<'_> {
        self.ring.submitter()
    }

    /// Queues `entry`, submitting what is queued first if the queue is full.
    ///
    /// # Safety
    /// Every buffer and file `entry` refers to must stay valid and unmoved until its
    /// completion (its last, for a multishot operation) has been reaped.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller keeps what `entry` refers to alive until its completion.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Submits what is queued and waits until a completion is ready or `wait` has passed.
    pub fn submit_and_wait(&mut self, wait: Duration) -> io::Result<()> {
        let timeout = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&timeout);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Takes the completions ready now: (user data, result, flags) each.
    pub fn completions(&mut self, into: &mut Vec<(u64, i32, u32)>) {
        into.clear();
        into.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
    }
}
