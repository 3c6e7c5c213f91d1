//! The Redis link, on redis-rs: one RESP3 connection per node that both publishes and
//! subscribes (RESP3 allows commands on a subscribed connection, and delivers messages as
//! pushes), a channel per topic ([`naming`](super::naming)), the origin and type in an
//! envelope ([`wire`](super::wire)). The connection is made again with backoff when lost,
//! and the link then subscribes every live topic again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::link::{Broker, Event};
use super::naming::{redis_channel, topic_of_channel};
use super::stats::{Backoff, add};
use super::wire::{self, Outbound};
use super::{ClusterConfig, Shared};

/// Pushes (messages) waiting for the link; past this the connection's reader drops them,
/// counted, rather than hold an unbounded backlog.
const PUSH_CAPACITY: usize = 16_384;
/// How long connecting, or any command, may take.
const TIMEOUT: Duration = Duration::from_secs(5);

enum State {
    Down { retry_at: Instant },
    Connecting(JoinHandle<redis::RedisResult<MultiplexedConnection>>),
    Up(MultiplexedConnection),
}

pub(crate) struct Redis {
    client: Client,
    prefix: String,
    node: wire::NodeId,
    shared: Arc<Shared>,
    state: State,
    /// Failed attempts since the link was last up.
    attempts: usize,
    /// Each connection's pushes carry its number, so a late notice from a dead connection
    /// is not taken for the current one's.
    generation: Arc<AtomicU64>,
    pushes: mpsc::Receiver<(u64, PushInfo)>,
    push_tx: mpsc::Sender<(u64, PushInfo)>,
    /// Set by a connection whose disconnection notice found the queue full.
    lost: Arc<AtomicU64>,
    /// A reason to report before anything else: the link failed in a call other than
    /// `next`.
    pending_down: Option<String>,
}

impl Redis {
    pub fn new(shared: &Arc<Shared>) -> Result<Self, String> {
        let client = client(&shared.config)?;
        let (push_tx, pushes) = mpsc::channel(PUSH_CAPACITY);
        Ok(Self {
            client,
            prefix: shared.config.prefix.clone(),
            node: shared.node,
            shared: shared.clone(),
            state: State::Down {
                retry_at: Instant::now(),
            },
            attempts: 0,
            generation: Arc::new(AtomicU64::new(0)),
            pushes,
            push_tx,
            lost: Arc::new(AtomicU64::new(u64::MAX)),
            pending_down: None,
        })
    }

    fn connect(&mut self) -> JoinHandle<redis::RedisResult<MultiplexedConnection>> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, lost, shared) = (self.push_tx.clone(), self.lost.clone(), self.shared.clone());
        let sender = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            let disconnected = info.kind == PushKind::Disconnection;
            if tx.try_send((generation, info)).is_err() {
                if disconnected {
                    lost.store(generation, Ordering::Relaxed);
                } else {
                    add(&shared.stats.inbound_dropped, 1);
                }
            }
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_push_sender(sender);
        let client = self.client.clone();
        tokio::spawn(async move {
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        })
    }

    fn went_down(&mut self, reason: String) -> Event {
        self.state = State::Down {
            retry_at: Instant::now() + Backoff::DEFAULT.next(self.attempts),
        };
        self.attempts += 1;
        Event::Down(reason)
    }

    fn fail(&mut self, reason: String) {
        if matches!(self.state, State::Up(_)) {
            let _ = self.went_down(reason.clone());
            self.pending_down = Some(reason);
        }
    }
}

/// The message a push carries (`message` from a channel, `smessage` from a shard channel),
/// or `None` for other pushes (subscription confirmations).
pub(crate) fn decode_push(prefix: &str, info: PushInfo) -> Option<Event> {
    if !matches!(info.kind, PushKind::Message | PushKind::SMessage) {
        return None;
    }
    let mut data = info.data.into_iter();
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        return Some(Event::Malformed(
            "a message push without channel and payload".into(),
        ));
    };
    let Some(topic) = topic_of_channel(prefix, &channel) else {
        return Some(Event::Malformed(format!(
            "channel {}",
            String::from_utf8_lossy(&channel)
        )));
    };
    Some(
        match wire::open_envelope(topic.to_owned(), Bytes::from(payload)) {
            Ok(inbound) => Event::Message(inbound),
            Err(why) => Event::Malformed(format!("{why} on {}", String::from_utf8_lossy(&channel))),
        },
    )
}

/// The TLS files of `config`, read, when any is set.
pub(crate) fn certificates(
    config: &ClusterConfig,
) -> Result<Option<redis::TlsCertificates>, String> {
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))
    };
    if config.tls_ca.is_none() && config.tls_cert.is_none() {
        return Ok(None);
    }
    let client_tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        (None, None) => None,
        _ => return Err("a client certificate needs both its cert and its key".into()),
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert: config.tls_ca.as_ref().map(read).transpose()?,
    }))
}

fn client(config: &ClusterConfig) -> Result<Client, String> {
    let url = config.urls.first().ok_or("no Redis URL")?;
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|err| format!("{url}: {err}"))?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    match certificates(config)? {
        None => Client::open(info),
        Some(certificates) => Client::build_with_tls(info, certificates),
    }
    .map_err(|err| format!("{url}: {err}"))
}

impl Broker for Redis {
    async fn next(&mut self) -> Event {
        if let Some(reason) = self.pending_down.take() {
            return Event::Down(reason);
        }
        loop {
            match &mut self.state {
                State::Down { retry_at } => {
                    tokio::time::sleep_until(*retry_at).await;
                    self.state = State::Connecting(self.connect());
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
                            let event = self.went_down(format!("connecting to Redis: {err}"));
                            if self.attempts == 1 {
                                return event;
                            }
                        }
                        Err(err) => return self.went_down(format!("connecting to Redis: {err}")),
                    }
                }
                State::Up(_) => {
                    let current = self.generation.load(Ordering::Relaxed);
                    if self.lost.load(Ordering::Relaxed) == current {
                        return self.went_down("the Redis connection closed".into());
                    }
                    let Some((generation, info)) = self.pushes.recv().await else {
                        return self.went_down("the push queue closed".into());
                    };
                    if generation != current {
                        continue;
                    }
                    if info.kind == PushKind::Disconnection {
                        return self.went_down("the Redis connection closed".into());
                    }
                    if let Some(event) = decode_push(&self.prefix, info) {
                        return event;
                    }
                }
            }
        }
    }

    async fn restore(&mut self, topics: Vec<Arc<str>>) -> Result<(), String> {
        for chunk in topics.chunks(256) {
            let channels: Vec<String> = chunk
                .iter()
                .map(|t| redis_channel(&self.prefix, t))
                .collect();
            let State::Up(connection) = &mut self.state else {
                return Err("not connected".into());
            };
            if let Err(err) = connection.subscribe(&channels).await {
                self.fail(err.to_string());
                return Err(err.to_string());
            }
        }
        Ok(())
    }

    async fn subscribe(&mut self, topic: &Arc<str>) -> Result<(), String> {
        let State::Up(connection) = &mut self.state else {
            return Err("not connected: subscribing when the link is back".into());
        };
        let result = connection
            .subscribe(redis_channel(&self.prefix, topic))
            .await;
        result.map_err(|err| {
            self.fail(err.to_string());
            err.to_string()
        })
    }

    async fn unsubscribe(&mut self, topic: &Arc<str>) -> Result<(), String> {
        let State::Up(connection) = &mut self.state else {
            // Subscriptions die with their connection.
            return Ok(());
        };
        let result = connection
            .unsubscribe(redis_channel(&self.prefix, topic))
            .await;
        result.map_err(|err| {
            self.fail(err.to_string());
            err.to_string()
        })
    }

    async fn publish(&mut self, batch: &[Outbound]) -> Result<(), (usize, String)> {
        let State::Up(connection) = &mut self.state else {
            return Err((batch.len(), "not connected".into()));
        };
        let mut pipe = redis::pipe();
        for message in batch {
            pipe.cmd("PUBLISH")
                .arg(redis_channel(&self.prefix, &message.topic))
                .arg(&message.envelope(self.node)[..])
                .ignore();
        }
        let result = pipe.exec_async(connection).await;
        result.map_err(|err| {
            self.fail(err.to_string());
            (batch.len(), err.to_string())
        })
    }
}
