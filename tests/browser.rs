//! Headless Chromium against `ringws serve` with permessage-deflate on: a page from the allowed
//! origin exchanges compressed messages, a page from another origin is refused (403, which the
//! browser reports as 1006). Driven by `tests/node/browser.mjs` (playwright-core).
//!
//! `scripts/test.sh` installs Debian's `chromium` and the Node packages.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use support::Server;

fn run_browser(deflate: &str) {
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
    // A free port for the page: its origin is the one the server allows.
    let page_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let server = Server::start(&["--deflate", deflate, "--allowed-origin", &origin]);
    let output = Command::new("node")
        .arg(dir.join("browser.mjs"))
        .arg(server.url(""))
        .arg(page_port.to_string())
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
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
