//! The application `ringws serve` runs: pub/sub on `/pubsub/<topic>`, echo everywhere else.

use crate::proto::CloseCode;

use super::admission::{self, PublishMode};
use super::app::{Accept, App, Message, Refusal, Upgrade};
use super::config::ServerConfig;
use super::echo::Echo;
use super::ws::Ws;

/// The path prefix whose connections subscribe to the topic named by the rest of the path.
pub const PUBSUB_PREFIX: &str = "/pubsub/";

/// Echo, or pub/sub: a connection on `/pubsub/<topic>` subscribes to the topic, and every
/// message it sends goes to the topic's other subscribers, if it may publish
/// (`--publish`).
pub struct ServeApp {
    max_topic_len: usize,
    publish: PublishMode,
}

/// A pub/sub connection's topic, and whether it may publish there.
pub struct Subscription {
    topic: Box<str>,
    may_publish: bool,
}

impl ServeApp {
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            max_topic_len: config.max_topic_len,
            publish: config.admission.publish,
        }
    }

    /// Checks the topic part of a `/pubsub/` path.
    fn topic_name<'a>(&self, topic: &'a str) -> Result<&'a str, Refusal> {
        if topic.is_empty() {
            return Err(Refusal::new(
                400,
                "pub/sub path names no topic: use /pubsub/<topic>",
            ));
        }
        if topic.len() > self.max_topic_len {
            let max = self.max_topic_len;
            return Err(Refusal::new(
                400,
                format!("topic name longer than {max} bytes"),
            ));
        }
        Ok(topic)
    }

    /// Why a client may not publish, for the close frame that tells it.
    fn publish_refusal(&self) -> &'static str {
        match self.publish {
            PublishMode::Token => "the token does not allow publishing on this topic",
            _ => "clients may not publish here: the topics are subscribe-only",
        }
    }
}

impl App for ServeApp {
    /// The subscription, for a pub/sub connection: boxed, so that a connection without one
    /// holds a word rather than three.
    type State = Option<Box<Subscription>>;

    fn upgrade(&mut self, upgrade: &Upgrade<'_>) -> Result<Accept<Self::State>, Refusal> {
        let Some(topic) = upgrade.request.path().strip_prefix(PUBSUB_PREFIX) else {
            return Ok(Accept::new(None));
        };
        let topic = self.topic_name(topic)?;
        if let Some(grants) = upgrade.grants
            && !grants.may_subscribe(topic)
        {
            return Err(admission::insufficient_scope(format!(
                "the token does not allow subscribing to `{topic}`"
            )));
        }
        let may_publish = match self.publish {
            PublishMode::Anyone => true,
            PublishMode::Nobody => false,
            PublishMode::Token => upgrade.grants.is_some_and(|g| g.may_publish(topic)),
        };
        Ok(Accept::new(Some(Box::new(Subscription {
            topic: topic.into(),
            may_publish,
        }))))
    }

    fn on_open(&mut self, ws: &mut Ws<'_, Self>) {
        let Some(subscription) = ws.state().take() else {
            return;
        };
        if let Err(err) = ws.subscribe(&subscription.topic) {
            let _ = ws.close(CloseCode::POLICY_VIOLATION, &err.to_string());
        }
        *ws.state() = Some(subscription);
    }

    fn on_message(&mut self, ws: &mut Ws<'_, Self>, message: Message<'_>) {
        match ws.state().take() {
            Some(subscription) if subscription.may_publish => {
                // A refusal (a shard behind) pauses this publisher; nothing more to do here.
                let _ = ws.publish(&subscription.topic, message);
                *ws.state() = Some(subscription);
            }
            Some(subscription) => {
                ws.counters().client_publish_refused();
                let _ = ws.close(CloseCode::POLICY_VIOLATION, self.publish_refusal());
                *ws.state() = Some(subscription);
            }
            None => Echo::reply(ws, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked() {
        let app = ServeApp::new(&ServerConfig::default());
        assert_eq!(app.topic_name("prices").ok(), Some("prices"));
        assert_eq!(app.topic_name("").map_err(|r| r.status), Err(400));
        let long = "x".repeat(257);
        assert_eq!(app.topic_name(&long).map_err(|r| r.status), Err(400));
        assert!(app.topic_name(&"x".repeat(256)).is_ok());
    }
}
