#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need by itself:
# a Python virtualenv with `websockets`, Node's `ws` and playwright-core (npm ci), Debian's
# chromium, nats-server and redis-server, and the Autobahn test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

step "format"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "test clients and brokers: Python websockets, Node ws, headless Chromium, NATS, Redis, openssl"
RINGWS_TEST_PYTHON="$(scripts/lib/python-env.sh)/bin/python"
export RINGWS_TEST_PYTHON
npm ci --prefix tests/node --silent --no-audit --no-fund
scripts/lib/chromium.sh
scripts/lib/brokers.sh
scripts/lib/tls-tools.sh

step "unit and integration tests"
cargo test --workspace

step "autobahn (fuzzingclient against ringws serve)"
scripts/autobahn.sh --all

step "all tests passed"
