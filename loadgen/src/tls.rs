//! `wss://`: a rustls client under each connection's [`Link`], so the link model shapes
//! records as they cross the wire, and one session cache per process, so reconnects resume.
//!
//! Connections on `wss://` run as tasks (the io_uring engine speaks plain sockets only): the
//! handshake is driven here over the link's raw reads and writes, then [`Session`] sits
//! between the link and the WebSocket client, decrypting what the link reads and encrypting
//! what it writes. Each connection has one writer at a time (the upgrade request, then the
//! tasks' writer), so records leave in the order they were sealed without a lock.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, NamedGroup,
    RootCertStore, SignatureScheme,
};

use crate::link::Link;
use crate::target::Target;

/// The command line's TLS options (for `wss://` URLs). Connections over TLS use the
/// crypto provider `ringws serve` uses (ring).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// `wss://`: trust the CA certificates in this PEM file (instead of the system's).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// `wss://`: accept any server certificate (its signatures are still checked). For test
    /// servers with self-signed certificates; never for a server reached over a network you
    /// do not trust.
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// `wss://`: a full handshake on every connect, never resuming a session.
    #[arg(long)]
    pub no_resumption: bool,
}

/// Why the TLS client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--ca {}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("`{0}` is not a name a TLS server can be asked for (SNI)")]
    ServerName(String),
    #[error("TLS client: {0}")]
    Config(rustls::Error),
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS handshake: send: {0}")]
    Write(io::Error),
    #[error("TLS handshake: receive: {0}")]
    Read(io::Error),
    #[error("TLS handshake: the server closed the connection")]
    Closed,
    #[error(
        "TLS handshake: the server's certificate is not trusted ({0}): pass --ca FILE with \
         the CA that issued it, or --insecure to skip the check"
    )]
    Untrusted(rustls::Error),
    #[error("TLS handshake: {0}")]
    Refused(rustls::Error),
}

impl TlsError {
    fn from_rustls(error: rustls::Error) -> TlsError {
        match error {
            rustls::Error::InvalidCertificate(_) => TlsError::Untrusted(error),
            error => TlsError::Refused(error),
        }
    }
}

/// The TLS settings of a run; the client configuration (and so the session cache) is made
/// once per process, on the first `wss://` plan, and shared by every connection after.
#[derive(Debug)]
pub struct TlsClient {
    args: TlsArgs,
    /// Tickets kept: enough for every connection of the run to hold one.
    tickets: usize,
    config: OnceLock<Arc<ClientConfig>>,
}

impl TlsClient {
    pub fn new(args: &TlsArgs, connections: u32) -> Self {
        Self {
            args: args.clone(),
            tickets: (connections as usize).clamp(8, 1 << 20),
            config: OnceLock::new(),
        }
    }

    /// How connections to `target` start their TLS sessions.
    pub fn connector(&self, target: &Target) -> Result<Connector, TlsSetupError> {
        let config = match self.config.get() {
            Some(config) => config.clone(),
            None => {
                let made = Arc::new(self.make_config()?);
                // Another thread may have won the race: both configurations are equal, and
                // the one kept is the one every later connection shares.
                self.config.get_or_init(|| made).clone()
            }
        };
        Ok(Connector {
            config,
            server_name: server_name(&target.host)?,
        })
    }

    fn make_config(&self) -> Result<ClientConfig, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsSetupError::Config)?;
        let mut config = if self.args.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth()
        } else {
            builder
                .with_root_certificates(self.roots()?)
                .with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = if self.args.no_resumption {
            Resumption::disabled()
        } else {
            Resumption::store(Arc::new(Tickets::new(self.tickets)))
        };
        Ok(config)
    }

    /// `--ca`'s certificates, or the system's.
    fn roots(&self) -> Result<RootCertStore, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        let Some(path) = &self.args.ca else {
            // Unreadable system certificates leave the store short, and the handshake then
            // names the untrusted certificate and the options that fix it.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            return Ok(roots);
        };
        let bad = |reason: String| TlsSetupError::Ca {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|error| bad(error.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| bad(error.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".to_owned()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|error| bad(format!("not a usable CA certificate: {error}")))?;
        }
        Ok(roots)
    }
}

/// The name a `Host` (with or without its port) asks the server for.
fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        _ => host,
    };
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    ServerName::try_from(name.to_owned()).map_err(|_| TlsSetupError::ServerName(name.to_owned()))
}

/// Starts TLS sessions with one server.
#[derive(Clone, Debug)]
pub struct Connector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

/// A finished handshake: its session, how long it took and whether it resumed.
pub struct Handshaken {
    pub session: Session,
    pub took: Duration,
    pub resumed: bool,
}

/// The TLS handshake over `link`'s raw socket (whose connect may still be under way: the
/// first write waits for it).
pub async fn handshake(link: &Link, connector: &Connector) -> Result<Handshaken, TlsError> {
    let started = Instant::now();
    let mut conn = ClientConnection::new(connector.config.clone(), connector.server_name.clone())
        .map_err(TlsError::from_rustls)?;
    let mut outgoing = Vec::with_capacity(2 << 10);
    let mut incoming = Vec::with_capacity(16 << 10);
    loop {
        if conn.wants_write() {
            outgoing.clear();
            seal_pending(&mut conn, &mut outgoing);
            let (result, back) = link.write_raw(outgoing).await;
            outgoing = back;
            result.map_err(TlsError::Write)?;
        }
        if !conn.is_handshaking() {
            break;
        }
        incoming.clear();
        let (result, back) = link.read_raw(incoming).await;
        incoming = back;
        match result {
            Ok(0) => return Err(TlsError::Closed),
            Ok(_) => {}
            Err(error) => return Err(TlsError::Read(error)),
        }
        let mut input = &incoming[..];
        while !input.is_empty() {
            conn.read_tls(&mut input).map_err(TlsError::Read)?;
            if let Err(error) = conn.process_new_packets() {
                // Tell the server why (an alert), as far as it still listens.
                outgoing.clear();
                seal_pending(&mut conn, &mut outgoing);
                let _ = link.write_raw(outgoing).await;
                return Err(TlsError::from_rustls(error));
            }
        }
    }
    let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
    // A message of any size is sealed at once: its records go out in one write.
    conn.set_buffer_limit(None);
    Ok(Handshaken {
        session: Session {
            conn: RefCell::new(conn),
            // Every record read so far went to rustls.
            incoming: RefCell::new((incoming, usize::MAX)),
            outgoing: Cell::new(outgoing),
        },
        took: started.elapsed(),
        resumed,
    })
}

/// Moves every record rustls has sealed into `out`.
fn seal_pending(conn: &mut ClientConnection, out: &mut Vec<u8>) {
    while conn.wants_write() {
        // Writing into a Vec cannot fail.
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}

/// An established TLS session over a link.
pub struct Session {
    conn: RefCell<ClientConnection>,
    /// Records read from the socket and the count of their bytes rustls has taken: it
    /// takes no more while its plaintext is waiting to be read.
    incoming: RefCell<(Vec<u8>, usize)>,
    /// The buffer records are sealed into, kept between writes.
    outgoing: Cell<Vec<u8>>,
}

impl Session {
    /// Reads plaintext into `buf` (after what it holds), as a socket read does: `Ok(0)` at
    /// the end (the server's close_notify, or its socket's end).
    pub async fn read(&self, link: &Link, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            match self.plaintext(&mut buf) {
                Ok(Some(n)) => return (Ok(n), buf),
                Ok(None) => {}
                Err(error) => return (Err(error), buf),
            }
            let records = {
                let mut incoming = self.incoming.borrow_mut();
                incoming.1 = 0;
                let mut records = std::mem::take(&mut incoming.0);
                records.clear();
                records
            };
            let (result, records) = link.read_raw(records).await;
            let ended = matches!(result, Ok(0));
            self.incoming.borrow_mut().0 = records;
            match result {
                Ok(_) if ended => return (Ok(0), buf),
                Ok(_) => {}
                Err(error) => return (Err(error), buf),
            }
        }
    }

    /// Plaintext already decrypted, or decrypted from records already read, appended to
    /// `buf` (copied from rustls' buffer once, never zero-filled first); `None` when the
    /// socket must be read.
    fn plaintext(&self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let mut conn = self.conn.borrow_mut();
        let mut incoming = self.incoming.borrow_mut();
        let (records, taken) = &mut *incoming;
        loop {
            let start = buf.len();
            let mut reader = conn.reader();
            loop {
                let n = match reader.fill_buf() {
                    // The server's close_notify, once everything before it was read.
                    Ok([]) if buf.len() == start => return Ok(Some(0)),
                    Ok([]) => break,
                    Ok(chunk) => {
                        buf.extend_from_slice(chunk);
                        chunk.len()
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) if buf.len() > start => break,
                    Err(error) => return Err(error),
                };
                reader.consume(n);
            }
            if buf.len() > start {
                return Ok(Some(buf.len() - start));
            }
            if *taken >= records.len() {
                return Ok(None);
            }
            let fed = conn.read_tls(&mut &records[*taken..])?;
            if fed == 0 {
                return Err(io::Error::other(
                    "TLS: rustls took none of the records read",
                ));
            }
            *taken += fed;
            conn.process_new_packets()
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        }
    }

    /// Encrypts `buf` and writes it all, as a socket's `write_all` does.
    pub async fn write_all(&self, link: &Link, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut records = self.outgoing.take();
        records.clear();
        {
            let mut conn = self.conn.borrow_mut();
            // The send buffer is unlimited (rustls' default), so this takes all of it.
            if let Err(error) = conn.writer().write_all(&buf) {
                return (Err(error), buf);
            }
            seal_pending(&mut conn, &mut records);
        }
        let (result, records) = link.write_raw(records).await;
        self.outgoing.set(records);
        (result, buf)
    }
}

/// `--insecure`: any certificate chain is taken as the server's, but the handshake's
/// signatures are still checked against it.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The process's session cache, shared by all its connections. rustls' own in-memory
/// cache keeps 8 TLS 1.3 tickets per server, so a reconnect storm of more clients than
/// that would mostly miss; this one keeps up to one ticket per connection of the run.
#[derive(Debug)]
struct Tickets {
    limit: usize,
    /// By server name, as text (one entry per server the run connects to).
    servers: Mutex<HashMap<String, Server>>,
}

#[derive(Debug, Default)]
struct Server {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl Tickets {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            servers: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Server) -> T) -> Option<T> {
        // A thread that panicked with the lock held leaves a cache that is still whole.
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.get_mut(&*name.to_str()).map(f)
    }

    fn with_new<T>(&self, name: ServerName<'static>, f: impl FnOnce(&mut Server) -> T) -> T {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        f(servers.entry(name.to_str().into_owned()).or_default())
    }
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with_new(server_name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(server_name, |s| s.kx_hint).flatten()
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with_new(server_name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(server_name, |s| s.tls12.clone()).flatten()
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(server_name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let limit = self.limit;
        self.with_new(server_name, |s| {
            if s.tls13.len() == limit {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // The newest first: it has the longest to live.
        self.with(server_name, |s| s.tls13.pop_back()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_drops_the_port_and_brackets() {
        let name = |host: &str| server_name(host).map(|n| n.to_str().into_owned());
        assert_eq!(name("localhost:9443").ok().as_deref(), Some("localhost"));
        assert_eq!(name("127.0.0.1:443").ok().as_deref(), Some("127.0.0.1"));
        assert_eq!(name("[::1]:8443").ok().as_deref(), Some("::1"));
        assert_eq!(name("example.com").ok().as_deref(), Some("example.com"));
        assert!(name("bad name:1").is_err());
    }
}
