//! What the load generator's integration tests share: server processes and a way to run the
//! generator and read its JSON report.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A server process, killed when dropped.
pub struct Peer {
    pub child: Child,
    pub addr: String,
    /// What it printed after `listening on`.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    fn start(mut command: Command) -> Peer {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.expect("server output");
            if let Some(at) = line.find("listening on ") {
                let addr = line[at + "listening on ".len()..].trim().to_owned();
                let printed = Arc::new(Mutex::new(Vec::new()));
                let kept = printed.clone();
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        if let Ok(mut kept) = kept.lock() {
                            kept.push(line);
                        }
                    }
                });
                return Peer {
                    child,
                    addr,
                    lines: printed,
                };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server exited before listening");
    }
}

impl Peer {
    /// Waits (at most 10 s) until the server has printed `count` lines starting with
    /// `prefix`, and returns them.
    pub fn wait_for_lines(&self, prefix: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<String> = self
                .lines
                .lock()
                .map(|lines| {
                    lines
                        .iter()
                        .filter(|l| l.starts_with(prefix))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if found.len() >= count || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ringws_serve() -> Peer {
    ringws_serve_with(&[])
}

/// `ringws serve` from this tree, with extra options.
pub fn ringws_serve_with(args: &[&str]) -> Peer {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_ringws-loadgen"));
    let ringws = loadgen.with_file_name("ringws");
    assert!(
        ringws.exists(),
        "{} is missing: build the workspace first (cargo test --workspace does)",
        ringws.display()
    );
    let mut command = Command::new(ringws);
    command.args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"]);
    command.args(args);
    Peer::start(command)
}

fn python() -> String {
    std::env::var("RINGWS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("RINGWS_TEST_PYTHON is not set: run scripts/test.sh, which installs `websockets`")
    })
}

/// One of this crate's Python peers (`tests/peers/NAME.py`), with arguments.
pub fn python_peer(name: &str, args: &[&str]) -> Peer {
    let mut command = Command::new(python());
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/peers/{name}.py")))
        .args(args);
    Peer::start(command)
}

pub fn python_echo(faulty: bool) -> Peer {
    let mut command = Command::new(python());
    command.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/clients/echo_server.py"
    ));
    if faulty {
        command.arg("--faulty");
    }
    Peer::start(command)
}

/// Runs the generator and returns its exit status and JSON report.
pub fn loadgen(addr: &str, args: &[&str]) -> (Output, Value) {
    loadgen_at(addr, "/loadgen", args)
}

/// Runs the generator against `path` on the server.
pub fn loadgen_at(addr: &str, path: &str, args: &[&str]) -> (Output, Value) {
    let url = format!("ws://{addr}{path}");
    let mut all = vec!["--url", &url];
    all.extend_from_slice(args);
    run_loadgen(&all)
}

/// Runs the generator with exactly `args` (and `--quiet --json`); returns its exit status,
/// output and JSON report.
pub fn run_loadgen(args: &[&str]) -> (Output, Value) {
    let dir = tempdir();
    let json = dir.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_ringws-loadgen"))
        .args(["--quiet", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("run ringws-loadgen");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    let report = std::fs::read_to_string(&json).unwrap_or_else(|_| "null".to_owned());
    let _ = std::fs::remove_dir_all(&dir);
    (output, serde_json::from_str(&report).expect("valid JSON"))
}

/// A fresh directory for one test.
pub fn tempdir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringws-loadgen-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

pub fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}` missing from {report}"))
}

/// The fields other tooling reads, present and consistent with a clean run.
pub fn assert_clean(report: &Value, connections: u64) {
    assert_eq!(count(report, "connections_established"), connections);
    assert_eq!(count(report, "connect_errors"), 0);
    for field in ["messages_lost", "messages_corrupted"] {
        assert_eq!(count(report, field), 0, "{field}");
    }
    let sent = count(report, "messages_sent");
    assert!(sent > 0);
    assert_eq!(count(report, "messages_received"), sent);
    assert!(report["throughput_msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
    let latency = &report["latency_us"];
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(latency[p].as_u64().is_some(), "latency_us.{p} missing");
    }
    assert!(latency["p50"].as_u64() <= latency["p99"].as_u64());
    assert!(latency["p99"].as_u64() <= latency["max"].as_u64());
}
