//! `null-sink ADDR`: accepts WebSocket upgrades (a thread per connection) and reads and drops
//! every byte after the handshake. Prints `listening on ADDR` once bound.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use ringws::proto::handshake::{self, RequestParser};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&addr)?;
    println!("null-sink: listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            if let Err(error) = sink(stream) {
                eprintln!("null-sink: {error}");
            }
        });
    }
    Ok(())
}

fn sink(mut stream: TcpStream) -> std::io::Result<()> {
    let mut parser = RequestParser::new(handshake::Limits::default());
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let parsed = parser
            .feed(&buf[..n])
            .map_err(|e| std::io::Error::other(format!("bad request: {e:?}")))?;
        if parsed.is_some() {
            break;
        }
    }
    let request = parser
        .request()
        .ok_or_else(|| std::io::Error::other("no request"))?;
    let upgrade = handshake::validate(request)
        .map_err(|e| std::io::Error::other(format!("not an upgrade: {e:?}")))?;
    let mut response = Vec::new();
    handshake::write_accept(&mut response, upgrade.key, None, None);
    stream.write_all(&response)?;
    while stream.read(&mut buf)? > 0 {}
    Ok(())
}
