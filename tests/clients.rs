//! Real clients against the real binary: Python's `websockets` and Node's `ws`, each running
//! its scripted scenarios against `ringws serve`: text, binary, fragmented and 16 MiB
//! messages, pings, close codes, subprotocols and many connections at once; then, with
//! permessage-deflate on (shared and dedicated compressors), every window size and
//! context-takeover mode the client can ask for.
//!
//! Each runs over wss too, against a TLS listener whose certificate chains to a test CA the
//! client is told to trust.
//!
//! `scripts/test.sh` installs both clients and says where through `RINGWS_TEST_PYTHON`
//! (a Python with `websockets`) and `tests/node/node_modules`.

mod support;

use std::path::Path;
use std::process::Command;

use support::Server;
use support::certs::{KeyFormat, TestPki};

fn python() -> Command {
    let python = std::env::var("RINGWS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "RINGWS_TEST_PYTHON is not set: run scripts/test.sh, which installs the Python \
             websockets client, or point it at a Python that has `websockets`"
        )
    });
    let mut command = Command::new(python);
    command.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/client.py"
    ));
    command
}

fn node() -> Command {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/ws").is_dir(),
        "tests/node/node_modules is missing: run scripts/test.sh, which runs `npm ci` there"
    );
    let mut command = Command::new("node");
    command.arg(dir.join("client.mjs"));
    command
}

/// Starts `ringws serve` with `server_args` and runs the client against it.
fn run_client(client: Command, name: &str, server_args: &[&str], client_args: &[&str]) {
    let server = Server::start(server_args);
    run(client, name, &server.url(""), server_args, client_args);
}

/// Runs the client against the server at `url`; it must pass every scenario.
fn run(mut client: Command, name: &str, url: &str, server_args: &[&str], client_args: &[&str]) {
    let output = client
        .arg(url)
        .args(client_args)
        .output()
        .unwrap_or_else(|e| panic!("could not start the {name} client: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    assert!(
        output.status.success(),
        "the {name} client failed ({}) against ringws serve {server_args:?}:\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all scenarios passed"), "{stdout}");
}

const PLAIN: &[&str] = &["--subprotocol", "chat", "--shards", "2"];
const SHARED_DEFLATE: &[&str] = &["--deflate", "shared", "--shards", "2"];
const DEDICATED_DEFLATE: &[&str] = &["--deflate", "dedicated", "--shards", "2"];

#[test]
fn python_websockets_client() {
    run_client(python(), "Python websockets", PLAIN, &[]);
}

#[test]
fn python_websockets_client_with_shared_compression() {
    run_client(
        python(),
        "Python websockets",
        SHARED_DEFLATE,
        &["--deflate", "--shared"],
    );
}

#[test]
fn python_websockets_client_with_dedicated_compression() {
    run_client(
        python(),
        "Python websockets",
        DEDICATED_DEFLATE,
        &["--deflate"],
    );
}

#[test]
fn node_ws_client() {
    run_client(node(), "Node ws", PLAIN, &[]);
}

#[test]
fn node_ws_client_with_shared_compression() {
    run_client(node(), "Node ws", SHARED_DEFLATE, &["--deflate"]);
}

#[test]
fn node_ws_client_with_dedicated_compression() {
    run_client(node(), "Node ws", DEDICATED_DEFLATE, &["--deflate"]);
}

/// Starts `ringws serve` with a TLS listener and `server_args`, and runs the client against
/// it over wss, trusting the test CA.
fn run_client_over_tls(client: Command, name: &str, server_args: &[&str], client_args: &[&str]) {
    let pki = TestPki::new(&name.replace(' ', "-"), KeyFormat::EcPkcs8);
    let mut args = pki.serve_args();
    args.extend(server_args.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let url = format!("wss://{}", server.tls_addr.expect("a TLS listener"));
    let ca = pki.ca().display().to_string();
    let mut client_args = client_args.to_vec();
    client_args.extend(["--ca", &ca]);
    run(client, name, &url, &args, &client_args);
}

#[test]
fn python_websockets_client_over_tls() {
    run_client_over_tls(python(), "Python websockets", PLAIN, &[]);
}

#[test]
fn python_websockets_client_over_tls_with_compression() {
    run_client_over_tls(
        python(),
        "Python websockets",
        SHARED_DEFLATE,
        &["--deflate", "--shared"],
    );
}

#[test]
fn node_ws_client_over_tls() {
    run_client_over_tls(node(), "Node ws", PLAIN, &[]);
}

#[test]
fn node_ws_client_over_tls_with_compression() {
    run_client_over_tls(node(), "Node ws", SHARED_DEFLATE, &["--deflate"]);
}
