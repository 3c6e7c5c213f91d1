#!/usr/bin/env bash
# What keep-alive is worth to a backend publishing through POST /publish/<topic>: one
# client, one request at a time, over one kept-alive connection and then over a new
# connection per request, against a release `ringws serve` with one subscriber.
# usage: scripts/bench-publish.sh [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-20000}
cargo build --release --quiet --bin ringws --example publish_client
key=bench-key
log=$(mktemp)
target/release/ringws serve --listen 127.0.0.1:0 --shards 1 --publish-key "$key" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
addr=$(grep -m1 -o 'listening on [^ ]*' "$log" | cut -d' ' -f3)
echo "$(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(uname -r); $requests requests each"
target/release/examples/publish_client "$addr" "$key" "$requests" keep-alive
target/release/examples/publish_client "$addr" "$key" "$requests" close
