//! A wss echo client for checking kernel TLS (scripts/ktls-vm.sh runs it in the guest):
//! one TLS version and cipher suite, messages pipelined both ways, a TLS 1.3 KeyUpdate of
//! its own mid-stream (asking the server for one too), and a close that must end with the
//! server's close_notify rather than a bare FIN.
//!
//!     ktls_client ADDR CA_PEM tls13|tls12 aes128|aes256|chacha [KEY_UPDATES]
//!
//! Prints one line saying what it checked; exits 1 naming the first thing that went wrong.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{cipher_suite, default_provider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedCipherSuite};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Messages per batch, written before any echo is read.
const BATCH: usize = 8;
/// Batches per connection; our KeyUpdates go between them.
const BATCHES: usize = 12;

fn main() {
    if let Err(why) = run() {
        eprintln!("ktls_client: FAIL: {why}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, ca, version, cipher, rest @ ..] = &args[..] else {
        return Err(
            "usage: ktls_client ADDR CA_PEM tls13|tls12 aes128|aes256|chacha [KEY_UPDATES]".into(),
        );
    };
    let key_updates: usize = match rest.first() {
        Some(n) => n
            .parse()
            .map_err(|_| format!("KEY_UPDATES {n:?} is not a count"))?,
        None => 2,
    };
    let tls13 = match version.as_str() {
        "tls13" => true,
        "tls12" => false,
        other => return Err(format!("unknown version {other:?}")),
    };
    let suite = suite(tls13, cipher)?;
    let config = config(ca, tls13, suite)?;
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(config, name).map_err(|e| format!("TLS client: {e}"))?;
    let sock = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let mut tls = StreamOwned::new(conn, sock);
    upgrade(&mut tls)?;
    let negotiated = tls.conn.negotiated_cipher_suite().map(|s| s.suite());
    if negotiated != Some(suite.suite()) {
        return Err(format!(
            "negotiated {negotiated:?}, not {:?}",
            suite.suite()
        ));
    }

    let mut sent_updates = 0;
    let mut bytes = 0;
    for batch in 0..BATCHES {
        let messages: Vec<Vec<u8>> = (0..BATCH).map(|i| payload(batch * BATCH + i)).collect();
        for message in &messages {
            write_frame(&mut tls, 0x2, message)?;
        }
        // Mid-batch in both directions: our echoes are on their way back while the
        // KeyUpdate goes out, and the next batch follows it under the new key.
        if tls13 && sent_updates < key_updates && batch % (BATCHES / (key_updates + 1)).max(1) == 1
        {
            tls.conn
                .refresh_traffic_keys()
                .map_err(|e| format!("KeyUpdate: {e}"))?;
            tls.flush()
                .map_err(|e| format!("sending the KeyUpdate: {e}"))?;
            sent_updates += 1;
        }
        for (i, message) in messages.iter().enumerate() {
            let (opcode, back) = read_frame(&mut tls)?;
            if opcode != 0x2 || back != *message {
                return Err(format!(
                    "message {} came back different ({} bytes, opcode {opcode})",
                    batch * BATCH + i,
                    back.len()
                ));
            }
            bytes += back.len();
        }
    }

    // Our close, the server's answer, then its close_notify before the end of the stream.
    write_frame(&mut tls, 0x8, &1000u16.to_be_bytes())?;
    loop {
        let (opcode, _) = read_frame(&mut tls)?;
        if opcode == 0x8 {
            break;
        }
    }
    let mut rest = Vec::new();
    let close_notify = match tls.read_to_end(&mut rest) {
        Ok(_) => "seen",
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err("the server closed without a close_notify".into());
        }
        Err(e) => return Err(format!("reading to the end: {e}")),
    };
    println!(
        "ktls_client: {version} {cipher}: {} messages ({bytes} bytes) echoed intact, \
         {sent_updates} key updates sent, close_notify {close_notify}",
        BATCHES * BATCH
    );
    Ok(())
}

fn suite(tls13: bool, cipher: &str) -> Result<SupportedCipherSuite, String> {
    use cipher_suite::*;
    Ok(match (tls13, cipher) {
        (true, "aes128") => TLS13_AES_128_GCM_SHA256,
        (true, "aes256") => TLS13_AES_256_GCM_SHA384,
        (true, "chacha") => TLS13_CHACHA20_POLY1305_SHA256,
        (false, "aes128") => TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        (false, "aes256") => TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        (false, "chacha") => TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        (_, other) => return Err(format!("unknown cipher {other:?}")),
    })
}

fn config(ca: &str, tls13: bool, suite: SupportedCipherSuite) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e:?}"))? {
        let cert = cert.map_err(|e| format!("{ca}: {e:?}"))?;
        roots.add(cert).map_err(|e| format!("{ca}: {e}"))?;
    }
    let provider = CryptoProvider {
        cipher_suites: vec![suite],
        ..default_provider()
    };
    let version = if tls13 {
        &rustls::version::TLS13
    } else {
        &rustls::version::TLS12
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Message `n`: its size cycles from a few bytes to several records' worth, its bytes say
/// which it is, so a loss, a reorder or a corruption shows.
fn payload(n: usize) -> Vec<u8> {
    let size = [20, 1000, 16 << 10, 100_000, 3][n % 5];
    (0..size).map(|i| (n * 31 + i) as u8).collect()
}

fn upgrade(tls: &mut Tls) -> Result<(), String> {
    let request = "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("the upgrade request: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte)
            .map_err(|e| format!("the upgrade response: {e}"))?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("the upgrade was refused: {head}"));
    }
    Ok(())
}

/// A client frame: FIN, `opcode`, masked.
fn write_frame(tls: &mut Tls, opcode: u8, payload: &[u8]) -> Result<(), String> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tls.write_all(&frame)
        .and_then(|()| tls.flush())
        .map_err(|e| format!("writing a frame: {e}"))
}

/// A server frame (unmasked, unfragmented): its opcode and payload.
fn read_frame(tls: &mut Tls) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 2];
    tls.read_exact(&mut head)
        .map_err(|e| format!("reading a frame: {e}"))?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut len = [0u8; 2];
            tls.read_exact(&mut len).map_err(|e| e.to_string())?;
            u16::from_be_bytes(len) as usize
        }
        127 => {
            let mut len = [0u8; 8];
            tls.read_exact(&mut len).map_err(|e| e.to_string())?;
            usize::try_from(u64::from_be_bytes(len)).map_err(|e| e.to_string())?
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    tls.read_exact(&mut payload)
        .map_err(|e| format!("reading a frame's payload: {e}"))?;
    Ok((head[0] & 0x0f, payload))
}
