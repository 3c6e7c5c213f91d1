//! `ringws-loadgen`: load generator for WebSocket servers.
//!
//! Every virtual client speaks RFC 6455 through `ringws::proto`; its protocol state and
//! accounting live in [`client`], sans-io, driven thread-per-core by an io_uring [`engine`]
//! (plain links: no task per connection, batched submissions) or by tokio-uring [`tasks`]
//! over the simulated network of [`link`].
//! Every message carries its sender, sequence number, timestamp and checksum, so the report
//! counts loss, duplication, reordering and corruption, not only speed.

mod app;
mod cli;
mod client;
mod clock;
mod compare;
mod cpu;
mod cycle;
mod display;
mod drive;
mod engine;
mod html;
mod link;
mod messages;
mod nodes;
mod open;
mod payload;
mod plan;
mod processes;
mod profile;
mod reconnects;
mod report;
mod run;
mod search;
mod sequence;
mod stats;
mod target;
mod tasks;
mod templates;
mod threshold;
mod tls;
mod upgrade;

use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match app::run(&args) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(error) => {
            eprintln!("ringws-loadgen: {error}");
            ExitCode::from(2)
        }
    }
}
