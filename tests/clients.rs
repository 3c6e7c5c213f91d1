//! Real clients against the real binary: Python's `websockets` and Node's `ws`, each running
//! its scripted scenarios (text, binary, fragmented and 16 MiB messages, pings, close codes,
//! subprotocols, many connections at once) against `ringws serve`.
//!
//! `scripts/test.sh` installs both clients and says where through `RINGWS_TEST_PYTHON`
//! (a Python with `websockets`) and `tests/node/node_modules`.

mod support;

use std::path::Path;
use std::process::Command;

use support::Server;

fn run_client(mut command: Command, name: &str) {
    let server = Server::start(&["--subprotocol", "chat", "--shards", "2"]);
    let output = command
        .arg(server.url(""))
        .output()
        .unwrap_or_else(|e| panic!("could not start the {name} client: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    assert!(
        output.status.success(),
        "the {name} client failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all scenarios passed"), "{stdout}");
}

#[test]
fn python_websockets_client() {
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
    run_client(command, "Python websockets");
}

#[test]
fn node_ws_client() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/ws").is_dir(),
        "tests/node/node_modules is missing: run scripts/test.sh, which runs `npm ci` there"
    );
    let mut command = Command::new("node");
    command.arg(dir.join("client.mjs"));
    run_client(command, "Node ws");
}
