//! The application `ringws serve` runs: pub/sub on `/pubsub/<topic>`, echo everywhere else.

use super::app::{Accept, App, Message, Reject, Upgrade};
use super::echo::Echo;
use super::handle::Ws;

/// The path prefix whose connections subscribe to the topic named by the rest of the path.
pub const PUBSUB_PREFIX: &str = "/pubsub/";
/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Echo, or pub/sub: a connection on `/pubsub/<topic>` subscribes to the topic, and every
/// message it sends goes to the topic's other subscribers.
#[derive(Default)]
pub struct ServeApp;

impl App for ServeApp {
    /// The topic, for a pub/sub connection.
    type State = Option<Box<str>>;

    fn upgrade(&mut self, upgrade: &Upgrade<'_>) -> Result<Accept<Self::State>, Reject> {
        let Some(topic) = upgrade.request.path().strip_prefix(PUBSUB_PREFIX) else {
            return Ok(Accept::new(None));
        };
        topic_name(topic).map(|topic| Accept::new(Some(topic.into())))
    }

    fn on_open(&mut self, ws: &mut Ws<'_, Self>) {
        if let Some(topic) = ws.state().take() {
            ws.subscribe(&topic);
            *ws.state() = Some(topic);
        }
    }

    fn on_message(&mut self, ws: &mut Ws<'_, Self>, message: Message<'_>) {
        match ws.state().take() {
            Some(topic) => {
                ws.publish(&topic, message);
                *ws.state() = Some(topic);
            }
            None => Echo::reply(ws, message),
        }
    }
}

/// Checks the topic part of a `/pubsub/` path.
fn topic_name(topic: &str) -> Result<&str, Reject> {
    if topic.is_empty() {
        return Err(Reject::new(
            400,
            "pub/sub path names no topic: use /pubsub/<topic>",
        ));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(Reject::new(
            400,
            format!("topic name longer than {MAX_TOPIC_LEN} bytes"),
        ));
    }
    Ok(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked() {
        assert_eq!(topic_name("prices").ok(), Some("prices"));
        assert_eq!(topic_name("").map_err(|r| r.status), Err(400));
        assert_eq!(topic_name(&"x".repeat(257)).map_err(|r| r.status), Err(400));
        assert!(topic_name(&"x".repeat(256)).is_ok());
    }
}
