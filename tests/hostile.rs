//! Hostile clients against the real `ringws serve`: each test mounts one attack on a
//! resource a client can make the server hold (time, memory, a connection slot, CPU) and
//! asserts the bound, from the server's /proc and the kernel's socket table, while a
//! well-behaved client is still served.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringws::proto::OpCode;
use ringws::proto::deflate::{Compressor, Decompressor, DeflateConfig, Direction};
use ringws::proto::frame::{FrameHead, write_frame};
use support::{
    Server, expect_close, frame, metrics, open, read_frame, read_head, send, tcp_state,
    upgrade_request, wait_for_metrics, within,
};

fn connect_small(addr: SocketAddr, rcvbuf: i32) -> TcpStream {
    support::connect_small(addr, rcvbuf, Duration::from_secs(20))
}

/// Upgrades a stream made by [`connect_small`].
fn upgrade(stream: &mut TcpStream, addr: SocketAddr, path: &str, extra: &[&str]) {
    stream
        .write_all(upgrade_request(addr, path, extra).as_bytes())
        .expect("send the upgrade");
    let head = read_head(stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

/// A well-behaved client is served: an echo comes back whole.
fn still_served(addr: SocketAddr) {
    let mut client = open(addr, "/");
    send(&mut client, OpCode::Text, true, b"are you there?");
    let (header, payload) = read_frame(&mut client);
    assert_eq!(
        (header.opcode, payload.as_slice()),
        (OpCode::Text, &b"are you there?"[..])
    );
}

/// Writes `bytes` from a thread: the peer may stop reading them at any point.
fn write_in_background(stream: &TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut stream = stream.try_clone().expect("clone a socket");
    std::thread::spawn(move || {
        let _ = stream.write_all(&bytes);
    })
}

/// `count` masked echo requests of `size` bytes each.
fn echo_requests(count: usize, size: usize) -> Vec<u8> {
    let one = frame(OpCode::Binary, true, &vec![0x42; size]);
    one.repeat(count)
}

/// Whether the server still holds the connection the client `stream` has to it.
fn held(server: SocketAddr, stream: &TcpStream) -> bool {
    let client = stream.local_addr().expect("client address");
    matches!(
        tcp_state(server, client),
        Some("ESTABLISHED" | "CLOSE_WAIT" | "FIN_WAIT1" | "FIN_WAIT2" | "LAST_ACK" | "CLOSING")
    )
}

/// The attack of the reproduced bug: a client with a 4 KiB receive buffer sends 6 MB of
/// echo requests without reading, then `finale`. Once the server has decided to close, the
/// connection must be gone within the close timeout (plus the linger) whatever the client
/// does next, and the memory it pinned must come back.
fn stop_reading_then(finale: impl FnOnce(&mut TcpStream)) {
    let server = Server::start(&[
        "--shards",
        "1",
        "--idle-timeout",
        "30s",
        "--close-timeout",
        "1s",
        "--max-queued",
        "64MiB",
    ]);
    let rss_before = server.rss_bytes();
    let mut attacker = connect_small(server.addr, 4096);
    upgrade(&mut attacker, server.addr, "/", &[]);
    let writer = write_in_background(&attacker, echo_requests(96, 64 << 10));
    writer.join().expect("the writer");
    // The server has queued what it could not send; give it a moment to read it all.
    wait_for_metrics(server.addr, Duration::from_secs(10), |m| {
        m["ringws_connections"] >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let pinned = server.rss_bytes().saturating_sub(rss_before);
    finale(&mut attacker);
    let decided = Instant::now();
    // Close timeout 1 s, then the drain deadline (the close timeout again) and the linger
    // (2 s): well within 10 s.
    within(
        Duration::from_secs(10),
        "the server let go of the connection",
        || !held(server.addr, &attacker),
    );
    println!(
        "held {pinned} B of queue; gone {:?} after the server decided to close",
        decided.elapsed()
    );
    still_served(server.addr);
    wait_for_metrics(server.addr, Duration::from_secs(5), |m| {
        // The request for these metrics is the one connection left.
        m["ringws_connections"] == 1
    });
    // The queue's memory is back with the allocator: the server holds nothing for it.
    let rss_after = server.rss_bytes().saturating_sub(rss_before);
    assert!(
        rss_after < 48 << 20,
        "{rss_after} B still held after the connection ended (the queue pinned {pinned} B)"
    );
}

#[test]
fn a_client_that_stops_reading_then_breaks_the_protocol_is_gone_within_the_close_timeout() {
    stop_reading_then(|attacker| {
        let mut unmasked = Vec::new();
        write_frame(&mut unmasked, FrameHead::whole(OpCode::Text), b"x", None);
        attacker
            .write_all(&unmasked)
            .expect("send an unmasked frame");
    });
}

#[test]
fn a_client_that_stops_reading_then_sends_a_close_is_gone_within_the_close_timeout() {
    stop_reading_then(|attacker| {
        let close = frame(OpCode::Close, true, &1000u16.to_be_bytes());
        attacker.write_all(&close).expect("send a close frame");
    });
}

#[test]
fn a_client_that_stops_reading_then_sends_its_fin_is_gone_within_the_close_timeout() {
    stop_reading_then(|attacker| {
        attacker.shutdown(Shutdown::Write).expect("send a FIN");
    });
}

#[test]
fn a_paused_client_that_never_drains_is_dropped_after_the_idle_timeout() {
    let server = Server::start(&["--shards", "1", "--idle-timeout", "2s"]);
    let mut attacker = connect_small(server.addr, 4096);
    upgrade(&mut attacker, server.addr, "/", &[]);
    // Past the default 4 MiB queue bound: reading is paused, and the queue never moves.
    let writer = write_in_background(&attacker, echo_requests(128, 64 << 10));
    std::thread::sleep(Duration::from_millis(500));
    still_served(server.addr);
    within(
        Duration::from_secs(10),
        "a stalled queue ended its connection",
        || !held(server.addr, &attacker),
    );
    drop(writer);
    let m = metrics(server.addr);
    assert_eq!(m["ringws_send_stalled_closed_total"], 1, "{m:?}");
}

#[test]
fn a_ping_flood_without_reading_holds_no_more_than_the_queue_bound() {
    let server = Server::start(&["--shards", "1", "--idle-timeout", "3s"]);
    let rss_before = server.rss_bytes();
    let cpu_before = server.cpu_time();
    let mut attacker = connect_small(server.addr, 4096);
    upgrade(&mut attacker, server.addr, "/", &[]);
    // Two million empty pings: 12 MB on the wire, each owed a pong the client never reads.
    let pings = frame(OpCode::Ping, true, b"").repeat(2_000_000);
    let writer = write_in_background(&attacker, pings);
    std::thread::sleep(Duration::from_secs(1));
    still_served(server.addr);
    let grown = server.rss_bytes().saturating_sub(rss_before);
    // The 4 MiB bound counts each pong's real cost, so the flood is paused long before it
    // could hold millions of entries.
    assert!(
        grown < 24 << 20,
        "the ping flood grew the server by {grown} B"
    );
    within(
        Duration::from_secs(15),
        "the flooding client was dropped",
        || !held(server.addr, &attacker),
    );
    drop(writer);
    let m = metrics(server.addr);
    assert_eq!(m["ringws_send_stalled_closed_total"], 1, "{m:?}");
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    assert!(
        cpu < Duration::from_secs(10),
        "the flood cost {cpu:?} of CPU"
    );
}

#[test]
fn a_publisher_flooding_empty_frames_at_a_stalled_subscriber_costs_little_per_message() {
    // Every message fanned out, dropped only by the byte bound: the lag bound would shed
    // much of this flood whole, before its fan-out, which is not what is measured here.
    let server = Server::start(&["--shards", "1", "--max-delivery-lag", "0"]);
    let mut stalled = connect_small(server.addr, 4096);
    upgrade(&mut stalled, server.addr, "/pubsub/flood", &[]);
    // A subscriber that reads as fast as it can, on a thread, until the last message.
    let mut fast = open(server.addr, "/pubsub/flood");
    let counting = std::thread::spawn(move || {
        let mut seen = 0u64;
        loop {
            let (header, _) = read_frame(&mut fast);
            if header.opcode == OpCode::Text {
                return seen;
            }
            assert_eq!(header.opcode, OpCode::Binary);
            seen += 1;
        }
    });
    wait_for_metrics(server.addr, Duration::from_secs(5), |m| {
        m["ringws_pubsub_subscriptions"] == 2
    });
    let cpu_before = server.cpu_time();
    let rss_before = server.rss_bytes();
    let mut publisher = open(server.addr, "/pubsub/flood");
    let mut flood = frame(OpCode::Binary, true, b"").repeat(300_000);
    flood.extend(frame(OpCode::Text, true, b"end"));
    publisher.write_all(&flood).expect("publish");
    let fast_received = counting.join().expect("the fast subscriber");
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    let grown = server.rss_bytes().saturating_sub(rss_before);
    let m = metrics(server.addr);
    let (delivered, dropped) = (
        m["ringws_pubsub_delivered_total"],
        m["ringws_pubsub_dropped_total"],
    );
    println!("{cpu:?} of CPU, {grown} B grown, {dropped} dropped, {fast_received} to the fast one");
    assert!(dropped > 0, "the stalled subscriber lost its oldest");
    // Every message was queued to both subscribers, then sent or dropped.
    assert_eq!(delivered, 2 * 300_001);
    assert!(fast_received + dropped <= delivered);
    // Each delivery to the stalled subscriber drops in constant time, so 300,000 of them
    // cost a second or two, not a rescan of a 4 MiB queue of empty frames each.
    assert!(
        cpu < Duration::from_secs(15),
        "the flood cost {cpu:?} of CPU"
    );
    assert!(grown < 32 << 20, "the flood grew the server by {grown} B");
    still_served(server.addr);
    drop(stalled);
}

#[test]
fn stalled_subscribers_hold_no_more_than_the_send_buffer_in_the_kernel() {
    // The byte bound alone sheds here (no lag bound), so what the server holds per stalled
    // subscriber is its 4 MiB queue in user space and, with `--send-buffer`, 64 KiB (the
    // kernel doubles it to 128 KiB) in the kernel. Without it, autotuning grew each of
    // these sockets' buffers to tcp_wmem's maximum, 4 MiB on this kernel, and filled it.
    let server = Server::start(&[
        "--shards",
        "1",
        "--send-buffer",
        "64KiB",
        "--max-delivery-lag",
        "0",
    ]);
    let stalled: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut stream = connect_small(server.addr, 4096);
            upgrade(&mut stream, server.addr, "/pubsub/wide", &[]);
            stream
        })
        .collect();
    let mut fast = open(server.addr, "/pubsub/wide");
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counting = {
        let received = std::sync::Arc::clone(&received);
        std::thread::spawn(move || {
            loop {
                let (header, payload) = read_frame(&mut fast);
                if header.opcode == OpCode::Text {
                    return;
                }
                assert_eq!(payload.len(), 16 << 10);
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    wait_for_metrics(server.addr, Duration::from_secs(5), |m| {
        m["ringws_pubsub_subscriptions"] == 17
    });
    let rss_before = server.rss_bytes();
    let mut publisher = open(server.addr, "/pubsub/wide");
    // 2,000 messages of 16 KiB: 32 MiB to each subscriber, eight times its queue's bound,
    // in batches the subscriber that reads takes before the next (1.6 MB, under its bound).
    let batch = frame(OpCode::Binary, true, &vec![7; 16 << 10]).repeat(100);
    for sent in (100..=2_000).step_by(100) {
        publisher.write_all(&batch).expect("publish");
        within(
            Duration::from_secs(10),
            "the reading subscriber kept up",
            || received.load(std::sync::atomic::Ordering::Relaxed) == sent,
        );
    }
    send(&mut publisher, OpCode::Text, true, b"end");
    counting.join().expect("the subscriber that reads");
    for stream in &stalled {
        let client = stream.local_addr().expect("address");
        let kernel = support::socket_memory(server.addr, client);
        assert_eq!(kernel.send_buffer, 128 << 10, "{kernel:?}");
        // The kernel may take one segment past the buffer before it stops the sender.
        assert!(
            kernel.queued <= kernel.send_buffer + (64 << 10),
            "{kernel:?}"
        );
    }
    let m = metrics(server.addr);
    assert!(m["ringws_pubsub_dropped_total"] > 0, "{m:?}");
    let grown = server.rss_bytes().saturating_sub(rss_before);
    println!("{grown} B grown for 16 stalled subscribers");
    let first = stalled[0].local_addr().expect("address");
    println!(
        "{:?} in the kernel for one",
        support::socket_memory(server.addr, first)
    );
    // 16 queues of at most 4 MiB, and the fast subscriber's.
    assert!(grown < 112 << 20, "the flood grew the server by {grown} B");
    still_served(server.addr);
}

#[test]
fn empty_compressed_continuations_after_a_large_first_fragment_cost_their_size() {
    let server = Server::start(&["--shards", "1", "--deflate", "shared"]);
    let mut client = TcpStream::connect(server.addr).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let extension = "Sec-WebSocket-Extensions: permessage-deflate";
    upgrade(&mut client, server.addr, "/", &[extension]);
    // The first fragment inflates to 15 MiB (just under the 16 MiB limit) from a few KiB.
    let mut compressor = Compressor::new(
        Direction {
            window_bits: 15,
            no_context_takeover: true,
        },
        &DeflateConfig::default(),
    )
    .expect("a compressor");
    let mut compressed = Vec::new();
    compressor.compress(&vec![0u8; 15 << 20], &mut compressed);
    let mask = Some([9, 8, 7, 6]);
    let mut attack = Vec::new();
    write_frame(
        &mut attack,
        FrameHead::fragment(OpCode::Binary).compressed(),
        &compressed,
        mask,
    );
    let empty = {
        let mut one = Vec::new();
        write_frame(
            &mut one,
            FrameHead::fragment(OpCode::Continuation),
            b"",
            mask,
        );
        one
    };
    attack.extend(empty.repeat(200_000));
    write_frame(
        &mut attack,
        FrameHead::whole(OpCode::Continuation),
        b"",
        mask,
    );
    let cpu_before = server.cpu_time();
    let writer = write_in_background(&client, attack);
    let (header, payload) = read_frame(&mut client);
    writer.join().expect("the writer");
    // The echo comes back compressed, from a fresh context.
    let mut inflater = Decompressor::new(Direction {
        window_bits: 15,
        no_context_takeover: true,
    });
    let mut echoed = Vec::new();
    if header.rsv1 {
        inflater
            .inflate(&payload, &mut echoed, 16 << 20)
            .expect("inflate");
        inflater
            .finish_message(&mut echoed, 16 << 20)
            .expect("inflate");
    } else {
        echoed = payload;
    }
    assert_eq!(
        (header.opcode, echoed.len()),
        (OpCode::Binary, 15 << 20),
        "the message arrives whole"
    );
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    // 200,000 empty frames used to cost a zero-fill of up to 1 MiB each.
    assert!(
        cpu < Duration::from_secs(10),
        "the continuations cost {cpu:?} of CPU"
    );
    still_served(server.addr);
}

#[test]
fn many_connections_each_holding_a_large_partial_message_stay_within_the_budget() {
    let server = Server::start(&["--shards", "1", "--max-incomplete", "32MiB"]);
    let rss_before = server.rss_bytes();
    // Twenty clients each start a message with a 4 MiB first fragment and never finish it:
    // 80 MiB asked of a 32 MiB budget.
    let fragment = frame(OpCode::Binary, false, &vec![0x17; 4 << 20]);
    let mut holders: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut holder = open(server.addr, "/");
            holder.write_all(&fragment).expect("send a fragment");
            holder
        })
        .collect();
    let m = wait_for_metrics(server.addr, Duration::from_secs(20), |m| {
        m["ringws_incomplete_budget_closed_total"] >= 12
    });
    still_served(server.addr);
    let grown = server.rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 64 << 20,
        "partial messages grew the server by {grown} B"
    );
    // Those over the budget heard why.
    let mut refused = 0;
    for holder in &mut holders {
        holder
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("a read timeout");
        let mut head = [0u8; 2];
        if holder.read_exact(&mut head).is_ok() && head[0] == 0x88 {
            let mut rest = vec![0u8; usize::from(head[1] & 0x7f)];
            holder.read_exact(&mut rest).expect("the close payload");
            assert_eq!(u16::from_be_bytes([rest[0], rest[1]]), 1009);
            refused += 1;
        }
    }
    assert_eq!(refused, m["ringws_incomplete_budget_closed_total"]);
}

/// A network namespace joined to this one by a veth pair, removed on drop.
struct Namespace {
    name: String,
    /// Our end of the veth pair, and the namespace's.
    ours: String,
    link: String,
}

impl Namespace {
    const SERVER_IP: &str = "10.211.7.1";

    fn new() -> Option<Self> {
        let name = format!("ringws-test-{}", std::process::id());
        let ours = format!("rwh{}", std::process::id() % 100_000);
        let theirs = format!("rwc{}", std::process::id() % 100_000);
        let steps: [&[&str]; 7] = [
            &["netns", "add", &name],
            &[
                "link", "add", &ours, "type", "veth", "peer", "name", &theirs,
            ],
            &["link", "set", &theirs, "netns", &name],
            &["addr", "add", "10.211.7.1/30", "dev", &ours],
            &["link", "set", &ours, "up"],
            &["-n", &name, "addr", "add", "10.211.7.2/30", "dev", &theirs],
            &["-n", &name, "link", "set", &theirs, "up"],
        ];
        let namespace = Self {
            name: name.clone(),
            ours: ours.clone(),
            link: theirs.clone(),
        };
        for step in steps {
            let ok = std::process::Command::new("ip")
                .args(step)
                .status()
                .is_ok_and(|status| status.success());
            if !ok {
                return None;
            }
        }
        Some(namespace)
    }

    /// A TCP connection to `addr` made from inside the namespace.
    fn connect(&self, addr: SocketAddr) -> TcpStream {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("open the namespace");
                    // SAFETY: setns on this thread only, with a namespace file we hold open.
                    let rc = unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                    };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    TcpStream::connect(addr).expect("connect from the namespace")
                })
                .join()
                .expect("the connecting thread")
        })
    }
}

impl Namespace {
    /// The host inside vanishes from the network: its link goes down, so nothing it was
    /// sent is acknowledged and nothing more comes from it, not even a reset. (Deleting the
    /// namespace would not do: a socket of ours still in it keeps it, and its link, alive.)
    fn vanish(&self) {
        let down = std::process::Command::new("ip")
            .args(["-n", &self.name, "link", "set", &self.link, "down"])
            .status()
            .is_ok_and(|status| status.success());
        assert!(down, "take the namespace's link down");
    }
}

impl Drop for Namespace {
    /// Deletes the veth pair first: a socket closing inside the namespace would otherwise
    /// keep the namespace, and the pair with our address, alive for minutes.
    fn drop(&mut self) {
        for args in [["link", "del", &self.ours], ["netns", "del", &self.name]] {
            let _ = std::process::Command::new("ip").args(args).status();
        }
    }
}

#[test]
fn a_half_open_connection_is_reaped_by_the_kernel() {
    let Some(namespace) = Namespace::new() else {
        panic!("cannot make a network namespace (this test needs root and iproute2)");
    };
    let listen = format!("{}:0", Namespace::SERVER_IP);
    let server = Server::start_on(&listen, &["--shards", "1", "--tcp-user-timeout", "2s"]);
    let mut vanishing = namespace.connect(server.addr);
    upgrade(&mut vanishing, server.addr, "/pubsub/news", &[]);
    let mut publisher = open(server.addr, "/pubsub/news");
    wait_for_metrics(server.addr, Duration::from_secs(5), |m| {
        m["ringws_pubsub_subscriptions"] == 2
    });
    // The subscriber's host vanishes: no FIN, no reset, nothing acknowledged any more.
    let held_at = vanishing.local_addr().expect("address");
    namespace.vanish();
    send(&mut publisher, OpCode::Text, true, b"anyone there?");
    // The idle timeout is a minute away: only the kernel's user timeout can reap it now.
    let took = within(
        Duration::from_secs(15),
        "the vanished peer was reaped",
        || metrics(server.addr)["ringws_pubsub_subscriptions"] == 1,
    );
    println!("reaped {took:?} after the message to the vanished peer");
    assert!(tcp_state(server.addr, held_at).is_none_or(|state| state != "ESTABLISHED"));
    still_served(server.addr);
    drop(vanishing);
    drop(namespace);
}

#[test]
fn a_client_silent_after_a_ping_is_closed_with_1001() {
    let server = Server::start(&["--shards", "1", "--idle-timeout", "1s"]);
    let mut client = open(server.addr, "/");
    // The ping comes after a second of silence; the client reads it and never answers.
    let (header, payload) = read_frame(&mut client);
    assert_eq!(header.opcode, OpCode::Ping);
    assert_eq!(payload.len(), 8, "the ping carries its send time");
    // Chatter does not count as an answer.
    send(&mut client, OpCode::Text, true, b"not a pong");
    assert_eq!(read_frame(&mut client).1, b"not a pong");
    let reason = expect_close(&mut client, 1001);
    assert!(reason.contains("pong"), "{reason}");
    assert_eq!(metrics(server.addr)["ringws_ping_timeout_closed_total"], 1);
}
