//! A wss echo server on tokio-tungstenite over tokio-rustls, as a fair peer: one thread (the
//! benchmark pins it to one core, as it pins ringws), rustls with the ring provider, session
//! tickets and ALPN `http/1.1` as `ringws serve` has them, messages batched into one flush
//! when several are ready.
//!
//! usage: tungstenite-tls-echo ADDR CHAIN.pem KEY.pem     (prints `listening on ADDR`)

use std::io;
use std::sync::Arc;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(chain), Some(key)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: tungstenite-tls-echo ADDR CHAIN.pem KEY.pem");
        std::process::exit(2);
    };
    let acceptor = TlsAcceptor::from(Arc::new(config(&chain, &key)?));
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(echo(acceptor.clone(), stream));
    }
}

fn config(chain: &str, key: &str) -> io::Result<ServerConfig> {
    let bad = |what: &str, err: &dyn std::fmt::Display| io::Error::other(format!("{what}: {err}"));
    let chain = CertificateDer::pem_file_iter(chain)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| bad(chain, &err))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|err| bad(key, &err))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| bad("TLS versions", &err))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| bad("certificate", &err))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|err| bad("session tickets", &err))?;
    Ok(config)
}

async fn echo(acceptor: TlsAcceptor, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(stream) = acceptor.accept(stream).await else {
        return;
    };
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            if (message.is_text() || message.is_binary()) && ws.feed(message).await.is_err() {
                return;
            }
            if let Some(Some(Ok(more))) = ws.next().now_or_never() {
                next = Some(more);
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}
