//! Who is let in, and what they may do once in: the client's real address behind proxies
//! (PROXY protocol on listeners that expect it, `X-Forwarded-For` from trusted proxies),
//! per-address connection caps and handshake rates, a ceiling on WebSocket connections,
//! JSON Web Tokens and the topics their claims allow, and the publish API's key.
//!
//! The rooms: `proxy` parses PROXY headers, `forwarded` reads `X-Forwarded-For`, `per_ip`
//! is the table of per-address bounds every shard shares, `token` checks tokens, `grants`
//! matches topics against their claims, `config` holds the settings. [`Admission`] puts
//! them together for the shards; nothing here is touched while messages flow.

mod config;
mod forwarded;
mod grants;
mod per_ip;
pub(crate) mod proxy;
mod token;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::proto::handshake::{Refusal, Request};

use super::config::{ConfigError, ServerConfig};
use super::connection::Time;
use per_ip::{Bounds, PerIp};
use token::TokenVerifier;

pub(crate) use per_ip::Limited;

pub use config::{AdmissionConfig, JwtConfig, JwtKey, PublishMode, Secret};
pub use forwarded::IpNet;
pub use grants::{Grants, TopicPattern};

/// The realm `WWW-Authenticate` names.
const REALM: &str = "ringws";

/// What every shard consults when a request is complete.
pub(crate) struct Admission {
    /// The listening sockets that expect a PROXY header (after the plain ones, before any
    /// TLS ones).
    proxy_listeners: std::ops::Range<usize>,
    trusted_proxies: Vec<IpNet>,
    per_ip: PerIp,
    max_websockets: usize,
    /// WebSocket connections open over all shards.
    websockets: AtomicUsize,
    tokens: Option<TokenVerifier>,
    publish_key: Option<Box<[u8]>>,
}

/// Why an upgrade was turned away before its token was even read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Turned {
    /// The server holds its maximum of WebSocket connections.
    Full { max: usize },
    /// The client's address is over one of its bounds.
    Limited(Limited),
}

impl Turned {
    pub fn refusal(self) -> Refusal {
        match self {
            Self::Full { max } => Refusal::new(
                503,
                format!("the server is full: it holds its maximum of {max} WebSocket connections"),
            )
            .with_header("Retry-After", "5"),
            Self::Limited(Limited::Rate { retry_after_secs }) => Refusal::new(
                429,
                format!("too many handshakes from this address: retry in {retry_after_secs} s"),
            )
            .with_header("Retry-After", retry_after_secs.to_string()),
            Self::Limited(Limited::Connections { max }) => Refusal::new(
                429,
                format!("this address holds its maximum of {max} WebSocket connections"),
            ),
        }
    }
}

/// An admitted upgrade's place in the counts; given back when dropped unless kept for the
/// connection's life (then [`Admission::release`] gives it back at the close).
pub(crate) struct Ticket<'a> {
    admission: &'a Admission,
    ip: IpAddr,
    kept: bool,
}

impl Ticket<'_> {
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.admission.release(self.ip);
        }
    }
}

impl Admission {
    /// Checks the settings and loads keys and secrets; a problem names its setting.
    pub fn new(config: &ServerConfig) -> Result<Self, ConfigError> {
        let settings = &config.admission;
        let fail = |setting, problem: String| Err(ConfigError { setting, problem });
        let rate = settings.handshake_rate_per_ip;
        if !rate.is_finite() || rate < 0.0 {
            return fail(
                "handshake-rate-per-ip",
                format!("{rate} is not a rate: handshakes per second, 0 for no limit"),
            );
        }
        if rate > 0.0 && settings.handshake_burst_per_ip == 0 {
            return fail("handshake-burst-per-ip", "must be at least 1".into());
        }
        if settings.publish == PublishMode::Token && settings.jwt.is_none() {
            return fail(
                "publish",
                "`token` lets tokens decide, but no token is checked: set jwt-secret or \
                 jwt-public-key"
                    .into(),
            );
        }
        if let Some(addr) = settings
            .proxy_protocol_listen
            .iter()
            .find(|addr| addr.port() != 0 && config.listen.contains(addr))
        {
            return fail(
                "listen-proxy",
                format!(
                    "{addr} is also a --listen address: a listener expects a PROXY header or not"
                ),
            );
        }
        let tokens = match &settings.jwt {
            None => None,
            Some(jwt) => {
                let setting = match jwt.key {
                    JwtKey::Secret(_) => "jwt-secret",
                    JwtKey::PublicKey(_) => "jwt-public-key",
                };
                let verifier =
                    TokenVerifier::new(jwt).map_err(|problem| ConfigError { setting, problem })?;
                Some(verifier)
            }
        };
        let publish_key = match &settings.publish_key {
            None => None,
            Some(secret) => Some(secret.load().map_err(|problem| ConfigError {
                setting: "publish-key",
                problem,
            })?),
        };
        Ok(Self {
            proxy_listeners: config.listen.len()
                ..config.listen.len() + settings.proxy_protocol_listen.len(),
            trusted_proxies: settings.trusted_proxies.clone(),
            per_ip: PerIp::new(Bounds {
                max_connections: settings.max_connections_per_ip,
                rate,
                burst: settings.handshake_burst_per_ip,
            }),
            max_websockets: config.max_connections,
            websockets: AtomicUsize::new(0),
            tokens,
            publish_key: publish_key.map(Into::into),
        })
    }

    /// Whether a connection accepted on listening socket `listener` starts with a PROXY
    /// header.
    pub fn expects_proxy_header(&self, listener: Option<usize>) -> bool {
        listener.is_some_and(|index| self.proxy_listeners.contains(&index))
    }

    /// The client's address: `peer`, or what `X-Forwarded-For` says when `peer` is a
    /// trusted proxy.
    pub fn client_addr(&self, peer: SocketAddr, request: &Request) -> SocketAddr {
        if self.trusted_proxies.is_empty() {
            return peer;
        }
        let forwarded = request.header_all("x-forwarded-for");
        forwarded::client_addr(peer, &self.trusted_proxies, forwarded)
    }

    /// Counts an upgrade from `ip` against the server's ceiling and the address's bounds.
    pub fn admit(&self, ip: IpAddr, now: Time) -> Result<Ticket<'_>, Turned> {
        let held = self.websockets.fetch_add(1, Ordering::AcqRel);
        if held >= self.max_websockets {
            self.websockets.fetch_sub(1, Ordering::AcqRel);
            return Err(Turned::Full {
                max: self.max_websockets,
            });
        }
        if let Err(limited) = self.per_ip.admit(ip, now) {
            self.websockets.fetch_sub(1, Ordering::AcqRel);
            return Err(Turned::Limited(limited));
        }
        Ok(Ticket {
            admission: self,
            ip,
            kept: false,
        })
    }

    /// A connection whose [`Ticket`] was kept has closed.
    pub fn release(&self, ip: IpAddr) {
        self.websockets.fetch_sub(1, Ordering::AcqRel);
        self.per_ip.release(ip);
    }

    /// Checks the request's token, when tokens are on: `Ok(None)` when they are off, the
    /// token's grants when it is good, a 401 naming the problem otherwise.
    pub fn authenticate(&self, request: &Request) -> Result<Option<Grants>, Refusal> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let Some(token) = tokens.token_of(request) else {
            let message = format!("no token: send {}", tokens.where_tokens_go());
            return Err(unauthorized(message, None));
        };
        match tokens.verify(&token) {
            Ok(grants) => Ok(Some(grants)),
            Err(problem) => Err(unauthorized(problem.clone(), Some(problem))),
        }
    }

    /// Whether the publish API is on (a key is configured).
    pub fn publish_api_on(&self) -> bool {
        self.publish_key.is_some()
    }

    /// Checks the publish API's key: 401 without one, 403 with a wrong one.
    pub fn check_publish_key(&self, request: &Request) -> Result<(), Refusal> {
        let Some(expected) = &self.publish_key else {
            return Err(Refusal::new(
                404,
                "the publish API is off: start the server with --publish-key",
            ));
        };
        let given = request.header("authorization").and_then(token::bearer);
        let Some(given) = given else {
            return Err(Refusal::new(
                401,
                "the publish API needs its key: send Authorization: Bearer KEY",
            )
            .with_header(
                "WWW-Authenticate",
                format!("Bearer realm=\"{REALM} publish\""),
            ));
        };
        if !constant_time_eq(given.as_bytes(), expected) {
            return Err(Refusal::new(403, "wrong publish key"));
        }
        Ok(())
    }
}

/// A 401 with the challenge RFC 6750 describes; `problem` (absent when no token was sent)
/// goes into its `error_description`.
fn unauthorized(message: String, problem: Option<String>) -> Refusal {
    let challenge = match problem {
        None => format!("Bearer realm=\"{REALM}\""),
        Some(problem) => format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
            problem.replace(['"', '\\'], "'")
        ),
    };
    Refusal::new(401, message).with_header("WWW-Authenticate", challenge)
}

/// A 403 for a good token that does not allow what was asked (RFC 6750's
/// `insufficient_scope`).
pub(crate) fn insufficient_scope(message: String) -> Refusal {
    Refusal::new(403, message).with_header(
        "WWW-Authenticate",
        format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\""),
    )
}

/// Whether a refusal is [`insufficient_scope`]'s: a good token, but not for this.
pub(crate) fn is_insufficient_scope(refusal: &Refusal) -> bool {
    refusal.status == 403
        && refusal.headers.iter().any(|(name, value)| {
            *name == "WWW-Authenticate" && value.contains("insufficient_scope")
        })
}

/// Compares secrets in time that depends on their lengths only, not on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kez"));
        assert!(!constant_time_eq(b"key", b"key2"));
    }

    #[test]
    fn the_server_ceiling_and_per_address_bounds_count_together() {
        let mut config = ServerConfig {
            max_connections: 2,
            ..ServerConfig::default()
        };
        config.admission.max_connections_per_ip = 1;
        let admission = Admission::new(&config).expect("valid");
        let (a, b, c) = (
            "127.0.0.2".parse().expect("ip"),
            "127.0.0.3".parse().expect("ip"),
            "127.0.0.4".parse().expect("ip"),
        );
        admission.admit(a, Time::ZERO).expect("first").keep();
        assert!(matches!(
            admission.admit(a, Time::ZERO).err(),
            Some(Turned::Limited(Limited::Connections { max: 1 }))
        ));
        // A ticket dropped unkept gives its place back.
        drop(admission.admit(b, Time::ZERO).expect("second"));
        admission.admit(b, Time::ZERO).expect("second again").keep();
        assert_eq!(
            admission.admit(c, Time::ZERO).err(),
            Some(Turned::Full { max: 2 })
        );
        admission.release(a);
        admission.admit(c, Time::ZERO).expect("room again").keep();
        assert_eq!(Turned::Full { max: 2 }.refusal().status, 503);
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let refused = |change: fn(&mut ServerConfig)| {
            let mut config = ServerConfig::default();
            change(&mut config);
            Admission::new(&config).err().expect("refused").setting
        };
        assert_eq!(
            refused(|c| c.admission.handshake_rate_per_ip = -1.0),
            "handshake-rate-per-ip"
        );
        assert_eq!(
            refused(|c| {
                c.admission.handshake_rate_per_ip = 5.0;
                c.admission.handshake_burst_per_ip = 0;
            }),
            "handshake-burst-per-ip"
        );
        assert_eq!(
            refused(|c| c.admission.publish = PublishMode::Token),
            "publish"
        );
        assert_eq!(
            refused(|c| c.admission.proxy_protocol_listen = c.listen.clone()),
            "listen-proxy"
        );
        assert_eq!(
            refused(|c| c.admission.publish_key = Some(Secret::File("/nonexistent".into()))),
            "publish-key"
        );
        assert_eq!(
            refused(|c| {
                c.admission.jwt = Some(JwtConfig::new(JwtKey::PublicKey("/nonexistent".into())));
            }),
            "jwt-public-key"
        );
    }
}
