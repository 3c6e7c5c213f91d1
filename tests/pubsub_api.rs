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
