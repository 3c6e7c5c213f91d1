//! The `ringws` command: `ringws serve` runs the WebSocket server.

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringws",
    version,
    about = "A thread-per-core io_uring WebSocket server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the WebSocket server (echo on every path).
    Serve,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            eprintln!("ringws serve: the io_uring server engine is not built yet");
            std::process::exit(2);
        }
    }
}
