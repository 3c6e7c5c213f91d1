//! The few epoll calls the client makes, each behind a safe method.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub struct Epoll {
    fd: OwnedFd,
}

/// Readiness for reading (level-triggered: one read per wake-up, the rest next turn).
pub const READ: u32 = libc::EPOLLIN as u32;
/// Readiness for reading and writing, while a write is left over.
pub const READ_WRITE: u32 = (libc::EPOLLIN | libc::EPOLLOUT) as u32;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for `events`, reporting `token` with each.
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    fn control(&self, op: i32, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is a live, initialised epoll_event the kernel only reads.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits at most `timeout_ms` and returns the ready (token, events) pairs in `ready`.
    pub fn wait<'a>(
        &self,
        ready: &'a mut Vec<libc::epoll_event>,
        timeout_ms: i32,
    ) -> io::Result<&'a [libc::epoll_event]> {
        let capacity = ready.capacity().max(1);
        ready.clear();
        ready.reserve(capacity);
        // SAFETY: the kernel writes at most `capacity` events into the vector's spare
        // capacity, which `reserve` guaranteed; `set_len` then covers only what it wrote.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                ready.as_mut_ptr(),
                capacity as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(&[]);
            }
            return Err(error);
        }
        // SAFETY: epoll_wait initialised the first `n` (≤ capacity) entries.
        unsafe { ready.set_len(n as usize) };
        Ok(ready)
    }
}
