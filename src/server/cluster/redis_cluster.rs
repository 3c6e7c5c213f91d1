//! The Redis Cluster link, on redis-rs's cluster client: sharded pub/sub, so that each
//! message goes only to the Redis node owning its channel's slot instead of to every node of
//! the Redis cluster. One RESP3 connection per Redis node, made and remade by the client,
//! which also resubscribes on its own; the link is down while any of them is lost and up
//! again once every primary answers.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ProtocolVersion, PushInfo, PushKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Shared;
use super::link::{Broker, Event};
use super::naming::redis_channel;
use super::redis::{certificates, decode_push};
use super::stats::{Backoff, add};
use super::wire::{NodeId, Outbound};

/// Pushes waiting for the link; past this they are dropped, counted.
const PUSH_CAPACITY: usize = 16_384;
const TIMEOUT: Duration = Duration::from_secs(5);

enum State {
    Down {
        retry_at: Instant,
    },
    Connecting(JoinHandle<redis::RedisResult<ClusterConnection>>),
    Up(ClusterConnection),
    /// A Redis node was lost; the client is reconnecting to it. Check every primary at
    /// `check_at`.
    Degraded {
        connection: ClusterConnection,
        check_at: Instant,
    },
}

pub(crate) struct RedisCluster {
    client: ClusterClient,
    prefix: String,
    node: NodeId,
    state: State,
    attempts: usize,
    pushes: mpsc::Receiver<PushInfo>,
}

impl RedisCluster {
    pub fn new(shared: &Arc<Shared>) -> Result<Self, String> {
        let config = &shared.config;
        let (tx, pushes) = mpsc::channel(PUSH_CAPACITY);
        let counters = shared.clone();
        let sender = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            let disconnection = info.kind == PushKind::Disconnection;
            if tx.try_send(info).is_err() && !disconnection {
                add(&counters.stats.inbound_dropped, 1);
            }
            Ok(())
        };
        let mut builder = ClusterClientBuilder::new(config.urls.iter().map(String::as_str))
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .push_sender(sender);
        if let Some(certificates) = certificates(config)? {
            builder = builder.certs(certificates);
        }
        let client = builder
            .build()
            .map_err(|err| format!("Redis Cluster: {err}"))?;
        Ok(Self {
            client,
            prefix: config.prefix.clone(),
            node: shared.node,
            state: State::Down {
                retry_at: Instant::now(),
            },
            attempts: 0,
            pushes,
        })
    }

    fn connection(&mut self) -> Option<&mut ClusterConnection> {
        match &mut self.state {
            State::Up(connection) | State::Degraded { connection, .. } => Some(connection),
            _ => None,
        }
    }

    fn backoff(&mut self) -> Instant {
        self.attempts += 1;
        Instant::now() + Backoff::DEFAULT.next(self.attempts - 1)
    }
}

/// Whether every primary the cluster lists answers a PING over this node's connection to
/// it: the client's own recovery is over.
async fn every_primary_answers(connection: &mut ClusterConnection) -> bool {
    let random = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    let nodes = connection
        .route_command(redis::cmd("CLUSTER").arg("NODES").clone(), random)
        .await
        .ok()
        .and_then(|value| redis::from_redis_value::<String>(value).ok());
    let Some(nodes) = nodes else {
        return false;
    };
    // `<id> <ip:port@cport[,hostname]> <flags> ...`, one line per node.
    let primaries: Vec<(String, u16)> = nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            if !flags.split(',').any(|f| f == "master") {
                return None;
            }
            let (host, port) = address.split(['@', ',']).next()?.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect();
    if primaries.is_empty() {
        return false;
    }
    for (host, port) in primaries {
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        if connection
            .route_command(redis::cmd("PING"), route)
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Broker for RedisCluster {
    async fn next(&mut self) -> Event {
        loop {
            match &mut self.state {
                State::Down { retry_at } => {
                    tokio::time::sleep_until(*retry_at).await;
                    let client = self.client.clone();
                    self.state = State::Connecting(tokio::spawn(async move {
                        client.get_async_connection().await
                    }));
                }
                State::Connecting(handle) => {
                    let result = handle.await;
                    match result {
                        Ok(Ok(connection)) => {
                            self.state = State::Up(connection);
                            self.attempts = 0;
                            return Event::Up;
                        }
                        Ok(Err(err)) => {
                            let first = self.attempts == 0;
                            self.state = State::Down {
                                retry_at: self.backoff(),
                            };
                            if first {
                                return Event::Down(format!("connecting to Redis Cluster: {err}"));
                            }
                        }
                        Err(err) => {
                            self.state = State::Down {
                                retry_at: self.backoff(),
                            };
                            return Event::Down(format!("connecting to Redis Cluster: {err}"));
                        }
                    }
                }
                State::Up(_) | State::Degraded { .. } => {
                    let check_at = match &self.state {
                        State::Degraded { check_at, .. } => Some(*check_at),
                        _ => None,
                    };
                    tokio::select! {
                        push = self.pushes.recv() => {
                            let Some(info) = push else {
                                return Event::Down("the push queue closed".into());
                            };
                            if info.kind == PushKind::Disconnection {
                                let check_at = self.backoff();
                                let was_up = match std::mem::replace(&mut self.state, State::Down { retry_at: check_at }) {
                                    State::Up(connection) => {
                                        self.state = State::Degraded { connection, check_at };
                                        true
                                    }
                                    State::Degraded { connection, .. } => {
                                        self.state = State::Degraded { connection, check_at };
                                        false
                                    }
                                    other => {
                                        self.state = other;
                                        false
                                    }
                                };
                                if was_up {
                                    return Event::Down("a Redis Cluster node closed its connection".into());
                                }
                                continue;
                            }
                            if let Some(event) = decode_push(&self.prefix, info) {
                                return event;
                            }
                        }
                        _ = at(check_at), if check_at.is_some() => {
                            let Some(connection) = self.connection() else { continue };
                            if every_primary_answers(connection).await {
                                if let State::Degraded { connection, .. } = std::mem::replace(
                                    &mut self.state,
                                    State::Down { retry_at: Instant::now() },
                                ) {
                                    self.state = State::Up(connection);
                                }
                                self.attempts = 0;
                                return Event::Up;
                            }
                            let next = self.backoff();
                            if let State::Degraded { check_at, .. } = &mut self.state {
                                *check_at = next;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn restore(&mut self, topics: Vec<Arc<str>>) -> Result<(), String> {
        // The client resubscribes by itself after a reconnect; this covers a first connect
        // with topics already live. Shard channels of different slots cannot share a call.
        for topic in topics {
            self.subscribe(&topic).await?;
        }
        Ok(())
    }

    async fn subscribe(&mut self, topic: &Arc<str>) -> Result<(), String> {
        let channel = redis_channel(&self.prefix, topic);
        let Some(connection) = self.connection() else {
            return Err("not connected: subscribing when the link is back".into());
        };
        connection
            .ssubscribe(channel)
            .await
            .map_err(|e| e.to_string())
    }

    async fn unsubscribe(&mut self, topic: &Arc<str>) -> Result<(), String> {
        let channel = redis_channel(&self.prefix, topic);
        let Some(connection) = self.connection() else {
            return Ok(());
        };
        connection
            .sunsubscribe(channel)
            .await
            .map_err(|e| e.to_string())
    }

    async fn publish(&mut self, batch: &[Outbound]) -> Result<(), (usize, String)> {
        let node = self.node;
        let prefix = self.prefix.clone();
        let Some(connection) = self.connection() else {
            return Err((batch.len(), "not connected".into()));
        };
        // One pipeline per topic (one slot), in publish order; topics go in parallel.
        let mut pipelines: IndexMap<&str, (redis::Pipeline, usize)> = IndexMap::new();
        for message in batch {
            let (pipeline, count) = pipelines
                .entry(&message.topic)
                .or_insert_with(|| (redis::pipe(), 0));
            pipeline
                .cmd("SPUBLISH")
                .arg(redis_channel(&prefix, &message.topic))
                .arg(&message.envelope(node)[..])
                .ignore();
            *count += 1;
        }
        let sends = pipelines.into_values().map(|(pipeline, count)| {
            let mut connection = connection.clone();
            async move { (count, pipeline.exec_async(&mut connection).await) }
        });
        let mut failed = 0;
        let mut last_error = None;
        for (count, result) in futures_util::future::join_all(sends).await {
            if let Err(err) = result {
                failed += count;
                last_error = Some(err.to_string());
            }
        }
        match last_error {
            None => Ok(()),
            Some(err) => Err((failed, err)),
        }
    }
}
