//! The pub/sub library API in-process: an application subscribes and unsubscribes on
//! request, and a [`Publisher`] on a plain thread publishes into the shards.

mod support;

use std::time::{Duration, Instant};

use ringws::proto::OpCode;
use ringws::server::{Accept, App, Message, Metrics, Refusal, Server, ServerConfig, Upgrade, Ws};
use support::{open, read_frame, send};

/// `sub <topic>` and `unsub <topic>` manage subscriptions; the reply lists the topics held.
struct Commands;

impl App for Commands {
    type State = ();

    fn upgrade(&mut self, _upgrade: &Upgrade<'_>) -> Result<Accept<()>, Refusal> {
        Ok(Accept::new(()))
    }

    fn on_message(&mut self, ws: &mut Ws<'_, Self>, message: Message<'_>) {
        let Message::Text(text) = message else {
            return;
        };
        let changed = match text.split_once(' ') {
            Some(("sub", topic)) => match ws.subscribe(topic) {
                Ok(changed) => changed.to_string(),
                Err(err) => format!("refused: {err}"),
            },
            Some(("unsub", topic)) => ws.unsubscribe(topic).to_string(),
            Some(("pub", rest)) => {
                let (topic, body) = rest.split_once(' ').unwrap_or((rest, ""));
                match ws.publish(topic, Message::Text(body)) {
                    Ok(reached) => reached.to_string(),
                    Err(err) => format!("refused: {err}"),
                }
            }
            _ => "unknown".to_string(),
        };
        let mut topics: Vec<&str> = ws.topics().collect();
        topics.sort_unstable();
        let reply = format!("{changed} {}", topics.join(","));
        let _ = ws.send_text(&reply);
    }
}

fn start() -> Server {
    let mut config = ServerConfig::default();
    config.listen = vec!["127.0.0.1:0".parse().expect("an address")];
    config.shards = 2;
    Server::start(config, |_| Commands).expect("start the server")
}

fn command(stream: &mut std::net::TcpStream, text: &str) -> String {
    send(stream, OpCode::Text, true, text.as_bytes());
    let (_, payload) = read_frame(stream);
    String::from_utf8(payload).expect("a text reply")
}

fn settle(server: &Server, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = server.metrics();
        if done(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "never settled: {metrics:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn subscriptions_follow_subscribe_and_unsubscribe_and_publishers_reach_them() {
    let server = start();
    let addr = server.local_addrs()[0];
    let mut client = open(addr, "/");
    assert_eq!(command(&mut client, "sub prices"), "true prices");
    assert_eq!(command(&mut client, "sub news"), "true news,prices");
    assert_eq!(command(&mut client, "sub news"), "false news,prices");
    let metrics = server.metrics();
    assert_eq!((metrics.topics, metrics.subscriptions), (2, 2));

    // A plain thread publishes; the subscriber hears it, and only on its topics.
    let publisher = server.publisher();
    let from_thread = std::thread::spawn(move || {
        assert_eq!(
            publisher.publish("weather", Message::Text("nobody listens")),
            Ok(false)
        );
        assert_eq!(
            publisher.publish("prices", Message::Binary(b"\x01\x02")),
            Ok(true)
        );
    });
    from_thread.join().expect("publishing thread");
    let (header, payload) = read_frame(&mut client);
    assert_eq!(
        (header.opcode, payload.as_slice()),
        (OpCode::Binary, &b"\x01\x02"[..])
    );

    // A second client publishes from its own shard; the first receives, the sender does not.
    let mut other = open(addr, "/");
    assert_eq!(command(&mut other, "sub news"), "true news");
    assert_eq!(command(&mut other, "pub news hello"), "true news");
    assert_eq!(read_frame(&mut client).1, b"hello");

    assert_eq!(command(&mut client, "unsub prices"), "true news");
    assert_eq!(command(&mut client, "unsub prices"), "false news");
    assert_eq!(command(&mut client, "unsub news"), "true ");
    assert_eq!(command(&mut other, "unsub news"), "true ");
    let metrics = settle(&server, |m| m.topics == 0);
    assert_eq!(metrics.subscriptions, 0);
    assert_eq!(
        server.publisher().publish("news", Message::Text("gone")),
        Ok(false)
    );
    assert_eq!(metrics.published, 2);
    assert_eq!(metrics.delivered, 2);
    server.shutdown();
    server.join().expect("clean shutdown");
}

/// What the publishing thread has published so far: set after each publish returns.
static LAST_PUBLISHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `join` subscribes to `race` and answers with the last number published before it.
struct Joiner;

impl App for Joiner {
    type State = ();

    fn upgrade(&mut self, _upgrade: &Upgrade<'_>) -> Result<Accept<()>, Refusal> {
        Ok(Accept::new(()))
    }

    fn on_message(&mut self, ws: &mut Ws<'_, Self>, message: Message<'_>) {
        if message == Message::Text("hold") {
            let _ = ws.subscribe("race");
            let _ = ws.send_text("held");
        } else if message == Message::Text("join") {
            let floor = LAST_PUBLISHED.load(std::sync::atomic::Ordering::SeqCst);
            let _ = ws.subscribe("race");
            let _ = ws.send_text(&floor.to_string());
        }
    }
}

#[test]
fn a_subscription_never_receives_what_was_published_before_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut config = ServerConfig::default();
    config.listen = vec!["127.0.0.1:0".parse().expect("an address")];
    config.shards = 2;
    let server = Server::start(config, |_| Joiner).expect("start the server");
    let addr = server.local_addrs()[0];
    // Subscribers that stay, until both shards hold one: every publish then goes through
    // both shards' queues, where a message can wait while a new subscriber joins.
    let mut holders = Vec::new();
    while settle(&server, |_| true)
        .per_shard
        .iter()
        .any(|s| s.subscriptions == 0)
    {
        let mut holder = open(addr, "/");
        assert_eq!(command(&mut holder, "hold"), "held");
        holders.push(holder);
        assert!(holders.len() < 64, "connections never reached both shards");
    }
    // Holders keep reading, so that nothing but the race is under test.
    let draining: Vec<_> = holders
        .iter()
        .map(|holder| {
            let mut holder = holder.try_clone().expect("clone a socket");
            std::thread::spawn(move || {
                let mut sink = [0u8; 64 << 10];
                while matches!(std::io::Read::read(&mut holder, &mut sink), Ok(n) if n > 0) {}
            })
        })
        .collect();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let publisher = server.publisher();
    let publishing = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut number = 0u64;
            while !stop.load(Ordering::Relaxed) {
                number += 1;
                let payload = number.to_be_bytes();
                // A full queue refuses rather than grows; the next number tries again.
                let _ = publisher.publish("race", Message::Binary(&payload));
                LAST_PUBLISHED.store(number, Ordering::SeqCst);
                // Bursts, so that queues fill between the shards' turns but the machine
                // is not saturated.
                if number.is_multiple_of(64) {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        }
    });
    for round in 0..150 {
        let mut joiner = open(addr, "/");
        let floor: u64 = command(&mut joiner, "join").parse().expect("a number");
        for _ in 0..20 {
            let (header, payload) = read_frame(&mut joiner);
            assert_eq!(header.opcode, OpCode::Binary);
            let number = u64::from_be_bytes(payload.try_into().expect("8 bytes"));
            assert!(
                number > floor,
                "round {round}: message {number} was published before the subscription (after {floor})"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    publishing.join().expect("publishing thread");
    for holder in &holders {
        let _ = holder.shutdown(std::net::Shutdown::Both);
    }
    for thread in draining {
        thread.join().expect("draining thread");
    }
    server.shutdown();
    server.join().expect("clean shutdown");
}

#[test]
fn topic_bounds_are_errors_the_application_sees() {
    let mut config = ServerConfig::default();
    config.listen = vec!["127.0.0.1:0".parse().expect("an address")];
    config.shards = 1;
    config.max_topics_per_connection = 2;
    config.max_topic_len = 8;
    let server = Server::start(config, |_| Commands).expect("start the server");
    let mut client = open(server.local_addrs()[0], "/");
    assert_eq!(command(&mut client, "sub a"), "true a");
    assert_eq!(command(&mut client, "sub b"), "true a,b");
    assert_eq!(
        command(&mut client, "sub c"),
        "refused: a connection may subscribe to at most 2 topics a,b"
    );
    assert_eq!(
        command(&mut client, "sub ninechars"),
        "refused: topic name longer than 8 bytes a,b"
    );
    assert_eq!(server.metrics().subscriptions, 2);
    server.shutdown();
    server.join().expect("clean shutdown");
}
