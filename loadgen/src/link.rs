//! A simulated network link between a virtual client and its socket, in user space (this
//! kernel has no netem).
//!
//! Downlink: a pump task reads the socket no faster than the link's bandwidth (a token
//! bucket), in pieces of about 10 ms of transfer, and hands each piece on after the one-way
//! latency plus jitter. Reading slowly lets the kernel's receive buffer, made small with
//! `SO_RCVBUF`, fill up, so the server meets real TCP backpressure rather than a fast
//! reader with a slow clock.
//!
//! Uplink: each write waits the one-way latency plus jitter from when it was issued, then
//! leaves in pieces paced by the uplink bandwidth, so the server sees frames arrive in
//! fragments with gaps between them.
//!
//! Stalls: at random moments (exponentially spaced) both directions stop for a while, as a
//! mobile link does while it retransmits or changes cells.
//!
//! Jitter never reorders bytes: like TCP, a piece is never delivered before the one ahead.
//!
//! Over `wss://` the link carries TLS records: the session sits above the shaping, as a
//! client's TLS sits above its network.

use std::cell::{Cell, OnceCell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use ringws::runtime::socket::set_int_option;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_uring::net::TcpStream;

use crate::profile::Profile;
use crate::tls::Session;

/// Pieces the downlink holds between the socket and the client: bounds memory, and beyond
/// it the pump stops reading, which is what backpressure is.
const DOWNLINK_QUEUE: usize = 64;

/// A piece of the downlink with the instant it reaches the client, or the socket's error.
type Arriving = io::Result<(Instant, Vec<u8>)>;

/// A socket seen through a link profile; with no shaping, a plain pass-through.
pub struct Link {
    stream: Rc<TcpStream>,
    shaping: Option<Shaping>,
    /// `wss://`: the TLS session, once its handshake is done.
    tls: OnceCell<Session>,
}

struct Shaping {
    profile: Profile,
    /// Pieces on their way down; out of its cell while the (one) reader waits on it.
    arriving: Cell<Option<mpsc::Receiver<Arriving>>>,
    /// Bytes of the piece being handed out that the client has not taken yet.
    partial: RefCell<(Vec<u8>, usize)>,
    uplink: Bucket,
    /// The uplink delivers in order: no piece before the previous one.
    up_last: Cell<Instant>,
    stalls: Rc<Stalls>,
    rng: Rc<Rng>,
}

impl Link {
    /// Wraps a connected socket. A shaped link starts its downlink pump on the current
    /// tokio-uring runtime.
    pub fn new(stream: TcpStream, profile: Option<&Profile>) -> io::Result<Rc<Link>> {
        let stream = Rc::new(stream);
        let Some(profile) = profile.filter(|p| !p.is_ideal()) else {
            return Ok(Rc::new(Link {
                stream,
                shaping: None,
                tls: OnceCell::new(),
            }));
        };
        if let Some(bytes) = profile.receive_buffer {
            let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
            set_int_option(&*stream, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)?;
        }
        let rng = Rc::new(Rng::new(stream.as_raw_fd() as u64));
        let stalls = Rc::new(Stalls::new(profile, &rng));
        let (tx, rx) = mpsc::channel(DOWNLINK_QUEUE);
        tokio_uring::spawn(pump_downlink(
            stream.clone(),
            profile.clone(),
            stalls.clone(),
            rng.clone(),
            tx,
        ));
        let now = Instant::now();
        Ok(Rc::new(Link {
            stream,
            shaping: Some(Shaping {
                profile: profile.clone(),
                arriving: Cell::new(Some(rx)),
                partial: RefCell::new((Vec::new(), 0)),
                uplink: Bucket::new(profile.up_bits_per_sec, now),
                up_last: Cell::new(now),
                stalls,
                rng,
            }),
            tls: OnceCell::new(),
        }))
    }

    /// From now on, reads and writes go through `session` (whose handshake is done).
    pub fn start_tls(&self, session: Session) {
        let first = self.tls.set(session).is_ok();
        debug_assert!(first, "one TLS handshake per link");
    }

    /// Reads what has reached the client, as `TcpStream::read` does: `Ok(0)` at the end.
    pub async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self.tls.get() {
            Some(tls) => tls.read(self, buf).await,
            None => self.read_raw(buf).await,
        }
    }

    /// Writes everything, as `TcpStream::write_all` does, after the uplink's latency and at
    /// its bandwidth.
    pub async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self.tls.get() {
            Some(tls) => tls.write_all(self, buf).await,
            None => self.write_raw(buf).await,
        }
    }

    /// Reads the socket's bytes (TLS records on `wss://`) as they reach the client.
    pub async fn read_raw(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let Some(shaping) = &self.shaping else {
            return self.stream.read(buf).await;
        };
        loop {
            {
                let mut partial = shaping.partial.borrow_mut();
                let (piece, taken) = &mut *partial;
                if *taken < piece.len() {
                    let room = buf.capacity().max(1 << 10) - buf.len();
                    let n = room.min(piece.len() - *taken);
                    buf.extend_from_slice(&piece[*taken..*taken + n]);
                    *taken += n;
                    return (Ok(n), buf);
                }
            }
            let Some(mut arriving) = shaping.arriving.take() else {
                return (Err(io::Error::other("two readers on one link")), buf);
            };
            let next = arriving.recv().await;
            shaping.arriving.set(Some(arriving));
            match next {
                None => return (Ok(0), buf),
                Some(Err(error)) => return (Err(error), buf),
                Some(Ok((at, piece))) => {
                    sleep_until(at).await;
                    *shaping.partial.borrow_mut() = (piece, 0);
                }
            }
        }
    }

    /// Ends the connection both ways: a read waiting on it returns the end.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Writes bytes to the socket (TLS records on `wss://`) over the uplink.
    pub async fn write_raw(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let Some(shaping) = &self.shaping else {
            return self.stream.write_all(buf).await;
        };
        let profile = &shaping.profile;
        let delay = profile.one_way_latency + shaping.rng.jitter(profile.jitter);
        let due = (Instant::now() + delay).max(shaping.up_last.get());
        sleep_until(due).await;
        let piece_len = profile.piece_bytes(profile.up_bits_per_sec);
        let mut sent = 0;
        let mut piece = Vec::with_capacity(piece_len.min(buf.len()));
        while sent < buf.len() {
            shaping.stalls.wait().await;
            let n = piece_len.min(buf.len() - sent);
            sleep_until(shaping.uplink.take(n, Instant::now())).await;
            piece.clear();
            piece.extend_from_slice(&buf[sent..sent + n]);
            let (result, back) = self.stream.write_all(piece).await;
            piece = back;
            if let Err(error) = result {
                return (Err(error), buf);
            }
            sent += n;
        }
        shaping.up_last.set(Instant::now());
        (Ok(()), buf)
    }
}

/// Reads the socket at the downlink's pace and schedules each piece's arrival.
async fn pump_downlink(
    stream: Rc<TcpStream>,
    profile: Profile,
    stalls: Rc<Stalls>,
    rng: Rc<Rng>,
    tx: mpsc::Sender<Arriving>,
) {
    let piece_len = profile.piece_bytes(profile.down_bits_per_sec);
    let bucket = Bucket::new(profile.down_bits_per_sec, Instant::now());
    let mut last_arrival = Instant::now();
    loop {
        stalls.wait().await;
        let (result, piece) = stream.read(Vec::with_capacity(piece_len)).await;
        let n = match result {
            Ok(0) => return,
            Ok(n) => n,
            Err(error) => {
                let _ = tx.send(Err(error)).await;
                return;
            }
        };
        // The last byte of this piece crosses the link when the bucket allows it.
        let crossed = bucket.take(n, Instant::now());
        sleep_until(crossed).await;
        let at = crossed + profile.one_way_latency + rng.jitter(profile.jitter);
        last_arrival = at.max(last_arrival);
        if tx.send(Ok((last_arrival, piece))).await.is_err() {
            return;
        }
    }
}

/// A token bucket: bytes leave at `bits_per_sec`. Its depth of one piece's transfer time
/// absorbs the timer waking late, so the average rate holds, while an idle link cannot save
/// up more than one piece to burst.
struct Bucket {
    bits_per_sec: u64,
    /// When the link is next free.
    free_at: Cell<Instant>,
}

impl Bucket {
    fn new(bits_per_sec: u64, now: Instant) -> Self {
        Self {
            bits_per_sec,
            free_at: Cell::new(now),
        }
    }

    /// Reserves the link for `bytes`; returns when they have crossed it.
    fn take(&self, bytes: usize, now: Instant) -> Instant {
        if self.bits_per_sec == 0 {
            return now;
        }
        let transfer = Duration::from_secs_f64(bytes as f64 * 8.0 / self.bits_per_sec as f64);
        let earliest = now.checked_sub(transfer).unwrap_or(now);
        let done = self.free_at.get().max(earliest) + transfer;
        self.free_at.set(done);
        done
    }
}

/// Random stalls: both directions wait while one is on.
struct Stalls {
    mean_interval: Option<Duration>,
    length: Duration,
    until: Cell<Instant>,
    next: Cell<Instant>,
    rng: Rc<Rng>,
}

impl Stalls {
    fn new(profile: &Profile, rng: &Rc<Rng>) -> Self {
        let now = Instant::now();
        let stalls = Self {
            mean_interval: profile.stall_every,
            length: profile.stall_for,
            until: Cell::new(now),
            next: Cell::new(now),
            rng: rng.clone(),
        };
        stalls.schedule_next(now);
        stalls
    }

    fn schedule_next(&self, from: Instant) {
        if let Some(mean) = self.mean_interval {
            self.next.set(from + mean.mul_f64(self.rng.exponential()));
        }
    }

    /// Waits out the stall in progress, starting one if it is due.
    async fn wait(&self) {
        if self.mean_interval.is_none() {
            return;
        }
        let now = Instant::now();
        if now >= self.next.get() {
            let until = now + self.length;
            self.until.set(until);
            self.schedule_next(until);
        }
        if now < self.until.get() {
            sleep_until(self.until.get()).await;
        }
    }
}

/// xorshift64*: jitter and stall timing need spread, not secrecy.
pub struct Rng(Cell<u64>);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1))
    }

    /// Uniform in [0, 1).
    pub fn unit(&self) -> f64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, 2 × jitter): the profile's latency is the least delay, `jitter` the
    /// mean excess over it.
    fn jitter(&self, jitter: Duration) -> Duration {
        jitter.mul_f64(2.0 * self.unit())
    }

    /// Exponentially distributed with mean 1.
    pub fn exponential(&self) -> f64 {
        -(1.0 - self.unit()).ln()
    }
}
