//! What a peer can make the runtime hold is bounded: closing always ends, aborts reset, the
//! kernel reaps vanished peers, mailboxes refuse past their bound and drain in batches, a
//! panicking shard ends the process, bad settings are refused. Real sockets, a raw-bytes
//! handler: no WebSocket.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringws::runtime::socket::{
    get_int_option, set_int_option, set_keepalive, set_send_buffer, set_user_timeout,
};
use ringws::runtime::{
    self, CloseCause, Config, ConnId, Handler, Io, Keepalive, Runtime, ShardContext,
};

/// Far more than the peer's receive buffer and our send buffer (tcp_wmem max, 4 MiB) hold.
const FLOOD: usize = 16 << 20;

#[derive(Default)]
struct Seen {
    opened: AtomicUsize,
    /// When the handler called `close`.
    close_called: Mutex<Option<Instant>>,
    closed: Mutex<Vec<(CloseCause, Instant)>>,
    /// The loop turn (its `now`) each `Work` message was handled in.
    work_turns: Mutex<Vec<Instant>>,
}

#[derive(Debug)]
enum Message {
    /// Parks the shard until `release` hears something (or hangs up).
    Block {
        entered: Sender<()>,
        release: Receiver<()>,
    },
    Work,
}

/// Echoes bytes, except for commands: `flood` queues FLOOD bytes and closes, `flood-open`
/// queues them and keeps the connection open, `abort` queues a little and aborts, `panic`
/// panics.
struct Scripted {
    seen: Arc<Seen>,
    block: Bytes,
}

impl Scripted {
    fn flood(&self, io: &mut Io, conn: ConnId) {
        for _ in 0..FLOOD / self.block.len() {
            io.send(conn, self.block.clone());
        }
    }
}

impl Handler for Scripted {
    type Message = Message;

    fn on_open(&mut self, _io: &mut Io, _conn: ConnId, _peer: SocketAddr) {
        self.seen.opened.fetch_add(1, Ordering::SeqCst);
    }

    fn on_data(&mut self, io: &mut Io, conn: ConnId, data: &mut [u8]) {
        match &*data {
            b"flood" => {
                self.flood(io, conn);
                *self.seen.close_called.lock().unwrap() = Some(Instant::now());
                io.close(conn);
            }
            b"flood-open" => self.flood(io, conn),
            b"abort" => {
                io.send(conn, Bytes::from_static(b"never sent"));
                io.abort(conn);
            }
            b"panic" => panic!("handler failed on purpose"),
            _ => io.send(conn, Bytes::copy_from_slice(data)),
        }
    }

    fn on_deadline(&mut self, _io: &mut Io, _conn: ConnId) {}

    fn on_closed(&mut self, _io: &mut Io, _conn: ConnId, cause: CloseCause) {
        self.seen
            .closed
            .lock()
            .unwrap()
            .push((cause, Instant::now()));
    }

    fn on_message(&mut self, io: &mut Io, message: Message) {
        match message {
            Message::Block { entered, release } => {
                let _ = entered.send(());
                let _ = release.recv();
            }
            Message::Work => {
                self.seen.work_turns.lock().unwrap().push(io.now());
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// One shard listening on a port the kernel picks.
fn config() -> Config {
    let mut config = Config::default();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.shards = 1;
    config
}

fn start(config: Config) -> (Runtime<Message>, Arc<Seen>, SocketAddr) {
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    let runtime = runtime::start(config, move |_ctx: ShardContext<Message>| Scripted {
        seen: shared.clone(),
        block: Bytes::from(vec![b'x'; 64 << 10]),
    })
    .expect("start the runtime");
    let addr = runtime.local_addrs()[0];
    (runtime, seen, addr)
}

fn stop(runtime: Runtime<Message>) {
    runtime.shutdown();
    runtime.join().expect("shards end cleanly");
}

/// A client that reads nothing: a 4 KiB receive buffer.
fn non_reader(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    set_int_option(&stream, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the connection fails or ends; the error, if any.
fn read_to_failure(stream: &mut TcpStream) -> Option<ErrorKind> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Some(err.kind()),
        }
    }
}

fn wait_until(what: &str, within: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn one_close(seen: &Seen, within: Duration) -> (CloseCause, Instant) {
    wait_until("on_closed", within, || {
        !seen.closed.lock().unwrap().is_empty()
    });
    seen.closed.lock().unwrap()[0]
}

#[test]
fn a_peer_that_never_reads_is_gone_within_the_closing_deadlines() {
    let mut config = config();
    config.drain_timeout = Duration::from_secs(1);
    config.linger = Duration::from_millis(500);
    let slack = Duration::from_secs(1);
    let bound = config.drain_timeout + config.linger + slack;
    let (runtime, seen, addr) = start(config);
    let mut client = non_reader(addr);
    client.write_all(b"flood").unwrap();
    let (cause, closed_at) = one_close(&seen, Duration::from_secs(10));
    let called = seen.close_called.lock().unwrap().expect("close was called");
    let took = closed_at - called;
    assert!(
        took <= bound,
        "on_closed {took:?} after close; bound {bound:?}"
    );
    assert_eq!(cause, CloseCause::TimedOut);
    // The peer's socket was reset: what it buffered, then ECONNRESET.
    assert_eq!(
        read_to_failure(&mut client),
        Some(ErrorKind::ConnectionReset)
    );
    stop(runtime);
}

#[test]
fn a_peer_that_sends_its_fin_and_never_reads_is_gone_too() {
    let mut config = config();
    config.drain_timeout = Duration::from_secs(1);
    config.linger = Duration::from_millis(500);
    let bound = config.drain_timeout + config.linger + Duration::from_secs(1);
    let (runtime, seen, addr) = start(config);
    let mut client = non_reader(addr);
    client.write_all(b"flood-open").unwrap();
    wait_until("the flood is queued", Duration::from_secs(10), || {
        seen.opened.load(Ordering::SeqCst) == 1
    });
    std::thread::sleep(Duration::from_millis(100));
    let fin = Instant::now();
    client.shutdown(Shutdown::Write).unwrap();
    let (cause, closed_at) = one_close(&seen, Duration::from_secs(10));
    assert!(
        closed_at - fin <= bound,
        "{:?} after the FIN",
        closed_at - fin
    );
    assert_eq!(cause, CloseCause::TimedOut);
    assert_eq!(
        read_to_failure(&mut client),
        Some(ErrorKind::ConnectionReset)
    );
    stop(runtime);
}

#[test]
fn abort_resets_the_connection() {
    let (runtime, seen, addr) = start(config());
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"abort").unwrap();
    assert_eq!(
        read_to_failure(&mut client),
        Some(ErrorKind::ConnectionReset),
        "an abort resets; what it dropped never arrives"
    );
    assert_eq!(
        one_close(&seen, Duration::from_secs(5)).0,
        CloseCause::Local
    );
    stop(runtime);
}

#[test]
fn accepted_sockets_inherit_the_listeners_user_timeout_keepalive_and_send_buffer() {
    // What the runtime relies on to set these once per listener: Linux copies them to every
    // socket a listener accepts.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    set_user_timeout(&listener, Duration::from_millis(7_000)).unwrap();
    let keepalive = Keepalive {
        idle: Duration::from_secs(45),
        interval: Duration::from_secs(9),
        count: 4,
    };
    set_keepalive(&listener, Some(keepalive)).unwrap();
    assert_eq!(set_send_buffer(&listener, 24 << 10).unwrap(), 24 << 10);
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let tcp = |name| get_int_option(&accepted, libc::IPPROTO_TCP, name).unwrap();
    assert_eq!(tcp(libc::TCP_USER_TIMEOUT), 7_000);
    assert_eq!(tcp(libc::TCP_KEEPIDLE), 45);
    assert_eq!(tcp(libc::TCP_KEEPINTVL), 9);
    assert_eq!(tcp(libc::TCP_KEEPCNT), 4);
    let keepalive_on = get_int_option(&accepted, libc::SOL_SOCKET, libc::SO_KEEPALIVE).unwrap();
    assert_eq!(keepalive_on, 1);
    let send_buffer = get_int_option(&accepted, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap();
    assert_eq!(
        send_buffer,
        48 << 10,
        "the kernel reports twice the size set"
    );
}

#[test]
fn the_kernel_drops_a_peer_that_keeps_a_zero_window() {
    // No close from the handler, a drain deadline far away: only TCP_USER_TIMEOUT on the
    // runtime's accepted socket can end this connection, whose peer ACKs a zero window.
    let mut config = config();
    config.tcp_user_timeout = Duration::from_secs(1);
    config.drain_timeout = Duration::from_secs(600);
    let (runtime, seen, addr) = start(config);
    let mut client = non_reader(addr);
    client.write_all(b"flood-open").unwrap();
    let (cause, _) = one_close(&seen, Duration::from_secs(20));
    assert_eq!(cause, CloseCause::Error(libc::ETIMEDOUT));
    drop(client);
    stop(runtime);
}

#[test]
fn the_runtimes_idle_connections_run_the_keepalive_timer() {
    let mut config = config();
    config.keepalive = Some(Keepalive {
        idle: Duration::from_secs(42),
        interval: Duration::from_secs(5),
        count: 3,
    });
    let (runtime, seen, addr) = start(config);
    let client = TcpStream::connect(addr).unwrap();
    wait_until("accepted", Duration::from_secs(5), || {
        seen.opened.load(Ordering::SeqCst) == 1
    });
    // ss shows the server end's timer; its own end has none.
    let client_port = client.local_addr().unwrap().port();
    let filter = format!("( sport = :{} and dport = :{client_port} )", addr.port());
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established", &filter])
        .output()
        .expect("run ss (iproute2)");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let seconds = line
        .split("timer:(keepalive,")
        .nth(1)
        .and_then(|rest| rest.split("sec").next())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no keepalive timer on the server's socket: {line:?}"));
    assert!((40..=42).contains(&seconds), "keepalive in {seconds} s");
    stop(runtime);
}

#[test]
fn a_full_mailbox_refuses_and_gives_the_message_back() {
    let mut config = config();
    config.mailbox_bytes = 10_000;
    let (runtime, seen, _) = start(config);
    let remote = runtime.remotes()[0].clone();
    let (entered, entered_rx) = mpsc::channel();
    let (release_tx, release) = mpsc::channel();
    remote.send(Message::Block { entered, release });
    entered_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the shard is parked");
    for i in 0..10 {
        assert!(remote.try_send(Message::Work, 1000).is_ok(), "message {i}");
    }
    assert_eq!(remote.backlog(), 10_000);
    assert!(matches!(
        remote.try_send(Message::Work, 1),
        Err(Message::Work)
    ));
    remote.send(Message::Work); // the unbounded form still goes
    release_tx.send(()).unwrap();
    wait_until("the backlog drains", Duration::from_secs(5), || {
        remote.backlog() == 0 && seen.work_turns.lock().unwrap().len() == 11
    });
    stop(runtime);
}

#[test]
fn a_backlog_is_handled_in_batches_while_connections_are_served() {
    let mut config = config();
    config.mailbox_batch = 8;
    let (runtime, seen, addr) = start(config);
    let remote = runtime.remotes()[0].clone();
    // A thousand messages of 2 ms each: two seconds of work.
    for _ in 0..1000 {
        remote.try_send(Message::Work, 100).unwrap();
    }
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let asked = Instant::now();
    client.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).unwrap();
    let answered = asked.elapsed();
    let left = remote.backlog();
    assert_eq!(&back, b"ping");
    assert!(left > 0, "answered only once the backlog was gone");
    assert!(answered < Duration::from_secs(1), "echo took {answered:?}");
    wait_until("the backlog drains", Duration::from_secs(20), || {
        seen.work_turns.lock().unwrap().len() == 1000
    });
    let turns = seen.work_turns.lock().unwrap();
    let largest = turns
        .chunk_by(|a, b| a == b)
        .map(<[Instant]>::len)
        .max()
        .unwrap_or(0);
    assert!(largest <= 8, "{largest} messages in one turn");
    drop(turns);
    stop(runtime);
}

/// Set in the child process the panic test starts.
const PANIC_CHILD: &str = "RINGWS_TEST_PANIC_CHILD";

#[test]
fn a_panicking_shard_exits_the_process_with_70_naming_the_shard() {
    if std::env::var_os(PANIC_CHILD).is_some() {
        let (_runtime, _, addr) = start(config());
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(b"panic").unwrap();
        std::thread::sleep(Duration::from_secs(10));
        return; // the parent sees exit code 0: the process survived the panic
    }
    let test = "a_panicking_shard_exits_the_process_with_70_naming_the_shard";
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(PANIC_CHILD, "1")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "stderr: {stderr}");
    assert!(
        stderr.contains("ringws: shard 0 panicked: handler failed on purpose"),
        "stderr: {stderr}"
    );
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    type Change = fn(&mut Config);
    let cases: [(&str, Change); 6] = [
        ("shards", |c| c.shards = 0),
        ("recv_buffers", |c| c.recv_buffers = 1000),
        ("timer_tick", |c| c.timer_tick = Duration::ZERO),
        ("linger", |c| c.linger = Duration::MAX),
        ("drain_timeout", |c| c.drain_timeout = Duration::MAX),
        ("mailbox_batch", |c| c.mailbox_batch = 0),
    ];
    for (field, change) in cases {
        let mut config = config();
        change(&mut config);
        let refused = runtime::start(config, |_ctx: ShardContext<Message>| Scripted {
            seen: Arc::default(),
            block: Bytes::new(),
        });
        let err = refused.err().unwrap_or_else(|| panic!("{field}: started"));
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{field}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}
