//! Messages to a shard from other shards and other threads, and the eventfd that wakes it.
//!
//! One mechanism serves both kinds of sender: an eventfd write wakes the shard's pending
//! read on its ring, whether the sender has a ring or not. A flag makes sure a burst of
//! messages costs one wake-up. The queue is bounded by the cost senders declare, and the
//! shard takes a bounded batch per loop turn.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

struct Queue<M> {
    messages: VecDeque<(M, usize)>,
    /// The cost of `messages`.
    cost: usize,
}

pub(crate) struct Mailbox<M> {
    queue: Mutex<Queue<M>>,
    /// `queue.cost`, readable without the lock.
    backlog: AtomicUsize,
    /// What [`Mailbox::try_send`] lets the queue hold.
    limit: usize,
    wake: OwnedFd,
    /// A wake-up is on its way, or the shard will look again without one: later senders
    /// need not write the eventfd.
    notified: AtomicBool,
    /// The shard has been asked to shut down.
    pub stop: AtomicBool,
}

impl<M> Mailbox<M> {
    pub fn new(limit: usize) -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; it returns a new descriptor or -1, checked
        // before the descriptor is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            queue: Mutex::new(Queue {
                messages: VecDeque::new(),
                cost: 0,
            }),
            backlog: AtomicUsize::new(0),
            limit,
            wake,
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue<M>> {
        // A sender that panicked mid-push left the queue consistent: every change is one
        // push or one drain.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `message` whatever the backlog.
    pub fn send(&self, message: M) {
        self.lock().messages.push_back((message, 0));
        self.wake();
    }

    /// Queues `message` unless that would take the backlog past the limit; an empty mailbox
    /// takes any one message, so a message larger than the limit is late, never refused
    /// forever.
    pub fn try_send(&self, message: M, cost: usize) -> Result<(), M> {
        {
            let mut queue = self.lock();
            if queue.cost > 0 && queue.cost.saturating_add(cost) > self.limit {
                return Err(message);
            }
            queue.cost = queue.cost.saturating_add(cost);
            self.backlog.store(queue.cost, Ordering::Relaxed);
            queue.messages.push_back((message, cost));
        }
        self.wake();
        Ok(())
    }

    /// The cost queued now.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
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

    /// Moves up to `batch` messages into `into`, oldest first; returns whether more are
    /// left, in which case the shard must come back without waiting for a wake-up.
    pub fn take(&self, into: &mut Vec<M>, batch: usize) -> bool {
        let mut queue = self.lock();
        let count = queue.messages.len().min(batch);
        let mut cost = 0;
        into.extend(queue.messages.drain(..count).map(|(message, c)| {
            cost += c;
            message
        }));
        queue.cost -= cost;
        self.backlog.store(queue.cost, Ordering::Relaxed);
        let more = !queue.messages.is_empty();
        if !more {
            // Cleared under the lock: a sender that pushes after this sees the flag down and
            // writes the eventfd.
            self.notified.store(false, Ordering::Release);
        }
        more
    }

    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

/// Sends messages to one shard from any thread.
pub struct Remote<M> {
    pub(crate) mailbox: Arc<Mailbox<M>>,
}

impl<M> Clone for Remote<M> {
    fn clone(&self) -> Self {
        Self {
            mailbox: self.mailbox.clone(),
        }
    }
}

impl<M: Send> Remote<M> {
    /// Queues `message` and wakes the shard; messages from one sender arrive in order.
    /// Unbounded: for small control messages. Bulk goes through [`Remote::try_send`].
    pub fn send(&self, message: M) {
        self.mailbox.send(message);
    }

    /// Queues `message`, which costs `cost` (its size, say), unless the shard's mailbox
    /// would then hold more than [`Config::mailbox_bytes`](super::Config::mailbox_bytes);
    /// then gives it back. An empty mailbox takes any one message. Messages from one sender
    /// arrive in order, `send` and `try_send` alike.
    pub fn try_send(&self, message: M, cost: usize) -> Result<(), M> {
        self.mailbox.try_send(message, cost)
    }

    /// The cost of the messages queued for the shard and not yet handled.
    pub fn backlog(&self) -> usize {
        self.mailbox.backlog()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_refuses_and_gives_the_message_back() {
        let mailbox = Mailbox::new(100).unwrap();
        assert_eq!(mailbox.try_send("a", 60), Ok(()));
        assert_eq!(mailbox.try_send("b", 40), Ok(()));
        assert_eq!(mailbox.try_send("c", 1), Err("c"));
        assert_eq!(mailbox.backlog(), 100);
        mailbox.send("control"); // costs nothing, never refused
        let mut taken = Vec::new();
        assert!(mailbox.take(&mut taken, 1), "more left");
        assert_eq!(mailbox.backlog(), 40);
        assert_eq!(mailbox.try_send("c", 60), Ok(()));
        assert!(!mailbox.take(&mut taken, 10));
        assert_eq!(taken, ["a", "b", "control", "c"]);
        assert_eq!(mailbox.backlog(), 0);
    }

    #[test]
    fn an_empty_mailbox_takes_a_message_larger_than_the_bound() {
        let mailbox = Mailbox::new(10).unwrap();
        assert_eq!(mailbox.try_send("big", 1000), Ok(()));
        assert_eq!(mailbox.try_send("small", 1), Err("small"));
    }

    #[test]
    fn a_burst_writes_the_eventfd_once_and_a_partial_take_keeps_it_quiet() {
        let mailbox = Mailbox::new(usize::MAX).unwrap();
        for i in 0..10 {
            mailbox.send(i);
        }
        let mut counter = 0u64;
        let read = |counter: &mut u64| {
            // SAFETY: reads 8 bytes into a live u64 from the eventfd the mailbox owns.
            unsafe { libc::read(mailbox.wake_fd(), (&raw mut *counter).cast(), 8) }
        };
        assert_eq!(read(&mut counter), 8);
        assert_eq!(counter, 1, "one wake-up for the burst");
        let mut taken = Vec::new();
        assert!(mailbox.take(&mut taken, 4));
        mailbox.send(10);
        assert_eq!(
            read(&mut counter),
            -1,
            "the shard comes back anyway: no write"
        );
        assert!(mailbox.take(&mut taken, 4));
        assert!(!mailbox.take(&mut taken, 4));
        mailbox.send(11);
        assert_eq!(read(&mut counter), 8, "caught up: the next message wakes");
        assert_eq!(taken, (0..=10).collect::<Vec<_>>());
    }
}
