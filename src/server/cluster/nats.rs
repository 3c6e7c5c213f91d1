//! The NATS link, on async-nats: one connection per node, the client's own reconnection
//! (with this node's backoff) and resubscription, a subject per topic
//! ([`naming`](super::naming)), and the origin and type in headers.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, HeaderMap, ServerAddr, Subscriber};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::StreamMap;

use super::link::{Broker, Event};
use super::naming::{nats_subject, topic_of_subject};
use super::stats::{Backoff, add};
use super::wire::{self, Inbound, NodeId, Outbound};
use super::{ClusterConfig, Shared};

/// Messages one subscription holds before the client drops them for a slow reader.
const SUBSCRIPTION_CAPACITY: usize = 16_384;
/// Commands (publishes) the client queues before publishing waits.
const CLIENT_CAPACITY: usize = 4096;
/// How long making a subscription may wait for the server to confirm it.
const CONFIRM: Duration = Duration::from_secs(2);

pub(crate) struct Nats {
    client: Client,
    events: mpsc::Receiver<async_nats::Event>,
    subscriptions: StreamMap<Arc<str>, Subscriber>,
    prefix: String,
    origin: String,
    up: bool,
}

impl Nats {
    /// Starts connecting: returns at once, and the link hears [`Event::Up`] when the
    /// server answers, however long that takes.
    pub async fn connect(shared: &Arc<Shared>) -> Result<Self, String> {
        let config = &shared.config;
        let shared_for_events = shared.clone();
        let servers = servers(config)?;
        let (tx, events) = mpsc::channel(64);
        let backoff = Backoff::DEFAULT;
        let mut options = ConnectOptions::new()
            .name(format!("ringws-{}", shared.node))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| backoff.next(attempts.saturating_sub(1)))
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .client_capacity(CLIENT_CAPACITY)
            .event_callback(move |event| {
                let (tx, shared) = (tx.clone(), shared_for_events.clone());
                async move {
                    // One event per message the client dropped for this node reading too
                    // slowly: counted here, so a burst of them cannot crowd out the rest.
                    if let async_nats::Event::SlowConsumer(_) = event {
                        add(&shared.stats.inbound_dropped, 1);
                    } else {
                        let _ = tx.send(event).await;
                    }
                }
            });
        // Credentials in a URL (`nats://user:pass@host`, `nats://token@host`): the client
        // parses them but leaves them to the caller.
        if let Some(server) = servers.iter().find(|s| s.username().is_some()) {
            let user = server.username().unwrap_or_default().to_owned();
            options = match server.password() {
                Some(pass) => options.user_and_password(user, pass.to_owned()),
                None => options.token(user),
            };
        }
        if let Some(path) = &config.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|err| format!("credentials {}: {err}", path.display()))?;
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => return Err("a client certificate needs both its cert and its key".into()),
        }
        let client = options
            .connect(servers)
            .await
            .map_err(|err| format!("NATS: {err}"))?;
        Ok(Self {
            client,
            events,
            subscriptions: StreamMap::new(),
            prefix: config.prefix.clone(),
            origin: shared.node.to_string(),
            up: false,
        })
    }

    fn inbound(&self, topic: &Arc<str>, message: async_nats::Message) -> Event {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().as_bytes().to_vec())
        };
        let origin = header(wire::ORIGIN_HEADER)
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(NodeId::parse));
        let topic_name = match topic_of_subject(&self.prefix, message.subject.as_str()) {
            Some(name) if *name == **topic => name,
            _ => return Event::Malformed(format!("subject {}", message.subject)),
        };
        match wire::kind(header(wire::TYPE_HEADER).as_deref(), &message.payload) {
            Ok(binary) => Event::Message(Inbound {
                topic: topic_name,
                origin,
                binary,
                payload: message.payload,
            }),
            Err(why) => Event::Malformed(format!("{} on {}", why, message.subject)),
        }
    }
}

fn servers(config: &ClusterConfig) -> Result<Vec<ServerAddr>, String> {
    config
        .urls
        .iter()
        .map(|url| {
            url.parse::<ServerAddr>()
                .map_err(|err| format!("{url}: {err}"))
        })
        .collect()
}

impl Broker for Nats {
    async fn next(&mut self) -> Event {
        loop {
            tokio::select! {
                Some(event) = self.events.recv() => match event {
                    async_nats::Event::Connected => {
                        self.up = true;
                        return Event::Up;
                    }
                    async_nats::Event::Disconnected => {
                        self.up = false;
                        return Event::Down("disconnected from the NATS server".into());
                    }
                    async_nats::Event::Closed => {
                        self.up = false;
                        return Event::Down("the NATS client closed".into());
                    }
                    other => tracing::info!("cluster: NATS: {other}"),
                },
                Some((topic, message)) = self.subscriptions.next() => {
                    return self.inbound(&topic, message);
                }
                else => std::future::pending::<()>().await,
            }
        }
    }

    async fn restore(&mut self, _topics: Vec<Arc<str>>) -> Result<(), String> {
        // The client resubscribes every live subscription when it reconnects.
        Ok(())
    }

    async fn subscribe(&mut self, topic: &Arc<str>) -> Result<(), String> {
        let subject = nats_subject(&self.prefix, topic);
        let subscriber = self
            .client
            .subscribe(subject)
            .await
            .map_err(|err| err.to_string())?;
        self.subscriptions.insert(topic.clone(), subscriber);
        if self.up {
            // Confirmed by the server: a message published after this reaches the node.
            let _ = tokio::time::timeout(CONFIRM, self.client.flush()).await;
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, topic: &Arc<str>) -> Result<(), String> {
        match self.subscriptions.remove(topic) {
            Some(mut subscriber) => subscriber.unsubscribe().await.map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    async fn publish(&mut self, batch: &[Outbound]) -> Result<(), (usize, String)> {
        let mut failed = 0;
        let mut last_error = None;
        for message in batch {
            let mut headers = HeaderMap::new();
            headers.insert(wire::ORIGIN_HEADER, self.origin.as_str());
            headers.insert(wire::TYPE_HEADER, message.type_name());
            let subject = nats_subject(&self.prefix, &message.topic);
            if let Err(err) = self
                .client
                .publish_with_headers(subject, headers, message.payload.clone())
                .await
            {
                failed += 1;
                last_error = Some(err.to_string());
            }
        }
        match last_error {
            None => Ok(()),
            Some(err) => Err((failed, err)),
        }
    }
}
