//! `--handshakes N`: N connections at a time, each opening, upgrading and going away again
//! in a loop, to measure what a WebSocket handshake costs the server.
//!
//! Each round of a slot: a blocking connect (loopback completes it at once), the upgrade
//! request in one write, the 101 response read and checked, then a close with SO_LINGER 0:
//! the reset leaves no TIME_WAIT behind, so the loop never runs out of local ports.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::conn::{ACCEPT, KEY};
use crate::cpu_seconds;
use crate::epoll::{Epoll, READ};

/// One connection in its handshake.
struct Slot {
    stream: TcpStream,
    response: Vec<u8>,
}

impl Slot {
    fn open(addr: SocketAddr, request: &[u8]) -> io::Result<Slot> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.write_all(request)?;
        stream.set_nonblocking(true)?;
        Ok(Slot {
            stream,
            response: Vec::with_capacity(256),
        })
    }

    /// Reads what arrived: `Some(true)` once a correct 101 is complete, `Some(false)` when
    /// the answer is wrong or the server closed, `None` while more is to come.
    fn read(&mut self, scratch: &mut [u8]) -> Option<bool> {
        match self.stream.read(scratch) {
            Ok(0) => Some(false),
            Ok(n) => {
                self.response.extend_from_slice(&scratch[..n]);
                let end = self.response.windows(4).position(|w| w == b"\r\n\r\n")?;
                let head = String::from_utf8_lossy(&self.response[..end]);
                Some(
                    end + 4 == self.response.len()
                        && head.starts_with("HTTP/1.1 101")
                        && head.contains(ACCEPT),
                )
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => None,
            Err(_) => Some(false),
        }
    }

    /// Closes with a reset.
    fn reset(self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on the descriptor this slot owns, with a pointer to a local of
        // the size given; the kernel only reads it.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }
}

/// Runs `concurrency` handshake loops for `duration`; prints the counts and returns whether
/// every handshake succeeded.
pub fn run(
    addr: SocketAddr,
    host: &str,
    path: &str,
    concurrency: u32,
    duration: Duration,
) -> io::Result<bool> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    let epoll = Epoll::new()?;
    let mut slots = Vec::with_capacity(concurrency as usize);
    for token in 0..concurrency as u64 {
        let slot = Slot::open(addr, &request)?;
        epoll.add(slot.stream.as_raw_fd(), token, READ)?;
        slots.push(Some(slot));
    }
    let mut scratch = vec![0u8; 4096];
    let mut ready = Vec::with_capacity(1024);
    let (mut done, mut failed) = (0u64, 0u64);
    let started = Instant::now();
    let cpu_started = cpu_seconds();
    while started.elapsed() < duration {
        for event in epoll.wait(&mut ready, 10)? {
            let token = event.u64;
            let Some(slot) = slots[token as usize].as_mut() else {
                continue;
            };
            let Some(upgraded) = slot.read(&mut scratch) else {
                continue;
            };
            if upgraded {
                done += 1;
            } else {
                failed += 1;
            }
            if let Some(slot) = slots[token as usize].take() {
                epoll.delete(slot.stream.as_raw_fd())?;
                slot.reset();
            }
            let slot = Slot::open(addr, &request)?;
            epoll.add(slot.stream.as_raw_fd(), token, READ)?;
            slots[token as usize] = Some(slot);
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_started;
    for slot in slots.into_iter().flatten() {
        slot.reset();
    }
    println!(
        "epoll-client: {concurrency} handshakes at a time, {:.2} s measured",
        elapsed.as_secs_f64()
    );
    println!("handshakes {done} failed {failed}");
    println!(
        "throughput_handshakes_per_sec {:.0}",
        done as f64 / elapsed.as_secs_f64()
    );
    println!("cpu_seconds {cpu:.3}");
    Ok(failed == 0)
}
