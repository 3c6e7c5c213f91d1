//! Pub/sub of `ringws serve` over real sockets: `/pubsub/<topic>` across shards, order per
//! publisher, cleanup, and slow subscribers under both policies.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use ringws::proto::OpCode;
use support::{
    Server, expect_close, frame, metrics, open, read_frame, read_head, send, upgrade_request,
    wait_for_metrics,
};

const SETTLE: Duration = Duration::from_secs(10);

/// Opens subscribers to `topic` until both shards of a 2-shard server hold some.
fn subscribers_on_both_shards(addr: SocketAddr, topic: &str) -> Vec<TcpStream> {
    let mut subscribers = Vec::new();
    for _ in 0..64 {
        subscribers.push(open(addr, &format!("/pubsub/{topic}")));
        let now = metrics(addr);
        let on = |shard: u32| now[&format!("ringws_shard_subscriptions{{shard=\"{shard}\"}}")];
        if subscribers.len() >= 4 && on(0) > 0 && on(1) > 0 {
            return subscribers;
        }
    }
    panic!("64 connections never reached both shards");
}

/// `publisher:sequence`, the payload the order checks parse.
fn parse(payload: &[u8]) -> (usize, u32) {
    let text = std::str::from_utf8(payload).expect("a text payload");
    let (publisher, sequence) = text.split_once(':').expect("publisher:sequence");
    (
        publisher.parse().expect("publisher number"),
        sequence.parse().expect("sequence number"),
    )
}

#[test]
fn subscribers_on_every_shard_get_every_message_in_publisher_order() {
    const PUBLISHERS: usize = 3;
    const MESSAGES: u32 = 300;
    let server = Server::start(&["--shards", "2"]);
    let subscribers = subscribers_on_both_shards(server.addr, "news");
    // Publishers connect to the same topic: they must not hear their own messages, and
    // other publishers' messages they leave unread (a few KiB, well under any bound).
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let mut stream = open(server.addr, "/pubsub/news");
            thread::spawn(move || {
                for seq in 0..MESSAGES {
                    send(
                        &mut stream,
                        OpCode::Text,
                        true,
                        format!("{p}:{seq}").as_bytes(),
                    );
                }
                stream
            })
        })
        .collect();
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut stream| {
            thread::spawn(move || {
                let mut next = [0u32; PUBLISHERS];
                for _ in 0..PUBLISHERS as u32 * MESSAGES {
                    let (header, payload) = read_frame(&mut stream);
                    assert_eq!(header.opcode, OpCode::Text);
                    let (publisher, seq) = parse(&payload);
                    assert_eq!(seq, next[publisher], "publisher {publisher} out of order");
                    next[publisher] += 1;
                }
                assert_eq!(next, [MESSAGES; PUBLISHERS]);
            })
        })
        .collect();
    for reader in readers {
        reader
            .join()
            .expect("a subscriber saw every message in order");
    }
    let publishers: Vec<TcpStream> = publishers
        .into_iter()
        .map(|p| p.join().expect("publisher"))
        .collect();
    let now = metrics(server.addr);
    assert_eq!(
        now["ringws_pubsub_published_total"],
        3 * u64::from(MESSAGES)
    );
    assert_eq!(now["ringws_pubsub_dropped_total"], 0);
    drop(publishers);
}

#[test]
fn unsubscribing_by_disconnect_leaves_nothing_behind() {
    let server = Server::start(&["--shards", "2"]);
    let mut all = subscribers_on_both_shards(server.addr, "a");
    all.extend((0..4).map(|_| open(server.addr, "/pubsub/b")));
    let now = metrics(server.addr);
    assert_eq!(now["ringws_pubsub_topics"], 2);
    assert_eq!(now["ringws_pubsub_subscriptions"], all.len() as u64);
    // Half leave with a close handshake, half just drop the TCP connection.
    for (i, mut stream) in all.into_iter().enumerate() {
        if i % 2 == 0 {
            send(&mut stream, OpCode::Close, true, &1000u16.to_be_bytes());
            expect_close(&mut stream, 1000);
        }
    }
    // The metrics connection itself is the one left.
    wait_for_metrics(server.addr, SETTLE, |m| {
        m["ringws_pubsub_topics"] == 0
            && m["ringws_pubsub_subscriptions"] == 0
            && m["ringws_connections"] == 1
    });
}

#[test]
fn a_bad_topic_path_is_refused_with_400() {
    let server = Server::start(&[]);
    for path in ["/pubsub/", &format!("/pubsub/{}", "t".repeat(300))] {
        let mut stream = support::connect(server.addr);
        stream
            .write_all(support::upgrade_request(server.addr, path, &[]).as_bytes())
            .expect("send");
        let response = String::from_utf8_lossy(&support::read_to_close(&mut stream)).into_owned();
        assert!(response.starts_with("HTTP/1.1 400 "), "{path}: {response}");
        assert!(response.contains("topic"), "{response}");
    }
}

/// Publishes `FLOOD` binary messages of `SIZE` bytes, each starting with its sequence
/// number, never more than `WINDOW` ahead of what the reader behind `progress` has read:
/// the fast subscriber's queue stays far below the bound, whatever this machine's speed.
/// Sleeps `pause` after every `WINDOW` messages; returns when each message was sent.
fn publish_paced(
    addr: SocketAddr,
    topic: &str,
    progress: Receiver<u32>,
    pause: Duration,
) -> (TcpStream, Vec<Instant>) {
    let mut publisher = open(addr, &format!("/pubsub/{topic}"));
    let mut payload = vec![0x5a; SIZE];
    let mut read = 0;
    let mut sent = Vec::with_capacity(FLOOD as usize);
    for seq in 0..FLOOD {
        while seq >= read + WINDOW {
            read = progress
                .recv()
                .expect("the fast subscriber reports progress");
        }
        if seq % WINDOW == 0 && !pause.is_zero() {
            thread::sleep(pause);
        }
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        sent.push(Instant::now());
        publisher
            .write_all(&frame(OpCode::Binary, true, &payload))
            .expect("publish");
    }
    (publisher, sent)
}

fn sequence(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"))
}

/// A subscriber that reads every numbered message, checks none is missing or out of order,
/// and reports each one read.
fn fast_subscriber(addr: SocketAddr, topic: &str) -> (thread::JoinHandle<()>, Receiver<u32>) {
    let mut stream = open(addr, &format!("/pubsub/{topic}"));
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for expected in 0..FLOOD {
            let (header, payload) = read_frame(&mut stream);
            assert_eq!(header.opcode, OpCode::Binary, "{payload:?}");
            assert_eq!(sequence(&payload), expected);
            let _ = tx.send(expected + 1);
        }
    });
    (reader, rx)
}

/// Enough 4 KiB messages to fill the kernel's socket buffers many times over.
const FLOOD: u32 = 6000;
const SIZE: usize = 4096;
/// Messages the publisher may run ahead of the fast subscriber: 32 KiB.
const WINDOW: u32 = 8;

#[test]
fn a_stalled_subscriber_loses_its_oldest_messages_and_nobody_else_waits() {
    // The byte bound alone: no lag bound, which a loaded machine could trip first.
    let server = Server::start(&[
        "--max-queued",
        "64KiB",
        "--slow-subscriber",
        "drop-oldest",
        "--max-delivery-lag",
        "0",
    ]);
    let mut stalled = open(server.addr, "/pubsub/ticks");
    let (fast, progress) = fast_subscriber(server.addr, "ticks");
    let (publisher, _) = publish_paced(server.addr, "ticks", progress, Duration::ZERO);
    fast.join()
        .expect("the fast subscriber got every message in order");
    wait_for_metrics(server.addr, SETTLE, |m| {
        m["ringws_pubsub_dropped_total"] > 0
    });
    // The stalled subscriber is still connected and gets an ordered subsequence, ending
    // with the last message: what was dropped was the oldest.
    let mut last = None;
    let mut received = 0u64;
    while last != Some(FLOOD - 1) {
        let (header, payload) = read_frame(&mut stalled);
        assert_eq!(header.opcode, OpCode::Binary);
        let seq = sequence(&payload);
        assert!(last.is_none_or(|l| seq > l), "{seq} after {last:?}");
        last = Some(seq);
        received += 1;
    }
    // Counted once the last message reached the stalled subscriber's queue: its shard may
    // still have been dropping when the fast subscriber (perhaps on another shard) was done.
    let now = metrics(server.addr);
    assert_eq!(
        received + now["ringws_pubsub_dropped_total"],
        u64::from(FLOOD)
    );
    assert_eq!(now["ringws_pubsub_slow_closed_total"], 0);
    drop(publisher);
}

#[test]
fn a_stalled_subscriber_is_closed_with_1008_under_the_close_policy() {
    let server = Server::start(&[
        "--max-queued",
        "64KiB",
        "--slow-subscriber",
        "close",
        "--max-delivery-lag",
        "0",
    ]);
    let mut stalled = open(server.addr, "/pubsub/ticks");
    let (fast, progress) = fast_subscriber(server.addr, "ticks");
    let addr = server.addr;
    let publisher = thread::spawn(move || publish_paced(addr, "ticks", progress, Duration::ZERO).0);
    // Read as soon as the server gives up on the stalled subscriber: the close frame waits
    // only behind what was already being written, and must be read before the server's
    // close timeout drops the connection.
    wait_for_metrics(server.addr, SETTLE, |m| {
        m["ringws_pubsub_slow_closed_total"] == 1
    });
    let code = loop {
        let (header, payload) = read_frame(&mut stalled);
        if header.opcode == OpCode::Close {
            break u16::from_be_bytes([payload[0], payload[1]]);
        }
    };
    assert_eq!(code, 1008);
    fast.join()
        .expect("the fast subscriber got every message in order");
    drop(publisher.join().expect("the publisher"));
}

/// A subscriber whose socket takes little: what it does not read stays in the server's
/// queue, not in the kernel's buffers.
fn open_small(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = support::connect_small(addr, 4096, SETTLE);
    stream
        .write_all(upgrade_request(addr, path, &[]).as_bytes())
        .expect("send the upgrade");
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    stream
}

#[test]
fn a_lagging_subscriber_gets_recent_messages_and_the_stale_ones_are_dropped() {
    const LAG: Duration = Duration::from_millis(300);
    // The byte bound is far away: only the lag bound drops.
    let server = Server::start(&["--max-queued", "256MiB", "--max-delivery-lag", "300ms"]);
    let mut stalled = open_small(server.addr, "/pubsub/lag");
    let (fast, progress) = fast_subscriber(server.addr, "lag");
    // 750 pauses of 4 ms: the run lasts well past the bound.
    let (publisher, sent) = publish_paced(server.addr, "lag", progress, Duration::from_millis(4));
    fast.join()
        .expect("the fast subscriber got every message in order");
    let m = wait_for_metrics(server.addr, SETTLE, |m| {
        m["ringws_pubsub_dropped_stale_total"] > 0
    });
    let dropped = m["ringws_pubsub_dropped_total"];
    assert_eq!(
        m["ringws_pubsub_dropped_stale_total"], dropped,
        "all for lag"
    );
    // The stalled subscriber reads: what its socket took before it stalled, then what the
    // server still held, in order and ending with the last message.
    let mut got = Vec::new();
    while got.last() != Some(&(FLOOD - 1)) {
        let (header, payload) = read_frame(&mut stalled);
        assert_eq!(header.opcode, OpCode::Binary);
        let seq = sequence(&payload);
        assert!(got.last().is_none_or(|&l| seq > l), "{seq} after {got:?}");
        got.push(seq);
    }
    assert_eq!(got.len() as u64 + dropped, u64::from(FLOOD));
    // Past the messages the kernel took (numbered from 0 without a gap) and the sendmsg in
    // flight (at most 64 messages, never dropped), everything left was published within
    // the bound of the last message. The margin covers this machine's scheduling: the
    // server stamps a message when it reads it, not when the test wrote it.
    let gap = got
        .iter()
        .enumerate()
        .position(|(i, &seq)| seq != i as u32)
        .expect("the stale ones are missing");
    let last = sent[FLOOD as usize - 1];
    let margin = Duration::from_millis(600);
    for &seq in got.iter().skip(gap + 64) {
        let behind = last.duration_since(sent[seq as usize]);
        assert!(
            behind <= LAG + margin,
            "{seq} was {behind:?} behind the last"
        );
    }
    assert!(
        last.duration_since(sent[0]) > 2 * (LAG + margin),
        "the run was long enough for the bound to tell"
    );
    assert_eq!(m["ringws_pubsub_slow_closed_total"], 0);
    drop(publisher);
}

#[test]
fn a_shard_behind_a_burst_sheds_whole_messages_and_stays_current() {
    const BURST: u32 = 400_000;
    let server = Server::start(&["--shards", "1", "--max-delivery-lag", "50ms"]);
    let mut subscriber = open(server.addr, "/pubsub/burst");
    let reader = thread::spawn(move || {
        let mut got: Vec<u32> = Vec::new();
        loop {
            let (header, payload) = read_frame(&mut subscriber);
            if header.opcode == OpCode::Text {
                return got;
            }
            let seq = sequence(&payload);
            assert!(
                got.last().is_none_or(|&l| seq > l),
                "{seq} after {:?}",
                got.last()
            );
            got.push(seq);
        }
    });
    let mut publisher = open(server.addr, "/pubsub/burst");
    // Far more than one turn fans out: the shard's own queue grows, and what waits in it
    // past 50 ms is dropped whole.
    let burst: Vec<u8> = (0..BURST)
        .flat_map(|seq| frame(OpCode::Binary, true, &seq.to_be_bytes()))
        .collect();
    publisher.write_all(&burst).expect("publish the burst");
    let m = wait_for_metrics(server.addr, SETTLE, |m| {
        m["ringws_pubsub_delivered_total"] + m["ringws_pubsub_shed_total"] == u64::from(BURST)
    });
    let shed = m["ringws_pubsub_shed_total"];
    assert!(shed > 0, "the burst outran the shard: {m:?}");
    // The shard caught up: a message published now is delivered, not shed.
    send(&mut publisher, OpCode::Text, true, b"end");
    let got = reader.join().expect("the subscriber read in order");
    assert!(!got.is_empty());
    assert!(got.len() as u64 + shed <= u64::from(BURST));
}
