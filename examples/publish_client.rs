//! Publishes through `POST /publish/<topic>` as fast as one backend connection can, over
//! one kept-alive connection or a new connection per request, and prints the rate: what
//! keep-alive is worth (scripts/bench-publish.sh runs it both ways).
//!
//! usage: publish_client HOST:PORT KEY REQUESTS keep-alive|close

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, key, requests, mode] = &args[..] else {
        eprintln!("usage: publish_client HOST:PORT KEY REQUESTS keep-alive|close");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("HOST:PORT");
    let requests: usize = requests.parse().expect("a number of requests");
    let keep_alive = mode == "keep-alive";
    let body = b"{\"price\":1.0842}";
    let request = format!(
        "POST /publish/bench HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        }
    );
    let mut message = request.into_bytes();
    message.extend_from_slice(body);
    let started = Instant::now();
    let mut stream = None;
    let mut buf = [0u8; 4096];
    for _ in 0..requests {
        let conn = match (&mut stream, keep_alive) {
            (Some(conn), true) => conn,
            _ => {
                let conn = TcpStream::connect(addr).expect("connect");
                conn.set_nodelay(true).expect("nodelay");
                stream.insert(conn)
            }
        };
        conn.write_all(&message).expect("send");
        let n = read_response(conn, &mut buf);
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        if !keep_alive {
            stream = None;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{mode}: {requests} requests in {:.2} s: {:.0} requests/s",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64()
    );
}

/// Reads one response (head and its Content-Length body); returns its length.
fn read_response(conn: &mut TcpStream, buf: &mut [u8]) -> usize {
    let mut have = 0;
    loop {
        let n = conn.read(&mut buf[have..]).expect("read");
        assert!(n > 0, "the server closed early");
        have += n;
        let text = &buf[..have];
        let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&text[..end]);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if have >= end + 4 + length {
            return have;
        }
    }
}
