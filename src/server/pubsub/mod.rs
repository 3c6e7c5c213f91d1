//! Pub/sub: topics whose subscribers live on any shard, and messages framed once for all.
//!
//! A published message becomes one unmasked frame in one `Bytes`; every subscriber's send
//! queue gets a reference to it, not a copy. For subscribers that negotiated
//! permessage-deflate without server context takeover, the compressed frame is made once per
//! window size (by whichever shard needs it first) and shared the same way.
//!
//! The rooms: `topics` is one shard's table (a plain data structure), `directory` says
//! which shards have subscribers to a topic, `published` is a message framed once, `router`
//! numbers and routes a publish and holds the [`Publisher`], and `shard_topics` keeps a
//! shard's table in step with the directory.
//!
//! Order: messages from one publisher (one connection, or one thread calling
//! [`Publisher::publish`]) reach each subscriber in the order they were published, because
//! every path (a shard's own pending queue, each shard's queue from other threads) is FIFO.
//! Messages of different publishers may interleave differently at different subscribers.
//! A subscription applies exactly to the messages published after it returns: every publish
//! takes a number from one counter, each subscription remembers the number current when it
//! joined, and a message numbered before that is not delivered to it, even when it was still
//! in flight to the subscriber's shard as it joined.
//!
//! Across the nodes of a cluster (`super::cluster`) one publisher's messages to one topic
//! keep their order at every subscriber on every node, and a subscription on a node applies
//! to the messages that reach that node after it returns (a node numbers a broker message
//! when it arrives).
//!
//! Lag: under the slow-subscriber policy, a subscriber may fall at most
//! `max_delivery_lag` behind the newest message queued to it (`lag`); older deliveries
//! still queued are dropped, or the subscriber closed, so an overloaded server sheds
//! instead of queueing seconds of backlog.
//!
//! Bounds: a topic name and the topics per connection are bounded ([`SubscribeError`]); a
//! shard's queue from other threads is bounded in bytes, and a publish that finds it full is
//! refused for that shard ([`PublishError`]), never queued without limit.

mod directory;
mod lag;
mod published;
mod router;
mod shard_topics;
mod topics;

pub use published::Published;
pub use router::{PublishError, Publisher, ShardMessage};
pub use topics::SubscribeError;

pub(crate) use lag::{LagBound, MAX_LAG, shed_before_fanout};
pub(crate) use router::Hub;
pub(crate) use shard_topics::ShardTopics;
pub(crate) use topics::TopicTable;
