//! The runtime handler of one shard: a table of connections driven by `conn`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::proto::CloseCode;
use crate::runtime::{self, CloseCause, ConnId, Dropped, Io};

use super::app::App;
use super::config::ServerConfig;
use super::conn::Connection;
use super::core::ShardCore;
use super::pubsub::{Published, ShardMessage, ShardTopics};
use super::transport::Transport;

pub(crate) struct ShardHandler<A: App> {
    app: A,
    core: ShardCore,
    /// Indexed by the connection's direct-descriptor slot.
    conns: Vec<Option<(ConnId, Connection<A::State>)>>,
}

impl<A: App> ShardHandler<A> {
    pub fn new(app: A, config: Arc<ServerConfig>, topics: ShardTopics) -> Self {
        Self {
            app,
            core: ShardCore::new(config, topics),
            conns: Vec::new(),
        }
    }

    /// Delivers what this shard's connections published during the last callback.
    fn deliver_pending(&mut self, io: &mut Io) {
        while let Some(published) = self.core.topics.next_pending() {
            self.deliver(io, &published);
        }
    }

    /// Queues `published` to this shard's subscribers of its topic.
    fn deliver(&mut self, io: &mut Io, published: &Published) {
        let topic = published.topic();
        let Some(subscribers) = self.core.topics.take_subscribers(topic) else {
            return;
        };
        let shard = self.core.topics.shard();
        for &id in &subscribers {
            if published.is_from(shard, id) {
                continue;
            }
            if let Some(Some((known, conn))) = self.conns.get_mut(id.slot() as usize)
                && *known == id
            {
                conn.deliver(id, published, &mut self.core, io);
            }
        }
        self.core.topics.return_subscribers(topic, subscribers);
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut Connection<A::State>> {
        match self.conns.get_mut(id.slot() as usize) {
            Some(Some((known, conn))) if *known == id => Some(conn),
            _ => None,
        }
    }
}

impl<A: App> runtime::Handler for ShardHandler<A> {
    type Message = ShardMessage;

    fn on_open(&mut self, io: &mut Io, id: ConnId, peer: SocketAddr) {
        let slot = id.slot() as usize;
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        self.conns[slot] = Some((id, Connection::new(peer, &self.core, io.now())));
        self.core.topics.counters().connection_opened();
        io.set_deadline(id, self.core.config.handshake_timeout);
    }

    fn on_data(&mut self, io: &mut Io, id: ConnId, data: &mut [u8]) {
        let now = io.now();
        let Some(Some((_, conn))) = self.conns.get_mut(id.slot() as usize) else {
            return;
        };
        conn.on_data(id, data, &mut self.app, &mut self.core, io, now);
        self.deliver_pending(io);
    }

    fn on_drained(&mut self, io: &mut Io, id: ConnId) {
        let Some(Some((_, conn))) = self.conns.get_mut(id.slot() as usize) else {
            return;
        };
        conn.on_drained(id, &mut self.app, &mut self.core, io);
        self.deliver_pending(io);
    }

    fn on_deadline(&mut self, io: &mut Io, id: ConnId) {
        let now = io.now();
        let Some(Some((_, conn))) = self.conns.get_mut(id.slot() as usize) else {
            return;
        };
        conn.on_deadline(id, &mut self.core, io, now);
    }

    fn on_closed(&mut self, _io: &mut Io, id: ConnId, _cause: CloseCause) {
        if self.conn(id).is_none() {
            return;
        }
        if let Some((_, conn)) = self.conns[id.slot() as usize].take() {
            self.core.topics.remove(id);
            self.core.topics.counters().connection_closed();
            conn.on_closed(&mut self.app);
        }
    }

    fn on_message(&mut self, io: &mut Io, message: ShardMessage) {
        match message {
            ShardMessage::Publish(published) => self.deliver(io, &published),
        }
    }

    fn on_shutdown(&mut self, io: &mut Io) {
        for entry in self.conns.iter_mut().flatten() {
            let (id, conn) = entry;
            conn.close_with(
                *id,
                CloseCode::GOING_AWAY,
                "server shutting down",
                &mut self.core,
                io,
            );
        }
    }
}

impl Transport for Io {
    fn send(&mut self, conn: ConnId, bytes: Bytes) {
        Io::send(self, conn, bytes);
    }

    fn send_droppable(&mut self, conn: ConnId, bytes: Bytes) {
        Io::send_droppable(self, conn, bytes);
    }

    fn drop_oldest(&mut self, conn: ConnId, limit: usize) -> Dropped {
        Io::drop_oldest(self, conn, limit)
    }

    fn queued_bytes(&self, conn: ConnId) -> usize {
        Io::queued_bytes(self, conn)
    }

    fn close(&mut self, conn: ConnId) {
        Io::close(self, conn);
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

    fn set_deadline(&mut self, conn: ConnId, after: Duration) {
        Io::set_deadline(self, conn, after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection costs in the shard's tables, measured by the type system.
    #[test]
    fn idle_connection_tables_stay_small() {
        let conn = std::mem::size_of::<Option<(ConnId, Connection<()>)>>();
        println!("connection entry {conn} B");
        assert!(conn <= 384, "{conn}");
    }
}
