//! Headless Chromium against `ringws serve` with permessage-deflate on: a page from the allowed
//! origin exchanges compressed messages, a page from another origin is refused (403, which the
//! browser reports as 1006). Driven by `tests/node/browser.mjs` (playwright-core).
//!
//! `scripts/test.sh` installs Debian's `chromium` and the Node packages.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use ringws::proto::OpCode;
use support::certs::{KeyFormat, TestPki};
use support::{Server, open, read_frame, send};

/// Debian's Chromium and the Node packages, which `scripts/test.sh` installs.
fn chromium_and_scripts() -> (String, PathBuf) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/test.sh, which installs Debian's chromium"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/node/node_modules is missing: run scripts/test.sh, which runs `npm ci` there"
    );
    (chromium, dir)
}

/// A free port for the page: its origin is the one the server allows.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn run_browser(deflate: &str) {
    let (chromium, dir) = chromium_and_scripts();
    let page_port = free_port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let server = Server::start(&["--deflate", deflate, "--allowed-origin", &origin]);
    let mut node = Command::new("node");
    node.arg(dir.join("browser.mjs"))
        .arg(server.url(""))
        .arg(page_port.to_string())
        .env("CHROMIUM", &chromium);
    run_node(node);
}

/// The same page over https, its WebSocket over wss, with a CA the test makes and puts in
/// the NSS database Chromium reads (under a HOME of the test's own): no certificate error
/// is ignored.
#[test]
fn chromium_on_an_https_page_over_wss() {
    let (chromium, dir) = chromium_and_scripts();
    let pki = TestPki::new("browser", KeyFormat::EcPkcs8);
    let home = pki.dir().join("home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).expect("a directory for the NSS database");
    let db = format!("sql:{}", nssdb.display());
    let certutil = |args: &[&str]| {
        let output = Command::new("certutil")
            .args(["-d", &db])
            .args(args)
            .output()
            .expect("run certutil: scripts/test.sh installs libnss3-tools");
        assert!(
            output.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    certutil(&["-N", "--empty-password"]);
    let ca = pki.ca().display().to_string();
    certutil(&["-A", "-t", "C,,", "-n", "ringws-test-ca", "-i", &ca]);
    let page_port = free_port();
    let origin = format!("https://127.0.0.1:{page_port}");
    let mut args = pki.serve_args();
    args.extend(["--deflate", "shared", "--allowed-origin", &origin].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let mut node = Command::new("node");
    node.arg(dir.join("browser.mjs"))
        .arg(format!(
            "wss://{}",
            server.tls_addr.expect("a TLS listener")
        ))
        .arg(page_port.to_string())
        .arg("--cert")
        .arg(pki.chain())
        .arg("--key")
        .arg(pki.key())
        .env("CHROMIUM", &chromium)
        .env("HOME", &home);
    run_node(node);
    let seen = support::metrics(server.addr);
    assert!(seen["ringws_tls_handshakes_total"] >= 1, "{seen:?}");
}

fn run_node(mut node: Command) {
    let output = node.output().expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("browser: all scenarios passed"), "{stdout}");
}

#[test]
fn chromium_with_shared_compression() {
    run_browser("shared");
}

#[test]
fn chromium_with_dedicated_compression() {
    run_browser("dedicated");
}

#[test]
fn the_status_page_fills_in_from_metrics_on_a_phone() {
    let (chromium, dir) = chromium_and_scripts();
    let server = Server::start(&["--shards", "2"]);
    // Three connections that have each echoed a message.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let mut client = open(server.addr, "/");
            send(&mut client, OpCode::Text, true, b"hello");
            read_frame(&mut client);
            client
        })
        .collect();
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = Command::new("node")
        .arg(dir.join("status.mjs"))
        .arg(format!("http://{}/", server.addr))
        .arg(&screenshot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the status page test failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let seen = stdout
        .lines()
        .find_map(|line| line.strip_prefix("status: "))
        .expect("the page's values");
    let seen: serde_json::Value = serde_json::from_str(seen).expect("JSON");
    let connections: u64 = seen["connections"]
        .as_str()
        .and_then(|text| text.replace(',', "").parse().ok())
        .expect("a connection count");
    // The three clients, and the page's own request for /metrics.
    assert!(connections >= 3, "{seen}");
    assert_eq!(seen["shards"], 2, "{seen}");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    println!("screenshot: {}", screenshot.display());
    drop(clients);
}
