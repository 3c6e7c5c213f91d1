//! The runtime's handler for one shard: a table of connections, each driven by
//! `connection`, and the small adapter that turns their timers into the runtime's one
//! deadline per connection.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::runtime::{self, CloseCause, ConnId, Dropped, Io, Secured, Tag};

use super::app::App;
use super::config::SlowSubscriberPolicy;
use super::connection::{Clock, Connection, Cx, Time};
use super::events;
use super::pubsub::{Published, ShardMessage, shed_before_fanout};
use super::shard_state::ShardState;
use super::transport::Transport;

/// A connection in the shard's table, with the deadline the runtime was last asked for.
struct Entry<S> {
    id: ConnId,
    conn: Connection<S>,
    /// In milliseconds of the shard's clock, [`UNARMED`] for none (8 bytes less than an
    /// `Option<Time>` in every entry).
    armed: u64,
}

/// Messages published on a shard that it fans out in one loop turn, at most, when it can
/// shed what waits too long: one sendmsg per subscriber and turn carries at most this many
/// (the send queue's 64 iovecs), so fanning out more would only queue them per
/// subscriber, at a queue operation each, and make the turn (and the next sends) later.
/// The rest wait in the shard's own queue, at no cost per subscriber, and are shed there
/// once they wait past the lag bound.
const FANOUTS_PER_TURN: usize = 64;

pub(crate) struct ShardHandler<A: App> {
    app: A,
    shard: ShardState,
    /// Indexed by the connection's direct-descriptor slot.
    conns: Vec<Option<Entry<A::State>>>,
    /// The turn the fan-outs below were counted in (its `Io::now`).
    turn: Option<std::time::Instant>,
    /// This shard's own publishes fanned out in that turn.
    fanned: usize,
}

impl<A: App> ShardHandler<A> {
    pub fn new(app: A, shard: ShardState) -> Self {
        Self {
            app,
            shard,
            conns: Vec::new(),
            turn: None,
            fanned: 0,
        }
    }

    fn entry(&mut self, id: ConnId) -> Option<&mut Entry<A::State>> {
        match self.conns.get_mut(id.slot() as usize) {
            Some(Some(entry)) if entry.id == id => Some(entry),
            _ => None,
        }
    }

    /// Runs `f` on connection `id`, then points the runtime's deadline at the connection's
    /// earliest timer if that moved.
    fn drive(
        &mut self,
        io: &mut Io,
        id: ConnId,
        f: impl FnOnce(&mut Connection<A::State>, &mut Cx<'_>, &mut A),
    ) {
        let now = self.shard.clock.time(io.now());
        let Some(Some(entry)) = self.conns.get_mut(id.slot() as usize) else {
            return;
        };
        if entry.id != id {
            return;
        }
        let mut cx = Cx {
            id,
            now,
            shard: &mut self.shard,
            io,
        };
        f(&mut entry.conn, &mut cx, &mut self.app);
        sync_deadline(entry, io, &self.shard.clock);
    }

    /// Delivers what this shard's connections published during the last callback.
    /// Up to [`FANOUTS_PER_TURN`] a turn while a lag bound can shed what is left waiting;
    /// all of them without one (else the shard's queue would grow without a bound).
    fn deliver_pending(&mut self, io: &mut Io) {
        let config = &self.shard.config;
        let budgeted = config.slow_subscriber == SlowSubscriberPolicy::DropOldest
            && !config.max_delivery_lag.is_zero();
        if self.turn != Some(io.now()) {
            self.turn = Some(io.now());
            self.fanned = 0;
        }
        while !budgeted || self.fanned < FANOUTS_PER_TURN {
            let Some(published) = self.shard.topics.next_pending() else {
                break;
            };
            self.fanned += 1;
            self.deliver(io, &published);
        }
    }

    /// Queues `published` to this shard's subscribers of its topic that joined before it
    /// was published.
    fn deliver(&mut self, io: &mut Io, published: &Published) {
        let topic = published.topic();
        let Some(subscribers) = self.shard.topics.lend(topic) else {
            return;
        };
        let config = &self.shard.config;
        let at = published.published_at();
        if shed_before_fanout(
            config.slow_subscriber,
            config.max_delivery_lag,
            at,
            Instant::now(),
        ) {
            // Behind by more than the bound already: every subscriber here would get it
            // stale. Counted as their drops (the publisher among them, if subscribed).
            let counters = self.shard.counters();
            counters.shed();
            counters.dropped(subscribers.len());
            counters.dropped_stale(subscribers.len());
            self.shard.topics.give_back(topic, subscribers);
            return;
        }
        let stamp = Tag::new(self.shard.clock.micros(at)).unwrap_or(Tag::MIN);
        let shard_index = self.shard.topics.shard();
        for (&id, &since) in &subscribers {
            if since > published.sequence() || published.is_from(shard_index, id) {
                continue;
            }
            self.drive(io, id, |conn, cx, _| conn.deliver(cx, published, stamp));
        }
        self.shard.topics.give_back(topic, subscribers);
    }

    /// While the shard's incomplete messages hold more than their budget, closes the
    /// connection holding the most.
    fn enforce_incomplete_budget(&mut self, io: &mut Io) {
        while self.shard.over_incomplete_budget() {
            let largest = self
                .conns
                .iter()
                .flatten()
                .max_by_key(|entry| entry.conn.incomplete_bytes())
                .filter(|entry| entry.conn.incomplete_bytes() > 0)
                .map(|entry| entry.id);
            let Some(id) = largest else {
                return;
            };
            self.drive(io, id, |conn, cx, _| conn.shed_incomplete(cx));
        }
    }
}

/// [`Entry::armed`] when the runtime holds no deadline for the connection.
const UNARMED: u64 = u64::MAX;

/// Asks the runtime to call back at the connection's earliest deadline, if that changed.
fn sync_deadline<S>(entry: &mut Entry<S>, io: &mut Io, clock: &Clock) {
    let next = entry.conn.poll_timeout();
    let armed = next.map_or(UNARMED, Time::as_millis);
    if armed == entry.armed {
        return;
    }
    entry.armed = armed;
    match next.and_then(|at| clock.instant(at)) {
        Some(at) => io.set_deadline_at(entry.id, at),
        None => io.clear_deadline(entry.id),
    }
}

impl<A: App> runtime::Handler for ShardHandler<A> {
    type Message = ShardMessage;

    fn on_open(&mut self, io: &mut Io, id: ConnId, peer: SocketAddr) {
        let slot = id.slot() as usize;
        if self.conns.len() <= slot {
            // Reserved whole on first use, like the runtime's slots: growing by doubling
            // would leave the old copies with the allocator.
            self.conns
                .reserve_exact(io.capacity().max(slot + 1) - self.conns.len());
            self.conns.resize_with(slot + 1, || None);
        }
        let now = self.shard.clock.time(io.now());
        let proxied = self
            .shard
            .admission
            .expects_proxy_header(io.listener_of(id));
        let mut cx = Cx {
            id,
            now,
            shard: &mut self.shard,
            io,
        };
        let conn = Connection::new(peer, proxied, &mut cx);
        let mut entry = Entry {
            id,
            conn,
            armed: UNARMED,
        };
        sync_deadline(&mut entry, io, &self.shard.clock);
        self.conns[slot] = Some(entry);
        self.shard.counters().connection_opened();
    }

    fn on_data(&mut self, io: &mut Io, id: ConnId, data: &mut [u8]) {
        self.shard.counters().received(data.len());
        self.drive(io, id, |conn, cx, app| conn.on_data(cx, app, data));
        self.deliver_pending(io);
        self.enforce_incomplete_budget(io);
    }

    fn on_secured(&mut self, _io: &mut Io, _id: ConnId, secured: Secured) {
        self.shard.counters().tls_handshake(secured.resumed);
    }

    fn on_drained(&mut self, io: &mut Io, id: ConnId) {
        self.drive(io, id, |conn, cx, app| conn.on_drained(cx, app));
        self.deliver_pending(io);
    }

    /// Published messages the kernel has taken whole: how long since they were published.
    fn on_sent(&mut self, io: &mut Io, tags: &[Tag]) {
        let now = self.shard.clock.micros(io.now());
        let histogram = &self.shard.counters().delivery_latency;
        for tag in tags {
            histogram.observe_micros(now.wrapping_sub(tag.get()));
        }
    }

    fn on_deadline(&mut self, io: &mut Io, id: ConnId) {
        if let Some(entry) = self.entry(id) {
            // The runtime's deadline fired and is spent.
            entry.armed = UNARMED;
        }
        self.drive(io, id, |conn, cx, _| conn.handle_timeout(cx));
    }

    fn on_closed(&mut self, _io: &mut Io, id: ConnId, cause: CloseCause) {
        if self.entry(id).is_none() {
            return;
        }
        if let Some(entry) = self.conns[id.slot() as usize].take() {
            self.shard.topics.remove(id);
            self.shard.counters().connection_closed();
            // Written out only if the close is logged: most closes are not.
            let (tls, errno);
            let cause: &dyn std::fmt::Display = match cause {
                CloseCause::Local => &"server",
                CloseCause::PeerClosed => &"peer",
                CloseCause::Shutdown => &"shutdown",
                CloseCause::TimedOut => &"timed out closing",
                CloseCause::Tls(failure) => {
                    self.shard.counters().families.tls_failed(failure);
                    let loud = self.shard.config.log_connections;
                    let peer = entry.conn.peer();
                    events::tls_failed(loud, self.shard.index(), peer, failure.name());
                    tls = format!("tls: {failure}");
                    &tls
                }
                CloseCause::Error(code) => {
                    errno = std::io::Error::from_raw_os_error(code);
                    &errno
                }
            };
            entry.conn.on_closed(&mut self.shard, &mut self.app, cause);
        }
    }

    fn on_turn(&mut self, io: &mut Io) -> bool {
        self.deliver_pending(io);
        self.shard.topics.has_pending()
    }

    fn on_message(&mut self, io: &mut Io, message: ShardMessage) {
        match message {
            ShardMessage::Publish(published) => self.deliver(io, &published),
        }
    }

    /// Accepting has stopped: every connection gets its 1001, spread evenly over the drain
    /// window so that its clients do not all reconnect in the same instant.
    fn on_shutdown(&mut self, io: &mut Io) {
        let ids: Vec<ConnId> = self.conns.iter().flatten().map(|e| e.id).collect();
        let now = self.shard.clock.time(io.now());
        let spread = self.shard.config.drain_spread;
        let count = ids.len().max(1) as u32;
        for (i, id) in ids.into_iter().enumerate() {
            let at = now.after(spread.mul_f64(f64::from(i as u32) / f64::from(count)));
            self.drive(io, id, |conn, cx, _| conn.drain_at(cx, at));
        }
    }
}

impl Transport for Io {
    fn send(&mut self, conn: ConnId, bytes: Bytes) {
        Io::send(self, conn, bytes);
    }

    fn send_tagged(&mut self, conn: ConnId, bytes: Bytes, tag: Tag) {
        Io::send_tagged(self, conn, bytes, tag);
    }

    fn drop_oldest(&mut self, conn: ConnId, low_water: usize) -> Dropped {
        Io::drop_oldest(self, conn, low_water)
    }

    fn oldest_tag(&self, conn: ConnId) -> Option<Tag> {
        Io::oldest_tag(self, conn)
    }

    fn drop_stale(&mut self, conn: ConnId, stale: &mut dyn FnMut(Tag) -> bool) -> Dropped {
        Io::drop_stale(self, conn, stale)
    }

    fn queued_bytes(&self, conn: ConnId) -> usize {
        Io::queued_bytes(self, conn)
    }

    fn written_bytes(&self, conn: ConnId) -> u64 {
        Io::written_bytes(self, conn)
    }

    fn close(&mut self, conn: ConnId) {
        Io::close(self, conn);
    }

    fn close_answered(&mut self, conn: ConnId) {
        Io::close_answered(self, conn);
    }

    fn abort(&mut self, conn: ConnId) {
        Io::abort(self, conn);
    }

    fn pause_recv(&mut self, conn: ConnId) {
        Io::pause_recv(self, conn);
    }

    fn resume_recv(&mut self, conn: ConnId) {
        Io::resume_recv(self, conn);
    }

    fn lend(&mut self, part: &[u8]) -> Option<Bytes> {
        Io::lend(self, part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::serve_app::ServeApp;

    /// What an idle connection costs in the shard's table, measured by the type system.
    #[test]
    fn idle_connection_tables_stay_small() {
        let entry = std::mem::size_of::<Option<Entry<()>>>();
        let serving = std::mem::size_of::<Option<Entry<<ServeApp as App>::State>>>();
        println!("connection entry {entry} B, serving pub/sub {serving} B");
        assert!(entry <= 152, "{entry}");
        assert!(serving <= 160, "{serving}");
    }
}
