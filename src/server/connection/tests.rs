//! The connection state machine in memory, on a virtual clock: handshake, messages,
//! deadlines, backpressure and close, with no socket and no waiting.

use std::time::Duration;

use crate::proto::{CloseCode, OpCode};
use crate::server::app::Message;
use crate::server::config::{BackpressurePolicy, ServerConfig, SlowSubscriberPolicy};
use crate::server::echo::Echo;

use super::harness::{Harness, Seen};

fn config() -> ServerConfig {
    ServerConfig {
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        close_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    }
}

fn open(config: ServerConfig) -> Harness<Echo> {
    let mut h = Harness::new(config, Echo);
    h.upgrade("/", "");
    assert!(h.seen().is_empty(), "the 101 opens the session");
    assert!(!h.transport().ended());
    h
}

#[test]
fn an_upgrade_opens_and_messages_echo() {
    let mut h = open(config());
    h.send_frame(OpCode::Text, true, b"hello");
    h.send_frame(OpCode::Binary, false, b"\x01");
    h.send_frame(OpCode::Continuation, true, b"\x02");
    assert_eq!(
        h.seen(),
        [Seen::Text("hello".into()), Seen::Binary(vec![1, 2])]
    );
    assert_eq!(h.incomplete_bytes(), 0);
}

#[test]
fn a_large_message_split_across_reads_echoes_intact() {
    let mut h = open(config());
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    h.send_frame_split(OpCode::Binary, true, &payload, &[7_000, 13_000]);
    h.send_frame_split(OpCode::Text, true, &[b'w'; 9_000], &[1]);
    assert_eq!(
        h.seen(),
        [Seen::Binary(payload), Seen::Text("w".repeat(9_000))]
    );
    assert_eq!(h.incomplete_bytes(), 0);
}

#[test]
fn a_slow_handshake_gets_408_at_its_deadline_and_not_before() {
    let mut h = Harness::new(config(), Echo);
    h.receive(b"GET / HTTP/1.1\r\nHost: x\r\n");
    h.advance(Duration::from_millis(9_999));
    assert!(h.seen().is_empty() && !h.transport().ended());
    h.advance(Duration::from_millis(1));
    let seen = h.seen();
    assert!(
        matches!(&seen[..], [Seen::Http { status: 408, .. }]),
        "{seen:?}"
    );
    assert!(h.transport().closing);
}

#[test]
fn idle_peers_are_pinged_and_a_matching_pong_keeps_them() {
    let mut h = open(config());
    assert_eq!(h.next_deadline(), Some(Duration::from_secs(60)));
    // Traffic pushes the ping back: the check at 60 s finds 30 s of silence.
    h.advance(Duration::from_secs(30));
    h.send_frame(OpCode::Text, true, b"still here");
    assert_eq!(h.seen(), [Seen::Text("still here".into())]);
    h.advance(Duration::from_secs(30));
    assert!(h.seen().is_empty(), "not silent long enough yet");
    h.advance(Duration::from_secs(30));
    let seen = h.seen();
    let [Seen::Ping(payload)] = &seen[..] else {
        panic!("expected a ping, saw {seen:?}");
    };
    // Anything but the pong does not prove the peer reads.
    h.send_frame(OpCode::Text, true, b"chatter");
    h.send_frame(OpCode::Pong, true, b"wrong payload");
    h.advance(Duration::from_secs(59));
    assert_eq!(h.seen(), [Seen::Text("chatter".into())]);
    h.send_frame(OpCode::Pong, true, payload);
    h.advance(Duration::from_secs(30));
    assert!(h.seen().is_empty());
    assert!(!h.transport().ended());
}

#[test]
fn no_pong_closes_with_1001_and_an_unanswered_close_aborts() {
    let mut h = open(config());
    h.advance(Duration::from_secs(60));
    assert!(matches!(h.seen()[..], [Seen::Ping(_)]));
    h.advance(Duration::from_secs(60));
    let seen = h.seen();
    assert!(
        matches!(&seen[..], [Seen::Close(Some(1001), reason)] if reason.contains("pong")),
        "{seen:?}"
    );
    assert_eq!(h.metrics().ping_timeouts, 1);
    assert!(
        !h.transport().ended(),
        "the peer has the close timeout to answer"
    );
    h.advance(Duration::from_millis(4_999));
    assert!(!h.transport().ended());
    h.advance(Duration::from_millis(1));
    assert!(h.transport().aborted);
}

#[test]
fn a_peer_answering_our_close_ends_the_session_cleanly() {
    let mut h = open(config());
    h.send_frame(OpCode::Close, true, &[0x03, 0xE8]);
    assert_eq!(h.seen(), [Seen::Close(Some(1000), String::new())]);
    assert!(h.transport().closing && !h.transport().aborted);
    assert!(
        h.transport().answered,
        "the peer said its last: no lingering for its FIN"
    );
    assert_eq!(h.next_deadline(), None, "the runtime owns the end now");
}

#[test]
fn a_protocol_error_fails_with_its_code_and_closes() {
    let mut h = open(config());
    let mut unmasked = Vec::new();
    crate::proto::frame::write_frame(
        &mut unmasked,
        crate::proto::frame::FrameHead::whole(OpCode::Text),
        b"x",
        None,
    );
    h.receive(&unmasked);
    let seen = h.seen();
    assert!(
        matches!(&seen[..], [Seen::Close(Some(1002), _)]),
        "{seen:?}"
    );
    assert!(h.transport().closing);
    assert!(
        !h.transport().answered,
        "the peer may still be sending: linger so our close frame is not lost to a reset"
    );
}

#[test]
fn backpressure_pauses_reading_until_the_queue_drains() {
    let mut h = open(ServerConfig {
        max_queued_bytes: 1_000,
        ..config()
    });
    for _ in 0..20 {
        h.send_frame(OpCode::Binary, true, &[7; 100]);
    }
    assert!(
        h.transport().paused,
        "the client reads nothing: stop reading it"
    );
    h.write_out(500);
    assert!(h.transport().paused, "still over");
    h.write_out(usize::MAX);
    assert!(!h.transport().paused, "drained: read again");
}

#[test]
fn backpressure_close_sends_1008() {
    let mut h = open(ServerConfig {
        max_queued_bytes: 1_000,
        backpressure: BackpressurePolicy::Close,
        ..config()
    });
    for _ in 0..20 {
        h.send_frame(OpCode::Binary, true, &[7; 100]);
    }
    let closes: Vec<_> = h
        .seen()
        .into_iter()
        .filter(|s| matches!(s, Seen::Close(..)))
        .collect();
    assert!(
        matches!(&closes[..], [Seen::Close(Some(1008), _)]),
        "{closes:?}"
    );
}

#[test]
fn a_peer_that_stops_reading_is_aborted_after_the_idle_timeout_without_progress() {
    let mut h = open(config());
    for _ in 0..10 {
        h.send_frame(OpCode::Binary, true, &[1; 1000]);
    }
    // Some progress in the first period keeps it.
    h.advance(Duration::from_secs(30));
    h.write_out(1000);
    h.advance(Duration::from_secs(30));
    assert!(!h.transport().ended());
    // A whole period with nothing written ends it, without waiting for a close handshake
    // that could never get through.
    h.advance(Duration::from_secs(60));
    assert!(h.transport().aborted);
    assert_eq!(h.metrics().stalled_closed, 1);
}

#[test]
fn a_shutdown_close_is_bounded_by_the_close_timeout() {
    let mut h = open(config());
    h.server_close(CloseCode::GOING_AWAY, "server shutting down");
    let seen = h.seen();
    assert!(
        matches!(&seen[..], [Seen::Close(Some(1001), _)]),
        "{seen:?}"
    );
    h.advance(Duration::from_secs(5));
    assert!(h.transport().aborted);
}

#[test]
fn slow_subscribers_lose_their_oldest_messages_down_to_half_the_bound() {
    let mut h = open(ServerConfig {
        max_queued_bytes: 10_000,
        ..config()
    });
    for _ in 0..30 {
        h.deliver("t", Message::Binary(&[9; 1_000]));
    }
    let dropped = h.transport().dropped;
    assert!(dropped > 0, "the subscriber reads nothing: its oldest go");
    assert!(h.transport().queued() <= 10_000 + 1_004);
    assert!(!h.transport().ended(), "dropping keeps it within bounds");
    // Delivered and dropped account for every message.
    let received = h
        .seen()
        .into_iter()
        .filter(|s| matches!(s, Seen::Binary(_)))
        .count();
    assert_eq!(received + dropped, 30);
}

fn lag_bounded(policy: SlowSubscriberPolicy) -> Harness<Echo> {
    open(ServerConfig {
        max_delivery_lag: Duration::from_secs(1),
        slow_subscriber: policy,
        ..config()
    })
}

#[test]
fn a_lagging_subscriber_loses_what_waited_past_the_bound_and_keeps_the_rest() {
    let mut h = lag_bounded(SlowSubscriberPolicy::DropOldest);
    for n in 0..5u8 {
        h.deliver("t", Message::Binary(&[n]));
        h.advance(Duration::from_millis(400));
    }
    // Queued at 0, 0.4, 0.8, 1.2 and 1.6 s, unread: at 1.2 s the one of 0 s is more than
    // the bound behind, and goes with the one of 0.4 s (more than half the bound behind);
    // at 1.6 s the oldest, of 0.8 s, is within the bound.
    assert_eq!(h.transport().dropped, 2);
    let metrics = h.metrics();
    assert_eq!((metrics.dropped, metrics.dropped_stale), (2, 2));
    assert!(!h.transport().ended(), "dropping keeps it subscribed");
    let seen = h.seen();
    let expected: Vec<Seen> = (2..5u8).map(|n| Seen::Binary(vec![n])).collect();
    assert_eq!(seen, expected, "the newest, in order");
}

#[test]
fn a_subscriber_that_keeps_up_loses_nothing_to_the_lag_bound() {
    let mut h = lag_bounded(SlowSubscriberPolicy::DropOldest);
    for n in 0..10u8 {
        h.deliver("t", Message::Binary(&[n]));
        h.advance(Duration::from_millis(400));
        h.write_out(usize::MAX);
    }
    assert_eq!(h.transport().dropped, 0);
    assert_eq!(h.metrics().dropped_stale, 0);
}

#[test]
fn the_close_policy_closes_a_subscriber_lagging_past_the_bound() {
    let mut h = lag_bounded(SlowSubscriberPolicy::Close);
    h.deliver("t", Message::Binary(&[1]));
    h.advance(Duration::from_millis(1_500));
    h.deliver("t", Message::Binary(&[2]));
    let seen = h.seen();
    assert!(
        matches!(&seen[..], [Seen::Close(Some(1008), reason)] if reason.contains("lagging")),
        "{seen:?}"
    );
    assert_eq!(h.metrics().slow_closed, 1);
}

#[test]
fn incomplete_messages_are_counted_and_shed_with_1009() {
    let mut h = open(config());
    h.send_frame(OpCode::Binary, false, &[5; 50_000]);
    assert!(h.incomplete_bytes() >= 50_000);
    h.shed();
    let seen = h.seen();
    assert!(
        matches!(&seen[..], [Seen::Close(Some(1009), _)]),
        "{seen:?}"
    );
    assert_eq!(h.incomplete_bytes(), 0);
    assert!(h.transport().closing);
    assert_eq!(h.metrics().incomplete_closed, 1);
    h.closed();
    assert_eq!(h.incomplete_bytes(), 0);
}

#[test]
fn a_finished_message_gives_its_budget_back() {
    let mut h = open(config());
    h.send_frame(OpCode::Text, false, b"part one ");
    assert!(h.incomplete_bytes() > 0);
    h.send_frame(OpCode::Continuation, true, b"part two");
    assert_eq!(h.incomplete_bytes(), 0);
    assert_eq!(h.seen(), [Seen::Text("part one part two".into())]);
}

#[test]
fn a_kept_alive_publish_connection_closes_quietly_after_an_idle_timeout() {
    let mut config = config();
    config.admission.publish_key = Some(crate::server::admission::Secret::Value("k".into()));
    let mut h = Harness::new(config, Echo);
    h.receive(b"POST /publish/news HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 2\r\n\r\nhi");
    let seen = h.seen();
    assert!(
        matches!(&seen[..], [Seen::Http { status: 200, body }] if body.contains("\"subscribers\":0")),
        "{seen:?}"
    );
    assert!(!h.transport().ended(), "kept alive");
    h.advance(Duration::from_millis(59_999));
    assert!(!h.transport().ended());
    h.advance(Duration::from_millis(1));
    assert!(h.transport().closing, "closed once idle");
    assert!(
        h.seen().is_empty(),
        "quietly: no 408 to a client that asked nothing"
    );
}

#[test]
fn a_publish_body_counts_in_the_incomplete_budget_until_it_is_whole() {
    let mut config = config();
    config.admission.publish_key = Some(crate::server::admission::Secret::Value("k".into()));
    let mut h = Harness::new(config, Echo);
    h.receive(b"POST /publish/news HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 1000\r\n\r\nabc");
    assert!(h.incomplete_bytes() >= 1000);
    h.advance(Duration::from_secs(10));
    let seen = h.seen();
    assert!(
        matches!(&seen[..], [Seen::Http { status: 408, .. }]),
        "{seen:?}"
    );
    assert_eq!(h.incomplete_bytes(), 0);
}
