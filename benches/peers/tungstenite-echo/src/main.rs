//! An echo server on tokio-tungstenite, as a fair peer: one thread (the benchmark pins it to
//! one core, as it pins ringws), messages batched into one flush when several are ready.
//!
//! usage: tungstenite-echo ADDR     (prints `listening on ADDR`)

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9002".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(echo(stream));
    }
}

async fn echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
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
