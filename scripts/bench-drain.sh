#!/usr/bin/env bash
# The reconnect storm of a drain, with and without --drain-spread. CLIENTS churn clients
# (ringws-loadgen --scenario churn, living longer than the run, no storm of their own) take
# node A and node B in turn (`ringws serve --shards 1` each). Once A holds its half, it gets
# SIGTERM (--drain-delay 0s, --drain-spread S): each client it closes moves to B at once, as
# a client with a list of servers, or behind a load balancer, does. The generator records
# every reconnect on the monotonic clock, so the row gives what B had to take: the most
# reconnects in one second and in the busiest 100 ms, the time from the first 1001 to the
# last client back, and the reconnects' handshake latency (connect to 101, on B).
#
#   scripts/bench-drain.sh [CLIENTS] [SPREAD...]     default: 4000 clients, spreads 0s and 5s
#
# Writes target/bench-drain/results.md and each run's JSON report beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
clients="${1:-4000}"
shift || true
spreads=("$@")
[ ${#spreads[@]} -gt 0 ] || spreads=(0s 5s)
out=target/bench-drain
mkdir -p "$out"
cargo build --release --quiet -p ringws -p ringws-loadgen --bins

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Starts a node with extra arguments; sets $node_pid and $node_addr.
start_node() {
  local log
  log=$(mktemp "$out/node.XXXXXX")
  target/release/ringws serve --listen 127.0.0.1:0 --shards 1 "$@" >"$log" 2>&1 &
  node_pid=$!
  pids+=("$node_pid")
  for _ in $(seq 200); do
    node_addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$log" | head -1)
    [ -n "$node_addr" ] && break
    sleep 0.05
  done
  [ -n "$node_addr" ] || { echo "bench-drain: a node did not start: $(cat "$log")" >&2; exit 1; }
}

metric() {
  curl -s "http://$1/metrics" | awk -v name="$2" '$1 == name { print $2 }'
}

seconds() { python3 -c "import sys; s = sys.argv[1]; print(float(s[:-2]) / 1000 if s.endswith('ms') else float(s.rstrip('s')))" "$1"; }

rows=()
for spread in "${spreads[@]}"; do
  start_node --drain-delay 0s --drain-spread "$spread" --shutdown-grace 10s
  a_pid=$node_pid a_addr=$node_addr
  start_node
  b_pid=$node_pid b_addr=$node_addr
  json="$out/spread-$spread.json"
  # Measured long enough for the whole spread, and a margin for the last reconnects.
  duration=$(python3 -c "print($(seconds "$spread") + 6)")
  target/release/ringws-loadgen --quiet --scenario churn \
    --url "ws://$a_addr/drain" --url "ws://$b_addr/drain" \
    --connections "$clients" --lifetime 1000000000 --storm-after -1 \
    --duration "$duration" --json "$json" >"$out/spread-$spread.txt" &
  loadgen=$!
  pids+=("$loadgen")
  until [ "$(metric "$a_addr" ringws_websockets)" = "$((clients / 2))" ]; do
    kill -0 "$loadgen" 2>/dev/null || { echo "bench-drain: the generator ended early" >&2; exit 1; }
    sleep 0.1
  done
  sleep 1
  kill -TERM "$a_pid"
  wait "$loadgen" || true # dropped connections make the run "not clean": expected here
  wait "$a_pid" || echo "bench-drain: node A exited $?" >&2
  kill "$b_pid"
  wait "$b_pid" || true
  rows+=("$(python3 - "$spread" "$json" <<'EOF'
import json, sys
spread, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
rate = r["reconnect_rate"] or {}
hs = rate.get("handshake_latency_us", {})
moved = r["errors"].get("the server closed with 1001", 0)
print(f"| {spread} | {moved:,} | {r['reconnects']:,} | {rate.get('peak_per_sec', 0):,} "
      f"| {rate.get('peak_per_interval', 0):,} | {rate.get('all_back_ms') or 0:,.0f} "
      f"| {hs.get('p50', 0) / 1000:.1f} / {hs.get('p99', 0) / 1000:.1f} / {hs.get('max', 0) / 1000:.1f} "
      f"| {r['connect_errors']} |")
EOF
)")
  pids=()
done

{
  echo "$clients churn clients over two \`ringws serve --shards 1\` nodes; node A drained with SIGTERM, \`--drain-delay 0s\`."
  echo
  echo "| \`--drain-spread\` | clients closed by A (1001) | reconnects | peak reconnects in 1 s | in the busiest 100 ms | first 1001 to last back (ms) | reconnect handshake p50 / p99 / max (ms) | connect errors |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee "$out/results.md"
