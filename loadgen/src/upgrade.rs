//! The opening handshake as a client asks for it: extra headers (a token, say),
//! subprotocols, permessage-deflate; and the reading of the server's answer.

use ringws::proto::deflate::{self, DeflateConfig, EXTENSION_NAME};
use ringws::proto::handshake::{ClientHandshake, ClientRequest, HandshakeError, parse_offers};

use crate::client::Agreed;
use crate::target::Target;

/// What every connection asks for in its upgrade request.
#[derive(Clone, Debug, Default)]
pub struct Upgrade {
    /// Extra header fields, in order (`Authorization: Bearer TOKEN` among them).
    pub headers: Vec<(String, String)>,
    /// Subprotocols offered, in order of preference.
    pub protocols: Vec<String>,
    /// permessage-deflate, offered with these settings.
    pub deflate: Option<DeflateConfig>,
}

/// Why the server's answer is not an upgrade this client can use.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("handshake: {0}")]
    Refused(#[from] HandshakeError),
    #[error("handshake: the server chose no subprotocol of {0:?}")]
    NoProtocol(Vec<String>),
    #[error("handshake: the server answered extension `{0}`, which was not offered")]
    UnofferedExtension(String),
    #[error("handshake: the server's permessage-deflate parameters are not valid ({0})")]
    BadDeflate(String),
}

/// An upgrade request sent, its answer awaited.
pub struct Pending {
    handshake: ClientHandshake,
    upgrade: Upgrade,
}

impl Upgrade {
    /// Appends the upgrade request for `target` to `out`.
    pub fn request(&self, target: &Target, out: &mut Vec<u8>) -> Pending {
        let protocols: Vec<&str> = self.protocols.iter().map(String::as_str).collect();
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let offer = self.deflate.as_ref().map(deflate::client_offer);
        let handshake = ClientHandshake::new(
            &ClientRequest {
                host: &target.host,
                path: &target.path,
                protocols: &protocols,
                extensions: offer.as_deref(),
                headers: &headers,
                ..ClientRequest::default()
            },
            out,
        );
        Pending {
            handshake,
            upgrade: self.clone(),
        }
    }
}

impl Pending {
    /// Takes the next bytes of the answer; once the server accepted, what was agreed and how
    /// many of these bytes were the answer's (the rest are frames).
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<(Agreed, usize)>, UpgradeError> {
        let Some(accepted) = self.handshake.feed(input)? else {
            return Ok(None);
        };
        if !self.upgrade.protocols.is_empty() && accepted.protocol.is_none() {
            return Err(UpgradeError::NoProtocol(self.upgrade.protocols.clone()));
        }
        let mut agreed = Agreed::default();
        let answered = parse_offers(accepted.extensions.iter().map(String::as_str));
        for extension in answered {
            let config = match self.upgrade.deflate {
                Some(config) if extension.name.eq_ignore_ascii_case(EXTENSION_NAME) => config,
                _ => return Err(UpgradeError::UnofferedExtension(extension.name)),
            };
            let params = extension
                .params
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref()));
            let agreed_params = deflate::accept_response(&config, params)
                .map_err(|declined| UpgradeError::BadDeflate(format!("{declined:?}")))?;
            agreed.deflate = Some((agreed_params, config));
        }
        agreed.protocol = accepted.protocol;
        agreed.extensions = accepted.extensions;
        Ok(Some((agreed, accepted.consumed)))
    }
}
