//! `epoll-client`: a closed-loop WebSocket echo client in one epoll loop, independent of the
//! project's code (std and libc only).
//!
//! N connections each keep K messages in flight: every echo that comes back earns the next
//! message. Sockets are nonblocking and level-triggered; a connection gets one read per
//! wake-up, and everything that read earned leaves in one write. Every echo is checked byte
//! for byte, and the counts are exact: after the measured time, sending stops and the
//! echoes in flight are collected (at most `--drain` seconds); what never came is lost.
//!
//! usage: epoll-client --url ws://HOST:PORT/PATH [--connections 100] [--pipeline 16]
//!                     [--size 20] [--duration 5] [--drain 5]
//!        epoll-client --url ws://HOST:PORT/pubsub/TOPIC --subscribers N --rate R [...]
//!        epoll-client --url ws://HOST:PORT/PATH --handshakes N [--duration 5]
//!
//! The second form is a fan-out: one more connection publishes R messages a second to the
//! topic, on a schedule, and N subscribers check that every message arrives, in order,
//! intact; throughput counts deliveries.
//!
//! The third form measures handshakes: N connections at a time open, upgrade and reset in a
//! loop (see `handshakes`); it prints `throughput_handshakes_per_sec`.
//!
//! Prints the counts, `throughput_msgs_per_sec N` (intact echoes in the measured time) and
//! `cpu_seconds S` (its own CPU time in the measured time);
//! exits 0 when every echo came back intact, 1 otherwise, 2 on a usage or connect error.

mod conn;
mod epoll;
mod handshakes;

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use conn::{Conn, Counts};
use epoll::{Epoll, READ, READ_WRITE};

struct Options {
    url: String,
    connections: u32,
    pipeline: u32,
    /// Fan-out: subscribers, and the publisher's messages per second.
    subscribers: u32,
    /// Handshakes in flight at once, when measuring handshakes.
    handshakes: u32,
    rate: f64,
    size: usize,
    duration: Duration,
    drain: Duration,
}

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("epoll-client: {error}");
            return ExitCode::from(2);
        }
    };
    let result = if options.handshakes > 0 {
        parse_url(&options.url).and_then(|(addr, host, path)| {
            handshakes::run(addr, &host, &path, options.handshakes, options.duration)
        })
    } else if options.subscribers > 0 {
        fanout(&options)
    } else {
        run(&options)
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("epoll-client: {error}");
            ExitCode::from(2)
        }
    }
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            url: String::new(),
            connections: 100,
            pipeline: 16,
            subscribers: 0,
            handshakes: 0,
            rate: 1000.0,
            size: 20,
            duration: Duration::from_secs(5),
            drain: Duration::from_secs(5),
        };
        while let Some(flag) = args.next() {
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<f64>()
                    .map_err(|_| format!("{flag}: not a number"))
            };
            let seconds = || {
                number().and_then(|s| {
                    Duration::try_from_secs_f64(s).map_err(|_| format!("{flag}: not a duration"))
                })
            };
            match flag.as_str() {
                "--url" => options.url = value.clone(),
                "--connections" => options.connections = number()? as u32,
                "--pipeline" => options.pipeline = number()? as u32,
                "--subscribers" => options.subscribers = number()? as u32,
                "--handshakes" => options.handshakes = number()? as u32,
                "--rate" => options.rate = number()?,
                "--size" => options.size = number()? as usize,
                "--duration" => options.duration = seconds()?,
                "--drain" => options.drain = seconds()?,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if options.url.is_empty() {
            return Err("--url ws://HOST:PORT/PATH is required".into());
        }
        if options.connections == 0 || options.pipeline == 0 {
            return Err("--connections and --pipeline must be at least 1".into());
        }
        Ok(options)
    }
}

/// ws://HOST:PORT/PATH into (address, host, path).
fn parse_url(url: &str) -> std::io::Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| std::io::Error::other("only ws:// URLs"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the host resolves to nothing"))?;
    let path = if path.is_empty() { "/" } else { path };
    Ok((addr, host.to_owned(), path.to_owned()))
}

fn run(options: &Options) -> std::io::Result<bool> {
    let (addr, host, path) = parse_url(&options.url)?;
    let mut conns = (0..options.connections)
        .map(|id| Conn::open(addr, &host, &path, (id, id), options.size))
        .collect::<std::io::Result<Vec<_>>>()?;
    let epoll = Epoll::new()?;
    // Whether each connection waits to become writable.
    let mut blocked = vec![false; conns.len()];
    for (token, conn) in conns.iter().enumerate() {
        epoll.add(conn.stream.as_raw_fd(), token as u64, READ)?;
    }
    let mut scratch = vec![0u8; 256 << 10];
    let mut ready = Vec::with_capacity(1024);

    let started = Instant::now();
    let cpu_started = cpu_seconds();
    let mut cpu_measured = 0.0;
    for conn in &mut conns {
        conn.queue(options.pipeline);
    }
    let mut deadline = started + options.duration;
    // (intact echoes in the measured time, its length), once it is over.
    let mut measured: Option<(u64, Duration)> = None;
    for (token, conn) in conns.iter_mut().enumerate() {
        flush(&epoll, conn, token, &mut blocked[token])?;
    }
    loop {
        let now = Instant::now();
        if measured.is_none() && now >= deadline {
            let intact = conns.iter().map(|c| c.counts.intact).sum();
            measured = Some((intact, now - started));
            cpu_measured = cpu_seconds() - cpu_started;
            deadline = now + options.drain;
        }
        if measured.is_some()
            && (now >= deadline || conns.iter().all(|c| c.ended || c.in_flight() == 0))
        {
            break;
        }
        for event in epoll.wait(&mut ready, 10)? {
            let (token, flags) = (event.u64 as usize, event.events);
            let conn = &mut conns[token];
            if flags & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                let arrived = conn.read(&mut scratch);
                if measured.is_none() {
                    conn.queue(arrived);
                }
            }
            if conn.ended {
                epoll.delete(conn.stream.as_raw_fd())?;
                continue;
            }
            flush(&epoll, conn, token, &mut blocked[token])?;
        }
    }

    let mut total = Counts::default();
    for conn in &conns {
        total.add(&conn.counts);
    }
    let ended = conns.iter().filter(|c| c.ended).count();
    let (in_window, elapsed) = measured.unwrap_or((0, started.elapsed()));
    let lost = total.sent - total.arrived();
    println!(
        "epoll-client: {} connections x {} in flight, {}-byte messages, {:.2} s measured",
        options.connections,
        options.pipeline,
        options.size.max(conn::MIN_SIZE),
        elapsed.as_secs_f64()
    );
    println!(
        "sent {} intact {} corrupted {} unexpected {} lost {} connections_ended {ended}",
        total.sent, total.intact, total.corrupted, total.unexpected, lost
    );
    println!(
        "messages per read {:.1}, per write {:.1}",
        total.arrived() as f64 / total.reads.max(1) as f64,
        total.sent as f64 / total.writes.max(1) as f64
    );
    println!(
        "throughput_msgs_per_sec {:.0}",
        in_window as f64 / elapsed.as_secs_f64()
    );
    println!("cpu_seconds {cpu_measured:.3}");
    Ok(ended == 0 && lost == 0 && total.corrupted == 0 && total.unexpected == 0)
}

/// The fan-out: connection 0 publishes on a schedule, the others only receive.
fn fanout(options: &Options) -> std::io::Result<bool> {
    let (addr, host, path) = parse_url(&options.url)?;
    // Subscribers first, so none misses the first message.
    let mut conns = (1..=options.subscribers)
        .map(|id| Conn::open(addr, &host, &path, (id, 0), options.size))
        .collect::<std::io::Result<Vec<_>>>()?;
    conns.push(Conn::open(addr, &host, &path, (0, 0), options.size)?);
    let publisher = conns.len() - 1;
    let epoll = Epoll::new()?;
    let mut blocked = vec![false; conns.len()];
    for (token, conn) in conns.iter().enumerate() {
        epoll.add(conn.stream.as_raw_fd(), token as u64, READ)?;
    }
    let mut scratch = vec![0u8; 256 << 10];
    let mut ready = Vec::with_capacity(1024);
    let started = Instant::now();
    let cpu_started = cpu_seconds();
    let mut cpu_measured = 0.0;
    let mut deadline = started + options.duration;
    let mut published: u64 = 0;
    let mut measured: Option<(u64, Duration)> = None;
    let delivered =
        |conns: &[Conn]| -> u64 { conns[..publisher].iter().map(|c| c.counts.intact).sum() };
    loop {
        let now = Instant::now();
        if measured.is_none() && now >= deadline {
            measured = Some((delivered(&conns), now - started));
            cpu_measured = cpu_seconds() - cpu_started;
            deadline = now + options.drain;
        }
        if measured.is_none() {
            // Every message due by now, however many: the schedule does not wait.
            let due = (now.duration_since(started).as_secs_f64() * options.rate) as u64 + 1;
            if due > published {
                conns[publisher].queue((due - published) as u32);
                published = due;
                flush(
                    &epoll,
                    &mut conns[publisher],
                    publisher,
                    &mut blocked[publisher],
                )?;
            }
        } else if now >= deadline
            || conns[..publisher]
                .iter()
                .all(|c| c.ended || u64::from(c.expected()) >= published)
        {
            break;
        }
        for event in epoll.wait(&mut ready, 1)? {
            let (token, flags) = (event.u64 as usize, event.events);
            let conn = &mut conns[token];
            if flags & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                conn.read(&mut scratch);
            }
            if conn.ended {
                epoll.delete(conn.stream.as_raw_fd())?;
                continue;
            }
            flush(&epoll, conn, token, &mut blocked[token])?;
        }
    }
    let mut total = Counts::default();
    for conn in &conns[..publisher] {
        total.add(&conn.counts);
    }
    let ended = conns.iter().filter(|c| c.ended).count();
    let (in_window, elapsed) = measured.unwrap_or((0, started.elapsed()));
    let expected = published * u64::from(options.subscribers);
    let lost = expected.saturating_sub(total.arrived());
    println!(
        "epoll-client: fan-out of {} msg/s to {} subscribers, {}-byte messages, {:.2} s measured",
        options.rate,
        options.subscribers,
        options.size.max(conn::MIN_SIZE),
        elapsed.as_secs_f64()
    );
    println!(
        "published {published} delivered {} corrupted {} unexpected {} lost {lost} \
         connections_ended {ended}",
        total.intact, total.corrupted, total.unexpected
    );
    println!(
        "throughput_msgs_per_sec {:.0}",
        in_window as f64 / elapsed.as_secs_f64()
    );
    println!("cpu_seconds {cpu_measured:.3}");
    Ok(ended == 0 && lost == 0 && total.corrupted == 0 && total.unexpected == 0)
}

/// User plus system CPU time this process has used.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Writes what `conn` has queued, and watches for writability while some is left.
fn flush(epoll: &Epoll, conn: &mut Conn, token: usize, blocked: &mut bool) -> std::io::Result<()> {
    let left = conn.flush();
    if left != *blocked {
        *blocked = left;
        let events = if left { READ_WRITE } else { READ };
        epoll.modify(conn.stream.as_raw_fd(), token as u64, events)?;
    }
    Ok(())
}
