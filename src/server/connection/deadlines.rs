//! What the connection does when one of its [`Timer`]s passes, and the drain's schedule.

use crate::proto::CloseCode;
use crate::proto::handshake::Refusal;

use super::super::publish_api;
use super::{
    Asked, BACKLOG_RECHECK, Connection, Cx, Pause, Stage, Time, Timer, Timers, note_ending,
};

impl<S> Connection<S> {
    /// Handles every deadline that has passed.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        let config = cx.shard.config.clone();
        while let Some(timer) = self.timers.expired(cx.now) {
            match timer {
                Timer::Handshake => {
                    match self.stage {
                        // A kept-alive connection that sent nothing more: close it quietly.
                        Stage::Waiting { kept_alive: true } => {
                            self.stage = Stage::Responded;
                            return self.finish(cx);
                        }
                        Stage::Body(_) => {
                            let refusal = Refusal::new(408, "request body not completed in time");
                            let answer = publish_api::Answer::refused(refusal);
                            self.respond_to_api(cx, &answer);
                            return self.account_incomplete(cx);
                        }
                        _ => {}
                    }
                    let refusal = Refusal::new(408, "request not completed in time");
                    return self.refuse(cx, &refusal);
                }
                // Our close frame went unanswered.
                Timer::Close => return self.abort(cx),
                Timer::Pong => {
                    cx.shard.counters().ping_timeout();
                    let reason = "idle timeout: no pong to the server's ping";
                    return self.close(cx, CloseCode::GOING_AWAY, reason);
                }
                Timer::SendStall => {
                    if cx.io.queued_bytes(cx.id) == 0 {
                        continue;
                    }
                    let written = cx.io.written_bytes(cx.id) as u32;
                    if written != self.stall_mark {
                        self.stall_mark = written;
                        self.timers
                            .set(Timer::SendStall, cx.now.after(config.idle_timeout));
                        continue;
                    }
                    // The peer reads nothing: a close frame would never reach it.
                    tracing::debug!(peer = %self.peer.addr(), "send queue made no progress: aborting");
                    cx.shard.counters().stalled_closed();
                    note_ending(
                        &mut self.ending,
                        CloseCode::ABNORMAL,
                        "the peer stopped reading",
                    );
                    return self.abort(cx);
                }
                Timer::Idle => self.on_idle(cx),
                Timer::Drain => {
                    return self.close(cx, CloseCode::GOING_AWAY, "server shutting down");
                }
                Timer::Backlog => {
                    let bound = cx.shard.config.max_shard_backlog;
                    if cx.shard.topics.largest_backlog() > bound / 2 {
                        self.timers
                            .set(Timer::Backlog, cx.now.after(BACKLOG_RECHECK));
                    } else if self.paused == Some(Pause::Backlog) {
                        self.paused = None;
                        cx.io.resume_recv(cx.id);
                        // Bytes may have piled up meanwhile: the queue bound applies again.
                        self.apply(cx, Asked::default());
                    }
                }
            }
        }
    }

    /// The idle check: ping a peer silent for the idle timeout, else check again when it
    /// would have been.
    pub(super) fn on_idle(&mut self, cx: &mut Cx<'_>) {
        let idle = cx.shard.config.idle_timeout;
        let Stage::Open(open) = &mut self.stage else {
            return;
        };
        if idle.is_zero() || !open.parts.writer.is_open() {
            return;
        }
        let quiet_until = self.last_seen.after(idle);
        if cx.now < quiet_until {
            return self.timers.set(Timer::Idle, quiet_until);
        }
        // The ping carries the time it was sent; only a pong echoing it proves the peer reads.
        let sent = cx.now.as_millis().to_be_bytes();
        if open
            .parts
            .writer
            .ping(&sent, cx.shard.arena.room(16))
            .is_ok()
        {
            cx.shard.flush(cx.io, cx.id);
            self.timers.set(Timer::Pong, cx.now.after(idle));
            self.watch_send_queue(cx);
        }
    }

    /// The server is draining: an open connection is closed with 1001 at `at`, a handshake
    /// in progress is refused with 503 now.
    pub fn drain_at(&mut self, cx: &mut Cx<'_>, at: Time) {
        match &self.stage {
            Stage::Open(_) => self.timers.set(Timer::Drain, at),
            Stage::Waiting { kept_alive: true } => {
                self.stage = Stage::Responded;
                self.finish(cx);
            }
            Stage::Waiting { .. } | Stage::Proxy(_) | Stage::Handshake(_) | Stage::Body(_) => {
                let refusal = Refusal::new(503, "the server is shutting down");
                self.refuse(cx, &refusal.with_header("Retry-After", "5"));
            }
            Stage::Responded => {}
        }
    }
}

/// Whether a pong carries the payload of the ping we are waiting on: the time it was sent.
pub(super) fn answers_ping(timers: &Timers, payload: &[u8], idle: std::time::Duration) -> bool {
    let Some(deadline) = timers.get(Timer::Pong) else {
        return false;
    };
    let idle_millis = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let sent = deadline.as_millis().saturating_sub(idle_millis);
    payload == sent.to_be_bytes()
}
