//! The `ringws` command: `ringws serve` runs the WebSocket server; `ringws check-config`
//! checks a settings file without starting anything.

mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use mimalloc::MiMalloc;

use settings::{LogFormat, ServeArgs};

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
    /// Run the WebSocket server: pub/sub on /pubsub/<topic>, echo on every other path.
    Serve(Box<ServeArgs>),
    /// Check a settings file (the keys of `serve --config`) and exit: 0 when the server
    /// would start with it, 1 with the problem named otherwise.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    match cli.command {
        Command::Serve(args) => {
            let serve_matches = matches
                .subcommand_matches("serve")
                .expect("the serve subcommand matched");
            match settings::resolve(*args, serve_matches) {
                Ok(args) => serve(args),
                Err(err) => {
                    eprintln!("ringws serve: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match settings::check_file(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("ringws check-config: {err}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logs(args.log_format);
    if !args.huge_pages {
        disable_transparent_huge_pages();
    }
    match ringws::server::serve(args.into_config()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ringws serve: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RINGWS_LOG` (a tracing filter; `info` by default, with
/// the broker clients' own logs at `error`). In
/// JSON each line is one object: `timestamp`, `level`, `target` and the event's fields
/// (`event`, `shard`, `peer`, `code`, `reason`, `cause`, `status`...) at the top level.
fn init_logs(format: LogFormat) {
    // The broker clients log every failed reconnect attempt; the cluster link says once
    // when it goes down and comes back.
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGWS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,redis=error,async_nats=error")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Keeps this process's memory off transparent huge pages. mimalloc asks for them where the
/// host allows (`madvise` mode), and then every heap growth is a 2 MiB page: an idle
/// connection measured 1.3-1.7 KiB with them and under 1 KiB without (docs/benchmarks.md).
/// The flag applies to mappings made before this call too.
fn disable_transparent_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and changes only this process's
    // memory policy.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            "cannot turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}
