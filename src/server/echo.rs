//! The echo application `ringws serve` runs on every path outside pub/sub.

use super::app::{Accept, App, Message, Refusal, Upgrade};
use super::ws::Ws;

/// Sends every message back to its sender, unchanged.
#[derive(Default)]
pub struct Echo;

impl App for Echo {
    type State = ();

    fn upgrade(&mut self, _upgrade: &Upgrade<'_>) -> Result<Accept<()>, Refusal> {
        Ok(Accept::new(()))
    }

    fn on_message(&mut self, ws: &mut Ws<'_, Self>, message: Message<'_>) {
        Self::reply(ws, message);
    }
}

impl Echo {
    /// Sends `message` back on `ws`, for any application that echoes.
    pub fn reply<A: App + ?Sized>(ws: &mut Ws<'_, A>, message: Message<'_>) {
        // A send fails only once the connection is closing; nothing to echo then.
        let _ = match message {
            Message::Text(text) => ws.send_text(text),
            Message::Binary(data) => ws.send_binary(data),
        };
    }
}
