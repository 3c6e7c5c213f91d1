//! TLS for the server: the certificate chain and key from PEM files, the rustls
//! configuration (TLS 1.3 and 1.2, ALPN `http/1.1`, session tickets), and a certificate
//! resolver whose pair is swapped on reload while connections carry on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::runtime::TlsAcceptor;
use crate::runtime::tls::KernelTls;

/// Where the server's certificate chain and private key are: PEM files, the chain leaf
/// first, the key PKCS#8, RSA (PKCS#1) or EC (SEC1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether TLS connections hand their records to the kernel (kernel TLS) once their
/// handshake is done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsKernelMode {
    /// Where the startup probe finds kernel TLS that also takes new keys (TLS 1.3 key
    /// updates, Linux 6.14), so an offloaded connection behaves as a user-space one; each
    /// connection the kernel cannot carry stays on user-space records.
    #[default]
    Auto,
    /// Never: rustls encrypts every record.
    Off,
    /// On every connection, even where the startup probe found no kernel TLS (each then
    /// stays in user space on its own, counted) or one without key updates (a connection
    /// whose keys must change then closes): for testing.
    Always,
}

impl TlsKernelMode {
    /// Whether to try, given what the startup probe found.
    pub fn tries(self, kernel: &KernelTls) -> bool {
        match self {
            TlsKernelMode::Auto => kernel.available && kernel.rekey,
            TlsKernelMode::Off => false,
            TlsKernelMode::Always => true,
        }
    }
}

/// Why a certificate and key could not be used; names the file and the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// What a client whose first bytes are not TLS gets (plain HTTP on a TLS port, say).
const NOT_TLS_REPLY: &str = "HTTP/1.1 400 Bad Request\r\n\
    Content-Type: text/plain; charset=utf-8\r\n\
    Content-Length: 46\r\n\
    Connection: close\r\n\r\n\
    This port speaks TLS: use https:// or wss://.\n";

/// The crypto provider: ring, by measurement (docs/benchmarks.md).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's certificate, reloadable.
pub(crate) struct Certificates {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Reads the pair `files` names.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let pair = read_pair(files, &provider)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(pair)),
        }))
    }

    /// Reads the files again: new handshakes use the new pair, connections already open
    /// keep theirs. A pair that cannot be read leaves the current one in place.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = read_pair(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(())
    }

    /// The acceptor for the runtime's TLS listeners; with `kernel`, connections hand their
    /// records to kernel TLS after the handshake.
    pub fn acceptor(self: &Arc<Self>, kernel: bool) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|err| TlsError(format!("TLS configuration: {err}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Resumption by tickets alone: stateless, so shards share no session cache.
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|err| TlsError(format!("TLS session tickets: {err}")))?;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.max_early_data_size = 0;
        // The keys leave rustls only for the kernel, and only when it will take them.
        config.enable_secret_extraction = kernel;
        Ok(TlsAcceptor::new(Arc::new(config))
            .with_not_tls_reply(Bytes::from_static(NOT_TLS_REPLY.as_bytes()))
            .with_kernel_offload(kernel))
    }
}

/// Serves the pair to clients that name no server, or one its certificate covers; a client
/// naming another server is refused, so a misdirected client fails at once with an alert
/// rather than on a certificate that does not match.
impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let pair = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match hello.server_name() {
            None => Some(pair),
            Some(name) => covers(&pair, name).then_some(pair),
        }
    }
}

/// Whether the pair's leaf certificate is valid for the DNS name `name`.
fn covers(pair: &CertifiedKey, name: &str) -> bool {
    let Ok(leaf) = pair.end_entity_cert() else {
        return false;
    };
    let (Ok(cert), Ok(name)) = (
        webpki::EndEntityCert::try_from(leaf),
        ServerName::try_from(name),
    ) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

fn read_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|err| pem_error(&files.key, "private key", err))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|err| {
        TlsError(format!(
            "{} and {}: {err}",
            files.cert.display(),
            files.key.display()
        ))
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|err| pem_error(path, "certificate", err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(path, "certificate", err))?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate (a PEM CERTIFICATE block) in it",
            path.display()
        )));
    }
    Ok(chain)
}

fn pem_error(path: &Path, what: &str, err: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error;
    let problem = match err {
        Error::Io(err) => format!("cannot read it: {err}"),
        Error::NoItemsFound => format!("no {what} in it"),
        other => format!("not a PEM {what}: {other:?}"),
    };
    TlsError(format!("{}: {problem}", path.display()))
}
