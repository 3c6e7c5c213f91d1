//! `ringws-loadgen`: load generator for WebSocket servers.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    eprintln!("ringws-loadgen: not built yet");
    std::process::exit(2);
}
