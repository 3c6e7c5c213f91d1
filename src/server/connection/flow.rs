//! Flow control: the bound on queued bytes (pause reading or close), the watch on a send
//! queue's progress, what a callback asked for, and the shard's budget for incomplete
//! messages.

use crate::proto::handshake::Refusal;
use crate::proto::{CloseCode, ProtocolError};

use super::super::config::BackpressurePolicy;
use super::super::publish_api;
use super::{Asked, BACKLOG_RECHECK, Connection, Cx, Pause, Stage, Timer, note_ending};

impl<S> Connection<S> {
    /// Closes with 1009 to give back the memory of the message this connection is
    /// assembling: the shard's budget for incomplete messages is spent and it holds the most.
    pub fn shed_incomplete(&mut self, cx: &mut Cx<'_>) {
        if let Stage::Body(_) = self.stage {
            cx.shard.counters().incomplete_closed();
            let refusal = Refusal::new(
                503,
                "the server's memory for incomplete messages is spent: this body is the largest",
            );
            let answer = publish_api::Answer::refused(refusal.with_header("Retry-After", "1"));
            self.respond_to_api(cx, &answer);
            return self.account_incomplete(cx);
        }
        let Stage::Open(open) = &mut self.stage else {
            return;
        };
        const SHED: ProtocolError = ProtocolError::too_big(
            "the server's memory for incomplete messages is spent: this one is the largest",
        );
        cx.shard.counters().incomplete_closed();
        open.parts.writer.fail(SHED, cx.shard.arena.room(128));
        open.reader.discard();
        note_ending(&mut self.ending, SHED.code, SHED.reason);
        cx.shard.flush(cx.io, cx.id);
        self.account_incomplete(cx);
        self.finish(cx);
    }

    /// After anything that may have queued bytes: the queue's bound, and its progress.
    pub(super) fn after_sending(&mut self, cx: &mut Cx<'_>) {
        self.apply_backpressure(cx);
        self.watch_send_queue(cx);
    }

    /// Past the bound on queued bytes, pause reading or close, as configured.
    pub(super) fn apply_backpressure(&mut self, cx: &mut Cx<'_>) {
        if self.paused.is_some() || cx.io.queued_bytes(cx.id) <= cx.shard.config.max_queued_bytes {
            return;
        }
        cx.shard.counters().queue_bound_hit();
        match cx.shard.config.backpressure {
            BackpressurePolicy::PauseReading => {
                self.paused = Some(Pause::Backpressure);
                cx.io.pause_recv(cx.id);
            }
            BackpressurePolicy::Close => {
                let reason = "send queue over its limit: the client reads too slowly";
                self.close(cx, CloseCode::POLICY_VIOLATION, reason);
            }
        }
    }

    /// Bytes are queued: make sure someone checks they move.
    pub(super) fn watch_send_queue(&mut self, cx: &mut Cx<'_>) {
        let idle = cx.shard.config.idle_timeout;
        if idle.is_zero() || self.timers.is_set(Timer::SendStall) {
            return;
        }
        if cx.io.queued_bytes(cx.id) > 0 {
            self.stall_mark = cx.io.written_bytes(cx.id) as u32;
            self.timers.set(Timer::SendStall, cx.now.after(idle));
        }
    }

    /// Applies what a callback asked for.
    pub(super) fn apply(&mut self, cx: &mut Cx<'_>, asked: Asked) {
        if asked.close_sent {
            self.await_close(cx);
        }
        if asked.publish_refused && self.paused.is_none() {
            self.paused = Some(Pause::Backlog);
            cx.io.pause_recv(cx.id);
            self.timers
                .set(Timer::Backlog, cx.now.after(BACKLOG_RECHECK));
        }
        self.after_sending(cx);
    }

    /// Counts what the reader holds for incomplete messages in the shard's budget.
    pub(super) fn account_incomplete(&mut self, cx: &mut Cx<'_>) {
        let held = match &self.stage {
            Stage::Open(open) => open.reader.held_bytes(),
            Stage::Body(body) => body.held_bytes(),
            _ => 0,
        };
        cx.shard.incomplete_bytes = cx.shard.incomplete_bytes - self.incomplete + held;
        self.incomplete = held;
    }
}
