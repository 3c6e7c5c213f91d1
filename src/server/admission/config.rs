//! The admission settings of a server: who may connect, from where, how often, with which
//! token, and who may publish.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::forwarded::IpNet;

/// Who may publish from a WebSocket on `/pubsub/<topic>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PublishMode {
    /// Every subscriber may publish to its topic.
    #[default]
    Anyone,
    /// Nobody: clients only subscribe (a fan-out tier fed by the publish API). A client
    /// that sends a message is closed with 1008.
    Nobody,
    /// Clients whose token's `publish` claim matches the topic.
    Token,
}

/// A secret given inline or read from a file when the server starts (surrounding
/// whitespace, such as the newline `echo` leaves, is trimmed). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Value(String),
    File(PathBuf),
}

impl Secret {
    /// The secret's bytes.
    pub fn load(&self) -> Result<Vec<u8>, String> {
        let text = match self {
            Self::Value(value) => value.clone(),
            Self::File(path) => std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?,
        };
        let text = text.trim();
        if text.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(text.as_bytes().to_vec())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Secret(..)"),
            Self::File(path) => write!(f, "Secret(file {})", path.display()),
        }
    }
}

/// How tokens are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtKey {
    /// HS256 (and HS384, HS512) with a shared secret.
    Secret(Secret),
    /// RS256 (RS384, RS512, PS256...) or ES256 (ES384) or EdDSA with the public key in this
    /// PEM file; the key's type decides.
    PublicKey(PathBuf),
}

/// JSON Web Tokens on every WebSocket upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwtConfig {
    pub key: JwtKey,
    /// A cookie that may carry the token, for browsers (which cannot set headers on a
    /// WebSocket).
    pub cookie: Option<String>,
    /// When set, a token's `aud` must name it.
    pub audience: Option<String>,
    /// When set, a token's `iss` must be it.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl JwtConfig {
    pub fn new(key: JwtKey) -> Self {
        Self {
            key,
            cookie: None,
            audience: None,
            issuer: None,
            leeway: crate::server::config::defaults::JWT_LEEWAY,
        }
    }
}

/// Everything that decides whether a connection is admitted and what it may do. Off by
/// default: no token needed, no per-address bound, no proxy believed, anyone publishes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AdmissionConfig {
    /// Addresses to listen on for connections from a load balancer that sends a PROXY
    /// protocol header (v1 or v2) before anything else; the header names the client.
    pub proxy_protocol_listen: Vec<SocketAddr>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// WebSocket connections one address (an IPv6 /64) may hold at once; 0: no cap.
    pub max_connections_per_ip: usize,
    /// Handshakes per second one address may sustain; 0: no limit.
    pub handshake_rate_per_ip: f64,
    /// Handshakes one address may make at once before the rate applies.
    pub handshake_burst_per_ip: u32,
    /// Tokens on upgrade; `None`: no token needed.
    pub jwt: Option<JwtConfig>,
    pub publish: PublishMode,
    /// The key of `POST /publish`; `None` turns the publish API off.
    pub publish_key: Option<Secret>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        use crate::server::config::defaults;
        Self {
            proxy_protocol_listen: Vec::new(),
            trusted_proxies: Vec::new(),
            max_connections_per_ip: defaults::MAX_CONNECTIONS_PER_IP,
            handshake_rate_per_ip: defaults::HANDSHAKE_RATE_PER_IP,
            handshake_burst_per_ip: defaults::HANDSHAKE_BURST_PER_IP,
            jwt: None,
            publish: PublishMode::Anyone,
            publish_key: None,
        }
    }
}
