//! Test certificates made with Debian's `openssl` (which `scripts/test.sh` installs): a root
//! CA, an intermediate, and a leaf for `localhost` and `127.0.0.1` that the intermediate
//! signs, its key in the format a test asks for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How the leaf's private key is written.
#[derive(Clone, Copy, Debug)]
pub enum KeyFormat {
    /// P-256, `BEGIN PRIVATE KEY`.
    EcPkcs8,
    /// P-256, `BEGIN EC PRIVATE KEY`.
    EcSec1,
    /// RSA 2048, `BEGIN RSA PRIVATE KEY`.
    RsaPkcs1,
}

/// A CA and a leaf signed through an intermediate, as files in a directory of their own.
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Makes the CA, the intermediate and the leaf in a fresh directory named after `name`.
    pub fn new(name: &str, key: KeyFormat) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pki-{name}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for test certificates");
        let pki = Self { dir };
        let ca_ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n";
        pki.write("ca.ext", ca_ext);
        let p256 = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        pki.openssl(&format!(
            "req -x509 {p256} -keyout ca.key -out ca.pem -days 2 -subj /CN=ringws-test-root-{name} \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ));
        pki.openssl(&format!(
            "req {p256} -keyout intermediate.key -out intermediate.csr \
             -subj /CN=ringws-test-intermediate-{name}"
        ));
        pki.openssl(
            "x509 -req -in intermediate.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -out intermediate.pem -days 2 -extfile ca.ext",
        );
        let ec = "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256";
        match key {
            KeyFormat::EcPkcs8 => pki.openssl(&format!("{ec} -out leaf.key")),
            KeyFormat::EcSec1 => {
                pki.openssl(&format!("{ec} -out leaf.pkcs8"));
                pki.openssl("ec -in leaf.pkcs8 -out leaf.key");
            }
            KeyFormat::RsaPkcs1 => {
                pki.openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out leaf.pkcs8");
                pki.openssl("rsa -in leaf.pkcs8 -traditional -out leaf.key");
            }
        }
        pki.write(
            "leaf.ext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        );
        pki.openssl("req -new -key leaf.key -out leaf.csr -subj /CN=localhost");
        pki.openssl(
            "x509 -req -in leaf.csr -CA intermediate.pem -CAkey intermediate.key \
             -CAcreateserial -out leaf.pem -days 2 -extfile leaf.ext",
        );
        let chain = [pki.read("leaf.pem"), pki.read("intermediate.pem")].concat();
        pki.write("chain.pem", &chain);
        let head = pki.read("leaf.key");
        let expected = match key {
            KeyFormat::EcPkcs8 => "-----BEGIN PRIVATE KEY-----",
            KeyFormat::EcSec1 => "-----BEGIN EC PRIVATE KEY-----",
            KeyFormat::RsaPkcs1 => "-----BEGIN RSA PRIVATE KEY-----",
        };
        assert!(head.starts_with(expected), "{key:?} key: {head}");
        pki
    }

    /// The root CA a client trusts.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server's chain: the leaf, then the intermediate.
    pub fn chain(&self) -> PathBuf {
        self.dir.join("chain.pem")
    }

    /// The leaf's private key.
    pub fn key(&self) -> PathBuf {
        self.dir.join("leaf.key")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ringws serve` flags for a TLS listener on a free port with this leaf.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--tls-listen".into(),
            "127.0.0.1:0".into(),
            "--tls-cert".into(),
            self.chain().display().to_string(),
            "--tls-key".into(),
            self.key().display().to_string(),
        ]
    }

    /// A rustls client configuration that trusts this CA alone, speaking `versions`.
    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_file(self.ca()).expect("the test CA");
        roots.add(ca).expect("a usable CA");
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("supported versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    /// Runs openssl with `args` (split at whitespace) in the directory.
    fn openssl(&self, args: &str) {
        let output = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(&self.dir)
            .output()
            .expect("run openssl: scripts/test.sh installs it");
        assert!(
            output.status.success(),
            "openssl {args} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).expect("write a test PKI file");
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).expect("read a test PKI file")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
