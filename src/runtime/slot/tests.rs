//! The slot's life in memory: every transition and what it asks of the ring.

use bytes::Bytes;

use super::*;
use crate::runtime::send_queue::SendBuf;
use crate::runtime::timer::Kind;

use Action::*;

fn actions(list: Actions) -> Vec<Action> {
    list.into_iter().collect()
}

/// An open connection whose receive is armed.
fn open() -> Slot {
    let mut slot = Slot::default();
    assert_eq!(actions(slot.open()), [ArmRecv]);
    assert_eq!(slot.phase, Phase::Open);
    slot
}

/// Queues `bytes` and starts the sendmsg a flush would.
fn sending(slot: &mut Slot, bytes: &'static [u8]) {
    slot.queue.push(Bytes::from_static(bytes), false);
    assert!(slot.mark_dirty(), "listed for the flush");
    assert!(!slot.mark_dirty(), "once");
    assert!(slot.take_flush());
    slot.queue.start_send(SendBuf::new());
}

/// The sendmsg in flight completes with `result`.
fn sent(slot: &mut Slot, result: i32) -> Vec<Action> {
    let (list, buf) = slot.on_sent(result, &mut Vec::new());
    assert!(buf.is_some(), "the send's buffer comes back");
    actions(list)
}

/// Follows a slot from a closing phase to free: completes the shutdown (and any
/// setsockopt) and the final recv, then the close.
fn finish(slot: &mut Slot) -> CloseCause {
    assert_eq!(slot.phase, Phase::Closing);
    assert!(!slot.queue.is_sending());
    slot.on_closed()
}

#[test]
fn a_slot_stays_small() {
    let size = std::mem::size_of::<Slot>();
    println!("runtime slot {size} B");
    assert!(size <= 48, "{size}");
}

#[test]
fn open_draining_lingering_closing_free() {
    let mut slot = open();
    let generation = slot.generation;
    sending(&mut slot, b"last words");
    // Closing with a send in flight: drain first, under a deadline.
    assert_eq!(actions(slot.close(false)), [StartTimer(Kind::Drain)]);
    assert_eq!(slot.phase, Phase::Draining);
    assert!(
        slot.accepts_bytes(),
        "the queue may still grow while it drains"
    );
    // Written out: FIN, the linger deadline, and the receive keeps running.
    assert_eq!(
        sent(&mut slot, 10),
        [ShutdownWrite, StartTimer(Kind::Linger)]
    );
    assert_eq!(slot.phase, Phase::Lingering);
    // The peer's FIN ends the receive: cancel nothing, but the close waits (boundedly) for
    // the shutdown.
    assert_eq!(actions(slot.on_recv(0, false)), [StartTimer(Kind::Cancel)]);
    assert_eq!(slot.phase, Phase::Closing);
    assert_eq!(actions(slot.on_fd_op_done()), [Close]);
    assert_eq!(finish(&mut slot), CloseCause::Local);
    assert_eq!(slot.phase, Phase::Free);
    assert_eq!(slot.generation, generation, "kept until the next open");
}

#[test]
fn closing_with_nothing_queued_lingers_at_once() {
    let mut slot = open();
    assert_eq!(
        actions(slot.close(false)),
        [ShutdownWrite, StartTimer(Kind::Linger)]
    );
    assert_eq!(slot.phase, Phase::Lingering);
    // A second close, or bytes queued after it, change nothing.
    assert_eq!(actions(slot.close(false)), []);
    assert!(!slot.accepts_bytes());
}

#[test]
fn a_peer_that_said_its_last_is_not_lingered_for() {
    // Nothing queued: no shutdown (a worker thread's job in io_uring), straight to closing.
    let mut slot = open();
    assert_eq!(
        actions(slot.close(true)),
        [CancelRecv, StartTimer(Kind::Cancel)]
    );
    assert_eq!(actions(slot.on_recv(-libc::ECANCELED, false)), [Close]);
    assert_eq!(finish(&mut slot), CloseCause::Local);

    // The close reply still being written: drained first, then closed, FIN after it.
    let mut slot = open();
    sending(&mut slot, b"close reply");
    assert_eq!(actions(slot.close(true)), [StartTimer(Kind::Drain)]);
    assert_eq!(sent(&mut slot, 11), [CancelRecv, StartTimer(Kind::Cancel)]);
    assert_eq!(actions(slot.on_recv(-libc::ECANCELED, false)), [Close]);
    assert_eq!(finish(&mut slot), CloseCause::Local);

    // The next connection in the slot lingers again.
    assert_eq!(actions(slot.open()), [ArmRecv]);
    assert_eq!(
        actions(slot.close(false)),
        [ShutdownWrite, StartTimer(Kind::Linger)]
    );
}

#[test]
fn the_close_waits_for_the_shutdown_before_it() {
    let mut slot = open();
    slot.close(false); // shutdown(SHUT_WR) in flight
    // The linger deadline passes with the shutdown still in flight: abort, but the close
    // must not overtake the shutdown (nor the setsockopt).
    assert_eq!(
        actions(slot.on_timer(Kind::Linger, true)),
        [LingerZero, CancelRecv, StartTimer(Kind::Cancel)]
    );
    assert_eq!(slot.cause, CloseCause::TimedOut);
    assert_eq!(actions(slot.on_recv(-libc::ECANCELED, false)), []);
    assert_eq!(
        actions(slot.on_fd_op_done()),
        [],
        "the setsockopt is still out"
    );
    assert_eq!(actions(slot.on_fd_op_done()), [Close]);
    assert_eq!(actions(slot.on_fd_op_done()), [], "one close only");
}

#[test]
fn a_drain_that_never_ends_is_aborted() {
    let mut slot = open();
    sending(&mut slot, b"megabytes the peer never reads");
    slot.queue.push(Bytes::from_static(b"more"), false);
    slot.close(false);
    assert_eq!(
        actions(slot.on_timer(Kind::Drain, true)),
        [LingerZero, CancelRecv, CancelSend, StartTimer(Kind::Cancel)]
    );
    assert_eq!(slot.phase, Phase::Closing);
    assert_eq!(
        slot.queue.cost(),
        30 + crate::runtime::CHUNK_OVERHEAD,
        "only what the kernel reads stays"
    );
    assert_eq!(sent(&mut slot, -libc::ECANCELED), []);
    assert_eq!(actions(slot.on_recv(-libc::ECANCELED, false)), []);
    assert_eq!(actions(slot.on_fd_op_done()), [Close]);
    assert_eq!(finish(&mut slot), CloseCause::TimedOut);
}

#[test]
fn a_deadline_of_another_phase_is_ignored() {
    let mut slot = open();
    for kind in [Kind::Drain, Kind::Linger, Kind::Cancel, Kind::Handler] {
        assert_eq!(actions(slot.on_timer(kind, true)), []);
    }
    slot.close(false); // straight to lingering
    assert_eq!(
        actions(slot.on_timer(Kind::Drain, true)),
        [],
        "drain timer of a drain long done"
    );
    assert_eq!(slot.phase, Phase::Lingering);
}

#[test]
fn abort_without_a_reset_closes_as_soon_as_nothing_is_in_flight() {
    let mut slot = open();
    assert_eq!(
        actions(slot.abort(CloseCause::Local, false)),
        [CancelRecv, StartTimer(Kind::Cancel)]
    );
    assert_eq!(actions(slot.on_recv(-libc::ECANCELED, false)), [Close]);
    // Anything after that changes nothing.
    assert_eq!(actions(slot.abort(CloseCause::Local, true)), []);
    assert_eq!(actions(slot.close(false)), []);
}

#[test]
fn abort_with_nothing_in_flight_closes_at_once() {
    let mut slot = open();
    slot.on_recv(-libc::ENOBUFS, false); // the receive ended; a rearm is pending
    assert_eq!(actions(slot.abort(CloseCause::Local, false)), [Close]);
}

#[test]
fn cancels_that_do_not_end_get_the_socket_shut_under_them() {
    let mut slot = open();
    sending(&mut slot, b"stuck");
    slot.abort(CloseCause::Local, false);
    assert_eq!(
        actions(slot.on_timer(Kind::Cancel, false)),
        [CancelRecv, CancelSend, ShutdownBoth]
    );
    assert_eq!(sent(&mut slot, -libc::EPIPE), []);
    assert_eq!(actions(slot.on_recv(0, false)), []);
    assert_eq!(actions(slot.on_fd_op_done()), [Close]);
    assert_eq!(
        actions(slot.on_timer(Kind::Cancel, false)),
        [],
        "closed: nothing to force"
    );
}

#[test]
fn the_peers_fin_while_open_drains_then_closes() {
    let mut slot = open();
    sending(&mut slot, b"reply");
    assert_eq!(actions(slot.on_recv(0, false)), [StartTimer(Kind::Drain)]);
    assert_eq!(slot.phase, Phase::Draining);
    assert!(slot.accepts_bytes(), "the handler may still write");
    // Written out: the peer already sent its FIN, so no lingering.
    assert_eq!(sent(&mut slot, 5), [Close]);
    assert_eq!(finish(&mut slot), CloseCause::PeerClosed);
}

#[test]
fn the_peers_fin_while_open_and_idle_closes() {
    let mut slot = open();
    assert_eq!(actions(slot.on_recv(0, false)), [Close]);
    assert_eq!(finish(&mut slot), CloseCause::PeerClosed);
}

#[test]
fn the_peers_fin_while_draining_waits_for_the_queue() {
    let mut slot = open();
    sending(&mut slot, b"bytes");
    slot.close(false);
    assert_eq!(actions(slot.on_recv(0, false)), []);
    assert_eq!(slot.phase, Phase::Draining);
    assert_eq!(sent(&mut slot, 5), [Close], "no FIN of ours to wait on");
    assert_eq!(finish(&mut slot), CloseCause::Local);
}

#[test]
fn the_peers_fin_while_closing_lets_the_close_go() {
    let mut slot = open();
    slot.abort(CloseCause::Local, false);
    assert_eq!(actions(slot.on_recv(0, false)), [Close]);
}

#[test]
fn bytes_after_our_fin_are_read_and_the_receive_kept_alive() {
    let mut slot = open();
    slot.close(false);
    assert_eq!(actions(slot.on_recv(100, true)), []);
    // The multishot receive ended (ring dry): start it again, still lingering.
    assert_eq!(actions(slot.on_recv(-libc::ENOBUFS, false)), [RearmRecv]);
    assert_eq!(actions(slot.arm_recv()), [ArmRecv]);
}

#[test]
fn a_receive_error_closes() {
    let mut slot = open();
    assert_eq!(actions(slot.on_recv(-libc::ECONNRESET, false)), [Close]);
    assert_eq!(finish(&mut slot), CloseCause::Error(libc::ECONNRESET));
}

#[test]
fn a_send_error_closes() {
    let mut slot = open();
    sending(&mut slot, b"x");
    assert_eq!(
        sent(&mut slot, -libc::EPIPE),
        [CancelRecv, StartTimer(Kind::Cancel)]
    );
    assert_eq!(actions(slot.on_recv(-libc::ECANCELED, false)), [Close]);
    assert_eq!(finish(&mut slot), CloseCause::Error(libc::EPIPE));
}

#[test]
fn a_short_write_sends_the_rest_next_turn_and_a_full_one_reports_drained() {
    let mut slot = open();
    sending(&mut slot, b"0123456789");
    assert_eq!(sent(&mut slot, 4), [Flush]);
    assert!(slot.take_flush());
    slot.queue.start_send(SendBuf::new());
    assert_eq!(sent(&mut slot, 6), [Drained]);
    assert_eq!(slot.queue.written(), 10);
}

#[test]
fn pausing_cancels_the_receive_and_a_late_cancel_still_rearms() {
    let mut slot = open();
    assert_eq!(actions(slot.pause()), [CancelRecv]);
    assert_eq!(actions(slot.pause()), [], "already paused");
    // Resumed before the cancel completed: the receive still counts as armed...
    assert!(slot.resume());
    assert_eq!(actions(slot.arm_recv()), []);
    // ...so its cancellation must start it again.
    assert_eq!(actions(slot.on_recv(-libc::ECANCELED, false)), [RearmRecv]);
    // Paused, a cancelled receive stays stopped.
    slot.arm_recv();
    slot.pause();
    assert_eq!(actions(slot.on_recv(-libc::ECANCELED, false)), []);
}

#[test]
fn generations_tell_connections_in_one_slot_apart() {
    let mut slot = open();
    let first = slot.generation;
    slot.abort(CloseCause::Local, false);
    slot.on_recv(-libc::ECANCELED, false);
    slot.on_closed();
    assert_eq!(slot.phase, Phase::Free);
    assert!(!slot.is_live());
    assert_eq!(actions(slot.open()), [ArmRecv]);
    assert_ne!(slot.generation, first);
    assert_eq!(slot.cause, CloseCause::Local, "a fresh slot");
    assert!(
        !slot.flags.get(Flags::PEER_CLOSED) && !slot.queue.is_sending() && slot.queue.is_empty()
    );
}

#[test]
fn the_generation_wraps_within_its_bits() {
    let mut slot = Slot {
        generation: 0x00FF_FFFF,
        ..Slot::default()
    };
    slot.open();
    assert_eq!(slot.generation, 0);
}
