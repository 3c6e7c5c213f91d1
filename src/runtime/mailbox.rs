//! Messages to a shard from other shards and other threads, and the eventfd that wakes it.
//!
//! One mechanism serves both kinds of sender: an eventfd write wakes the shard's pending
//! read on its ring, whether the sender has a ring or not. A flag makes sure a burst of
//! messages costs one wake-up.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct Mailbox<M> {
    queue: Mutex<Vec<M>>,
    wake: OwnedFd,
    /// A wake-up is on its way and not yet consumed: later senders need not write again.
    notified: AtomicBool,
    /// The shard has been asked to shut down.
    pub stop: AtomicBool,
}

impl<M> Mailbox<M> {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd returns a new descriptor or -1, checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            queue: Mutex::new(Vec::new()),
            wake,
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    pub fn send(&self, message: M) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message);
        self.wake();
    }

    /// Wakes the shard unless a wake-up is already pending.
    pub fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to the eventfd we own. It can only fail
            // if the counter would overflow, which cannot happen with one write per wake.
            unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }

    /// Takes every queued message. Called by the shard after its wake read completed.
    pub fn drain(&self, into: &mut Vec<M>) {
        // Clear the flag first: a message queued after this point wakes the shard again.
        self.notified.store(false, Ordering::Release);
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        into.append(&mut queue);
    }

    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}
