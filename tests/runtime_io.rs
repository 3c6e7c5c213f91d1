//! The io_uring runtime against real sockets, with a raw-bytes echo handler: no WebSocket.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringws::runtime::{self, CloseCause, Config, ConnId, Handler, Io, Runtime, ShardContext};

/// What the echo handler has seen, shared with the test thread.
#[derive(Default)]
struct Seen {
    opened: AtomicUsize,
    closed: AtomicUsize,
    deadlines: AtomicUsize,
    messages: Mutex<Vec<String>>,
}

enum Command {
    Note(String),
}

/// Echoes every byte; a connection that sends `deadline` gets a deadline that closes it,
/// and one that sends `later` a deadline moved from 50 to 400 ms.
struct Echo {
    seen: Arc<Seen>,
    /// When each connection's deadline is due: the runtime may call back earlier.
    due: HashMap<ConnId, Instant>,
}

impl Handler for Echo {
    type Message = Command;

    fn on_open(&mut self, _io: &mut Io, _conn: ConnId, _peer: SocketAddr) {
        self.seen.opened.fetch_add(1, Ordering::SeqCst);
    }

    fn on_data(&mut self, io: &mut Io, conn: ConnId, data: &mut [u8]) {
        if data == b"deadline" || data == b"later" {
            io.set_deadline(conn, Duration::from_millis(50));
            self.due.insert(conn, io.now() + Duration::from_millis(50));
        }
        if data == b"later" {
            io.set_deadline(conn, Duration::from_millis(400));
            self.due.insert(conn, io.now() + Duration::from_millis(400));
        }
        if !self.due.contains_key(&conn) {
            io.send(conn, Bytes::copy_from_slice(data));
        }
    }

    fn on_deadline(&mut self, io: &mut Io, conn: ConnId) {
        self.seen.deadlines.fetch_add(1, Ordering::SeqCst);
        if let Some(&due) = self.due.get(&conn)
            && io.now() < due
        {
            io.set_deadline_at(conn, due);
            return;
        }
        io.send(conn, Bytes::from_static(b"bye"));
        io.close(conn);
    }

    fn on_closed(&mut self, _io: &mut Io, _conn: ConnId, _cause: CloseCause) {
        self.seen.closed.fetch_add(1, Ordering::SeqCst);
    }

    fn on_message(&mut self, _io: &mut Io, message: Command) {
        let Command::Note(text) = message;
        self.seen.messages.lock().unwrap().push(text);
    }
}

/// The defaults on `shards` shards, listening on a port the kernel picks.
fn config(shards: usize) -> Config {
    let mut config = Config::default();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.shards = shards;
    config
}

fn start(config: Config) -> (Runtime<Command>, Arc<Seen>, SocketAddr) {
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    let runtime = runtime::start(config, move |_ctx: ShardContext<Command>| Echo {
        seen: shared.clone(),
        due: HashMap::new(),
    })
    .expect("start the runtime");
    let addr = runtime.local_addrs()[0];
    (runtime, seen, addr)
}

fn stop(runtime: Runtime<Command>) {
    runtime.shutdown();
    runtime.join().expect("shards end cleanly");
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn many_clients_get_their_bytes_back_in_any_pieces() {
    let (runtime, _, addr) = start(config(2));
    let clients: Vec<_> = (0..200u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                let data = pattern(i, 20_000 + i as usize * 37);
                let writer = {
                    let mut stream = stream.try_clone().unwrap();
                    let data = data.clone();
                    std::thread::spawn(move || {
                        // Pieces of 1..=997 bytes.
                        let mut at = 0;
                        let mut size = 1 + i as usize;
                        while at < data.len() {
                            let end = (at + size % 997 + 1).min(data.len());
                            stream.write_all(&data[at..end]).unwrap();
                            at = end;
                            size = size.wrapping_mul(31).wrapping_add(7);
                        }
                    })
                };
                let mut back = vec![0u8; data.len()];
                stream.read_exact(&mut back).unwrap();
                writer.join().unwrap();
                assert_eq!(back, data, "client {i}");
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    stop(runtime);
}

#[test]
fn large_transfer_to_a_slow_reader_is_exact() {
    let (runtime, _, addr) = start(config(1));
    let mut stream = connect(addr);
    let data = pattern(42, 8 << 20);
    let mut writer = stream.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut back = vec![0u8; data.len()];
    let mut at = 0;
    while at < back.len() {
        let n = stream
            .read(&mut back[at..(at + 4096).min(data.len())])
            .unwrap();
        assert!(n > 0, "closed early at {at}");
        at += n;
        if at % (1 << 20) < 4096 {
            std::thread::sleep(Duration::from_millis(20)); // read slowly now and then
        }
    }
    writer.join().unwrap();
    assert!(back == data, "8 MiB came back altered");
    stop(runtime);
}

#[test]
fn a_tiny_buffer_ring_loses_nothing() {
    // Four 512-byte buffers for 50 busy clients: the ring runs dry again and again.
    let mut config = config(1);
    config.recv_buffers = 4;
    config.recv_buffer_size = 512;
    let (runtime, _, addr) = start(config);
    let clients: Vec<_> = (0..50u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                let data = pattern(i + 1000, 64 << 10);
                let mut writer = stream.try_clone().unwrap();
                let sent = data.clone();
                let writer = std::thread::spawn(move || writer.write_all(&sent).unwrap());
                let mut back = vec![0u8; data.len()];
                stream.read_exact(&mut back).unwrap();
                writer.join().unwrap();
                assert!(back == data, "client {i} got altered bytes");
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    stop(runtime);
}

#[test]
fn a_reset_closes_only_that_connection() {
    let (runtime, seen, addr) = start(config(1));
    let mut steady = connect(addr);
    let doomed = connect(addr);
    // SO_LINGER 0: closing sends RST.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: sets a socket option on a live descriptor from a live struct of the right size.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&doomed),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    let mut doomed = doomed;
    doomed.write_all(&[1; 100]).unwrap();
    drop(doomed);
    for round in 0..10u8 {
        steady.write_all(&[round; 1000]).unwrap();
        let mut back = [0u8; 1000];
        steady.read_exact(&mut back).unwrap();
        assert_eq!(back, [round; 1000]);
    }
    wait_until(|| seen.closed.load(Ordering::SeqCst) >= 1);
    stop(runtime);
}

#[test]
fn a_full_descriptor_table_accepts_as_slots_free() {
    let mut config = config(1);
    config.max_connections_per_shard = 4;
    let (runtime, seen, addr) = start(config);
    let mut clients: Vec<TcpStream> = (0..10).map(|_| connect(addr)).collect();
    wait_until(|| seen.opened.load(Ordering::SeqCst) == 4);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        seen.opened.load(Ordering::SeqCst),
        4,
        "only four fit in the table"
    );
    // Free slots one at a time: each lets one more in.
    for (i, client) in clients.iter().take(6).enumerate() {
        client.shutdown(Shutdown::Both).unwrap();
        wait_until(|| seen.opened.load(Ordering::SeqCst) == 5 + i);
    }
    // Everyone accepted is served.
    for client in clients.iter_mut().skip(6) {
        client.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
    }
    stop(runtime);
}

#[test]
fn deadlines_fire_and_close_gracefully() {
    let (runtime, seen, addr) = start(config(1));
    let mut stream = connect(addr);
    stream.write_all(b"deadline").unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"bye", "the deadline's last words, then EOF");
    assert_eq!(seen.deadlines.load(Ordering::SeqCst), 1);
    stop(runtime);
}

/// A deadline moved later keeps its first wake-up (one timer entry per connection): the
/// handler hears it early, once, and the connection still ends at the later deadline.
#[test]
fn a_deadline_moved_later_wakes_early_once_and_fires_on_time() {
    let (runtime, seen, addr) = start(config(1));
    let mut stream = connect(addr);
    let sent = Instant::now();
    stream.write_all(b"later").unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"bye");
    assert!(
        sent.elapsed() >= Duration::from_millis(400),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(
        seen.deadlines.load(Ordering::SeqCst),
        2,
        "one early call, then the deadline"
    );
    stop(runtime);
}

#[test]
fn messages_from_another_thread_wake_an_idle_shard() {
    let (runtime, seen, _) = start(config(2));
    let remotes = runtime.remotes().to_vec();
    std::thread::spawn(move || {
        for i in 0..100 {
            remotes[i % 2].send(Command::Note(format!("note {i}")));
        }
    })
    .join()
    .unwrap();
    wait_until(|| seen.messages.lock().unwrap().len() == 100);
    stop(runtime);
}

#[test]
fn shutdown_closes_connections_and_ends_the_shards() {
    let mut config = config(2);
    config.shutdown_grace = Duration::from_millis(300);
    let (runtime, seen, addr) = start(config);
    let mut clients: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
    wait_until(|| seen.opened.load(Ordering::SeqCst) == 20);
    stop(runtime);
    for client in &mut clients {
        let mut rest = Vec::new();
        match client.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("unexpected error after shutdown: {e}"),
        }
    }
    assert_eq!(seen.closed.load(Ordering::SeqCst), 20);
}

fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not met within 10 s");
}
