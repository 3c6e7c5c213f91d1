#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "format"
cargo fmt --all -- --check
step "clippy"
cargo clippy --workspace --all-targets -- -D warnings
step "unit and integration tests"
cargo test --workspace
step "autobahn (fuzzingclient against ringws serve)"
scripts/autobahn.sh
